"""`tpdeploy triton-repo`: a model repository for Triton Inference Server's native backends.

    <repository>/<name>/config.pbtxt        platform, dims, dtypes, max batch, dynamic batching, instances
    <repository>/<name>/1/model.onnx        an ONNX file: platform onnxruntime_onnx (TokenPool runs as the
                                            model-local ONNX function, so stock onnxruntime loads it)
    <repository>/<name>/1/model.plan        a TensorRT engine: platform tensorrt_plan ...
    <repository>/<name>/libtpdeploy_plugin.so   ... with the TokenPool plugin library beside it
    <repository>/<name>/README.txt          the exact tritonserver command lines

The model folder is built under a temporary name in the repository and renamed into place, so it appears
whole or not at all; an existing one is only replaced with `overwrite=True`. config.pbtxt is a
`model_config_pb2.ModelConfig` printed with `google.protobuf.text_format`, so it parses back exactly.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

from tpdeploy import engine as eng
from tpdeploy.errors import TpdeployError, one_line
from tpdeploy.libraries import find_library
from tpdeploy.runtime import default_backend

PLUGIN_NAME = eng.PLUGIN_LIBRARY
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 500
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}


def _quiet(msg: str) -> None:
    pass


@dataclass
class TensorSpec:
    name: str
    data_type: str          # TYPE_FP32 / TYPE_FP16
    dims: list[int]         # without the batch dimension when batched


@dataclass
class ModelSpec:
    platform: str           # onnxruntime_onnx / tensorrt_plan
    filename: str           # model.onnx / model.plan
    max_batch_size: int     # 0: the model has a fixed batch (no dynamic batching possible)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    notes: list[str] = field(default_factory=list)


@dataclass
class RepositoryReport:
    model_dir: str
    platform: str
    config_text: str
    plugin: str | None
    commands: list[str]
    notes: list[str]


def _mc():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise TpdeployError(f"writing Triton model configs needs tritonclient: pip install 'tritonclient[grpc]' "
                            f"(or tpdeploy[serve]) [{one_line(e)}]") from None
    return model_config_pb2, text_format


# ---------------------------------------------------------------------------------------------- reading models

def _onnx_tensor(value_info, what: str, path: str) -> tuple[str, str, list]:
    import onnx
    t = value_info.type.tensor_type
    np_name = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "undefined"
    if np_name not in _DTYPES:
        raise TpdeployError(f"{path}: {what} {value_info.name!r} is {np_name}; Triton configs here take float32 "
                            f"or float16")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return value_info.name, _DTYPES[np_name], dims


def onnx_spec(path: str, max_batch: int) -> ModelSpec:
    """Input/output names, dtypes and dims from the ONNX graph (fp16 graphs give FP16 tensors)."""
    import onnx
    if not os.path.isfile(path):
        raise TpdeployError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise TpdeployError(f"cannot read ONNX model {path}: {one_line(e)}") from None
    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1 or len(proto.graph.output) < 1:
        raise TpdeployError(f"{path}: expected one image input and a logits output, found {len(inputs)} inputs "
                            f"and {len(proto.graph.output)} outputs")
    iname, itype, idims = _onnx_tensor(inputs[0], "input", path)
    oname, otype, odims = _onnx_tensor(proto.graph.output[0], "output", path)
    if len(idims) != 4:
        raise TpdeployError(f"{path}: input {iname!r} has shape {idims}; expected images [B, 3, H, W]")
    notes = []
    if idims[0] == -1:
        mbs = max_batch
        idims, odims = idims[1:], odims[1:]
    else:
        mbs = 0
        notes.append(f"{os.path.basename(path)} has a fixed batch of {idims[0]}: max_batch_size 0 and no dynamic "
                     f"batching (export with a dynamic batch, the default, to batch requests)")
    return ModelSpec("onnxruntime_onnx", "model.onnx", mbs, [TensorSpec(iname, itype, idims)],
                     [TensorSpec(oname, otype, odims)], notes)


def engine_spec(path: str, max_batch: int) -> ModelSpec:
    """From the engine's JSON sidecar `<engine>.json` (written by build-engine) if present; else FP32, 224 px.

    Sidecar keys: input_dtype ("float32"/"float16"), max_batch, image_size; optional input_name, output_name,
    output_dtype (default: the input dtype), num_classes (default 1000)."""
    if not os.path.isfile(path):
        raise TpdeployError(f"engine not found: {path}")
    if os.path.getsize(path) == 0:
        raise TpdeployError(f"engine {path} is empty")
    notes = []
    meta = eng.read_sidecar(path)
    if meta is None:
        meta = {}
        notes.append(f"no {os.path.basename(eng.sidecar_path(path))} beside the engine: assuming FP32 input "
                     f"[B, 3, 224, 224], 1000 classes, max batch {max_batch} (check them against the engine's profile)")
    sidecar = eng.sidecar_path(path)
    try:
        in_dtype = _DTYPES[str(meta.get("input_dtype", "float32")).lower()]
        out_dtype = _DTYPES[str(meta.get("output_dtype", meta.get("input_dtype", "float32"))).lower()]
        size = int(meta.get("image_size", 224))
        classes = int(meta.get("num_classes", 1000))
        engine_max = int(meta["max_batch"]) if meta.get("max_batch") is not None else None
    except (KeyError, ValueError, TypeError) as e:
        raise TpdeployError(f"{sidecar}: bad value ({one_line(e)}); input_dtype must be float32 or float16, "
                            f"max_batch/image_size/num_classes integers") from None
    mbs = max_batch
    if engine_max is not None and engine_max < max_batch:
        notes.append(f"the engine's profile stops at batch {engine_max}: max_batch_size {max_batch} -> {engine_max}")
        mbs = engine_max
    inp = TensorSpec(str(meta.get("input_name", "images")), in_dtype, [3, size, size])
    out = TensorSpec(str(meta.get("output_name", "logits")), out_dtype, [classes])
    return ModelSpec("tensorrt_plan", "model.plan", max(mbs, 1), [inp], [out], notes)


def find_plugin(engine_path: str, explicit: str | None = None) -> str | None:
    """The TokenPool plugin library for an engine: the given one, the one it was built with, or the default search."""
    sidecar = eng.read_sidecar(engine_path) or {}
    recorded = sidecar.get("plugin")
    if explicit is None and recorded and os.path.isfile(recorded):
        explicit = recorded
    return find_library(eng.PLUGIN_LIBRARY, eng.PLUGIN_ENV, explicit)


# ---------------------------------------------------------------------------------------------- writing

def model_config(name: str, spec: ModelSpec, instances: int, max_queue_delay_us: int):
    """The `model_config_pb2.ModelConfig` message for `spec`."""
    mc, _ = _mc()
    cfg = mc.ModelConfig(name=name, platform=spec.platform, max_batch_size=spec.max_batch_size,
                         default_model_filename=spec.filename)
    for t in spec.inputs:
        cfg.input.add(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=t.dims)
    for t in spec.outputs:
        cfg.output.add(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=t.dims)
    kind = mc.ModelInstanceGroup.KIND_GPU if spec.platform == "tensorrt_plan" else mc.ModelInstanceGroup.KIND_AUTO
    cfg.instance_group.add(count=instances, kind=kind)
    if spec.max_batch_size > 0:
        cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
        cfg.dynamic_batching.SetInParent()
    return cfg


def config_text(cfg) -> str:
    """config.pbtxt text; proto3 drops zero values, but Triton must read max_batch_size 0 explicitly."""
    _, text_format = _mc()
    text = text_format.MessageToString(cfg)
    if cfg.max_batch_size == 0:
        text += "max_batch_size: 0\n"
    return text


def _commands(repository: str, plugin: str | None, platform: str) -> list[str]:
    repo = os.path.abspath(repository)
    if platform != "tensorrt_plan":
        return [f"tritonserver --model-repository={repo}",
                f"docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v {repo}:/models "
                f"nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models"]
    lib = plugin or f"/path/to/{PLUGIN_NAME}"
    return [f"tritonserver --model-repository={repo} --backend-config=tensorrt,plugins={lib}",
            f"LD_PRELOAD={lib} tritonserver --model-repository={repo}"]


def _readme(name: str, spec: ModelSpec, repository: str, plugin: str | None, commands: list[str],
            source: str) -> str:
    t_in, t_out = spec.inputs[0], spec.outputs[0]
    batch = "[-1, " if spec.max_batch_size else "["
    lines = [
        f"Triton model {name!r} ({spec.platform}), written by `tpdeploy triton-repo` from {source}",
        "",
        f"  input  {t_in.name} {t_in.data_type} {batch}{', '.join(map(str, t_in.dims))}]",
        f"  output {t_out.name} {t_out.data_type} {batch}{', '.join(map(str, t_out.dims))}]",
        f"  max_batch_size {spec.max_batch_size}" + (", dynamic batching" if spec.max_batch_size else ""),
        "",
        "Start Triton Inference Server on this repository:",
        "",
        f"  {commands[0]}",
        "",
    ]
    if spec.platform == "tensorrt_plan":
        lines += [
            "or, loading the TokenPool plugin library into the whole server process instead:",
            "",
            f"  {commands[1]}",
            "",
            "The engine holds tpdeploy::TokenPool plugin layers, so TensorRT can only deserialize it with the",
            f"plugin library loaded ({PLUGIN_NAME}: IPluginV3 'TokenPool', version 1, namespace 'tpdeploy').",
            "--backend-config=tensorrt,plugins= takes a ';'-separated list of libraries and applies to every",
            "TensorRT model of the server. A TensorRT engine only runs with the TensorRT version (and GPU",
            "architecture) it was built with: use the Triton release whose TensorRT matches, and a plugin",
            "library built against that TensorRT.",
        ]
        if plugin is None:
            lines += ["", "No plugin library was found when this repository was written: build it (`make plugins`,",
                      f"build/plugins/{PLUGIN_NAME}) and put it in place of /path/to/{PLUGIN_NAME} above."]
    else:
        lines += [
            "or with the Triton container:",
            "",
            f"  {commands[1]}",
            "",
            "The TokenPool nodes are backed by model-local ONNX functions, so Triton's onnxruntime backend",
            "runs the model without any plugin.",
        ]
    lines += ["", "Check it: curl localhost:8000/v2/health/ready; curl localhost:8000/v2/models/" + name + "/config"]
    return "\n".join(lines) + "\n"


def _graph_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


def _external_data_files(path: str) -> list[str]:
    """Relative paths of the external-data files an ONNX model refers to (large models), to copy with it."""
    import onnx
    proto = onnx.load(path, load_external_data=False)
    files = set()
    for t in _graph_tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in t.external_data if e.key == "location")
    return sorted(files)


def model_name(model_path: str, name: str | None = None) -> str:
    """The Triton model name: the given one, or the file's stem ('build/deit_small_058.onnx' -> 'deit_small_058')."""
    name = name or re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(model_path).split(".")[0] or "model")
    if not _NAME_RE.match(name):
        raise TpdeployError(f"model name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def check_batching(max_batch: int, instances: int, max_queue_delay_us: int) -> None:
    if max_batch < 1:
        raise TpdeployError(f"--max-batch must be at least 1, got {max_batch}")
    if instances < 1:
        raise TpdeployError(f"--instances must be at least 1, got {instances}")
    if max_queue_delay_us < 0:
        raise TpdeployError(f"--max-queue-delay-us must be >= 0, got {max_queue_delay_us}")


def write_repository(model_path: str, repository: str, name: str | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                     instances: int = 1, plugin: str | None = None, overwrite: bool = False,
                     max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, progress=_quiet) -> RepositoryReport:
    """Write `<repository>/<name>/` for `model_path` (.onnx -> onnxruntime_onnx, engine -> tensorrt_plan)."""
    check_batching(max_batch, instances, max_queue_delay_us)
    name = model_name(model_path, name)

    if default_backend(model_path) == "ort":
        spec = onnx_spec(model_path, max_batch)
        if plugin:
            spec.notes.append("--plugin ignored: an ONNX model runs on onnxruntime through its TokenPool functions")
        plugin_src = None
    else:
        spec = engine_spec(model_path, max_batch)
        plugin_src = find_plugin(model_path, plugin)
        if plugin_src is None:
            spec.notes.append(f"no {PLUGIN_NAME} found ($TPDEPLOY_PLUGIN, beside the engine, build/plugins/): "
                              f"the repository has none; build it with `make plugins` or pass --plugin, and see "
                              f"README.txt")

    cfg = model_config(name, spec, instances, max_queue_delay_us)
    text = config_text(cfg)
    mc, text_format = _mc()
    text_format.Parse(text, mc.ModelConfig())  # what Triton will read must parse

    try:
        os.makedirs(repository, exist_ok=True)
    except OSError as e:
        raise TpdeployError(f"cannot create repository {repository}: {e.strerror or e}") from None
    final = os.path.join(repository, name)
    if os.path.exists(final) and not overwrite:
        raise TpdeployError(f"{final} already exists (pass --overwrite to replace it)")
    plugin_dst = os.path.abspath(os.path.join(final, PLUGIN_NAME)) if plugin_src else None
    commands = _commands(repository, plugin_dst, spec.platform)

    try:
        tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=repository)
    except OSError as e:
        raise TpdeployError(f"cannot write to {repository}: {e.strerror or e}") from None
    old = None
    try:
        os.makedirs(os.path.join(tmp, "1"))
        progress(f"copying {model_path} -> {os.path.join(final, '1', spec.filename)}")
        shutil.copyfile(model_path, os.path.join(tmp, "1", spec.filename))
        if spec.platform == "onnxruntime_onnx":
            src_dir = os.path.dirname(os.path.abspath(model_path))
            for rel in _external_data_files(model_path):
                dst = os.path.join(tmp, "1", rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(os.path.join(src_dir, rel), dst)
        if plugin_src:
            shutil.copyfile(plugin_src, os.path.join(tmp, PLUGIN_NAME))
            os.chmod(os.path.join(tmp, PLUGIN_NAME), 0o755)
        with open(os.path.join(tmp, "config.pbtxt"), "w", encoding="utf-8") as f:
            f.write(text)
        with open(os.path.join(tmp, "README.txt"), "w", encoding="utf-8") as f:
            f.write(_readme(name, spec, repository, plugin_dst, commands, os.path.basename(model_path)))
        os.chmod(tmp, 0o755)
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=repository)
            os.rmdir(old)
            os.rename(final, old)
        os.rename(tmp, final)
    except OSError as e:
        if old and not os.path.exists(final):
            os.rename(old, final)
            old = None
        raise TpdeployError(f"cannot write {final}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if old:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
    return RepositoryReport(final, spec.platform, text, plugin_dst, commands, spec.notes)
