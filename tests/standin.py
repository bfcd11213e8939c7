"""Small stand-ins for exported models and built engines, for tests of what tpdeploy decides from a file's
interface (the real exports are in test_export.py; real engines need TensorRT and a GPU); and for the CUDA runtime
and a TensorRT engine, for tests of the TensorRT runner's own logic (test_tensorrt_runner.py)."""

from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tpdeploy.artifacts.recipe import DataConfig, Quantization, Recipe
from tpdeploy.convert import engine
from tpdeploy.tokenpool import onnx_function

ITERATIONS = 3  # of every stand-in TokenPool node
TYPES = {"float32": (TensorProto.FLOAT, np.float32), "float16": (TensorProto.FLOAT16, np.float16)}


def quantization(**changes) -> Quantization:
    """A valid quantization record, with `changes`."""
    fields = dict(
        precision="int8",
        target="ort",
        method="minmax",
        activations="asymmetric",
        calibration_source="built-in",
        calibration_images=32,
        calibration_sha256="ab" * 32,
        quantized_ops=("MatMul",),
        float_parts=("TokenPool",),
    )
    return Quantization(**{**fields, **changes})


def standin_onnx(
    path, batch="batch", dtype="float32", pools=((150, "kmedoids"),), classes=10, recipe=True, size=224, tokens=196
):
    """images [B, 3, size, size] -> `tokens` tokens of 3 * size² / tokens channels (768 by default) -> TokenPool
    nodes -> mean -> logits [B, classes]."""
    elem, npd = TYPES[dtype]
    channels = 3 * size * size // tokens
    nodes = [
        helper.make_node("Reshape", ["images", "tokens_shape"], ["x"]),
        helper.make_node("ReduceSumSquare", ["x", "axis2"], ["w"], keepdims=0),
    ]
    x = "x"
    for i, (k, mode) in enumerate(pools):
        nodes.append(
            onnx_function.make_node(
                x, "w" if i == 0 else f"w{i}", f"y{i}", k, ITERATIONS, mode, True, name=f"TokenPool_{i}"
            )
        )
        x = f"y{i}"
        nodes.append(helper.make_node("ReduceSumSquare", [x, "axis2"], [f"w{i + 1}"], keepdims=0))
    nodes += [
        helper.make_node("ReduceMean", [x, "axis1"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, tokens, channels], np.int64), "tokens_shape"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.random.default_rng(0).normal(size=(channels, classes)).astype(npd), "head"),
    ]
    graph = helper.make_graph(
        nodes,
        "standin",
        [helper.make_tensor_value_info("images", elem, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", elem, [batch, classes])],
        inits,
        value_info=[helper.make_tensor_value_info("x", elem, [batch, tokens, channels])],
    )
    modes = {mode for _, mode in pools}
    functions = [onnx_function.function_proto(20, modes.pop(), ITERATIONS)] if len(modes) == 1 else []
    model = helper.make_model(
        graph, functions=functions, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("tpdeploy", 1)]
    )
    if recipe:
        from tpdeploy.artifacts import onnx_file

        clusters = [k for k, _ in pools]  # the schedule the nodes imply: each pools after the next block
        schedule = (tokens, *clusters, *[clusters[-1] if clusters else tokens] * (11 - len(clusters)))
        onnx_file.write_recipe(
            model,
            Recipe(
                "deit_small",
                "wkmedoids",
                3,
                schedule,
                "fp32" if dtype == "float32" else "fp16",
                classes,
                DataConfig(input_size=size),
                seed=0,
                tpdeploy_version="test",
            ),
        )
    onnx.save(model, str(path))
    return str(path)


def standin_engine(folder, onnx_path, trt_version="10.8.0.43", cc="90", name="m.plan", **plan_args):
    """A fake engine file with the sidecar `build-engine` would write beside it for `onnx_path`."""
    plan = engine.plan_build(onnx_path, str(folder / name), **plan_args)
    (folder / name).write_bytes(b"fake serialized engine " + name.encode())
    sidecar = engine.make_sidecar(plan, trt_version, "NVIDIA H100 80GB HBM3", cc)
    from tpdeploy.artifacts.engine_file import write_sidecar

    write_sidecar(plan.output, sidecar)
    return str(folder / name), sidecar


# --- the TensorRT runner's CUDA and TensorRT calls, on no GPU ---------------------------------------------------

CAPTURE_INVALIDATED = 901  # cudaErrorStreamCaptureInvalidated


class StandinCudart:
    """cuda.bindings.runtime as far as tpdeploy.runtime.cudart calls it, with no GPU: handles are numbers, `live`
    maps each stream, buffer, graph and graph instance not yet released to its kind, and a capture that an enqueue
    broke (`break_capture`) ends with cudaErrorStreamCaptureInvalidated and no graph, as CUDA's does."""

    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self):
        self.live, self.capturing, self.last_error, self._next = {}, {}, 0, 0

    def _make(self, kind):
        self._next += 256  # as aligned as cudaMalloc's
        self.live[self._next] = kind
        return 0, self._next

    def _release(self, handle, kind):
        if self.live.get(handle) != kind:
            return (400,)  # cudaErrorInvalidResourceHandle
        del self.live[handle]
        return (0,)

    def break_capture(self, stream):
        if stream in self.capturing:
            self.capturing[stream] = "invalidated"

    def cudaStreamCreate(self):
        return self._make("stream")

    def cudaStreamDestroy(self, stream):
        return self._release(stream, "stream")

    def cudaMalloc(self, nbytes):
        return self._make("buffer")

    def cudaFree(self, ptr):
        return self._release(ptr, "buffer")

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing[stream] = "valid"
        return (0,)

    def cudaStreamEndCapture(self, stream):
        if self.capturing.pop(stream) == "invalidated":
            self.last_error = CAPTURE_INVALIDATED
            return CAPTURE_INVALIDATED, None
        return self._make("graph")

    def cudaGraphInstantiate(self, graph, flags):
        return self._make("graph instance")

    def cudaGraphLaunch(self, graph_exec, stream):
        return (0 if self.live.get(graph_exec) == "graph instance" else 400,)

    def cudaGraphExecDestroy(self, graph_exec):
        return self._release(graph_exec, "graph instance")

    def cudaGraphDestroy(self, graph):
        return self._release(graph, "graph")

    def cudaGetLastError(self):
        error, self.last_error = self.last_error, 0
        return (error,)

    def cudaGetErrorString(self, error):
        names = {CAPTURE_INVALIDATED: b"operation failed due to a previous error during capture"}
        return 0, names.get(error, b"invalid resource handle")


class StandinEngine:
    """A deserialized TensorRT engine (ICudaEngine) for `spec`, with one optimization profile: batches
    spec.min_batch..spec.max_batch. Its contexts run nothing; `fail_enqueue` makes execute_async_v3 fail, and
    `fail_capture` makes it fail on a stream being captured (either breaks the capture, as a failed launch does)."""

    def __init__(self, spec, cudart):
        self.spec, self.cudart, self.fail_enqueue, self.fail_capture = spec, cudart, False, False
        self.num_io_tensors = 2

    def get_tensor_name(self, index):
        return (self.spec.input.name, self.spec.output.name)[index]

    def get_tensor_profile_shape(self, name, profile_index):
        size = self.spec.image_size
        return [(b, 3, size, size) for b in (self.spec.min_batch, self.spec.max_batch, self.spec.max_batch)]

    def create_execution_context(self):
        return StandinContext(self)


class StandinContext:
    """An IExecutionContext: set_input_shape and set_tensor_address answer as TensorRT's do (False for a shape
    outside the profile, an unknown tensor or a misaligned pointer); `runs` records each enqueue's addresses and
    shape."""

    active_optimization_profile = 0

    def __init__(self, engine):
        self.engine, self.addresses, self.shape, self.runs = engine, {}, None, []

    def set_input_shape(self, name, shape):
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        ok = name == self.engine.spec.input.name and all(lo <= s <= hi for s, lo, hi in zip(shape, low, high))
        self.shape = tuple(shape) if ok else self.shape
        return ok

    def set_tensor_address(self, name, ptr):
        if name not in (self.engine.spec.input.name, self.engine.spec.output.name) or ptr % 256:
            return False
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        if self.engine.fail_enqueue or self.engine.fail_capture and stream in self.engine.cudart.capturing:
            self.engine.cudart.break_capture(stream)
            return False
        self.runs.append((dict(self.addresses), self.shape, stream))
        return True
