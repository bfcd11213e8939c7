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
import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from tpdeploy.artifacts.engine_file import read_sidecar
from tpdeploy.artifacts.files import check_apart_from_inputs, check_output_folder, make_folder, sha256, user_mode
from tpdeploy.artifacts.formats import ONNX, file_format
from tpdeploy.artifacts.inputs import model_inputs
from tpdeploy.artifacts.onnx_file import ModelSpec as FileSpec
from tpdeploy.artifacts.onnx_file import OnnxFile
from tpdeploy.errors import InvalidArgumentError, UserError
from tpdeploy.optional import lazy_import
from tpdeploy.serving import triton_config
from tpdeploy.tokenpool.libraries import PLUGIN_LIBRARY, find_plugin

PLUGIN_NAME = PLUGIN_LIBRARY


def _quiet(msg: str) -> None:
    pass


@dataclass
class TensorSpec:
    name: str
    data_type: str  # TYPE_FP32 / TYPE_FP16
    dims: list[int]  # without the batch dimension when batched


@dataclass
class ModelSpec:
    platform: str  # onnxruntime_onnx / tensorrt_plan
    filename: str  # model.onnx / model.plan
    max_batch_size: int  # 0: the model has a fixed batch (no dynamic batching possible)
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

    def format(self) -> str:
        lines = [f"note: {n}" for n in self.notes]
        lines.append(
            f"wrote {self.model_dir} ({self.platform})" + (f" with the plugin {self.plugin}" if self.plugin else "")
        )
        lines.append("start Triton Inference Server with:")
        lines += [f"  {c}" for c in self.commands]
        lines.append(f"(see {os.path.join(self.model_dir, 'README.txt')})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _mc():
    lazy_import("tritonclient", "writing Triton model configs")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2, text_format


def model_spec(spec: FileSpec, platform: str, max_batch: int, path: str) -> ModelSpec:
    """The Triton view of a model file's contract: dims without the batch when it is dynamic."""
    notes = []
    inp = TensorSpec(spec.input.name, triton_config.DATA_TYPES[spec.input.dtype], list(spec.input.shape[1:]))
    out = TensorSpec(spec.output.name, triton_config.DATA_TYPES[spec.output.dtype], list(spec.output.shape[1:]))
    filename = "model.onnx" if platform == "onnxruntime_onnx" else "model.plan"
    if spec.fixed_batch and platform == "onnxruntime_onnx":
        notes.append(
            f"{os.path.basename(path)} has a fixed batch of {spec.fixed_batch}: max_batch_size 0 and no "
            f"dynamic batching (export with a dynamic batch, the default, to batch requests)"
        )
        inp.dims, out.dims = list(spec.input.shape), list(spec.output.shape)
        return ModelSpec(platform, filename, 0, [inp], [out], notes)
    mbs = max_batch
    if spec.max_batch is not None and spec.max_batch < max_batch:
        notes.append(
            f"the model's batch range stops at {spec.max_batch}: max_batch_size {max_batch} -> {spec.max_batch}"
        )
        mbs = spec.max_batch
    return ModelSpec(platform, filename, mbs, [inp], [out], notes)


# ---------------------------------------------------------------------------------------------- writing


def model_config(name: str, spec: ModelSpec, instances: int, max_queue_delay_us: int):
    """The `model_config_pb2.ModelConfig` message for `spec`."""
    mc, _ = _mc()
    cfg = mc.ModelConfig(
        name=name, platform=spec.platform, max_batch_size=spec.max_batch_size, default_model_filename=spec.filename
    )
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
        return [
            f"tritonserver --model-repository={repo}",
            f"docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v {repo}:/models "
            f"nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models",
        ]
    lib = plugin or f"/path/to/{PLUGIN_NAME}"
    return [
        f"tritonserver --model-repository={repo} --backend-config=tensorrt,plugins={lib}",
        f"LD_PRELOAD={lib} tritonserver --model-repository={repo}",
    ]


def _readme(name: str, spec: ModelSpec, repository: str, plugin: str | None, commands: list[str], source: str) -> str:
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
            lines += [
                "",
                "No plugin library was found when this repository was written: build it (`make plugins`,",
                f"build/plugins/{PLUGIN_NAME}) and put it in place of /path/to/{PLUGIN_NAME} above.",
            ]
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


def write_repository(
    model_path: str,
    repository: str,
    name: str | None = None,
    max_batch: int = triton_config.DEFAULT_MAX_BATCH,
    instances: int = triton_config.DEFAULT_INSTANCES,
    plugin: str | None = None,
    overwrite: bool = False,
    max_queue_delay_us: int = triton_config.DEFAULT_QUEUE_DELAY_US,
    progress=_quiet,
) -> RepositoryReport:
    """Write `<repository>/<name>/` for `model_path` (.onnx -> onnxruntime_onnx, engine -> tensorrt_plan)."""
    triton_config.check_batching(max_batch, instances, max_queue_delay_us)
    for what, value in (("model_path", model_path), ("repository", repository)):
        if not isinstance(value, (str, os.PathLike)):
            raise InvalidArgumentError(f"{what} must be a path, got {value!r}")
    model_path, repository = os.fspath(model_path), os.fspath(repository)
    name = triton_config.model_name(model_path, name)
    inputs = model_inputs(model_path) + [plugin]
    final = os.path.join(repository, name)
    check_output_folder(repository, inputs, what="repository")
    check_apart_from_inputs(final, inputs, what="model folder")

    external = []
    if file_format(model_path) == ONNX:
        model = OnnxFile.open(model_path, load_external_data=False)
        spec = model_spec(model.spec, "onnxruntime_onnx", max_batch, model_path)
        external = model.external_data_files()
        if plugin:
            spec.notes.append("--plugin ignored: an ONNX model runs on onnxruntime through its TokenPool functions")
        plugin_src = None
    else:
        sidecar = read_sidecar(model_path)
        spec = model_spec(sidecar.spec, "tensorrt_plan", max_batch, model_path)
        plugin_src = None
        if sidecar.plugin_sha256:
            plugin_src = find_plugin(plugin, beside=model_path, required=False)
            if plugin_src and sha256(plugin_src) != sidecar.plugin_sha256:
                raise UserError(
                    f"{plugin_src} is not the TokenPool plugin library {model_path} was built with "
                    f"(SHA-256 differs): pass that one with --plugin"
                )
            if plugin_src is None:
                spec.notes.append(
                    f"no {PLUGIN_NAME} found ($TPDEPLOY_PLUGIN, beside the engine, build/plugins/): "
                    f"the repository has none; build it with `make plugins` or pass --plugin, and "
                    f"see README.txt"
                )

    cfg = model_config(name, spec, instances, max_queue_delay_us)
    text = config_text(cfg)
    mc, text_format = _mc()
    text_format.Parse(text, mc.ModelConfig())  # what Triton will read must parse

    make_folder(repository)
    if os.path.exists(final) and not overwrite:
        raise UserError(f"{final} already exists (pass --overwrite to replace it)")
    plugin_dst = os.path.abspath(os.path.join(final, PLUGIN_NAME)) if plugin_src else None
    commands = _commands(repository, plugin_dst, spec.platform)

    try:
        tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=repository)
    except OSError as e:
        raise UserError(f"cannot write to {repository}: {e.strerror or e}") from None
    old = None
    try:
        os.makedirs(os.path.join(tmp, "1"))
        progress(f"copying {model_path} -> {os.path.join(final, '1', spec.filename)}")
        shutil.copyfile(model_path, os.path.join(tmp, "1", spec.filename))
        if spec.platform == "onnxruntime_onnx":
            src_dir = os.path.dirname(os.path.abspath(model_path))
            for rel in external:
                dst = os.path.join(tmp, "1", rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(os.path.join(src_dir, rel), dst)
        if plugin_src:
            shutil.copyfile(plugin_src, os.path.join(tmp, PLUGIN_NAME))
        with open(os.path.join(tmp, "config.pbtxt"), "w", encoding="utf-8") as f:
            f.write(text)
        with open(os.path.join(tmp, "README.txt"), "w", encoding="utf-8") as f:
            f.write(_readme(name, spec, repository, plugin_dst, commands, os.path.basename(model_path)))
        _set_user_modes(tmp)
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=repository)
            os.rmdir(old)
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException as e:  # an error, Ctrl+C or SIGTERM between the two renames: the old entry comes back
        if old and not os.path.exists(final):
            os.rename(old, final)
            old = None
        if isinstance(e, OSError):
            raise UserError(f"cannot write {final}: {e.strerror or e}") from None
        raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if old:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
    return RepositoryReport(final, spec.platform, text, plugin_dst, commands, spec.notes)


def _set_user_modes(folder: str) -> None:
    """Folders and the plugin library get 0o777 minus the umask, other files 0o666 minus it (mkdtemp made 0700)."""
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, user_mode(executable=True))
        for name in files:
            os.chmod(os.path.join(root, name), user_mode(executable=name.endswith(".so")))
