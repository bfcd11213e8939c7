"""TensorRT backend: a deserialized engine, an execution context and a stream per thread (no PyTorch)."""
from __future__ import annotations

import os
import threading

import numpy as np

from tpdeploy import engine as eng
from tpdeploy.backends.base import Runner
from tpdeploy.backends.cuda import DeviceBuffer, Stream, check, cudart, device_properties
from tpdeploy.errors import TpdeployError


class _Worker:
    """One thread's execution context, stream and device buffers sized for the profile's max batch."""

    def __init__(self, runner: "TensorRTRunner"):
        self.context = runner.engine.create_execution_context()
        if self.context is None:
            raise TpdeployError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = Stream()
        self.input = DeviceBuffer(runner.max_batch * runner.sample_bytes)
        self.output = DeviceBuffer(runner.max_batch * runner.num_classes * runner.output_dtype.itemsize)
        self.context.set_tensor_address(runner.input_name, self.input.ptr)
        self.context.set_tensor_address(runner.output_name, self.output.ptr)
        self.graphs: dict[int, object] = {}

    def enqueue(self, runner: "TensorRTRunner", batch: int) -> None:
        self.context.set_input_shape(runner.input_name, (batch, 3, runner.image_size, runner.image_size))
        if not self.context.execute_async_v3(self.stream.handle):
            raise TpdeployError("TensorRT failed to enqueue the engine")

    def close(self):
        for buf in (self.input, self.output):
            buf.free()
        self.stream.destroy()


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: str, plugin: str | None = None):
        trt = eng.import_tensorrt()
        cudart()  # fail early, with what to install, when cuda-bindings is missing
        if not os.path.isfile(path):
            raise TpdeployError(f"engine not found: {path}")
        sidecar = eng.read_sidecar(path)
        plugin = eng.runtime_plugin(plugin, sidecar)
        if sidecar:
            _, cc = device_properties()
            eng.check_compatible(sidecar, trt.__version__, cc, plugin and eng.sha256(plugin))
        if plugin and not trt.get_plugin_registry().load_library(plugin):
            raise TpdeployError(f"TensorRT could not load the plugin library {plugin}")
        with open(path, "rb") as f:
            data = f.read()
        self._trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._trt_runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise TpdeployError(f"cannot load engine {path}: corrupt, or built for another TensorRT/GPU")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise TpdeployError(f"{path}: expected one input and one output, got {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch, self.image_size = lo[0], hi[0], hi[3]
        self.num_classes = self.engine.get_tensor_shape(self.output_name)[-1]
        self.sample_bytes = 3 * self.image_size ** 2 * self.input_dtype.itemsize
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
        out = np.empty((batch, self.num_classes), self.output_dtype)
        w.stream.upload(w.input, images)
        w.enqueue(self, batch)
        w.stream.download(out, w.output)
        w.stream.synchronize()
        return out

    def infer_device(self, input_ptr: int, output_ptr: int, batch: int, stream: int) -> None:
        """Enqueue on device pointers and a caller's stream (asynchronous; the caller synchronizes)."""
        if not self.min_batch <= batch <= self.max_batch:
            raise TpdeployError(f"batch {batch} is outside this engine's profile [{self.min_batch}, {self.max_batch}]")
        w = self._worker()
        w.context.set_tensor_address(self.input_name, input_ptr)
        w.context.set_tensor_address(self.output_name, output_ptr)
        w.context.set_input_shape(self.input_name, (batch, 3, self.image_size, self.image_size))
        ok = w.context.execute_async_v3(stream)
        w.context.set_tensor_address(self.input_name, w.input.ptr)
        w.context.set_tensor_address(self.output_name, w.output.ptr)
        if not ok:
            raise TpdeployError("TensorRT failed to enqueue the engine")

    def timed_call(self, images: np.ndarray, cuda_graph: bool = True, include_transfers: bool = False):
        """A callable for `bench`: one inference, synchronized. Without transfers the images stay on the device
        (as trtexec reports GPU compute); with a CUDA graph the enqueue is one graph launch."""
        images = self.check_input(images)
        w, batch = self._worker(), images.shape[0]
        out = np.empty((batch, self.num_classes), self.output_dtype)
        w.stream.upload(w.input, images)
        w.enqueue(self, batch)  # TensorRT needs one run with these shapes before a capture
        w.stream.synchronize()
        launch = lambda: w.enqueue(self, batch)  # noqa: E731
        if cuda_graph:
            if batch not in w.graphs:
                w.graphs[batch] = w.stream.capture(launch)
            launch = lambda: w.stream.launch_graph(w.graphs[batch])  # noqa: E731

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
            for worker in self._workers:
                for graph in worker.graphs.values():
                    check(cudart().cudaGraphExecDestroy(graph))
                worker.close()
            self._workers.clear()
