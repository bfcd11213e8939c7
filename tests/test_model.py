"""Token-Pooled ViTs: timm-compatible checkpoints of every family, the checkpoint filter, every method's forward,
dense == a plain ViT written from the state dict."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tpdeploy import TpdeployError, create_model
from tpdeploy.data.samples import sample_images
from tpdeploy.model import schedule as sched
from tpdeploy.model.checkpoint import checkpoint_filter, load_state, state_shapes
from tpdeploy.model.plan import ModelPlan
from tpdeploy.model.registry import get_config, list_archs
from tpdeploy.model.vit import TokenPooledViT

BLOCK_KEYS = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
]

# timm's architectures (timm/models/deit.py, vision_transformer.py): embed_dim, depth, patch size, image size and
# layout: "vit" (VisionTransformer: CLS; pos_embed over CLS and the patches), "distilled"
# (VisionTransformerDistilled: CLS and dist_token, both in pos_embed; head_dist), "deit3" (no_embed_class=True:
# pos_embed over the patches only; init_values: ls1.gamma and ls2.gamma in every block)
TIMM = {
    "deit_tiny": (192, 12, 16, 224, "vit"),
    "deit_small": (384, 12, 16, 224, "vit"),
    "deit_base": (768, 12, 16, 224, "vit"),
    "deit_tiny_distilled_patch16_224": (192, 12, 16, 224, "distilled"),
    "deit_small_distilled_patch16_224": (384, 12, 16, 224, "distilled"),
    "deit_base_distilled_patch16_224": (768, 12, 16, 224, "distilled"),
    "deit3_small_patch16_224": (384, 12, 16, 224, "deit3"),
    "deit3_base_patch16_224": (768, 12, 16, 224, "deit3"),
    "vit_small_patch16_224": (384, 12, 16, 224, "vit"),
    "vit_small_patch16_384": (384, 12, 16, 384, "vit"),
    "vit_base_patch16_224": (768, 12, 16, 224, "vit"),
    "vit_base_patch16_384": (768, 12, 16, 384, "vit"),
    "vit_base_patch32_224": (768, 12, 32, 224, "vit"),
    "vit_large_patch16_224": (1024, 24, 16, 224, "vit"),
    "vit_large_patch16_384": (1024, 24, 16, 384, "vit"),
}


def timm_layout(arch):
    """The state dict of timm's model `arch`: names and shapes."""
    d, depth, patch, img, layout = TIMM[arch]
    n = (img // patch) ** 2
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, n if layout == "deit3" else n + (2 if layout == "distilled" else 1), d),
        "patch_embed.proj.weight": (d, 3, patch, patch),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
        "head.weight": (1000, d),
        "head.bias": (1000,),
    }
    if layout == "distilled":
        shapes.update({"dist_token": (1, 1, d), "head_dist.weight": (1000, d), "head_dist.bias": (1000,)})
    per_block = [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    block = dict(zip(BLOCK_KEYS, per_block))
    if layout == "deit3":
        block.update({"ls1.gamma": (d,), "ls2.gamma": (d,)})
    for i in range(depth):
        shapes.update({f"blocks.{i}.{k}": s for k, s in block.items()})
    return shapes


def timm_like_state(arch, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 0.02 for k, s in timm_layout(arch).items()}


def meta_model(arch):
    """The model's structure without weights (the meta device): enough to see what a checkpoint must fit."""
    cfg = get_config(arch)
    with torch.device("meta"):
        return TokenPooledViT(ModelPlan(cfg, sched.dense(cfg.dims), method="none"))


def test_every_registered_architecture_is_in_the_table():
    assert sorted(list_archs()) == sorted(TIMM)


@pytest.mark.parametrize("arch", sorted(TIMM))
def test_state_dict_names_and_shapes_are_timms(arch):
    assert state_shapes(get_config(arch)) == timm_layout(arch)


def test_the_module_itself_has_timms_state_dict():
    model = create_model("deit3_small_patch16_224")  # state_shapes builds on the meta device; this one for real
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == timm_layout("deit3_small_patch16_224")


@pytest.mark.parametrize("wrap", ["plain", "model", "safetensors"])
def test_checkpoint_round_trip(tmp_path, wrap):
    state = timm_like_state("deit_tiny", seed=11)
    path = tmp_path / ("ckpt.safetensors" if wrap == "safetensors" else "ckpt.pth")
    if wrap == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state, "epoch": 300} if wrap == "model" else state, path)
    model = create_model("deit_tiny", checkpoint=str(path), preset="deit_tiny_058")
    assert model.origin.checkpoint_path == str(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    seeded = create_model("deit_tiny", preset="deit_tiny_058")
    images = torch.from_numpy(sample_images(2))
    with torch.no_grad():
        assert not torch.allclose(model(images), seeded(images))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(timm_like_state("deit_tiny", seed=1), path)
    with pytest.raises(
        TpdeployError,
        match=r"does not fit deit_small: cls_token has shape \[1, 1, 192\], expected \[1, 1, 384\] "
        r"\(it looks like deit_tiny\)",
    ):
        create_model("deit_small", checkpoint=str(path))


@pytest.mark.parametrize(
    "source,target,message",
    [
        (
            "deit_tiny_distilled_patch16_224",
            "deit_tiny",
            r"pos_embed has shape \[1, 198, 192\], expected \[1, 197, 192\]; 3 unexpected keys, e\.g\. dist_token "
            r"\(it looks like deit_tiny_distilled_patch16_224\)",
        ),
        (
            "deit_base",
            "deit_base_distilled_patch16_224",
            r"pos_embed has shape \[1, 197, 768\], expected \[1, 198, 768\]; 3 missing keys, e\.g\. dist_token "
            r"\(it looks like deit_base or vit_base_patch16_224\)",
        ),
        (
            "deit3_small_patch16_224",
            "vit_small_patch16_224",
            r"pos_embed has shape \[1, 196, 384\], expected \[1, 197, 384\]; "
            r"24 unexpected keys, e\.g\. blocks\.0\.ls1\.gamma "
            r"\(it looks like deit3_small_patch16_224\)",
        ),
        (
            "vit_small_patch16_224",
            "deit3_small_patch16_224",
            r"pos_embed has shape \[1, 197, 384\], expected \[1, 196, 384\]; "
            r"24 missing keys, e\.g\. blocks\.0\.ls1\.gamma "
            r"\(it looks like deit_small or vit_small_patch16_224\)",
        ),
        (
            "vit_base_patch32_224",
            "vit_base_patch16_224",  # pos_embed is resampled 7x7 -> 14x14; the patches do not fit
            r"patch_embed\.proj\.weight has shape \[768, 3, 32, 32\], expected \[768, 3, 16, 16\] "
            r"\(it looks like vit_base_patch32_224\)$",
        ),
        (
            "vit_large_patch16_384",
            "vit_base_patch16_384",
            r"cls_token has shape \[1, 1, 1024\], expected \[1, 1, 768\]; "
            r"144 unexpected keys, e\.g\. blocks\.12\.norm1\.weight "
            r"\(it looks like vit_large_patch16_384\)",
        ),
    ],
)
def test_a_neighbouring_architecture_is_refused_with_what_does_not_fit(source, target, message):
    """Shapes only (meta tensors): the refusal comes before any weight is copied."""
    state = {k: torch.empty(s, device="meta") for k, s in timm_layout(source).items()}
    with pytest.raises(TpdeployError, match=f"checkpoint x.pth does not fit {target}: {message}"):
        load_state(meta_model(target), checkpoint_filter(state, get_config(target), "x.pth"), "x.pth")


def test_pre_logits_are_refused_not_dropped():
    """timm's filter drops a representation layer (pre_logits); that would change what the model computes."""
    state = {k: torch.empty(s, device="meta") for k, s in timm_layout("vit_base_patch16_224").items()}
    state.update(
        {
            "pre_logits.fc.weight": torch.empty(768, 768, device="meta"),
            "pre_logits.fc.bias": torch.empty(768, device="meta"),
        }
    )
    with pytest.raises(TpdeployError, match=r"2 unexpected keys, e\.g\. pre_logits\.fc\.weight$"):
        load_state(
            meta_model("vit_base_patch16_224"), checkpoint_filter(state, get_config("vit_base_patch16_224")), "x.pth"
        )


@pytest.mark.parametrize(
    "arch,grid",
    [("deit3_small_patch16_224", 24), ("deit_tiny_distilled_patch16_224", 24), ("vit_small_patch16_384", 14)],
)
def test_foreign_layouts_are_adapted_by_the_filter_then_load_strictly(tmp_path, arch, grid):
    """A DDP checkpoint (module.) of a training run (under state_dict), DeiT III's original gamma_1/gamma_2 names,
    position embeddings for another grid: timm's resample_abs_pos_embed (prefix kept, grid bicubic, antialiased)."""
    cfg = get_config(arch)
    state = timm_like_state(arch, seed=3)
    prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
    old_pos = torch.randn(1, prefix + grid * grid, cfg.embed_dim, generator=torch.Generator().manual_seed(4))
    foreign = {
        "module." + k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v
        for k, v in state.items()
        if k != "pos_embed"
    }
    foreign["module.pos_embed"] = old_pos
    torch.save({"state_dict": foreign, "epoch": 3}, tmp_path / "foreign.pth")
    loaded = create_model(arch, checkpoint=str(tmp_path / "foreign.pth"), method="none").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k != "pos_embed")
    patches = old_pos[:, prefix:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    want = F.interpolate(patches, size=(cfg.grid_size,) * 2, mode="bicubic", antialias=True)
    want = torch.cat([old_pos[:, :prefix], want.permute(0, 2, 3, 1).reshape(1, cfg.grid_size**2, -1)], dim=1)
    assert torch.equal(loaded["pos_embed"], want)


def test_a_checkpoint_without_tensors_is_refused(tmp_path):
    torch.save({"model": {"epoch": torch.tensor(3), "note": 1}}, tmp_path / "odd.pth")
    with pytest.raises(TpdeployError, match="holds no state dict of tensors"):
        create_model("deit_tiny", checkpoint=str(tmp_path / "odd.pth"))


@pytest.mark.parametrize(
    "content,message",
    [(None, "not found"), (b"not a checkpoint", "is not a checkpoint"), (b"", "is not a checkpoint")],
)
def test_missing_or_corrupt_checkpoint(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TpdeployError, match=message):
        create_model("deit_tiny", checkpoint=str(path))


def _plain_vit(state, images):
    """A ViT written out with torch.nn.functional from a timm state dict alone: the dense reference. Every
    registered architecture has 64-channel heads."""
    w = state["patch_embed.proj.weight"]
    d, patch = w.shape[0], w.shape[-1]
    heads = d // 64
    x = F.conv2d(images, w, state["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    prefix = torch.cat([state[t].expand(len(x), -1, -1) for t in ("cls_token", "dist_token") if t in state], 1)
    if state["pos_embed"].shape[1] == x.shape[1]:  # DeiT III: positions of the patches, added before CLS joins
        x = torch.cat([prefix, x + state["pos_embed"]], 1)
    else:
        x = torch.cat([prefix, x], 1) + state["pos_embed"]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        p = {k[len(f"blocks.{i}.") :]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (d,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        q, k, v = (
            F.linear(h, p["attn.qkv.weight"], p["attn.qkv.bias"])
            .reshape(len(x), -1, 3, heads, d // heads)
            .permute(2, 0, 3, 1, 4)
        )
        a = ((q @ k.transpose(-1, -2)) / (d // heads) ** 0.5).softmax(-1) @ v
        a = F.linear(a.transpose(1, 2).reshape(len(x), -1, d), p["attn.proj.weight"], p["attn.proj.bias"])
        x = x + a * p.get("ls1.gamma", 1.0)
        h = F.layer_norm(x, (d,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"]
        )
        x = x + h * p.get("ls2.gamma", 1.0)
    x = F.layer_norm(x, (d,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    logits = F.linear(x[:, 0], state["head.weight"], state["head.bias"])
    if "head_dist.weight" in state:  # timm's inference: the mean of the class and distillation heads
        logits = (logits + F.linear(x[:, 1], state["head_dist.weight"], state["head_dist.bias"])) / 2
    return logits


@pytest.mark.parametrize(
    "arch",
    [
        "deit_tiny",
        "deit_tiny_distilled_patch16_224",
        "deit3_small_patch16_224",
        "vit_small_patch16_384",
        "vit_base_patch32_224",
    ],
)
def test_a_timm_checkpoint_loads_strictly_and_the_dense_model_is_a_plain_vit(tmp_path, arch):
    """One small configuration per family: DeiT, distilled DeiT, DeiT III, ViT at 384 px (576 patches), ViT/32."""
    state = timm_like_state(arch, seed=5)
    save_file(state, str(tmp_path / "t.safetensors"))
    model = create_model(arch, checkpoint=str(tmp_path / "t.safetensors"), method="none")
    images = torch.from_numpy(sample_images(2, get_config(arch).img_size))
    with torch.no_grad():
        torch.testing.assert_close(model(images), _plain_vit(state, images), rtol=1e-4, atol=1e-5)


def test_distilled_tokens_are_never_pooled_and_the_logits_average_both_heads():
    model = create_model("deit_tiny_distilled_patch16_224", preset="deit_tiny_distilled_patch16_224_058")
    blocks, final = [], []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: blocks.append((i[0], o[0])))
    model.norm.register_forward_hook(lambda m, i, o: final.append(o))
    with torch.no_grad():
        logits = model(torch.from_numpy(sample_images(2)))
    assert len(model.pools) > 0
    for i, ((_, out), (nxt, _)) in enumerate(zip(blocks, blocks[1:])):
        assert torch.equal(nxt[:, :2], out[:, :2])  # CLS and the distillation token pass untouched
        assert nxt.shape[1] == 2 + model.tokens[i + 1]
        # medoids: every patch token entering the next block is one this block produced, never a prefix token
        assert (nxt[:, 2:, None] == out[:, None, 2:]).all(-1).any(-1).all()
        assert not (nxt[:, 2:, None] == out[:, None, :2]).all(-1).any()
    z = final[0]
    head = F.linear(z[:, 0], model.head.weight, model.head.bias)
    head_dist = F.linear(z[:, 1], model.head_dist.weight, model.head_dist.bias)
    torch.testing.assert_close(logits, (head + head_dist) / 2)
    assert not torch.allclose(logits, head) and not torch.allclose(logits, head_dist)


def test_significance_of_a_distilled_model_leaves_out_both_prefix_tokens():
    model = create_model("deit_tiny_distilled_patch16_224", method="none")
    x = torch.randn(2, 198, 192)
    _, s = model.blocks[0].attn(x, want_significance=True)
    attn_sum = 3 * 198  # each of the 3 heads x 198 queries spreads probability 1 over all 198 columns
    assert s.shape == (2, 196) and torch.all(s > 0) and torch.all(s.sum(1) < attn_sum)


@pytest.mark.parametrize("method", ["wkmedoids", "kmedoids", "wkmeans", "kmeans", "topk", "grid", "none"])
def test_forward_of_every_method(method):
    model = create_model("deit_tiny", flops_ratio=None if method == "none" else 0.6, method=method)
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: seen.append(o[0].shape[1] - 1))
    with torch.no_grad():
        logits = model(torch.from_numpy(sample_images(2)))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    # the patch tokens leaving each block: the next block's count, pooling included
    assert seen[:-1] == list(model.tokens[:-1])
    if method != "none":
        assert model.tokens[-1] < 196 and len(model.pools) > 0


def test_pooling_changes_the_output_but_keeps_the_prediction_close():
    images = torch.from_numpy(sample_images(4))
    with torch.no_grad():
        dense = create_model("deit_tiny", method="none")(images)
        pooled = create_model("deit_tiny", preset="deit_tiny_075")(images)
    assert not torch.equal(dense, pooled)
    assert F.cosine_similarity(dense, pooled).min() > 0.9


def test_significance_is_attention_received():
    model = create_model("deit_tiny", method="none")
    x = torch.randn(2, 197, 192)
    _, s = model.blocks[0].attn(x, want_significance=True)
    assert s.shape == (2, 196)
    # each query's probabilities sum to 1: all heads x all queries = heads * 197, minus what CLS received
    assert torch.all(s.sum(1) < 3 * 197) and torch.all(s > 0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"schedule": [196] * 11 + [200]}, "not non-increasing"),
        ({"schedule": [196] * 11}, "one per block"),
        ({"schedule": [180] + [100] * 11}, "start at 196"),
        ({"schedule": [196] * 6 + [0] * 6}, "at least 1"),
        ({"schedule": [196] * 6 + [50] * 6, "method": "grid"}, "not a square"),
        ({"schedule": [196] * 6 + [100] * 6, "method": "none"}, "dense"),
        ({"flops_ratio": 0.02}, "below the smallest reachable"),
        ({"flops_ratio": 0.6, "preset": "deit_tiny_058"}, "at most one"),
        ({"preset": "deit_small_058"}, "is for deit_small"),
        ({"preset": "nope"}, "unknown preset"),
        ({"method": "kmedian"}, "unknown method"),
        ({"iterations": -1}, "iterations"),
    ],
)
def test_bad_model_requests_raise_one_clear_error(kwargs, message):
    with pytest.raises(TpdeployError, match=message):
        create_model("deit_tiny", **kwargs)


def test_unknown_arch():
    with pytest.raises(TpdeployError, match="unknown architecture"):
        create_model("vit_huge")


def test_timm_names_are_accepted():
    assert create_model("deit_tiny_patch16_224").cfg.name == "deit_tiny"
    assert get_config("vit_base_patch16_384.augreg_in21k_ft_in1k").name == "vit_base_patch16_384"
    with pytest.raises(TpdeployError, match="unknown architecture"):
        get_config("vit_base_patch16_384.orig_in21k_ft_in1k")  # only the tag whose data config is recorded


def test_seeded_random_weights_are_reproducible():
    a, b = create_model("deit_tiny"), create_model("deit_tiny")
    assert a.origin.checkpoint_path is None
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not np.allclose(create_model("deit_tiny", seed=1).head.weight.detach(), a.head.weight.detach())
