"""Pooling schedules: presets from `models/`, explicit lists, or solved from a FLOPs target; and the MAC counter.

A schedule is the number of patch tokens entering each block (all N patch tokens at block 1: 196 for a
ViT/16 at 224 px, 576 at 384 px, 49 for a ViT/32 at 224 px; one entry per block, 12 or 24). Where it drops
after block l, the patch tokens are pooled (SPEC section 2); the class (and distillation) tokens are never
pooled. MACs count what the model executes, the pooling op included, so a FLOPs ratio is honest.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tpdeploy.errors import InvalidArgumentError, UserError, check_int
from tpdeploy.tokenpool.definition import METHODS, method_op

DEFAULT_METHOD = "wkmedoids"
DEFAULT_ITERATIONS = 3


@dataclass(frozen=True)
class ArchDims:
    """What the MAC counter needs to know of a ViT."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    num_patches: int
    patch_dim: int  # 3 * patch_size²
    num_classes: int
    prefix_tokens: int = 1  # tokens that every block sees and pooling never touches: CLS (+ distillation)
    classifier_heads: int = 1  # 2 for distilled DeiT (head and head_dist)


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    method: str
    iterations: int
    tokens: tuple[int, ...]
    description: str
    path: str | None = None  # the file it was read from (an input no command may write over)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def validate(tokens, dims: ArchDims, method: str) -> tuple[int, ...]:
    """Check a schedule against the architecture and method; returns it as a tuple."""
    if isinstance(tokens, (str, bytes)) or not hasattr(tokens, "__iter__"):
        raise InvalidArgumentError(f"a schedule is a list of token counts, got {tokens!r}")
    tokens = tuple(check_int("a schedule's token count", t) for t in tokens)
    if len(tokens) != dims.depth:
        raise InvalidArgumentError(f"schedule has {len(tokens)} entries; it needs one per block ({dims.depth})")
    if tokens[0] != dims.num_patches:
        raise InvalidArgumentError(f"schedule must start at {dims.num_patches} patch tokens, got {tokens[0]}")
    for i, (a, b) in enumerate(zip(tokens, tokens[1:]), start=1):
        if b > a:
            raise InvalidArgumentError(
                f"schedule is not non-increasing: block {i} has {a} tokens, block {i + 1} asks {b}"
            )
    if tokens[-1] < 1:
        raise InvalidArgumentError("schedule must keep at least 1 patch token")
    if method == "none" and len(set(tokens)) > 1:
        raise InvalidArgumentError("method 'none' is the dense model: its schedule cannot drop tokens")
    if method == "grid":
        for t in set(tokens):
            if math.isqrt(t) ** 2 != t:
                raise InvalidArgumentError(f"method 'grid' pools on a square grid: {t} tokens is not a square")
    return tokens


def dense(dims: ArchDims) -> tuple[int, ...]:
    return (dims.num_patches,) * dims.depth


def pool_macs(n: int, k: int, c: int, method: str, iterations: int) -> int:
    """MACs of one pooling step from n to k tokens of c channels, as the implementations compute it."""
    if method == "grid":
        return k * n * c  # the pooling matrix product
    mode, _ = method_op(method)
    if method == "topk" or iterations == 0:
        return 0  # top-K by significance: a sort, no arithmetic
    if mode == "kmedoids":
        return n * n * c + iterations * n * n  # distance matrix once, then a weighted row sum per iteration
    return iterations * (n * k * c + n * c)  # distances to the centres, then the weighted sums


def macs(tokens, dims: ArchDims, method: str = DEFAULT_METHOD, iterations: int = DEFAULT_ITERATIONS) -> int:
    """Multiply-accumulates of one image through the model (patch embedding, blocks, pooling, head)."""
    d = dims.embed_dim
    hidden = int(d * dims.mlp_ratio)
    total = dims.num_patches * dims.patch_dim * d + dims.classifier_heads * d * dims.num_classes
    for i, n in enumerate(tokens):
        t = n + dims.prefix_tokens
        total += t * d * 3 * d + 2 * t * t * d + t * d * d + 2 * t * d * hidden
        nxt = tokens[i + 1] if i + 1 < len(tokens) else n
        if nxt < n:
            total += pool_macs(n, nxt, d, method, iterations)
    return total


def _geometric(rate: float, dims: ArchDims, method: str) -> tuple[int, ...]:
    """Tokens shrinking by `rate` per block (PoWER-BERT's progressive shape), snapped to squares for grid."""
    tokens, prev = [], dims.num_patches
    for i in range(dims.depth):
        t = min(prev, max(1, round(dims.num_patches * rate**i)))
        if method == "grid":
            t = math.isqrt(t) ** 2
        tokens.append(t)
        prev = t
    return tuple(tokens)


def solve(ratio: float, dims: ArchDims, method: str, iterations: int) -> tuple[int, ...]:
    """The geometric schedule whose MACs (pooling included) are closest to `ratio` x dense, from below."""
    if method == "none":
        raise InvalidArgumentError("method 'none' is the dense model: it has no FLOPs target")
    if not 0.0 < ratio <= 1.0:
        raise InvalidArgumentError(f"FLOPs ratio must be in (0, 1], got {ratio}")
    full = macs(dense(dims), dims, method, iterations)
    fewest = _geometric(0.0, dims, method)
    floor = macs(fewest, dims, method, iterations) / full
    if ratio < floor:
        clustering = floor - macs(fewest, dims, method, 0) / full  # what the iterations themselves cost
        if clustering > 0.05:
            raise InvalidArgumentError(
                f"{iterations} clustering iterations cost {clustering:.2f}x the dense model's MACs on their own, so "
                f"no schedule reaches FLOPs ratio {ratio}: use fewer --iterations (default {DEFAULT_ITERATIONS})"
            )
        raise InvalidArgumentError(f"FLOPs ratio {ratio} is below the smallest reachable ({floor:.3f}) for this model")
    lo, hi = 0.0, 1.0  # MACs grow with the rate: bisect for the largest rate within budget
    for _ in range(50):
        mid = (lo + hi) / 2
        if macs(_geometric(mid, dims, method), dims, method, iterations) <= ratio * full:
            lo = mid
        else:
            hi = mid
    return _geometric(lo, dims, method)


def _preset_folder():
    """models/, installed as tpdeploy.presets; or, where tpdeploy runs from a source tree it was not installed from
    (the GPU check's fallback on a machine whose pip cannot install it), the tree's own models/."""
    try:
        return resources.files("tpdeploy.presets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "models"


def presets() -> dict[str, Preset]:
    """The preset files shipped under models/ (installed as tpdeploy.presets)."""
    found = {}
    for entry in _preset_folder().iterdir():
        if entry.name.endswith(".toml"):
            found[entry.name[:-5]] = _read_preset(entry.name[:-5], entry.read_text(), str(entry))
    return dict(sorted(found.items()))


def load_preset(name_or_path: str) -> Preset:
    """A shipped preset by name, or a preset file by path."""
    if not isinstance(name_or_path, str):
        raise InvalidArgumentError(f"a preset is a name or a .toml path, got {name_or_path!r}")
    known = presets()
    if name_or_path in known:
        return known[name_or_path]
    if name_or_path.endswith(".toml"):
        try:
            with open(name_or_path, encoding="utf-8") as f:
                return _read_preset(name_or_path, f.read(), name_or_path)
        except OSError as e:
            raise UserError(f"cannot read preset file {name_or_path}: {e.strerror}") from None
    raise UserError(f"unknown preset {name_or_path!r}; shipped presets: {', '.join(known)}")


def _read_preset(name: str, text: str, path: str | None = None) -> Preset:
    try:
        data = tomllib.loads(text)
        if not isinstance(data["tokens"], list) or not all(isinstance(t, int) for t in data["tokens"]):
            raise ValueError("tokens must be a list of integers")
        preset = Preset(
            name=name,
            arch=data["arch"],
            method=data.get("method", DEFAULT_METHOD),
            iterations=int(data.get("iterations", DEFAULT_ITERATIONS)),
            tokens=tuple(data["tokens"]),
            description=data.get("description", ""),
            path=path,
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"preset {name} is not a valid preset file ({e})") from None
    check_method(preset.method)
    return preset
