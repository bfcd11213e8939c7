"""Encoded images -> model input with the model's data config (timm's evaluation transform)."""

import io

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image", reason="needs Pillow")

from tpdeploy.artifacts.recipe import DataConfig
from tpdeploy.data.preprocess import preprocess_image, resize_center_crop
from tpdeploy.errors import TpdeployError, UserError

DEIT = DataConfig()  # bicubic, crop_pct 0.9
TORCHVISION = DataConfig(interpolation="bilinear", crop_pct=0.875)


def encoded(fmt, seed=0, size=(300, 260), mode="RGB"):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_deit_config_is_timms():
    assert (DEIT.input_size, DEIT.interpolation, DEIT.crop_pct, DEIT.resize_size) == (224, "bicubic", 0.9, 248)
    assert TORCHVISION.resize_size == 256 and DataConfig(input_size=384, crop_pct=1.0).resize_size == 384


def test_a_flat_colour_is_normalised_with_the_configs_mean_and_std():
    color = (200, 40, 90)
    x = preprocess_image(png(Image.new("RGB", (400, 300), color)), DEIT)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    want = (np.array(color) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[:, 112, 112], want, atol=1e-5)
    half = DataConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    np.testing.assert_allclose(
        preprocess_image(png(Image.new("RGB", (50, 50), color)), half)[:, 0, 0],
        (np.array(color) / 255.0 - 0.5) / 0.5,
        atol=1e-5,
    )


@pytest.mark.parametrize("config,column", [(TORCHVISION, 56), (DEIT, 58)])
def test_shorter_side_to_resize_size_then_the_central_crop(config, column):
    """A dark line at x = 200 of a 512x256 image: the shorter side goes to 256 (crop_pct 0.875, no scaling, crop
    offset 144 -> column 56) or 248 (0.9: scale 0.96875, offset 136 -> column 200.5 * 0.96875 - 0.5 - 136 = 57.7)."""
    img = Image.new("RGB", (512, 256), (255, 255, 255))
    img.paste((0, 0, 0), (200, 0, 201, 256))
    x = preprocess_image(png(img), config)
    assert int(np.argmin(x[0].mean(axis=0))) == column


def test_rounding_follows_torchvision():
    img = Image.new("RGB", (333, 500))
    out = resize_center_crop(img, DEIT)
    assert out.size == (224, 224)
    squash = resize_center_crop(
        Image.new("RGB", (640, 480)), DataConfig(input_size=384, crop_pct=1.0, crop_mode="squash")
    )
    assert squash.size == (384, 384)


def test_other_image_modes_become_rgb():
    for mode in ("L", "RGBA", "P"):
        assert preprocess_image(encoded("PNG", mode=mode), DEIT).shape == (3, 224, 224)
    assert preprocess_image(encoded("JPEG"), DEIT).shape == (3, 224, 224)


@pytest.mark.parametrize("data", [b"", b"not an image at all", encoded("JPEG")[:200], b"GIF89a" + b"\0" * 100])
def test_garbage_is_refused(data):
    with pytest.raises(TpdeployError, match="image"):
        preprocess_image(data, DEIT)


def test_bad_configs_are_refused():
    for bad in (
        {"interpolation": "nearest"},
        {"crop_pct": 0},
        {"crop_pct": 1.5},
        {"mean": (0.5, 0.5)},
        {"std": (0.0, 1.0, 1.0)},
        {"input_size": 0},
        {"crop_mode": "border"},
    ):
        with pytest.raises(TpdeployError, match="invalid data config"):
            DataConfig(**bad)
    with pytest.raises(TpdeployError, match="DataConfig"):
        preprocess_image(encoded("PNG"), 224)


def test_an_image_whose_resize_would_take_gigabytes_is_refused_before_it():
    """A 1 x 40000 strip: its shorter side to 248 px would make 248 x 9,920,000 pixels (10 GB of RGB); refused, so
    eval counts it unreadable and serve answers 400, instead of running out of memory."""
    strip = Image.new("RGB", (1, 40000))
    with pytest.raises(UserError, match=r"image 1x40000 would be resized to 248x9920000 pixels"):
        resize_center_crop(strip, DEIT)
    assert resize_center_crop(Image.new("RGB", (300, 2000)), DEIT).size == (224, 224)  # tall, but not absurd
