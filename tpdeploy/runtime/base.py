"""The interface every backend implements: load once, `infer` many times, from many threads.

Polygraphy's runner template: `infer` validates the images against the model's input contract (`spec`),
then calls the backend's `_infer`.
"""

from __future__ import annotations

import abc
import enum
import functools
from dataclasses import dataclass

import numpy as np

from tpdeploy.artifacts.onnx_file import ModelSpec
from tpdeploy.artifacts.recipe import DataConfig, Recipe
from tpdeploy.errors import InvalidArgumentError


class Backend(enum.StrEnum):
    """The backends, by the short names the command line takes (`ort:x.onnx`, `--backend trt`)."""

    ORT = "ort"
    TRT = "trt"
    TORCH = "torch"

    @property
    def title(self) -> str:
        return {"ort": "onnxruntime", "trt": "tensorrt", "torch": "torch"}[self.value]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond `infer`, for callers to ask instead of testing types or names."""

    on_gpu: bool = False  # runs on a GPU (Triton reports GPU metrics)
    device_pointers: bool = False  # `infer_device`: device pointers and the caller's stream
    cuda_graphs: bool = False  # `timed_call(cuda_graph=True)` replays a CUDA graph
    thread_spinning: bool = False  # idle intra-op threads busy-wait unless loaded with spinning=False


class Runner(abc.ABC):
    """A loaded model mapping images [B, 3, S, S] to logits [B, classes]."""

    backend: Backend
    device: str = "cpu"
    capabilities: Capabilities = Capabilities()
    spec: ModelSpec
    recipe: Recipe | None = None  # None for a file tpdeploy did not export

    @property
    def label(self) -> str:
        """The backend and device, as reports name them: onnxruntime-cpu, tensorrt-cuda, torch-cpu."""
        return f"{self.backend.title}-{self.device}"

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.spec.input.dtype)

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def min_batch(self) -> int:
        return self.spec.min_batch

    @property
    def max_batch(self) -> int | None:
        return self.spec.max_batch

    @property
    def data_config(self) -> DataConfig:
        """How images are preprocessed for this model: the recorded one, else timm's default at its size."""
        return self.recipe.data_config if self.recipe else DataConfig(input_size=self.image_size)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Logits for `images`; float inputs are cast to the model's input dtype. Thread-safe."""
        return self._infer(self.check_input(images))

    def run_any(self, images: np.ndarray) -> np.ndarray:
        """float32 logits for any number of images: in chunks of the largest batch the model takes, a chunk below
        its smallest (a fixed-batch file or engine) padded with zeros and cut back."""
        n = images.shape[0]
        if n >= self.min_batch and (self.max_batch is None or n <= self.max_batch):
            return np.asarray(self.infer(images), dtype=np.float32)
        step = self.max_batch or n
        outs = []
        for i in range(0, n, step):
            chunk = images[i : i + step]
            k = chunk.shape[0]
            if k < self.min_batch:
                chunk = np.concatenate([chunk, np.zeros((self.min_batch - k,) + chunk.shape[1:], chunk.dtype)])
            outs.append(np.asarray(self.infer(chunk), dtype=np.float32)[:k])
        return np.concatenate(outs)

    def timed_call(self, images: np.ndarray, cuda_graph: bool = True, include_transfers: bool = False):
        """A callable for `bench`: one synchronous inference of `images` (checked once, here). The TensorRT backend
        keeps the images on the device and, with `cuda_graph`, replays a CUDA graph (see its docstring)."""
        return functools.partial(self._infer, self.check_input(images))

    def check_input(self, images) -> np.ndarray:
        images = np.asarray(images)
        size = self.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
            raise InvalidArgumentError(f"images must have shape [B, 3, {size}, {size}], got {list(images.shape)}")
        if images.dtype.kind != "f":
            raise InvalidArgumentError(f"images must be float32 or float16, got {images.dtype}")
        b = images.shape[0]
        if b < self.min_batch or (self.max_batch is not None and b > self.max_batch):
            raise InvalidArgumentError(
                f"batch {b} is outside this model's range [{self.min_batch}, {self.max_batch or 'any'}]"
            )
        with np.errstate(over="ignore"):  # an overflow is reported below, in one line
            cast = np.ascontiguousarray(images, dtype=self.input_dtype)
        if cast.dtype != images.dtype and not np.isfinite(cast).all() and np.isfinite(images).all():
            largest = float(np.abs(images).max())
            raise InvalidArgumentError(
                f"images overflow the model's {self.input_dtype} input: values up to {largest:.3g}, "
                f"{self.input_dtype} holds at most {float(np.finfo(self.input_dtype).max):.5g}"
            )
        return cast

    @abc.abstractmethod
    def _infer(self, images: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        """Release what the backend holds (sessions, device memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        return f"{self.label}: {self.spec.describe()}"
