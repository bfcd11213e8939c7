"""Which kind of model file a path is."""

from __future__ import annotations

from tpdeploy.errors import UserError

ONNX, ENGINE = "onnx", "engine"
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


def file_format(path: str) -> str:
    """ONNX for .onnx, ENGINE for a TensorRT engine (.plan, .engine, .trt)."""
    if path.endswith(".onnx"):
        return ONNX
    if path.endswith(ENGINE_SUFFIXES):
        return ENGINE
    raise UserError(
        f"cannot tell the format of {path}: expected .onnx or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})"
    )
