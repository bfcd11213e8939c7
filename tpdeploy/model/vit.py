"""The Token-Pooled Vision Transformer in PyTorch: timm's ViT modules (the same state-dict names and shapes) with
TokenPool between blocks where the plan's schedule drops, and timm's initialisation for seeded-random weights."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tpdeploy.artifacts.recipe import Recipe, WeightsOrigin
from tpdeploy.model import schedule as sched
from tpdeploy.model.plan import ModelPlan
from tpdeploy.model.registry import ViTConfig
from tpdeploy.tokenpool.reference import token_pool


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
            significance = attn.sum((1, 2))[:, self.num_prefix_tokens :]
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
    """A ViT whose patch tokens are pooled between blocks following the plan's schedule (patch tokens entering each
    block). The class token (and a distilled model's distillation token) passes every pooling step untouched.
    `origin` says where the weights come from (`tpdeploy.model.factory.create_model` knows before it builds)."""

    def __init__(self, plan: ModelPlan, origin: WeightsOrigin | None = None):
        super().__init__()
        self.plan, self.origin = plan, origin or WeightsOrigin()
        cfg = plan.cfg
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
        self.pools = nn.ModuleDict(
            {str(i): TokenPooling(plan.method, n, k, plan.iterations) for i, n, k in plan.pooling_steps}
        )

    @property
    def cfg(self) -> ViTConfig:
        return self.plan.cfg

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.plan.tokens

    @property
    def method(self) -> str:
        return self.plan.method

    @property
    def iterations(self) -> int:
        return self.plan.iterations

    @property
    def macs(self) -> int:
        return self.plan.macs

    def recipe(self, dtype: str = "fp32") -> Recipe:
        """What an exported file of this model records: enough to rebuild it, no local path."""
        return self.plan.recipe(self.origin, dtype)

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
    trained_like_std = model.cfg.embed_dim**-0.5
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
