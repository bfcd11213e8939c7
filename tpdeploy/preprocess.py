"""Encoded images (JPEG/PNG bytes) -> model input, with the standard ImageNet evaluation preprocessing.

    from tpdeploy.preprocess import preprocess_image
    x = preprocess_image(open("cat.jpg", "rb").read())     # float32 [3, 224, 224], ImageNet-normalised
    logits = model.infer(x[None])

Resize the shorter side to 256 (bilinear), center-crop 224, scale to [0, 1], normalise with the ImageNet mean/std
(`tpdeploy.images.normalize`). This is torchvision's reference ImageNet evaluation transform
(`Resize(256)`, `CenterCrop(224)`, `ToTensor()`, `Normalize(...)`); timm's DeiT config uses bicubic instead,
pass `interpolation="bicubic"` for that. Needs Pillow (`pip install tpdeploy[serve]`).
"""
from __future__ import annotations

import io

import numpy as np

from tpdeploy.errors import TpdeployError, one_line
from tpdeploy.images import normalize

FORMATS = ("JPEG", "PNG", "WEBP")
MAX_PIXELS = 64_000_000  # refuse larger images before decoding them (decompression bombs)
CROP_FRACTION = 0.875    # 224 / 256


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise TpdeployError("decoding images needs Pillow: pip install Pillow (or tpdeploy[serve])") from None
    return Image


def decode_image(data: bytes):
    """A PIL RGB image from encoded bytes (JPEG, PNG or WebP); TpdeployError for anything else."""
    Image = _pil()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TpdeployError(f"an encoded image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise TpdeployError("empty image: 0 bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Exception as e:  # noqa: BLE001 - Pillow raises several types for bad data
        raise TpdeployError(f"cannot decode image ({len(data)} bytes): not a {'/'.join(FORMATS)} image "
                            f"({one_line(e)})") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise TpdeployError(f"image too large: {w}x{h} pixels (at most {MAX_PIXELS} pixels)")
    if w < 1 or h < 1:
        raise TpdeployError(f"image has no pixels: {w}x{h}")
    try:
        img.load()
        return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - truncated or corrupt image data
        raise TpdeployError(f"cannot decode {img.format} image ({len(data)} bytes): {one_line(e)}") from None


def resize_center_crop(img, size: int = 224, resize: int | None = None, interpolation: str = "bilinear"):
    """Shorter side to `resize` (default size / 0.875, i.e. 256 for 224), then the central size x size crop.
    Rounding follows torchvision: the longer side is truncated, the crop offset rounded."""
    Image = _pil()
    methods = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    if interpolation not in methods:
        raise TpdeployError(f"interpolation must be one of {', '.join(methods)}, got {interpolation!r}")
    resize = resize or int(round(size / CROP_FRACTION))
    if resize < size:
        raise TpdeployError(f"resize {resize} is smaller than the crop {size}")
    w, h = img.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), methods[interpolation])
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess_image(data: bytes, size: int = 224, resize: int | None = None,
                     interpolation: str = "bilinear") -> np.ndarray:
    """Encoded image bytes -> float32 [3, size, size], ImageNet-normalised (the model's input for one image)."""
    img = resize_center_crop(decode_image(data), size, resize, interpolation)
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    return normalize(rgb)
