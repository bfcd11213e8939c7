"""onnxruntime backend: stock onnxruntime runs TokenPool through its model-local ONNX function."""
from __future__ import annotations

import os

import numpy as np

from tpdeploy.backends.base import Runner
from tpdeploy.errors import TpdeployError, one_line

_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort
        if not os.path.isfile(path):
            raise TpdeployError(f"ONNX model not found: {path}")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise TpdeployError("onnxruntime has no CUDA provider here: pip install onnxruntime-gpu "
                                    "(and a CUDA-capable GPU)")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several types for a bad file
            raise TpdeployError(f"cannot load ONNX model {path}: {one_line(e)}") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        if inp.type not in _TYPES:
            raise TpdeployError(f"{path}: input {inp.name} has type {inp.type}; expected float or float16 images")
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = np.dtype(_TYPES[inp.type])
        if isinstance(inp.shape[0], int):
            self.min_batch = self.max_batch = inp.shape[0]
        if isinstance(inp.shape[-1], int):
            self.image_size = inp.shape[-1]
        self.backend = f"onnxruntime-{device}"
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def _infer(self, images):
        return self.session.run([self.output_name], {self.input_name: images})[0]
