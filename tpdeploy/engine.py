"""`tpdeploy build-engine`: ONNX -> TensorRT engine with the TokenPool plugin, plus a JSON sidecar.

Every decision (profile, precision, plugin, compatibility) is plain Python in `plan_build` and
`check_compatible`, tested without TensorRT; `build` is the thin layer of TensorRT calls
(NvInfer.h / the Python API: Builder, OnnxParser, IBuilderConfig, IOptimizationProfile, ITimingCache,
IProgressMonitor, IPluginRegistry.load_library).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field

import onnx
import onnx.inliner

from tpdeploy import __version__, onnx_op
from tpdeploy.errors import TpdeployError, one_line
from tpdeploy.files import atomic_output
from tpdeploy.libraries import find_library
from tpdeploy.modelinfo import load_onnx

PLUGIN_LIBRARY = "libtpdeploy_plugin.so"
PLUGIN_ENV = "TPDEPLOY_PLUGIN"
# the plugin's fields (tokenPoolPlugin.cpp) and the ONNX attribute type each comes from (onnx-tensorrt maps
# INT -> kINT32 and STRING -> kCHAR)
PLUGIN_FIELDS = {"num_clusters": onnx.AttributeProto.INT, "iterations": onnx.AttributeProto.INT,
                 "mode": onnx.AttributeProto.STRING, "weighted": onnx.AttributeProto.INT}
MAX_TOKENS = MAX_CHANNELS = 1024  # the kernels' limits (tokenPoolKernel.h)
INSTALL_TENSORRT = ("TensorRT is not installed: on a machine with an NVIDIA GPU and driver, "
                    "pip install tensorrt cuda-bindings (TensorRT >= 10.7)")


@dataclass
class BuildPlan:
    """Everything `build` needs, decided without TensorRT."""
    onnx_path: str
    output: str
    input_name: str
    input_dtype: str            # "float32" | "float16": of the graph TensorRT parses
    image_size: int
    min_batch: int
    opt_batch: int
    max_batch: int
    fp16: bool
    builder_fp16_flag: bool     # TensorRT 10: BuilderFlag.FP16; TensorRT >= 11 networks are strongly typed
    strongly_typed: bool
    needs_fp16_graph: bool      # TensorRT >= 11 with --fp16 on an fp32 graph: export an fp16 graph first
    workspace_mib: int | None
    timing_cache: str | None
    plugin: str | None          # None with --no-plugin: the local function is inlined
    token_pool_nodes: list[dict] = field(default_factory=list)


def find_plugin(explicit: str | None = None) -> str:
    path = find_library(PLUGIN_LIBRARY, PLUGIN_ENV, explicit)
    if path is None:
        raise TpdeployError(f"TokenPool plugin library {PLUGIN_LIBRARY} not found: build it with `make plugins` "
                            f"(needs TensorRT), pass --plugin PATH or set {PLUGIN_ENV}, or use --no-plugin to "
                            "inline the ONNX function instead")
    return path


def runtime_plugin(explicit: str | None, sidecar: dict | None) -> str | None:
    """The plugin library to load with an engine: the given one, else the one it was built with, else the
    default search; None for an engine built without the plugin."""
    if explicit:
        return find_plugin(explicit)
    if sidecar is None:  # not built by tpdeploy: load the plugin if there is one, in case it needs it
        return find_library(PLUGIN_LIBRARY, PLUGIN_ENV)
    recorded = sidecar.get("plugin")
    if not recorded:
        return None
    return recorded if os.path.isfile(recorded) else find_plugin(None)


def token_pool_nodes(proto: onnx.ModelProto) -> list[dict]:
    """The TokenPool nodes and the plugin fields each will get; refuses attributes the plugin cannot take."""
    nodes = []
    for node in proto.graph.node:
        if node.op_type != onnx_op.OP_TYPE or node.domain != onnx_op.DOMAIN:
            continue
        types = {a.name: a.type for a in node.attribute}
        for name, kind in PLUGIN_FIELDS.items():
            if types.get(name) != kind:
                raise TpdeployError(f"node {node.name}: attribute {name} is missing or of the wrong type for the plugin")
        attrs = onnx_op.node_attributes(node)
        fields = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items() if k in PLUGIN_FIELDS}
        if fields["mode"] not in ("kmedoids", "kmeans") or fields["num_clusters"] > MAX_TOKENS:
            raise TpdeployError(f"node {node.name}: the plugin cannot run {fields}")
        nodes.append({"name": node.name, **fields})
    return nodes


def plan_build(onnx_path: str, output: str, trt_major: int, fp16: bool = False, min_batch: int | None = None,
               opt_batch: int | None = None, max_batch: int | None = None, workspace_mib: int | None = None,
               timing_cache: str | None = None, plugin: str | None = None, no_plugin: bool = False) -> BuildPlan:
    proto = load_onnx(onnx_path)
    inp = proto.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name
    if len(dims) != 4 or dtype not in ("float32", "float16"):
        raise TpdeployError(f"{onnx_path}: expected images [B, 3, H, W] float32/float16, got {inp.name} {dtype}")
    fixed = dims[0].dim_value or None
    if fixed:
        given = {b for b in (min_batch, opt_batch, max_batch) if b is not None}
        if given - {fixed}:
            raise TpdeployError(f"{onnx_path} was exported with a fixed batch of {fixed}; the profile must be {fixed}")
        lo = opt = hi = fixed
    else:
        lo = min_batch or 1
        hi = max_batch or max(32, lo)
        opt = opt_batch or min(max(8, lo), hi)
    if not 1 <= lo <= opt <= hi:
        raise TpdeployError(f"batch profile must satisfy 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")
    if workspace_mib is not None and workspace_mib < 1:
        raise TpdeployError("--workspace must be at least 1 MiB")
    if no_plugin and plugin:
        raise TpdeployError("give either --plugin or --no-plugin, not both")
    nodes = token_pool_nodes(proto)
    library = None if (no_plugin or not nodes) else find_plugin(plugin)
    strongly_typed = trt_major >= 11
    return BuildPlan(
        onnx_path=onnx_path, output=output, input_name=inp.name, input_dtype="float16" if (fp16 and strongly_typed) else dtype,
        image_size=dims[3].dim_value, min_batch=lo, opt_batch=opt, max_batch=hi, fp16=fp16 or dtype == "float16",
        builder_fp16_flag=fp16 and not strongly_typed, strongly_typed=strongly_typed,
        needs_fp16_graph=fp16 and strongly_typed and dtype == "float32", workspace_mib=workspace_mib,
        timing_cache=timing_cache, plugin=library, token_pool_nodes=nodes)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(engine_path: str) -> str:
    return engine_path + ".json"


def make_sidecar(plan: BuildPlan, trt_version: str, gpu: str, compute_capability: str) -> dict:
    """What the engine is and where it can run (TensorRT engines are tied to a version and a GPU)."""
    return {"tpdeploy_version": __version__, "tensorrt_version": trt_version, "gpu": gpu,
            "compute_capability": compute_capability, "onnx": os.path.abspath(plan.onnx_path),
            "onnx_sha256": sha256(plan.onnx_path), "plugin": plan.plugin and os.path.abspath(plan.plugin),
            "plugin_sha256": plan.plugin and sha256(plan.plugin), "input_name": plan.input_name,
            "input_dtype": plan.input_dtype, "image_size": plan.image_size, "min_batch": plan.min_batch,
            "opt_batch": plan.opt_batch, "max_batch": plan.max_batch, "fp16": plan.fp16,
            "build_args": {k: v for k, v in asdict(plan).items() if k != "token_pool_nodes"}}


def read_sidecar(engine_path: str) -> dict | None:
    try:
        with open(sidecar_path(engine_path), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise TpdeployError(f"cannot read {sidecar_path(engine_path)}: {one_line(e)}") from None


def check_compatible(sidecar: dict, trt_version: str, compute_capability: str, plugin_sha256: str | None) -> None:
    """Refuse, with the reason, an engine that this TensorRT, GPU or plugin cannot run."""
    built = f"TensorRT {sidecar['tensorrt_version']} on {sidecar['gpu']} (sm_{sidecar['compute_capability']})"
    rebuild = "; rebuild it here with `tpdeploy build-engine`"
    if sidecar["tensorrt_version"] != trt_version:
        raise TpdeployError(f"engine was built with {built}, this machine has TensorRT {trt_version}{rebuild}")
    if sidecar["compute_capability"] != compute_capability:
        raise TpdeployError(f"engine was built with {built}, this GPU is sm_{compute_capability}{rebuild}")
    if sidecar.get("plugin_sha256") and plugin_sha256 and sidecar["plugin_sha256"] != plugin_sha256:
        raise TpdeployError(f"engine was built with another TokenPool plugin library than {sidecar['plugin']}{rebuild}")


def describe_engine(path: str) -> dict:
    if not os.path.isfile(path):
        raise TpdeployError(f"engine not found: {path}")
    sidecar = read_sidecar(path)
    info = {"file": path, "format": "tensorrt", "bytes": os.path.getsize(path)}
    if sidecar is None:
        return {**info, "sidecar": "missing (not built by tpdeploy?)"}
    keys = ("tensorrt_version", "gpu", "compute_capability", "input_dtype", "min_batch", "opt_batch", "max_batch",
            "fp16", "onnx", "plugin")
    return {**info, **{k: sidecar.get(k) for k in keys}}


# --- the TensorRT layer -----------------------------------------------------------------------------------

def import_tensorrt():
    try:
        import tensorrt as trt
        trt.Builder  # noqa: B018 - the pip stubs without NVIDIA's index import but have no builder
    except (ImportError, AttributeError):
        raise TpdeployError(INSTALL_TENSORRT) from None
    return trt


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def gpu_identity() -> tuple[str, str]:
    """(name, compute capability like '90') of GPU 0, through cuda-bindings."""
    from tpdeploy.backends.cuda import device_properties
    return device_properties()


def _fp16_graph(plan: BuildPlan, folder: str, progress) -> str:
    """TensorRT >= 11 builds strongly typed networks: --fp16 means exporting an fp16 graph first."""
    from tpdeploy.backends.pytorch import TorchRunner
    from tpdeploy.export import export
    progress("TensorRT >= 11 is strongly typed: exporting an fp16 graph for --fp16")
    model = TorchRunner.from_onnx(plan.onnx_path).model
    path = os.path.join(folder, "fp16.onnx")
    export(model, path, dtype="fp16", batch=None, progress=progress)
    return path


def _onnx_bytes(path: str, inline: bool) -> bytes:
    proto = load_onnx(path)
    if inline:  # --no-plugin: TensorRT parses the function body's standard ops
        proto = onnx.inliner.inline_local_functions(proto)
    return proto.SerializeToString()


def build(plan: BuildPlan, progress=lambda msg: None) -> dict:
    """Build and write the engine (atomically) and its sidecar; returns the sidecar."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    if plan.plugin:
        progress(f"loading plugin {plan.plugin}")
        if not trt.get_plugin_registry().load_library(plan.plugin):
            raise TpdeployError(f"TensorRT could not load the plugin library {plan.plugin}")
    with tempfile.TemporaryDirectory() as folder:
        source = _fp16_graph(plan, folder, progress) if plan.needs_fp16_graph else plan.onnx_path
        try:
            builder = trt.Builder(logger)
        except Exception as e:  # noqa: BLE001 - TensorRT raises plain exceptions without a GPU
            raise TpdeployError(f"TensorRT cannot start a builder (is there a CUDA GPU and driver?): {one_line(e)}") from None
        network = builder.create_network(0)  # TensorRT >= 11: always strongly typed (no flag to set)
        parser = trt.OnnxParser(network, logger)
        progress(f"parsing {source} ({len(plan.token_pool_nodes)} TokenPool nodes, "
                 f"{'plugin' if plan.plugin else 'inlined ONNX function'})")
        if not parser.parse(_onnx_bytes(source, inline=plan.plugin is None), os.path.abspath(source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise TpdeployError(f"TensorRT cannot parse {source}: {errors[:500]}")
        config = builder.create_builder_config()
        if plan.workspace_mib:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
        if plan.builder_fp16_flag:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        shape = lambda b: (b, 3, plan.image_size, plan.image_size)  # noqa: E731
        profile.set_shape(plan.input_name, shape(plan.min_batch), shape(plan.opt_batch), shape(plan.max_batch))
        config.add_optimization_profile(profile)
        cache_bytes = b""
        if plan.timing_cache and os.path.isfile(plan.timing_cache):
            with open(plan.timing_cache, "rb") as f:
                cache_bytes = f.read()
        config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
        config.progress_monitor = _progress_monitor(trt, progress)
        progress(f"building (batch {plan.min_batch}/{plan.opt_batch}/{plan.max_batch}, "
                 f"{'fp16' if plan.fp16 else 'fp32'}); this takes minutes")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TpdeployError("TensorRT failed to build the engine (see its messages above)")
        gpu, cc = gpu_identity()
        sidecar = make_sidecar(plan, trt.__version__, gpu, cc)
        with atomic_output(plan.output) as tmp:
            with open(tmp, "wb") as f:
                f.write(serialized)
        with atomic_output(sidecar_path(plan.output)) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(sidecar, f, indent=2)
        if plan.timing_cache:
            with atomic_output(plan.timing_cache) as tmp:
                with open(tmp, "wb") as f:
                    f.write(config.get_timing_cache().serialize())
    return sidecar


def _progress_monitor(trt, progress):
    """IProgressMonitor (TensorRT >= 10): phase starts and ends as progress lines."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress(f"  {'  ' if parent_phase else ''}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # keep building

        def phase_finish(self, phase_name):
            pass

    return Monitor()
