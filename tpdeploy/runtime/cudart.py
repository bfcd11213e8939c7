"""The little of the CUDA runtime the TensorRT backend needs, through cuda-bindings (no PyTorch, no pycuda)."""

from __future__ import annotations

from tpdeploy.errors import DeviceError
from tpdeploy.optional import lazy_import


def cudart():
    return lazy_import("cuda.bindings.runtime", "the TensorRT backend")


def check(result):
    """cuda-bindings returns (error, *values): raise on error, return the values."""
    err, *values = result
    if int(err) != 0:
        name = cudart().cudaGetErrorString(err)[1].decode()
        raise DeviceError(f"CUDA error: {name} (check the GPU and driver with nvidia-smi)")
    return values[0] if len(values) == 1 else tuple(values)


def device_properties(device: int = 0) -> tuple[str, str]:
    """(name, compute capability as '90')."""
    rt = cudart()
    count = check(rt.cudaGetDeviceCount())
    if count == 0:
        raise DeviceError("no CUDA GPU found (check the GPU and driver with nvidia-smi)")
    props = check(rt.cudaGetDeviceProperties(device))
    return props.name.decode().rstrip("\x00"), f"{props.major}{props.minor}"


class DeviceBuffer:
    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self.ptr = check(cudart().cudaMalloc(nbytes))

    def free(self):
        if self.ptr:
            check(cudart().cudaFree(self.ptr))
            self.ptr = 0


class CudaGraph:
    """A captured graph and its executable instance (Stream.capture); `destroy` releases both."""

    def __init__(self, graph, graph_exec):
        self.graph, self.graph_exec = graph, graph_exec

    def destroy(self) -> None:
        rt = cudart()
        if self.graph_exec is not None:
            check(rt.cudaGraphExecDestroy(self.graph_exec))
            self.graph_exec = None
        if self.graph is not None:
            check(rt.cudaGraphDestroy(self.graph))
            self.graph = None


class Stream:
    def __init__(self):
        self.handle = check(cudart().cudaStreamCreate())

    def upload(self, buffer: DeviceBuffer, array) -> None:
        rt = cudart()
        check(
            rt.cudaMemcpyAsync(
                buffer.ptr, array.ctypes.data, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle
            )
        )

    def download(self, array, buffer: DeviceBuffer) -> None:
        rt = cudart()
        check(
            rt.cudaMemcpyAsync(
                array.ctypes.data, buffer.ptr, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle
            )
        )

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle))

    def capture(self, enqueue) -> CudaGraph:
        """A CUDA graph of what `enqueue()` puts on this stream, instantiated for replay with `launch_graph`.
        If `enqueue` raises, its error is the one raised: the capture is ended and cleaned up quietly (ending a
        capture that an enqueue broke fails too, and that error would hide the cause)."""
        rt = cudart()
        check(rt.cudaStreamBeginCapture(self.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        try:
            enqueue()
        except BaseException:
            err, graph = rt.cudaStreamEndCapture(self.handle)
            if int(err) == 0:
                rt.cudaGraphDestroy(graph)
            rt.cudaGetLastError()  # else the next caller that asks for the last error would get the capture's
            raise
        graph = check(rt.cudaStreamEndCapture(self.handle))
        try:
            return CudaGraph(graph, check(rt.cudaGraphInstantiate(graph, 0)))
        except BaseException:
            rt.cudaGraphDestroy(graph)
            raise

    def launch_graph(self, graph: CudaGraph) -> None:
        check(cudart().cudaGraphLaunch(graph.graph_exec, self.handle))

    def destroy(self):
        check(cudart().cudaStreamDestroy(self.handle))
