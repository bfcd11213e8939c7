"""TensorRT backend: a deserialized engine, an execution context and a stream per thread (no PyTorch).

The engine is trusted through its sidecar (`tpdeploy.artifacts.engine_file`): the engine's hash, the
TensorRT version, GPU and plugin library it was built with, and its input/output contract.
"""

from __future__ import annotations

import threading

import numpy as np

from tpdeploy.artifacts.engine_file import check_compatible, read_sidecar
from tpdeploy.artifacts.files import sha256
from tpdeploy.artifacts.onnx_file import ModelSpec
from tpdeploy.artifacts.plugins import PLUGINS
from tpdeploy.artifacts.recipe import Recipe
from tpdeploy.errors import DeviceError, InvalidArgumentError, UserError
from tpdeploy.optional import lazy_import
from tpdeploy.runtime.base import Backend, Capabilities, Runner
from tpdeploy.runtime.cudart import CudaGraph, DeviceBuffer, Stream, cudart, device_properties
from tpdeploy.tokenpool.libraries import find_plugin

MIN_TENSORRT = (10, 7)  # IPluginV3 preferred over a model-local function of the same name: TensorRT >= 10.7
_init_lock = threading.Lock()
_state: dict = {}


def check_tensorrt_version(version: str) -> None:
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        raise UserError(f"cannot read the TensorRT version {version!r}") from None
    if major_minor < MIN_TENSORRT:
        raise UserError(
            f"TensorRT {version} is too old: tpdeploy needs TensorRT >= "
            f"{'.'.join(map(str, MIN_TENSORRT))} (where a registered plugin wins over the TokenPool "
            f"ONNX function): pip install 'tpdeploy[tensorrt]'"
        )


def import_tensorrt():
    """The tensorrt module, checked (>= 10.7) and with TensorRT's own plugins registered, once per process
    (the inlined function's ScatterElements reductions need libnvinfer_plugin's scatter plugin)."""
    trt = lazy_import("tensorrt", "building and running TensorRT engines")
    if not hasattr(trt, "Builder"):  # PyPI's stub package without NVIDIA's index
        raise UserError(
            "TensorRT is not installed (only PyPI's stub package is): pip install 'tpdeploy[tensorrt]' "
            "on a machine with an NVIDIA GPU and driver"
        )
    with _init_lock:
        if "logger" not in _state:
            check_tensorrt_version(trt.__version__)
            _state["logger"] = trt.Logger(trt.Logger.WARNING)
            trt.init_libnvinfer_plugins(_state["logger"], "")
    return trt


def logger():
    import_tensorrt()
    return _state["logger"]


def set_input_shape(engine, context, name: str, shape: tuple[int, ...]) -> None:
    """context.set_input_shape, checked: TensorRT answers False, and runs nothing, for a shape outside the
    engine's optimization profile (or one it refuses for another reason, in its log)."""
    if context.set_input_shape(name, shape):
        return
    low, _, high = (tuple(dims) for dims in engine.get_tensor_profile_shape(name, context.active_optimization_profile))
    if len(shape) != len(low) or not all(lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
        raise InvalidArgumentError(
            f"input {name!r} of shape {list(shape)} is outside the engine's profile {list(low)} to {list(high)}"
        )
    raise DeviceError(
        f"TensorRT refused the input shape {list(shape)} for {name!r} within its profile {list(low)} to "
        f"{list(high)} (see TensorRT's messages above)"
    )


def set_tensor_address(context, name: str, ptr: int) -> None:
    """context.set_tensor_address, checked: False for an unknown tensor or a misaligned pointer."""
    if not context.set_tensor_address(name, ptr):
        raise InvalidArgumentError(f"TensorRT refused the device pointer {ptr:#x} for {name!r} (misaligned?)")


def strongly_typed_flags(trt) -> int:
    """create_network flags: TensorRT >= 11 networks are always strongly typed (the flag is gone)."""
    if int(trt.__version__.split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


class _Worker:
    """One thread's execution context, stream and device buffers sized for the profile's max batch."""

    def __init__(self, runner: TensorRTRunner):
        self.context = runner.engine.create_execution_context()
        if self.context is None:
            raise DeviceError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = Stream()
        self.input = DeviceBuffer(runner.max_batch * runner.sample_bytes)
        self.output = DeviceBuffer(runner.max_batch * runner.num_classes * runner.input_dtype.itemsize)
        self.own_addresses(runner)
        self.graphs: dict[int, CudaGraph] = {}  # by batch size (timed_call)

    def own_addresses(self, runner: TensorRTRunner) -> None:
        set_tensor_address(self.context, runner.spec.input.name, self.input.ptr)
        set_tensor_address(self.context, runner.spec.output.name, self.output.ptr)

    def enqueue(self, runner: TensorRTRunner, batch: int, stream: int | None = None) -> None:
        shape = (batch, 3, runner.image_size, runner.image_size)
        set_input_shape(runner.engine, self.context, runner.spec.input.name, shape)
        if not self.context.execute_async_v3(self.stream.handle if stream is None else stream):
            raise DeviceError("TensorRT failed to enqueue the engine (see TensorRT's messages above)")

    def close(self):
        """Releases the captured graphs (instances and graphs), the buffers and the stream."""
        for graph in self.graphs.values():
            graph.destroy()
        self.graphs.clear()
        for buf in (self.input, self.output):
            buf.free()
        self.stream.destroy()


class TensorRTRunner(Runner):
    backend = Backend.TRT
    device = "cuda"
    capabilities = Capabilities(on_gpu=True, device_pointers=True, cuda_graphs=True)

    def __init__(self, path: str, plugin: str | None = None):
        sidecar = read_sidecar(path)
        trt = import_tensorrt()
        cudart()  # fail early, with what to install, when cuda-bindings is missing
        library = find_plugin(plugin, beside=path) if sidecar.plugin_sha256 else None
        _, cc = device_properties()
        check_compatible(sidecar, trt.__version__, cc, library and sha256(library))
        if library:
            PLUGINS.load(library, trt.get_plugin_registry().load_library)
        with open(path, "rb") as f:
            data = f.read()
        self._trt_runtime = trt.Runtime(logger())
        engine = self._trt_runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise DeviceError(f"TensorRT cannot deserialize {path} (see its messages above)")
        self._serve(engine, sidecar.spec, sidecar.recipe, path)

    def _serve(self, engine, spec: ModelSpec, recipe: Recipe | None, path: str) -> None:
        """Serves a deserialized engine whose tensors must be those its sidecar describes (`spec`): the part of
        loading that calls no TensorRT function of the module."""
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if sorted(names) != sorted([spec.input.name, spec.output.name]):
            raise UserError(f"{path}: the engine's tensors {names} are not the ones its sidecar describes")
        self.engine, self.spec, self.recipe = engine, spec, recipe
        self.sample_bytes = 3 * self.image_size**2 * self.input_dtype.itemsize
        self._local = threading.local()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def _worker(self) -> _Worker:
        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = self._local.worker = _Worker(self)
            with self._lock:
                self._workers.append(worker)
        return worker

    def _infer(self, images):
        w, batch = self._worker(), images.shape[0]
        out = np.empty((batch, self.num_classes), self.input_dtype)
        w.stream.upload(w.input, images)
        w.enqueue(self, batch)
        w.stream.download(out, w.output)
        w.stream.synchronize()
        return out

    def infer_device(self, input_ptr: int, output_ptr: int, batch: int, stream: int) -> None:
        """Enqueue on device pointers and a caller's stream (asynchronous; the caller synchronizes)."""
        if not self.min_batch <= batch <= self.max_batch:
            raise InvalidArgumentError(
                f"batch {batch} is outside this engine's profile [{self.min_batch}, {self.max_batch}]"
            )
        w = self._worker()
        try:
            set_tensor_address(w.context, self.spec.input.name, input_ptr)
            set_tensor_address(w.context, self.spec.output.name, output_ptr)
            w.enqueue(self, batch, stream)
        finally:  # the thread's next inference uses its own buffers, whatever happened here
            w.own_addresses(self)

    def timed_call(self, images: np.ndarray, cuda_graph: bool = True, include_transfers: bool = False):
        """A callable for `bench`: one inference, synchronized. Without transfers the images stay on the device
        (as trtexec reports GPU compute); with a CUDA graph the enqueue is one graph launch."""
        images = self.check_input(images)
        w, batch = self._worker(), images.shape[0]
        out = np.empty((batch, self.num_classes), self.input_dtype)
        w.stream.upload(w.input, images)
        w.enqueue(self, batch)  # TensorRT needs one run with these shapes before a capture
        w.stream.synchronize()

        def launch():
            w.enqueue(self, batch)

        if cuda_graph:
            if batch not in w.graphs:
                w.graphs[batch] = w.stream.capture(launch)

            def launch():
                w.stream.launch_graph(w.graphs[batch])

        def call():
            if include_transfers:
                w.stream.upload(w.input, images)
            launch()
            if include_transfers:
                w.stream.download(out, w.output)
            w.stream.synchronize()

        return call

    def close(self):
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()
