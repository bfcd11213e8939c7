"""Test and validation images: structured scenes (shapes, gradients, stripes), normalised like real inputs."""

from __future__ import annotations

import numpy as np

from tpdeploy.artifacts.recipe import DataConfig
from tpdeploy.data.preprocess import normalize


def sample_images(n: int, size: int = 224, seed: int = 0, config: DataConfig | None = None) -> np.ndarray:
    """[n, 3, size, size] float32: each a gradient background with a disc, a box and stripes, plus a little noise,
    so tokens are redundant the way natural images are (pure noise would not be); normalised with the data
    config's mean and std (default: ImageNet's)."""
    config = config or DataConfig(input_size=size)
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        out[i] = normalize(_scene(rng, size), config)
    return out


def sample_rgb_images(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """The same scenes as 8-bit RGB pictures [n, size, size, 3] (uint8), to save as image files."""
    rng = np.random.default_rng(seed)
    return np.stack([np.round(_scene(rng, size) * 255).astype(np.uint8) for _ in range(n)])


def _scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float32 in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1, c2, c3 = rng.random((4, 3)).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    img = c0 * (1 - ramp) + c1 * ramp
    cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.3)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = c2
    x0, y0 = rng.uniform(0, 0.6, 2)
    box = (xx > x0) & (xx < x0 + rng.uniform(0.1, 0.4)) & (yy > y0) & (yy < y0 + rng.uniform(0.1, 0.4))
    img[box] = c3
    stripes = (np.sin(xx * rng.uniform(10, 60)) > 0.8)[..., None]
    img = np.where(stripes, img * 0.6, img)
    return np.clip(img + rng.normal(0, 0.02, img.shape).astype(np.float32), 0, 1)
