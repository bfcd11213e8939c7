"""Encoded images (JPEG/PNG/WebP bytes) -> model input, with the model's own recorded preprocessing.

    from tpdeploy import runtime
    from tpdeploy.data.preprocess import preprocess_image
    model = runtime.load("tp.onnx")
    x = preprocess_image(open("cat.jpg", "rb").read(), model.data_config)   # float32 [3, S, S]
    logits = model.infer(x[None])

The transform is timm's evaluation transform for the model's data config (`tpdeploy.artifacts.recipe.DataConfig`,
recorded at export): resize to floor(input_size / crop_pct) with the config's interpolation (the shorter side for
crop_mode 'center', both sides for 'squash'), take the central input_size square, scale to [0, 1], normalise
with the config's mean and std. Rounding follows torchvision's `Resize` and `CenterCrop` on PIL images. DeiT's
config is bicubic with crop_pct 0.9 (resize 248 for 224); timm's 384 px ViTs take crop_pct 1.0 (resize 384) and
mean = std = 0.5 (`tpdeploy archs` shows each architecture's). Needs Pillow (`pip install 'tpdeploy[serve]'` or
`'tpdeploy[eval]'`).
"""

from __future__ import annotations

import io

import numpy as np

from tpdeploy.artifacts.recipe import DataConfig
from tpdeploy.errors import InvalidArgumentError, UserError, one_line
from tpdeploy.optional import lazy_import

FORMATS = ("JPEG", "PNG", "WEBP")
GREY_16BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # Pillow's modes for 16-bit greyscale PNGs
MAX_PIXELS = 64_000_000  # refuse larger images before decoding them (decompression bombs)


def _pil():
    return lazy_import("PIL.Image", "decoding images")


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS):
    """A PIL RGB image from encoded bytes (JPEG, PNG or WebP); UserError for anything else, or for an image of more
    than `max_pixels` (checked from the header, before decoding)."""
    Image = _pil()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"an encoded image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise UserError("empty image: 0 bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:  # its message names only a BytesIO object
        raise UserError(f"cannot decode image ({len(data)} bytes): not a {'/'.join(FORMATS)} image") from None
    except Exception as e:  # Pillow raises several types for bad data
        # UnidentifiedImageError's own text only names the in-memory file object
        detail = "" if type(e).__name__ == "UnidentifiedImageError" else f" ({one_line(e)})"
        raise UserError(f"cannot decode image ({len(data)} bytes): not a {'/'.join(FORMATS)} image{detail}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise UserError(f"image too large: {w}x{h} pixels (at most {max_pixels} pixels)")
    if w < 1 or h < 1:
        raise UserError(f"image has no pixels: {w}x{h}")
    try:
        img.load()
        if img.mode in GREY_16BIT:  # convert() would clip at 255; keep the high byte, as Pillow does for 16-bit RGB
            img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")
        return img.convert("RGB")
    except Exception as e:  # truncated or corrupt image data
        raise UserError(f"cannot decode {img.format} image ({len(data)} bytes): {one_line(e)}") from None


def resize_center_crop(img, config: DataConfig, max_pixels: int = MAX_PIXELS):
    """The PIL image resized and cropped to config.input_size as timm's evaluation transform does; UserError where
    the resize would make more than `max_pixels` (a 1 x 40000 strip: its shorter side to 248 px is 2.5 gigapixels)."""
    Image = _pil()
    method = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[config.interpolation]
    size, resize = config.input_size, config.resize_size
    w, h = img.size
    if config.crop_mode == "squash":
        new_w = new_h = resize
    elif w <= h:  # torchvision Resize(int): the shorter side to `resize`, the longer one truncated
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    if new_w * new_h > max_pixels:
        raise UserError(
            f"image {w}x{h} would be resized to {new_w}x{new_h} pixels (at most {max_pixels}): too far from square"
        )
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), method)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def normalize(rgb: np.ndarray, config: DataConfig) -> np.ndarray:
    """[H, W, 3] floats in [0, 1] -> [3, H, W] float32 normalised with the config's mean and std."""
    mean, std = np.array(config.mean, np.float32), np.array(config.std, np.float32)
    return ((rgb - mean) / std).transpose(2, 0, 1).astype(np.float32)


def preprocess_image(data: bytes, config: DataConfig, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> float32 [3, S, S]: the model's input for one image."""
    if not isinstance(config, DataConfig):
        raise InvalidArgumentError(f"config must be a DataConfig (runner.data_config), got {type(config).__name__}")
    img = resize_center_crop(decode_image(data, max_pixels), config, max_pixels)
    return normalize(np.asarray(img, dtype=np.float32) / 255.0, config)
