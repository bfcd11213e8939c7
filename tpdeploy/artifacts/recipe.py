"""The export recipe: what a model file is, written into every exported ONNX file (and copied into an engine's
sidecar), so that later stages need neither the original checkpoint nor PyTorch.

It records the architecture, pooling method, schedule, precision, the weights' origin (a seed, or the
checkpoint's SHA-256, never a path) and the data config the model expects: timm's `pretrained_cfg` fields
for evaluation (input size, resize interpolation, crop fraction and mode, mean, std); for a file made by
`tpdeploy quantize`, also how it was quantized (`Quantization`). `dtype` is always the I/O dtype.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

from tpdeploy.errors import InvalidArgumentError, UserError
from tpdeploy.tokenpool.definition import METHODS, method_op

RECIPE_KEY = "tpdeploy.recipe"  # the ONNX metadata_props key holding the recipe as JSON
RECIPE_VERSION = 1
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)  # timm/data/constants.py: Google's ViT weights
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)
INTERPOLATIONS = ("bilinear", "bicubic")
QUANT_PRECISIONS = ("int8", "fp8")
QUANT_TARGETS = ("ort", "tensorrt")  # onnxruntime on the CPU; TensorRT's explicit quantization
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_SOURCES = ("images", "built-in")  # a folder of images; the generated structured images
CROP_MODES = ("center", "squash")
DTYPES = {"fp32": "float32", "fp16": "float16"}  # a recipe's dtype -> its file's input and output dtype
_SHA256 = re.compile(r"[0-9a-f]{64}")
_WEIGHTS_REFERENCE = re.compile(r"sha256:[0-9a-f]{64}|seed:[0-9]+")  # WeightsOrigin.reference()


@dataclass(frozen=True)
class DataConfig:
    """How an image becomes the model's input (timm's `resolve_data_config` for evaluation):
    resize to floor(input_size / crop_pct) (the shorter side for crop_mode 'center', both sides for
    'squash'), take the central input_size square, scale to [0, 1], normalise with mean and std."""

    input_size: int = 224
    interpolation: str = "bicubic"
    crop_pct: float = 0.9
    crop_mode: str = "center"
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD

    def __post_init__(self):
        problems = []
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) or self.input_size < 1:
            problems.append(f"input_size must be a positive integer, got {self.input_size!r}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, (int, float)) or not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.crop_mode not in CROP_MODES:
            problems.append(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if (
                not isinstance(v, (tuple, list))
                or len(v) != 3
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            ):
                problems.append(f"{name} must be 3 finite numbers, got {v!r}")
        if not problems and min(self.std) <= 0:
            problems.append(f"std must be positive, got {self.std!r}")
        if problems:
            raise InvalidArgumentError(f"invalid data config: {'; '.join(problems)}")
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))

    @property
    def resize_size(self) -> int:
        """The size the image is resized to before the crop (timm: floor(input_size / crop_pct))."""
        return math.floor(self.input_size / self.crop_pct)

    def describe(self) -> str:
        return (
            f"{self.input_size} px, {self.interpolation} resize to {self.resize_size} ({self.crop_mode} crop "
            f"{self.crop_pct:g}), mean {list(self.mean)}, std {list(self.std)}"
        )


@dataclass(frozen=True)
class WeightsOrigin:
    """Where a model's weights came from: a seed (seeded-random weights), or a checkpoint file, known by its SHA-256.
    `checkpoint_path` is where that file is on this machine: an input no command may write over, never recorded."""

    seed: int | None = 0
    checkpoint_sha256: str | None = None
    checkpoint_path: str | None = field(default=None, compare=False)
    finetuned_from: str | None = None  # a fine-tuned checkpoint: the `reference()` of the weights it started from

    def reference(self) -> str:
        """These weights' name, never a path: `sha256:<hex>` for a checkpoint, `seed:<n>` for seeded-random ones."""
        return f"sha256:{self.checkpoint_sha256}" if self.checkpoint_sha256 else f"seed:{self.seed}"

    def describe(self) -> str:
        if self.checkpoint_sha256:
            tuned = f", fine-tuned from {_short(self.finetuned_from)}" if self.finetuned_from else ""
            return f"checkpoint sha256 {self.checkpoint_sha256[:16]}...{tuned}"
        return f"seeded-random (seed {self.seed}, no checkpoint)"


def _short(reference: str) -> str:
    kind, _, value = reference.partition(":")
    return f"sha256 {value[:16]}..." if kind == "sha256" else f"seeded-random weights (seed {value})"


@dataclass(frozen=True)
class Quantization:
    """How `tpdeploy quantize` quantized a file: static Q/DQ (QuantizeLinear/DequantizeLinear pairs) with
    per-channel weights, scales calibrated on `calibration_images` images whose model inputs (float32, in
    order) hash to `calibration_sha256`; `float_parts` say what stays float32."""

    precision: str  # QUANT_PRECISIONS
    target: str  # QUANT_TARGETS
    method: str  # CALIBRATION_METHODS
    activations: str  # "asymmetric" | "symmetric" (zero point 0, as TensorRT requires)
    calibration_source: str  # CALIBRATION_SOURCES
    calibration_images: int
    calibration_sha256: str
    quantized_ops: tuple[str, ...]  # the op types whose inputs are quantized
    float_parts: tuple[str, ...]

    def __post_init__(self):
        problems = [
            f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
            for name, choices in (
                ("precision", QUANT_PRECISIONS),
                ("target", QUANT_TARGETS),
                ("method", CALIBRATION_METHODS),
                ("activations", ("asymmetric", "symmetric")),
                ("calibration_source", CALIBRATION_SOURCES),
            )
            if getattr(self, name) not in choices
        ]
        if not isinstance(self.calibration_images, int) or isinstance(self.calibration_images, bool):
            problems.append(f"calibration_images must be an integer, got {self.calibration_images!r}")
        elif self.calibration_images < 1:
            problems.append(f"calibration_images must be positive, got {self.calibration_images}")
        sha = self.calibration_sha256
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            problems.append(f"calibration_sha256 must be 64 hex digits, got {sha!r}")
        for name in ("quantized_ops", "float_parts"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or not all(isinstance(x, str) for x in v):
                problems.append(f"{name} must be a list of strings, got {v!r}")
        if problems:
            raise InvalidArgumentError(f"invalid quantization record: {'; '.join(problems)}")
        object.__setattr__(self, "quantized_ops", tuple(self.quantized_ops))
        object.__setattr__(self, "float_parts", tuple(self.float_parts))

    def describe(self) -> str:
        source = "built-in structured images" if self.calibration_source == "built-in" else "images"
        return (
            f"{self.precision} for {self.target} ({self.activations} activations, per-channel weights), "
            f"{self.method} calibration on {self.calibration_images} {source} (sha256 "
            f"{self.calibration_sha256[:16]}...); quantized: {', '.join(self.quantized_ops)} inputs; float32: "
            f"{', '.join(self.float_parts)}"
        )


@dataclass(frozen=True)
class Recipe:
    arch: str
    method: str
    iterations: int
    tokens: tuple[int, ...]  # patch tokens entering each block
    dtype: str  # "fp32" | "fp16"
    num_classes: int
    data_config: DataConfig = field(default_factory=DataConfig)
    seed: int | None = None  # seeded-random weights; None when they come from a checkpoint
    checkpoint_sha256: str | None = None
    tpdeploy_version: str = ""
    quantization: Quantization | None = None  # None: a float file (and every recipe written before quantize)
    finetuned_from: str | None = None  # weights fine-tuned by `tpdeploy finetune`: what they started from

    @property
    def origin(self) -> WeightsOrigin:
        return WeightsOrigin(self.seed, self.checkpoint_sha256, finetuned_from=self.finetuned_from)

    @property
    def weights(self) -> str:
        return self.origin.describe()

    def to_json(self) -> str:
        d = asdict(self)
        d["tokens"] = list(self.tokens)
        return json.dumps({"version": RECIPE_VERSION, **d}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> Recipe:
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            version = d.pop("version", None)
            if version != RECIPE_VERSION:
                raise UserError(
                    f"{source}: recipe version {version!r} is not {RECIPE_VERSION}; re-export it with this tpdeploy"
                )
            d["data_config"] = DataConfig(**d["data_config"])
            d["tokens"] = tuple(d["tokens"])
            if d.get("quantization") is not None:
                d["quantization"] = Quantization(**d["quantization"])
            recipe = cls(**d)
        except (InvalidArgumentError, ValueError, TypeError, KeyError) as e:
            raise UserError(f"{source}: the tpdeploy recipe in its metadata is not valid ({e})") from None
        problems = recipe.problems()
        if problems:
            raise UserError(f"{source}: the tpdeploy recipe in its metadata is not valid ({'; '.join(problems)})")
        return recipe

    def problems(self) -> list[str]:
        """What makes this recipe impossible, on its own (an empty list: nothing)."""
        found = []

        def integer(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not isinstance(self.arch, str) or not self.arch:
            found.append(f"arch {self.arch!r} is not a name")
        if self.method not in METHODS:
            found.append(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not integer(self.iterations) or self.iterations < 0:
            found.append(f"iterations {self.iterations!r} is not an integer >= 0")
        if not self.tokens or not all(integer(t) and t >= 1 for t in self.tokens):
            found.append(f"tokens {list(self.tokens)} are not positive integers")
        elif any(b > a for a, b in zip(self.tokens, self.tokens[1:])):
            found.append(f"tokens {list(self.tokens)} grow from one block to the next")
        if self.dtype not in DTYPES:
            found.append(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if not integer(self.num_classes) or self.num_classes < 1:
            found.append(f"num_classes {self.num_classes!r} is not a positive integer")
        if self.seed is not None and (not integer(self.seed) or self.seed < 0):
            found.append(f"seed {self.seed!r} is not an integer >= 0")
        if self.checkpoint_sha256 is not None and not _SHA256.fullmatch(str(self.checkpoint_sha256)):
            found.append(f"checkpoint_sha256 {self.checkpoint_sha256!r} is not a SHA-256")
        if (self.seed is None) == (self.checkpoint_sha256 is None):
            found.append("the weights' origin must be a seed or a checkpoint's SHA-256, not both or neither")
        if self.finetuned_from is not None:
            if not _WEIGHTS_REFERENCE.fullmatch(str(self.finetuned_from)):
                found.append(f"finetuned_from {self.finetuned_from!r} is neither sha256:<hex> nor seed:<n>")
            if self.checkpoint_sha256 is None:
                found.append("fine-tuned weights come from a checkpoint, but no checkpoint_sha256 is given")
        return found

    @property
    def token_pool_clusters(self) -> list[int]:
        """num_clusters of the TokenPool nodes a file of this recipe has, in order (none for grid and dense)."""
        if method_op(self.method) is None:
            return []
        return [k for n, k in zip(self.tokens, self.tokens[1:]) if k < n]
