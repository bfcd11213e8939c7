"""The registered architectures (torch-free): each one of timm's ViTs, by name, with its data config.

Each registered architecture is one of timm's: the same name, the same state-dict names and shapes (timm's
`VisionTransformer` and, for distilled DeiT, `VisionTransformerDistilled`), so a timm checkpoint file loads
strictly after the one adaptation `tpdeploy.model.checkpoint.checkpoint_filter` documents; and the data config of
timm's default pretrained weights for that name (timm's `_cfg`). `tpdeploy archs` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpdeploy.artifacts.recipe import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD, DataConfig
from tpdeploy.errors import InvalidArgumentError, UserError
from tpdeploy.model import schedule as sched


@dataclass(frozen=True)
class ViTConfig:
    """A Vision Transformer as timm builds it: the `VisionTransformer` arguments that shape its state dict and
    forward pass (pre-norm blocks, LayerNorm eps 1e-6, qkv bias, GELU, final norm then the class token's head:
    timm's global_pool 'token', so fc_norm is an Identity without parameters), and the data config of timm's
    default pretrained weights `timm_name.timm_tag`."""

    name: str  # tpdeploy's name: timm's, except the paper's deit_tiny/small/base
    embed_dim: int
    num_heads: int
    depth: int = 12
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    distilled: bool = False  # a distillation token after CLS and a second head; inference averages the heads
    layer_scale: bool = False  # per-block ls1.gamma / ls2.gamma (timm's init_values; DeiT III)
    no_embed_class: bool = False  # pos_embed covers the patch tokens only, added before CLS joins (DeiT III)
    data_config: DataConfig = DataConfig()
    timm_name: str = ""  # default: the name
    timm_tag: str = ""  # the pretrained tag whose data config this is

    def __post_init__(self):
        object.__setattr__(self, "timm_name", self.timm_name or self.name)
        if self.img_size % self.patch_size or self.data_config.input_size != self.img_size:
            raise InvalidArgumentError(
                f"{self.name}: image size {self.img_size} must be a multiple of the patch "
                f"size {self.patch_size} and the data config's input size"
            )

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: CLS, and the distillation token of distilled DeiT."""
        return 2 if self.distilled else 1

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def dims(self) -> sched.ArchDims:
        return sched.ArchDims(
            self.embed_dim,
            self.depth,
            self.num_heads,
            self.mlp_ratio,
            self.grid_size**2,
            3 * self.patch_size**2,
            self.num_classes,
            prefix_tokens=self.num_prefix_tokens,
            classifier_heads=2 if self.distilled else 1,
        )


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
register(
    ViTConfig("vit_small_patch16_384", 384, 6, img_size=384, data_config=_VIT_384, timm_tag="augreg_in21k_ft_in1k")
)
register(ViTConfig("vit_base_patch16_224", 768, 12, data_config=_VIT_224, timm_tag="augreg2_in21k_ft_in1k"))
register(
    ViTConfig("vit_base_patch16_384", 768, 12, img_size=384, data_config=_VIT_384, timm_tag="augreg_in21k_ft_in1k")
)
register(
    ViTConfig("vit_base_patch32_224", 768, 12, patch_size=32, data_config=_VIT_224, timm_tag="augreg_in21k_ft_in1k")
)
register(ViTConfig("vit_large_patch16_224", 1024, 16, depth=24, data_config=_VIT_224, timm_tag="augreg_in21k_ft_in1k"))
register(
    ViTConfig(
        "vit_large_patch16_384", 1024, 16, depth=24, img_size=384, data_config=_VIT_384, timm_tag="augreg_in21k_ft_in1k"
    )
)


def list_archs() -> list[str]:
    return list(_ARCHS)


def get_config(arch: str) -> ViTConfig:
    """An architecture by tpdeploy name (deit_small), timm name (deit_small_patch16_224) or timm name with the
    pretrained tag its data config is for (vit_base_patch16_384.augreg_in21k_ft_in1k)."""
    for cfg in _ARCHS.values():
        if arch in (cfg.name, cfg.timm_name, f"{cfg.timm_name}.{cfg.timm_tag}"):
            return cfg
    raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(_ARCHS)} (see `tpdeploy archs`)")


def parameter_count(cfg: ViTConfig) -> int:
    """The parameters of the architecture's state dict, counted from its shape (no PyTorch)."""
    d, hidden, classes = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), cfg.num_classes
    embedded = cfg.dims.num_patches + (0 if cfg.no_embed_class else cfg.num_prefix_tokens)
    block = (
        2 * d  # norm1
        + 3 * d * d
        + 3 * d  # qkv
        + d * d
        + d  # proj
        + 2 * d  # norm2
        + d * hidden
        + hidden  # fc1
        + hidden * d
        + d  # fc2
        + (2 * d if cfg.layer_scale else 0)
    )
    heads = 2 if cfg.distilled else 1
    return (
        3 * cfg.patch_size**2 * d
        + d  # patch embedding
        + cfg.num_prefix_tokens * d
        + embedded * d  # prefix tokens, position embedding
        + cfg.depth * block
        + 2 * d  # blocks, final norm
        + heads * (d * classes + classes)
    )
