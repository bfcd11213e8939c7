"""`tpdeploy build-engine`: an exported ONNX file -> TensorRT engine with the TokenPool plugin, plus its sidecar.

Every decision (profile, precision, plugin, which graph TensorRT parses) is plain Python in `plan_build` and
`network_onnx`, tested without TensorRT; `build` is the thin layer of TensorRT calls (the Python API: Builder,
OnnxParser, IBuilderConfig, IOptimizationProfile, ITimingCache, IProgressMonitor, IPluginRegistry).

Precision: networks are strongly typed (TensorRT 11 has no other kind; on TensorRT 10 the STRONGLY_TYPED
flag), so the ONNX graph's types are the engine's. `--fp16` on a float32 file converts it with
`tpdeploy.convert.fp16` first, which keeps the significance and TokenPool's W in float32 as the contract says; the
builder's FP16 flag is never used (on TensorRT 10 it would let TensorRT compute the significance in fp16).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from tpdeploy import __version__
from tpdeploy.artifacts.engine_file import EngineSidecar, sidecar_path, write_sidecar
from tpdeploy.artifacts.files import atomic_output, check_output, sha256
from tpdeploy.artifacts.onnx_file import ModelSpec, OnnxFile, TensorSpec
from tpdeploy.artifacts.plugins import PLUGINS
from tpdeploy.artifacts.recipe import Recipe
from tpdeploy.convert.fp16 import convert_to_fp16
from tpdeploy.errors import DeviceError, UserError, check_int, one_line
from tpdeploy.runtime import tensorrt as trt_backend
from tpdeploy.tokenpool import definition as tokenpool
from tpdeploy.tokenpool import onnx_function
from tpdeploy.tokenpool.libraries import find_plugin


@dataclass
class BuildPlan:
    """Everything `build` needs, decided without TensorRT."""

    onnx_path: str
    output: str
    spec: ModelSpec  # the engine's inputs and outputs (float16 when converted) and batch range
    recipe: Recipe | None
    opt_batch: int
    convert_to_fp16: bool  # --fp16 on a float32 file: tpdeploy.convert.fp16 converts the graph first
    workspace_mib: int | None
    timing_cache: str | None
    plugin: str | None  # None with --no-plugin (or no TokenPool node): the function is inlined
    token_pool_nodes: list[dict] = field(default_factory=list)

    @property
    def fp16(self) -> bool:
        return self.spec.input.dtype == "float16"

    @property
    def quantized(self) -> str | None:
        """The precision of the Q/DQ layers of a file `tpdeploy quantize` made ("int8", "fp8"); None for a float one."""
        return self.recipe.quantization.precision if self.recipe and self.recipe.quantization else None

    def precision(self) -> str:
        """What the engine computes in: the Q/DQ layers of a quantized file, then the I/O dtype (the rest)."""
        return f"{self.quantized} Q/DQ layers, {self.spec.input.dtype}" if self.quantized else self.spec.input.dtype

    def profile(self) -> str:
        return f"{self.spec.min_batch}/{self.opt_batch}/{self.spec.max_batch}"


def plugin_nodes(model: OnnxFile) -> list[dict]:
    """The TokenPool nodes and the plugin fields each will get; refuses nodes the plugin cannot take."""
    types = {"INT": int, "STRING": str}
    nodes = []
    for node in model.token_pool_nodes:
        wrong = [f for f, t in tokenpool.PLUGIN_FIELDS.items() if not isinstance(node.get(f), types[t])]
        if wrong or node["mode"] not in tokenpool.MODES:
            raise UserError(
                f"{model.path}: node {node['name']} is not a TokenPool v1 node the plugin can run "
                f"(attributes {sorted(node)})"
            )
        nodes.append({"name": node["name"], **{f: node[f] for f in tokenpool.PLUGIN_FIELDS}})
    return nodes


def check_kernel_limits(model: OnnxFile, max_batch: int) -> None:
    """The plugin runs the CUDA kernels, which take N <= 1024 tokens, C <= 65536 channels and batch <= 65535
    (tokenpool.KERNEL_MAX_*; every registered architecture fits: 576 tokens of 1024 channels at most). Beyond,
    TensorRT would fail the build in the plugin's configurePlugin: refuse the plan here, with the way out."""
    for node in model.token_pool_nodes:
        _, n, c = node["x_shape"] or (None, None, None)
        if not tokenpool.kernels_support(max_batch, n or 0, c or 0):
            raise UserError(
                f"{model.path}: {node['name']} pools {n} tokens of {c} channels at batch up to {max_batch}; the "
                f"TokenPool kernels take N <= {tokenpool.KERNEL_MAX_TOKENS}, C <= {tokenpool.KERNEL_MAX_CHANNELS} "
                f"and batch <= {tokenpool.KERNEL_MAX_BATCH}: build with --no-plugin (TensorRT runs the ONNX "
                f"function, which has no such limit) or a smaller --max-batch"
            )


def plan_build(
    onnx_path: str,
    output: str,
    fp16: bool = False,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_mib: int | None = None,
    timing_cache: str | None = None,
    plugin: str | None = None,
    no_plugin: bool = False,
) -> BuildPlan:
    check_output(output, inputs=[onnx_path, plugin], what="engine")
    check_output(sidecar_path(output), inputs=[onnx_path, plugin], what="engine sidecar")
    if timing_cache:
        check_output(timing_cache, inputs=[onnx_path, output], what="timing cache")
    model = OnnxFile.open(onnx_path, load_external_data=False)
    spec = model.spec
    for name, value in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch)):
        if value is not None:
            check_int(name, value, minimum=1)
    if spec.fixed_batch:
        given = {b for b in (min_batch, opt_batch, max_batch) if b is not None}
        if given - {spec.fixed_batch}:
            raise UserError(
                f"{onnx_path} was exported with a fixed batch of {spec.fixed_batch}; the profile must "
                f"be {spec.fixed_batch}"
            )
        lo = opt = hi = spec.fixed_batch
    else:
        lo = min_batch or 1
        hi = max_batch or max(32, lo)
        opt = opt_batch or min(max(8, lo), hi)
    if not 1 <= lo <= opt <= hi:
        raise UserError(f"batch profile must satisfy 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")
    if workspace_mib is not None:
        check_int("--workspace (MiB)", workspace_mib, minimum=1)
    if no_plugin and plugin:
        raise UserError("give either --plugin or --no-plugin, not both")
    quantization = model.recipe and model.recipe.quantization
    if quantization and quantization.target != "tensorrt":
        raise UserError(
            f"{onnx_path} is quantized for {quantization.target} ({quantization.activations} activations; TensorRT "
            f"takes symmetric Q/DQ only): quantize the float32 file with --target tensorrt"
        )
    nodes = plugin_nodes(model)
    library = None if (no_plugin or not nodes) else find_plugin(plugin)
    if library:
        check_kernel_limits(model, hi)
    convert = fp16 and spec.input.dtype == "float32"
    dtype = "float16" if (convert or spec.input.dtype == "float16") else "float32"
    engine_spec = ModelSpec(
        TensorSpec(spec.input.name, dtype, spec.input.shape),
        TensorSpec(spec.output.name, dtype, spec.output.shape),
        lo,
        hi,
    )
    recipe = model.recipe
    if recipe is not None and convert:
        recipe = dataclasses.replace(recipe, dtype="fp16")
    return BuildPlan(
        onnx_path=onnx_path,
        output=output,
        spec=engine_spec,
        recipe=recipe,
        opt_batch=opt,
        convert_to_fp16=convert,
        workspace_mib=workspace_mib,
        timing_cache=timing_cache,
        plugin=library,
        token_pool_nodes=nodes,
    )


def network_onnx(plan: BuildPlan) -> bytes:
    """The ONNX bytes TensorRT parses: converted to float16 for --fp16; with the TokenPool functions inlined
    (without control flow) without the plugin."""
    proto = OnnxFile.open(plan.onnx_path).proto
    if plan.convert_to_fp16:
        proto = convert_to_fp16(proto)
    if plan.plugin is None:
        proto = onnx_function.inline_functions(proto)
    return proto.SerializeToString()


def missing_plugin_layers(nodes: list[dict], plugin_layer_names: list[str]) -> list[str]:
    """The TokenPool nodes that did not become plugin layers (TensorRT imported their function instead)."""
    return [n["name"] for n in nodes if not any(n["name"] in layer for layer in plugin_layer_names)]


def make_sidecar(plan: BuildPlan, trt_version: str, gpu: str, compute_capability: str) -> EngineSidecar:
    build = {
        "min_batch": plan.spec.min_batch,
        "opt_batch": plan.opt_batch,
        "max_batch": plan.spec.max_batch,
        "fp16": plan.fp16,
        "converted_to_fp16": plan.convert_to_fp16,
        "quantized": plan.quantized,
        "workspace_mib": plan.workspace_mib,
        "plugin": plan.plugin is not None,
        "token_pool_nodes": len(plan.token_pool_nodes),
    }
    return EngineSidecar(
        tensorrt_version=trt_version,
        gpu=gpu,
        compute_capability=compute_capability,
        engine_sha256=sha256(plan.output),
        onnx_sha256=sha256(plan.onnx_path),
        plugin_sha256=plan.plugin and sha256(plan.plugin),
        spec=plan.spec,
        recipe=plan.recipe,
        build=build,
        tpdeploy_version=__version__,
    )


# --- the TensorRT layer -----------------------------------------------------------------------------------


@dataclass
class BuildReport:
    plan: BuildPlan
    sidecar: EngineSidecar

    def format(self) -> str:
        p = self.plan
        return (
            f"built {p.output} ({self.sidecar.describe()}, batch {p.profile()}, {p.precision()}, "
            f"{'plugin ' + p.plugin if p.plugin else 'no plugin'})"
        )

    def to_json(self) -> dict:
        return {"engine": self.plan.output, "sidecar": json.loads(self.sidecar.to_json())}


def build(plan: BuildPlan, progress=lambda msg: None) -> BuildReport:
    """Build and write the engine (atomically) and its sidecar."""
    trt = trt_backend.import_tensorrt()
    logger = trt_backend.logger()
    if plan.plugin:
        progress(f"loading plugin {plan.plugin}")
        PLUGINS.load(plan.plugin, trt.get_plugin_registry().load_library)
    if plan.convert_to_fp16:
        progress("converting the graph to float16 (significance and TokenPool W stay float32)")
    onnx_bytes = network_onnx(plan)
    try:
        builder = trt.Builder(logger)
    except Exception as e:  # TensorRT raises plain exceptions without a GPU
        raise DeviceError(f"TensorRT cannot start a builder (is there a CUDA GPU and driver?): {one_line(e)}") from None
    network = builder.create_network(trt_backend.strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    progress(
        f"parsing {plan.onnx_path} ({len(plan.token_pool_nodes)} TokenPool nodes, "
        f"{'plugin' if plan.plugin else 'inlined ONNX function'})"
    )
    if not parser.parse(onnx_bytes, os.path.abspath(plan.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {plan.onnx_path}: {errors[:500]}")
    if plan.plugin:
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        missing = missing_plugin_layers(
            plan.token_pool_nodes, [la.name for la in layers if la.type == trt.LayerType.PLUGIN_V3]
        )
        if missing:
            raise DeviceError(
                f"TensorRT imported the ONNX function instead of the TokenPool plugin for {missing}: "
                f"is {plan.plugin} built for this TensorRT?"
            )
    config = builder.create_builder_config()
    if plan.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    size = plan.spec.image_size
    min_shape, opt_shape, max_shape = (
        (b, 3, size, size) for b in (plan.spec.min_batch, plan.opt_batch, plan.spec.max_batch)
    )
    profile.set_shape(plan.spec.input.name, min_shape, opt_shape, max_shape)
    config.add_optimization_profile(profile)
    cache_bytes = b""
    if plan.timing_cache and os.path.isfile(plan.timing_cache):
        with open(plan.timing_cache, "rb") as f:
            cache_bytes = f.read()
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    config.progress_monitor = _progress_monitor(trt, progress)
    progress(f"building (batch {plan.profile()}, {plan.precision()}); this takes minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeviceError("TensorRT failed to build the engine (see its messages above)")
    gpu, cc = trt_backend.device_properties()
    with atomic_output(plan.output, inputs=[plan.onnx_path]) as tmp:
        with open(tmp, "wb") as f:
            f.write(serialized)
    sidecar = make_sidecar(plan, trt.__version__, gpu, cc)
    write_sidecar(plan.output, sidecar, inputs=[plan.onnx_path])
    if plan.timing_cache:
        with atomic_output(plan.timing_cache, inputs=[plan.onnx_path]) as tmp:
            with open(tmp, "wb") as f:
                f.write(config.get_timing_cache().serialize())
    return BuildReport(plan, sidecar)


def _progress_monitor(trt, progress):
    """IProgressMonitor (TensorRT >= 10): phase starts as progress lines."""

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
