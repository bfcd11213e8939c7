"""Images for training: where they come from, timm's standard training augmentation, batches decoded ahead.

    images = ImageSource.from_dataset(open_dataset("train/"))      # or ImageSource.generated(512)
    x = train_example(images.picture(i), config, example_rng(seed, epoch, i))   # float32 [3, S, S]

Training augmentation (timm's `transforms_imagenet_train` without its optional extras): a random resized crop
(area `scale` of the image, aspect ratio `ratio`, log-uniform; torchvision's 10 tries, then the central crop
of the nearest allowed ratio) resized to the model's input size with its data config's interpolation, a
horizontal flip half of the time, then the config's mean and std. Each example draws from a generator of its own,
seeded by (seed, epoch, index): the same pixels whatever process, thread or resumed run decodes it.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from tpdeploy.artifacts.recipe import DataConfig
from tpdeploy.data.datasets import Dataset
from tpdeploy.data.preprocess import decode_image, normalize, resize_center_crop
from tpdeploy.data.samples import sample_rgb_images
from tpdeploy.errors import UserError
from tpdeploy.optional import lazy_import

CROP_SCALE = (0.08, 1.0)  # timm's and torchvision's RandomResizedCrop defaults
CROP_RATIO = (3 / 4, 4 / 3)
FLIP = 0.5
GENERATED_SIZE = 256  # px, as the sweep's generated images


@dataclass
class ImageSource:
    """Images by index: files of a dataset, or generated scenes (`sample_rgb_images` with seeds first_seed + i)."""

    name: str  # for reports: the folder, or "generated"
    paths: list[str] | None  # None: generated
    labels: list[int] | None
    count: int
    first_seed: int = 0

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> ImageSource:
        return cls(dataset.root, dataset.paths, dataset.labels, len(dataset.paths))

    @classmethod
    def generated(cls, count: int, first_seed: int = 0) -> ImageSource:
        return cls("generated", None, None, count, first_seed)

    def __len__(self) -> int:
        return self.count

    def where(self, index: int) -> str:
        return os.path.basename(self.paths[index]) if self.paths else f"generated image {self.first_seed + index}"

    def picture(self, index: int):
        """The image as a PIL RGB picture; UserError if it cannot be read or decoded."""
        if self.paths is None:
            image = sample_rgb_images(1, GENERATED_SIZE, seed=self.first_seed + index)[0]
            return lazy_import("PIL.Image", "generating images").fromarray(image)
        try:
            with open(self.paths[index], "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"cannot read: {e.strerror}") from None
        return decode_image(data)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale=CROP_SCALE, ratio=CROP_RATIO):
    """(left, top, right, bottom) of torchvision's `RandomResizedCrop.get_params`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = width / height  # fallback: the central crop of the nearest allowed aspect ratio
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def train_example(picture, config: DataConfig, rng: np.random.Generator, scale=CROP_SCALE) -> np.ndarray:
    """A PIL RGB picture -> float32 [3, S, S]: random resized crop, flip, normalisation (the module's docstring)."""
    Image = lazy_import("PIL.Image", "augmenting images")
    method = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[config.interpolation]
    box = random_resized_crop_box(*picture.size, rng, scale)
    size = config.input_size
    crop = picture.resize((size, size), method, box=box)
    if rng.random() < FLIP:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return normalize(np.asarray(crop, dtype=np.float32) / 255.0, config)


def eval_example(picture, config: DataConfig) -> np.ndarray:
    """A PIL RGB picture -> float32 [3, S, S] as the model's recorded preprocessing makes it (no augmentation)."""
    return normalize(np.asarray(resize_center_crop(picture, config), dtype=np.float32) / 255.0, config)


@dataclass
class PreparedBatch:
    indices: list[int]
    inputs: np.ndarray  # [B, 3, S, S] float32; an unreadable image's row is zeros
    unreadable: list[tuple[int, str]]  # (index, reason)


def prepared_batches(
    batches: Iterable[list[int]], prepare: Callable[[int], np.ndarray], shape: tuple[int, ...], workers: int
):
    """`prepare(index)` for every index of every batch, by `workers` threads, one batch ahead of the consumer
    (Pillow and numpy release the GIL). An image `prepare` cannot read (UserError) is a row of zeros and counted."""
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tpdeploy-augment")
    pending: deque = deque()
    batches = iter(batches)
    try:
        for _ in range(2):
            _submit(pool, pending, next(batches, None), prepare)
        while pending:
            indices, futures = pending.popleft()
            _submit(pool, pending, next(batches, None), prepare)
            inputs = np.zeros((len(indices), *shape), np.float32)
            unreadable = []
            for row, (index, future) in enumerate(zip(indices, futures)):
                try:
                    inputs[row] = future.result()
                except UserError as e:
                    unreadable.append((index, str(e)))
            yield PreparedBatch(indices, inputs, unreadable)
    finally:  # on an interruption: no more decoding than the images already started
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool, pending: deque, indices: list[int] | None, prepare) -> None:
    if indices is not None:
        pending.append((indices, [pool.submit(prepare, i) for i in indices]))
