"""onnxruntime backend: stock onnxruntime runs TokenPool through its model-local ONNX function."""

from __future__ import annotations

from tpdeploy.artifacts.onnx_file import OnnxFile
from tpdeploy.errors import DeviceError, UserError, check_int, one_line
from tpdeploy.optional import lazy_import
from tpdeploy.runtime.base import Backend, Capabilities, Runner


class OnnxRuntimeRunner(Runner):
    backend = Backend.ORT

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None, spinning: bool = True):
        """`spinning`: whether idle intra-op threads busy-wait for the next run (onnxruntime's default: the lowest
        latency for a session alone). Sessions that take turns on the same cores, as `bench --baseline` times
        them, must not spin: each one's idle threads would steal the cores the other one is running on."""
        ort = lazy_import("onnxruntime", "running ONNX files")
        model = OnnxFile.open(path, load_external_data=False)
        self.spec, self.recipe = model.spec, model.recipe
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(
                    "onnxruntime has no CUDA provider here: pip install 'tpdeploy[gpu]' (onnxruntime-gpu "
                    "alone, without onnxruntime) on a machine with an NVIDIA GPU"
                )
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = check_int("threads", threads, minimum=1)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as e:  # onnxruntime raises several types for a bad file
            raise UserError(f"cannot load ONNX model {path} in onnxruntime: {one_line(e)}") from None
        self.device = device
        self.capabilities = Capabilities(on_gpu=device == "cuda", thread_spinning=spinning)

    def _infer(self, images):
        try:
            return self.session.run([self.spec.output.name], {self.spec.input.name: images})[0]
        except Exception as e:  # the input was validated: a failure here is the engine's
            raise DeviceError(f"onnxruntime failed to run the model: {one_line(e)}") from None
