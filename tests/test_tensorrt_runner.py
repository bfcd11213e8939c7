"""The TensorRT runner's own logic, on no GPU and without TensorRT: tests/standin.py stands in for cuda.bindings.runtime
and for an engine and its contexts (the runner on real ones: test_engine.py's `trt` tests). A shape TensorRT refuses
is an error that says why; an enqueue that fails while a CUDA graph is captured is the error raised, not the capture's;
the thread's buffers are its own again after an inference on a caller's pointers; close releases every captured
graph (instance and graph), buffer and stream."""

import threading

import numpy as np
import pytest
from standin import StandinCudart, StandinEngine

from tpdeploy.artifacts.onnx_file import ModelSpec, TensorSpec
from tpdeploy.errors import DeviceError, InvalidArgumentError
from tpdeploy.runtime import cudart
from tpdeploy.runtime.tensorrt import TensorRTRunner, set_input_shape


def spec(max_batch):
    images, logits = TensorSpec("images", "float32", (None, 3, 32, 32)), TensorSpec("logits", "float32", (None, 10))
    return ModelSpec(images, logits, min_batch=1, max_batch=max_batch)


@pytest.fixture
def cuda(monkeypatch):
    runtime = StandinCudart()
    monkeypatch.setattr(cudart, "cudart", lambda: runtime)
    return runtime


def runner_for(cuda, engine_spec, sidecar_spec=None):
    """A TensorRTRunner serving a stand-in engine of `engine_spec` whose sidecar says `sidecar_spec`."""
    runner = TensorRTRunner.__new__(TensorRTRunner)
    runner._serve(StandinEngine(engine_spec, cuda), sidecar_spec or engine_spec, None, "m.plan")
    return runner


def images(batch):
    return np.random.default_rng(batch).normal(size=(batch, 3, 32, 32)).astype(np.float32)


def test_a_shape_outside_the_profile_is_refused_with_the_profile(cuda):
    engine = StandinEngine(spec(4), cuda)
    context = engine.create_execution_context()
    set_input_shape(engine, context, "images", (4, 3, 32, 32))
    assert context.shape == (4, 3, 32, 32)
    with pytest.raises(
        InvalidArgumentError, match=r"outside the engine's profile \[1, 3, 32, 32\] to \[4, 3, 32, 32\]"
    ):
        set_input_shape(engine, context, "images", (5, 3, 32, 32))
    with pytest.raises(DeviceError, match="TensorRT refused the input shape .* within its profile"):
        set_input_shape(engine, context, "not an input", (2, 3, 32, 32))
    # a sidecar that promises more than its engine's profile: refused before anything runs, not run on old shapes
    runner = runner_for(cuda, spec(4), sidecar_spec=spec(8))
    with pytest.raises(InvalidArgumentError, match="outside the engine's profile"):
        runner.infer(images(6))
    assert runner._worker().context.runs == []
    runner.close()


def test_a_failed_enqueue_while_capturing_is_the_error_raised(cuda):
    stream = cudart.Stream()

    def enqueue():  # what a failing execute_async_v3 does: the capture is broken, then the runner raises
        cuda.break_capture(stream.handle)
        raise DeviceError("TensorRT failed to enqueue the engine")

    with pytest.raises(DeviceError, match="TensorRT failed to enqueue the engine"):
        stream.capture(enqueue)
    assert cuda.capturing == {}  # the capture was ended
    assert cuda.last_error == 0  # and its error cleared, so that no later call reports it
    assert list(cuda.live.values()) == ["stream"]  # no graph left behind
    stream.destroy()

    runner = runner_for(cuda, spec(4))
    runner.engine.fail_capture = True  # the run before the capture works, the one captured fails
    with pytest.raises(DeviceError, match="TensorRT failed to enqueue the engine"):
        runner.timed_call(images(3))
    assert len(runner._worker().context.runs) == 1 and cuda.capturing == {} and cuda.last_error == 0
    runner.close()
    assert cuda.live == {}


def test_the_thread_uses_its_own_buffers_after_an_inference_on_a_callers_pointers(cuda):
    runner = runner_for(cuda, spec(4))
    _, caller_in = cuda.cudaMalloc(1)
    _, caller_out = cuda.cudaMalloc(1)
    runner.infer_device(caller_in, caller_out, 2, stream=7)
    worker = runner._worker()
    own = {"images": worker.input.ptr, "logits": worker.output.ptr}
    assert worker.context.runs[-1] == ({"images": caller_in, "logits": caller_out}, (2, 3, 32, 32), 7)
    with pytest.raises(InvalidArgumentError, match="refused the device pointer"):
        runner.infer_device(caller_in + 4, caller_out, 2, stream=7)  # misaligned
    runner.engine.fail_enqueue = True
    with pytest.raises(DeviceError, match="failed to enqueue"):
        runner.infer_device(caller_in, caller_out, 2, stream=7)
    runner.engine.fail_enqueue = False
    runner.infer(images(3))
    assert worker.context.runs[-1][:2] == (own, (3, 3, 32, 32))
    runner.close()


def test_close_releases_every_graph_buffer_and_stream(cuda):
    runner = runner_for(cuda, spec(4))
    for batch in (1, 2, 2):  # two graphs, the second replayed
        runner.timed_call(images(batch))()
    other = threading.Thread(target=lambda: runner.timed_call(images(4))())  # a second thread's worker and graph
    other.start()
    other.join()
    kinds = sorted(cuda.live.values())
    assert kinds.count("graph") == kinds.count("graph instance") == 3
    assert kinds.count("stream") == 2 and kinds.count("buffer") == 4
    runner.close()
    assert cuda.live == {}
    runner.close()  # a second close has nothing left to release
