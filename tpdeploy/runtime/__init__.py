"""The Python API for services: load a model once, `infer` many times, from many threads.

    from tpdeploy import runtime
    model = runtime.load("deit_small_tp.plan")        # or an .onnx file
    logits = model.infer(images)                      # numpy [B, 3, 224, 224] -> [B, 1000]
    model.spec, model.recipe, model.data_config       # what the file says it is

Engines run on TensorRT (with the TokenPool plugin found automatically), ONNX files on onnxruntime;
neither path imports PyTorch. `backend="torch"` rebuilds the PyTorch model an ONNX file was exported from
(an authoring tool; it needs `tpdeploy[export]`, and the checkpoint for a model exported from one).
Invalid arguments raise `tpdeploy.errors.InvalidArgumentError`, bad files `UserError`, GPU or engine
failures `DeviceError`.
"""

from __future__ import annotations

import os

from tpdeploy.artifacts.formats import ENGINE, ONNX, file_format
from tpdeploy.errors import InvalidArgumentError, UserError, check_choice, check_int
from tpdeploy.optional import lazy_import
from tpdeploy.runtime.base import Backend, Runner

BACKENDS = tuple(b.value for b in Backend)
DEVICES = ("cpu", "cuda")


def default_backend(path: str) -> Backend:
    return {ONNX: Backend.ORT, ENGINE: Backend.TRT}[file_format(path)]


def split_reference(reference: str) -> tuple[Backend | None, str]:
    """A model reference as the command line takes it: a path, optionally prefixed by its backend
    (`ort:x.onnx`, `trt:x.plan`, `torch:x.onnx`) -> (backend or None, path)."""
    prefix, _, rest = reference.partition(":")
    return (Backend(prefix), rest) if rest and prefix in BACKENDS else (None, reference)


def load(
    path: str,
    backend: str | None = None,
    device: str = "cpu",
    plugin: str | None = None,
    threads: int | None = None,
    checkpoint: str | None = None,
    spinning: bool = True,
) -> Runner:
    """A runner for `path`: backend 'ort' (ONNX on onnxruntime), 'trt' (TensorRT engine) or 'torch'.
    `spinning=False`: onnxruntime's idle threads sleep instead of busy-waiting (for models that take turns on
    the same cores; see `OnnxRuntimeRunner`)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"path must be a file path, got {path!r}")
    path = os.fspath(path)
    backend = Backend(check_choice("backend", backend or default_backend(path), BACKENDS))
    check_choice("device", device, DEVICES)
    if threads is not None:
        check_int("threads", threads, minimum=1)
    if not isinstance(spinning, bool):
        raise InvalidArgumentError(f"spinning must be True or False, got {spinning!r}")
    if not os.path.isfile(path):
        raise UserError(f"model file not found: {path}")
    if backend != "trt" and file_format(path) != ONNX:
        raise UserError(f"the {backend} backend runs ONNX files; {path} is a TensorRT engine (use backend 'trt')")
    if backend == "ort":
        from tpdeploy.runtime.onnxrt import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, device=device, threads=threads, spinning=spinning)
    if backend == "trt":
        if file_format(path) != ENGINE:
            raise UserError(f"the trt backend runs engines; build one from {path} with `tpdeploy build-engine`")
        from tpdeploy.runtime.tensorrt import TensorRTRunner

        return TensorRTRunner(path, plugin=plugin)
    pytorch = lazy_import("tpdeploy.runtime.pytorch", "the torch backend")
    if threads:
        lazy_import("torch", "the torch backend").set_num_threads(threads)
    return pytorch.TorchRunner.from_onnx(path, device=device, checkpoint=checkpoint)
