"""Token-Pooled Vision Transformers (SPEC section 2): registered architectures, the model, checkpoint loading.

Each registered architecture is one of timm's: the same name, the same state-dict names and shapes (timm's
`VisionTransformer` and, for distilled DeiT, `VisionTransformerDistilled`), so a timm checkpoint file loads
strictly, after the one adaptation `checkpoint_filter` documents; and the data config of timm's default
pretrained weights for that name. `tpdeploy archs` lists them.
"""
from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tpdeploy import __version__
from tpdeploy import schedule as sched
from tpdeploy.artifacts.files import sha256
from tpdeploy.artifacts.recipe import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD, DataConfig, Recipe
from tpdeploy.errors import InvalidArgumentError, UserError, check_int, check_number, one_line
from tpdeploy.op import token_pool


@dataclass(frozen=True)
class ViTConfig:
    """A Vision Transformer as timm builds it: the `VisionTransformer` arguments that shape its state dict and
    forward pass (pre-norm blocks, LayerNorm eps 1e-6, qkv bias, GELU, final norm then the class token's head:
    timm's global_pool 'token', so fc_norm is an Identity without parameters), and the data config of timm's
    default pretrained weights `timm_name.timm_tag`."""
    name: str                    # tpdeploy's name: timm's, except the paper's deit_tiny/small/base
    embed_dim: int
    num_heads: int
    depth: int = 12
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    distilled: bool = False      # a distillation token after CLS and a second head; inference averages the heads
    layer_scale: bool = False    # per-block ls1.gamma / ls2.gamma (timm's init_values; DeiT III)
    no_embed_class: bool = False  # pos_embed covers the patch tokens only, added before CLS joins (DeiT III)
    data_config: DataConfig = DataConfig()
    timm_name: str = ""          # default: the name
    timm_tag: str = ""           # the pretrained tag whose data config this is

    def __post_init__(self):
        object.__setattr__(self, "timm_name", self.timm_name or self.name)
        if self.img_size % self.patch_size or self.data_config.input_size != self.img_size:
            raise InvalidArgumentError(f"{self.name}: image size {self.img_size} must be a multiple of the patch "
                                       f"size {self.patch_size} and the data config's input size")

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: CLS, and the distillation token of distilled DeiT."""
        return 2 if self.distilled else 1

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def dims(self) -> sched.ArchDims:
        return sched.ArchDims(self.embed_dim, self.depth, self.num_heads, self.mlp_ratio, self.grid_size ** 2,
                              3 * self.patch_size ** 2, self.num_classes, prefix_tokens=self.num_prefix_tokens,
                              classifier_heads=2 if self.distilled else 1)


_ARCHS: dict[str, ViTConfig] = {}


def register(cfg: ViTConfig) -> ViTConfig:
    _ARCHS[cfg.name] = cfg
    return cfg


# Architectures and data configs from timm (huggingface/pytorch-image-models, timm/models/):
# - deit.py: the deit_*, deit_*_distilled and deit3_* entrypoints (embed_dim, depth, num_heads; deit3:
#   no_embed_class=True, init_values=1e-6) and its `_cfg` for their first (default) tag fb_in1k: bicubic,
#   crop_pct 0.9, IMAGENET_DEFAULT_MEAN/STD, which are DataConfig's defaults.
# - vision_transformer.py: the vit_* entrypoints and `_cfg`: bicubic, crop_pct 0.9, IMAGENET_INCEPTION_MEAN/STD;
#   the 384 px weights add input_size (3, 384, 384) and crop_pct 1.0. Default tags: the first listed per name.
_VIT_224 = DataConfig(mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD)
_VIT_384 = DataConfig(input_size=384, crop_pct=1.0, mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD)

register(ViTConfig("deit_tiny", 192, 3, timm_name="deit_tiny_patch16_224", timm_tag="fb_in1k"))
register(ViTConfig("deit_small", 384, 6, timm_name="deit_small_patch16_224", timm_tag="fb_in1k"))
register(ViTConfig("deit_base", 768, 12, timm_name="deit_base_patch16_224", timm_tag="fb_in1k"))
register(ViTConfig("deit_tiny_distilled_patch16_224", 192, 3, distilled=True, timm_tag="fb_in1k"))
register(ViTConfig("deit_small_distilled_patch16_224", 384, 6, distilled=True, timm_tag="fb_in1k"))
register(ViTConfig("deit_base_distilled_patch16_224", 768, 12, distilled=True, timm_tag="fb_in1k"))
register(ViTConfig("deit3_small_patch16_224", 384, 6, layer_scale=True, no_embed_class=True, timm_tag="fb_in1k"))
register(ViTConfig("deit3_base_patch16_224", 768, 12, layer_scale=True, no_embed_class=True, timm_tag="fb_in1k"))
register(ViTConfig("vit_small_patch16_224", 384, 6, data_config=_VIT_224, timm_tag="augreg_in21k_ft_in1k"))
register(ViTConfig("vit_small_patch16_384", 384, 6, img_size=384, data_config=_VIT_384,
                   timm_tag="augreg_in21k_ft_in1k"))
register(ViTConfig("vit_base_patch16_224", 768, 12, data_config=_VIT_224, timm_tag="augreg2_in21k_ft_in1k"))
register(ViTConfig("vit_base_patch16_384", 768, 12, img_size=384, data_config=_VIT_384,
                   timm_tag="augreg_in21k_ft_in1k"))
register(ViTConfig("vit_base_patch32_224", 768, 12, patch_size=32, data_config=_VIT_224,
                   timm_tag="augreg_in21k_ft_in1k"))
register(ViTConfig("vit_large_patch16_224", 1024, 16, depth=24, data_config=_VIT_224, timm_tag="augreg_in21k_ft_in1k"))
register(ViTConfig("vit_large_patch16_384", 1024, 16, depth=24, img_size=384, data_config=_VIT_384,
                   timm_tag="augreg_in21k_ft_in1k"))


def list_archs() -> list[str]:
    return list(_ARCHS)


def get_config(arch: str) -> ViTConfig:
    """An architecture by tpdeploy name (deit_small), timm name (deit_small_patch16_224) or timm name with the
    pretrained tag its data config is for (vit_base_patch16_384.augreg_in21k_ft_in1k)."""
    for cfg in _ARCHS.values():
        if arch in (cfg.name, cfg.timm_name, f"{cfg.timm_name}.{cfg.timm_tag}"):
            return cfg
    raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(_ARCHS)} (see `tpdeploy archs`)")


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_prefix_tokens: int = 1):
        super().__init__()
        self.num_heads, self.num_prefix_tokens = num_heads, num_prefix_tokens
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, want_significance: bool):
        """Returns the output and, if asked, the significance of each patch token: the attention it
        receives, summed over heads and queries (the prefix tokens' queries included, their columns excluded)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        significance = None
        if want_significance:  # the probabilities are needed, so no fused kernel here
            # in float32 even in an fp16 model: pooling decisions follow these sums, and fp16 rounding would
            # reorder tokens of nearly equal significance
            attn = ((q.float() * (c // self.num_heads) ** -0.5) @ k.float().transpose(-2, -1)).softmax(-1)
            significance = attn.sum((1, 2))[:, self.num_prefix_tokens:]
            out = attn.to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), significance


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch (timm's LayerScale: `gamma`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = Attention(d, cfg.num_heads, cfg.num_prefix_tokens)
        self.ls1 = LayerScale(d) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.ls2 = LayerScale(d) if cfg.layer_scale else nn.Identity()

    def forward(self, x, want_significance: bool = False):
        out, significance = self.attn(self.norm1(x), want_significance)
        x = x + self.ls1(out)
        return x + self.ls2(self.mlp(self.norm2(x))), significance


class TokenPooling(nn.Module):
    """Replaces the patch tokens by K pooled ones (the prefix tokens are not touched)."""

    def __init__(self, method: str, num_in: int, num_out: int, iterations: int):
        super().__init__()
        self.method, self.num_out, self.iterations = method, num_out, iterations
        if method == "grid":
            self.register_buffer("grid", _grid_pool_matrix(num_in, num_out), persistent=False)

    def forward(self, patches, significance):
        if self.method == "grid":
            return self.grid.to(patches.dtype) @ patches
        mode, weighted = sched.method_op(self.method)
        iterations = 0 if self.method == "topk" else self.iterations
        return token_pool(patches, significance, self.num_out, iterations, mode, weighted)

    def extra_repr(self):
        return f"method={self.method}, num_out={self.num_out}, iterations={self.iterations}"


def _grid_pool_matrix(num_in: int, num_out: int) -> torch.Tensor:
    """[K, N] matrix of 2-D adaptive average pooling from a sqrt(N)² grid to a sqrt(K)² grid."""
    s_in, s_out = math.isqrt(num_in), math.isqrt(num_out)
    m = torch.zeros(s_out, s_out, s_in, s_in)
    for a in range(s_out):
        r0, r1 = a * s_in // s_out, -(-(a + 1) * s_in // s_out)
        for b in range(s_out):
            c0, c1 = b * s_in // s_out, -(-(b + 1) * s_in // s_out)
            m[a, b, r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
    return m.reshape(num_out, num_in)


class TokenPooledViT(nn.Module):
    """A ViT whose patch tokens are pooled between blocks following `tokens` (patch tokens entering each block).
    The class token (and a distilled model's distillation token) passes every pooling step untouched."""

    def __init__(self, cfg: ViTConfig, tokens, method: str = sched.DEFAULT_METHOD,
                 iterations: int = sched.DEFAULT_ITERATIONS):
        super().__init__()
        self.cfg, self.method, self.iterations = cfg, method, iterations
        self.checkpoint: str | None = None  # where the weights came from (this machine's path); None: seeded-random
        self.checkpoint_sha256: str | None = None
        self.seed = 0
        self.tokens = sched.validate(tokens, cfg.dims, method)
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.distilled else None
        embedded = cfg.dims.num_patches + (0 if cfg.no_embed_class else cfg.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, embedded, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.num_classes)
        self.head_dist = nn.Linear(d, cfg.num_classes) if cfg.distilled else None
        nxt = self.tokens[1:] + self.tokens[-1:]
        self.pools = nn.ModuleDict({str(i): TokenPooling(method, n, k, iterations)
                                    for i, (n, k) in enumerate(zip(self.tokens, nxt)) if k < n})

    @property
    def macs(self) -> int:
        return sched.macs(self.tokens, self.cfg.dims, self.method, self.iterations)

    def recipe(self, dtype: str = "fp32") -> Recipe:
        """What an exported file of this model records: enough to rebuild it, no local path."""
        return Recipe(arch=self.cfg.name, method=self.method, iterations=self.iterations, tokens=self.tokens,
                      dtype=dtype, num_classes=self.cfg.num_classes, data_config=self.cfg.data_config,
                      seed=None if self.checkpoint_sha256 else self.seed, checkpoint_sha256=self.checkpoint_sha256,
                      tpdeploy_version=__version__)

    def forward(self, images):
        x = self.patch_embed(images)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        if self.cfg.no_embed_class:
            x = torch.cat(prefix + [x + self.pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        p = len(prefix)
        for i, block in enumerate(self.blocks):
            pool = self.pools[str(i)] if str(i) in self.pools else None
            x, significance = block(x, want_significance=pool is not None and pool.method != "grid")
            if pool is not None:
                x = torch.cat([x[:, :p], pool(x[:, p:], significance)], dim=1)
        x = self.norm(x)
        if self.head_dist is None:
            return self.head(x[:, 0])
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2  # timm's inference: the mean of both heads


def init_random(model: TokenPooledViT, seed: int = 0) -> None:
    """timm's ViT initialisation, seeded, for runs without a checkpoint; except that the qkv and head weights
    get std 1/sqrt(dim), so attention and logits are as peaked as a trained model's rather than uniform
    (uniform attention would make every token equally significant and pooling decisions arbitrary), and that
    layer scales start at 1 (timm's 1e-6 is a training start: every block would be an identity)."""
    gen = torch.Generator().manual_seed(seed)
    trained_like_std = model.cfg.embed_dim ** -0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.fill_(1.0 if ("norm" in name and name.endswith("weight")) else 0.0)
            elif name.endswith("gamma"):
                p.fill_(1.0)
            elif name == "cls_token":
                p.normal_(0, 1e-6, generator=gen)
            else:
                std = trained_like_std if name.endswith(("qkv.weight", "head.weight", "head_dist.weight")) else 0.02
                p.copy_(torch.nn.init.trunc_normal_(torch.empty_like(p), std=std, generator=gen))


def read_state_dict(path: str) -> dict:
    """What a checkpoint file holds (.pth/.pt/.bin through torch.load with weights_only, or .safetensors), as
    stored: `checkpoint_filter` adapts it."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign files raise many different types
        raise UserError(f"cannot read checkpoint {path}: {one_line(e)}") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds no state dict of tensors")
    return state


def checkpoint_filter(checkpoint: dict, cfg: ViTConfig, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The one adaptation of a checkpoint's layout before strict loading (after timm's
    `vision_transformer.checkpoint_filter_fn`, which timm's deit.py calls with adapt_layer_scale=True):

    1. a training checkpoint's state dict under "model" (the DeiT repository's .pth files), then under
       "state_dict", is taken out; everything must then be a tensor;
    2. a "module." prefix (saved from DataParallel / DistributedDataParallel) is removed;
    3. DeiT III's original names blocks.N.gamma_1 / gamma_2 become timm's blocks.N.ls1.gamma / ls2.gamma;
    4. a pos_embed of the same width for another square grid of patches (e.g. 24x24 of a 384 px checkpoint
       in a 224 px model) is resampled to this architecture's grid like timm's `resample_abs_pos_embed`:
       the prefix entries (CLS, distillation; none for DeiT III) kept, the grid interpolated bicubic with
       antialiasing, in float32.

    Nothing else: everything else must then fit exactly (`load_state` is strict). Unlike timm, pre_logits
    weights are not dropped (they would change what the model computes): such a checkpoint is refused."""
    state = checkpoint
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {source} holds no state dict of tensors")
    state = {re.sub(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma", k.removeprefix("module.")): v
             for k, v in state.items()}
    pos = state.get("pos_embed")
    prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
    if isinstance(pos, torch.Tensor) and pos.ndim == 3 and pos.shape[0] == 1 and pos.shape[2] == cfg.embed_dim:
        old = math.isqrt(max(pos.shape[1] - prefix, 0))
        if old > 0 and old ** 2 == pos.shape[1] - prefix and old != cfg.grid_size:
            state["pos_embed"] = _resample_pos_embed(pos, prefix, old, cfg.grid_size)
    return state


def _resample_pos_embed(pos: torch.Tensor, prefix: int, old: int, new: int) -> torch.Tensor:
    grid = pos[:, prefix:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)
    return torch.cat([pos[:, :prefix], grid], dim=1)


def load_state(model: TokenPooledViT, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; a state dict of another architecture is refused with what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        details = []
        if wrong:
            k = wrong[0]
            details.append(f"{k} has shape {list(state[k].shape)}, expected {list(expected[k].shape)}")
        if missing:
            details.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        alike = [name for name in look_alikes(state) if name != model.cfg.name]
        hint = f" (it looks like {' or '.join(alike)})" if alike else ""
        raise UserError(f"checkpoint {source} does not fit {model.cfg.name}: {'; '.join(details)}{hint}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


@functools.cache
def state_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes of an architecture's state dict (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = TokenPooledViT(cfg, sched.dense(cfg.dims), method="none")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def parameter_count(cfg: ViTConfig) -> int:
    return sum(math.prod(shape) for shape in state_shapes(cfg).values())


def look_alikes(state: dict[str, torch.Tensor]) -> list[str]:
    """The registered architectures whose state dict a checkpoint's has, the position embedding's grid aside;
    those whose grid matches too come first (several share a layout: deit_base and vit_base_patch16_224)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    grid_aside = [cfg for cfg in _ARCHS.values() if state_shapes(cfg).keys() == shapes.keys() and all(
        shapes[k] == s for k, s in state_shapes(cfg).items() if k != "pos_embed")]
    exact = [cfg.name for cfg in grid_aside if state_shapes(cfg) == shapes]
    return exact or [cfg.name for cfg in grid_aside]


def create_model(arch: str, checkpoint: str | None = None, flops_ratio: float | None = None,
                 preset: str | None = None, schedule=None, method: str | None = None,
                 iterations: int | None = None, seed: int = 0) -> TokenPooledViT:
    """A Token-Pooled ViT in eval mode. At most one of flops_ratio, preset, schedule; none means dense
    tokens (all patch tokens in every block). A preset brings its own method and iterations unless these are
    given. Without a checkpoint the weights are seeded-random (`model.checkpoint` is None); a checkpoint goes
    through `checkpoint_filter`, then loads strictly."""
    if sum(x is not None for x in (flops_ratio, preset, schedule)) > 1:
        raise InvalidArgumentError("give at most one of flops_ratio, preset and schedule")
    seed = check_int("seed", seed, minimum=0)
    if iterations is not None:
        iterations = check_int("iterations", iterations, minimum=0)
    if flops_ratio is not None:
        flops_ratio = check_number("flops_ratio", flops_ratio, minimum=0.0, exclusive=True)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise InvalidArgumentError(f"checkpoint must be a path, got {checkpoint!r}")
    if preset is not None:
        p = sched.load_preset(preset)
        if arch != p.arch and get_config(arch).name != p.arch:
            raise UserError(f"preset {p.name} is for {p.arch}, not {arch}")
        method = method or p.method
        iterations = p.iterations if iterations is None else iterations
    method = method or sched.DEFAULT_METHOD
    sched.check_method(method)
    iterations = sched.DEFAULT_ITERATIONS if iterations is None else iterations
    cfg = get_config(arch)
    if preset is not None:
        tokens = p.tokens
        if method == "grid":
            tokens = tuple(math.isqrt(t) ** 2 for t in tokens)
    elif schedule is not None:
        tokens = schedule
    elif flops_ratio is not None:
        tokens = sched.solve(flops_ratio, cfg.dims, method, iterations)
    else:
        tokens = sched.dense(cfg.dims)
    model = TokenPooledViT(cfg, tokens, method, iterations)
    if checkpoint is None:
        init_random(model, seed)
        model.seed = seed
    else:
        checkpoint = os.fspath(checkpoint)
        load_state(model, checkpoint_filter(read_state_dict(checkpoint), cfg, checkpoint), checkpoint)
        model.checkpoint = os.path.abspath(checkpoint)
        model.checkpoint_sha256 = sha256(checkpoint)
    return model.eval()
