"""The Python API for services: load a model once, `infer` many times, from many threads.

    from tpdeploy import runtime
    model = runtime.load("deit_small_tp.plan")        # or an .onnx file
    logits = model.infer(images)                      # numpy [B, 3, 224, 224] -> [B, 1000]

Engines run on TensorRT (with the TokenPool plugin found automatically), ONNX files on onnxruntime;
neither path imports PyTorch. `backend="torch"` rebuilds the PyTorch model an ONNX file came from.
"""
from __future__ import annotations

import os

from tpdeploy.backends.base import Runner
from tpdeploy.errors import TpdeployError

BACKENDS = ("ort", "trt", "torch")
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


def default_backend(path: str) -> str:
    if path.endswith(".onnx"):
        return "ort"
    if path.endswith(ENGINE_SUFFIXES):
        return "trt"
    raise TpdeployError(f"cannot tell the format of {path}: expected .onnx or a TensorRT engine "
                        f"({', '.join(ENGINE_SUFFIXES)})")


def load(path: str, backend: str | None = None, device: str = "cpu", plugin: str | None = None,
         threads: int | None = None) -> Runner:
    """A runner for `path`: backend 'ort' (ONNX on onnxruntime), 'trt' (TensorRT engine) or 'torch'."""
    if not os.path.isfile(path):
        raise TpdeployError(f"model file not found: {path}")
    backend = backend or default_backend(path)
    if backend == "ort":
        from tpdeploy.backends.onnxrt import OnnxRuntimeRunner
        return OnnxRuntimeRunner(path, device=device, threads=threads)
    if backend == "trt":
        from tpdeploy.backends.trt import TensorRTRunner
        return TensorRTRunner(path, plugin=plugin)
    if backend == "torch":
        if not path.endswith(".onnx"):
            raise TpdeployError("the torch backend rebuilds the model from a tpdeploy ONNX file; give the .onnx")
        from tpdeploy.backends.pytorch import TorchRunner
        if threads:
            import torch
            torch.set_num_threads(threads)
        return TorchRunner.from_onnx(path, device=device)
    raise TpdeployError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
