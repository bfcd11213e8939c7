"""The interface every backend implements: load once, `infer` many times, from many threads."""
from __future__ import annotations

import abc

import numpy as np

from tpdeploy.errors import TpdeployError


class Runner(abc.ABC):
    """A loaded model mapping images [B, 3, H, W] to logits [B, classes]."""

    backend: str = ""
    input_dtype: np.dtype = np.dtype(np.float32)
    image_size: int = 224
    min_batch: int = 1
    max_batch: int | None = None  # None: no limit

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Logits for `images`; float inputs are cast to the model's input dtype. Thread-safe."""
        return self._infer(self.check_input(images))

    def check_input(self, images) -> np.ndarray:
        images = np.asarray(images)
        want = (self.image_size, self.image_size)
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != want:
            raise TpdeployError(f"images must have shape [B, 3, {want[0]}, {want[1]}], got {list(images.shape)}")
        if images.dtype.kind != "f":
            raise TpdeployError(f"images must be float32 or float16, got {images.dtype}")
        b = images.shape[0]
        if b < self.min_batch or (self.max_batch is not None and b > self.max_batch):
            raise TpdeployError(f"batch {b} is outside this model's range [{self.min_batch}, {self.max_batch}]")
        return np.ascontiguousarray(images, dtype=self.input_dtype)

    @abc.abstractmethod
    def _infer(self, images: np.ndarray) -> np.ndarray:
        ...

    def close(self) -> None:
        """Release what the backend holds (sessions, device memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        return f"{self.backend} ({np.dtype(self.input_dtype).name}, batch {self.min_batch}..{self.max_batch or 'any'})"
