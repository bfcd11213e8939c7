"""Token-Pooled DeiT (SPEC section 2): registered architectures, the model, checkpoint loading.

State-dict names follow timm's `deit_*_patch16_224` (VisionTransformer), so timm checkpoints and the
original DeiT `.pth` files (which wrap the same state dict under "model") load unchanged.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tpdeploy import __version__
from tpdeploy import schedule as sched
from tpdeploy.artifacts.files import sha256
from tpdeploy.artifacts.recipe import DataConfig, Recipe
from tpdeploy.errors import InvalidArgumentError, UserError, check_int, check_number, one_line
from tpdeploy.op import token_pool


@dataclass(frozen=True)
class DeiTConfig:
    name: str
    embed_dim: int
    num_heads: int
    depth: int = 12
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    data_config: DataConfig = DataConfig()  # timm's deit _cfg: bicubic, crop_pct 0.9, ImageNet mean/std

    @property
    def timm_name(self) -> str:
        return f"{self.name}_patch{self.patch_size}_{self.img_size}"

    @property
    def dims(self) -> sched.ArchDims:
        return sched.ArchDims(self.embed_dim, self.depth, self.num_heads, self.mlp_ratio,
                              (self.img_size // self.patch_size) ** 2, 3 * self.patch_size ** 2, self.num_classes)


_ARCHS: dict[str, DeiTConfig] = {}


def register(cfg: DeiTConfig) -> DeiTConfig:
    _ARCHS[cfg.name] = cfg
    return cfg


register(DeiTConfig("deit_tiny", embed_dim=192, num_heads=3))
register(DeiTConfig("deit_small", embed_dim=384, num_heads=6))
register(DeiTConfig("deit_base", embed_dim=768, num_heads=12))


def list_archs() -> list[str]:
    return list(_ARCHS)


def get_config(arch: str) -> DeiTConfig:
    """An architecture by tpdeploy name (deit_small) or timm name (deit_small_patch16_224)."""
    for cfg in _ARCHS.values():
        if arch in (cfg.name, cfg.timm_name):
            return cfg
    raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(_ARCHS)}")


class PatchEmbed(nn.Module):
    def __init__(self, cfg: DeiTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, want_significance: bool):
        """Returns the output and, if asked, the significance of each patch token: the attention it
        receives, summed over heads and queries (CLS query included, CLS column excluded)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        significance = None
        if want_significance:  # the probabilities are needed, so no fused kernel here
            # in float32 even in an fp16 model: pooling decisions follow these sums, and fp16 rounding would
            # reorder tokens of nearly equal significance
            attn = ((q.float() * (c // self.num_heads) ** -0.5) @ k.float().transpose(-2, -1)).softmax(-1)
            significance = attn.sum((1, 2))[:, 1:]
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


class Block(nn.Module):
    def __init__(self, cfg: DeiTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x, want_significance: bool = False):
        out, significance = self.attn(self.norm1(x), want_significance)
        x = x + out
        return x + self.mlp(self.norm2(x)), significance


class TokenPooling(nn.Module):
    """Replaces the patch tokens by K pooled ones (the CLS token is not touched)."""

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


class TokenPooledDeiT(nn.Module):
    """DeiT whose patch tokens are pooled between blocks following `tokens` (patch tokens entering each block)."""

    def __init__(self, cfg: DeiTConfig, tokens, method: str = sched.DEFAULT_METHOD,
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
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.dims.num_patches + 1, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.num_classes)
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
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for i, block in enumerate(self.blocks):
            pool = self.pools[str(i)] if str(i) in self.pools else None
            x, significance = block(x, want_significance=pool is not None and pool.method != "grid")
            if pool is not None:
                x = torch.cat([x[:, :1], pool(x[:, 1:], significance)], dim=1)
        return self.head(self.norm(x)[:, 0])


def init_random(model: TokenPooledDeiT, seed: int = 0) -> None:
    """timm's ViT initialisation, seeded, for runs without a checkpoint; except that the qkv and head weights
    get std 1/sqrt(dim), so attention and logits are as peaked as a trained model's rather than uniform
    (uniform attention would make every token equally significant and pooling decisions arbitrary)."""
    gen = torch.Generator().manual_seed(seed)
    trained_like_std = model.cfg.embed_dim ** -0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.fill_(1.0 if ("norm" in name and name.endswith("weight")) else 0.0)
            elif name == "cls_token":
                p.normal_(0, 1e-6, generator=gen)
            else:
                std = trained_like_std if name.endswith(("qkv.weight", "head.weight")) else 0.02
                p.copy_(torch.nn.init.trunc_normal_(torch.empty_like(p), std=std, generator=gen))


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A timm/DeiT state dict from .pth/.pt/.bin (also wrapped under "model" or "state_dict") or .safetensors."""
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
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state(model: TokenPooledDeiT, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; a state dict of another architecture is refused with what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        guess = _guess_arch(state)
        hint = f" (it looks like {guess})" if guess and guess != model.cfg.name else ""
        if wrong:
            k = wrong[0]
            detail = f"{k} has shape {list(state[k].shape)}, expected {list(expected[k].shape)}"
        elif missing:
            detail = f"{len(missing)} missing keys, e.g. {missing[0]}"
        else:
            detail = f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}"
        raise UserError(f"checkpoint {source} does not fit {model.cfg.name}: {detail}{hint}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _guess_arch(state) -> str | None:
    pos = state.get("pos_embed")
    dim = pos.shape[-1] if isinstance(pos, torch.Tensor) else None
    name = next((cfg.name for cfg in _ARCHS.values() if cfg.embed_dim == dim), None)
    return f"a distilled {name}" if name and "dist_token" in state else name


def create_model(arch: str, checkpoint: str | None = None, flops_ratio: float | None = None,
                 preset: str | None = None, schedule=None, method: str | None = None,
                 iterations: int | None = None, seed: int = 0) -> TokenPooledDeiT:
    """A Token-Pooled DeiT in eval mode. At most one of flops_ratio, preset, schedule; none means dense
    tokens (196 throughout). A preset brings its own method and iterations unless these are given.
    Without a checkpoint the weights are seeded-random (`model.checkpoint` is None)."""
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
    model = TokenPooledDeiT(cfg, tokens, method, iterations)
    if checkpoint is None:
        init_random(model, seed)
        model.seed = seed
    else:
        checkpoint = os.fspath(checkpoint)
        load_state(model, read_state_dict(checkpoint), checkpoint)
        model.checkpoint = os.path.abspath(checkpoint)
        model.checkpoint_sha256 = sha256(checkpoint)
    return model.eval()
