"""Token-Pooled DeiT: timm-compatible checkpoints, every method's forward, dense == a plain DeiT."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tpdeploy import TpdeployError, create_model
from tpdeploy.images import sample_images

BLOCK_KEYS = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
              "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]


def timm_state_shapes(d, depth=12, classes=1000):
    """The state dict of timm's deit_*_patch16_224 (VisionTransformer): names and shapes."""
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, 197, d), "patch_embed.proj.weight": (d, 3, 16, 16),
              "patch_embed.proj.bias": (d,), "norm.weight": (d,), "norm.bias": (d,),
              "head.weight": (classes, d), "head.bias": (classes,)}
    per_block = [(3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    per_block = [(d,), (d,)] + per_block[:4] + [(d,), (d,)] + per_block[8:]
    for i in range(depth):
        shapes.update({f"blocks.{i}.{k}": s for k, s in zip(BLOCK_KEYS, per_block)})
    return shapes


def timm_like_state(d, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 0.02 for k, s in timm_state_shapes(d).items()}


@pytest.mark.parametrize("arch,d", [("deit_tiny", 192), ("deit_small", 384), ("deit_base", 768)])
def test_state_dict_names_and_shapes_are_timms(arch, d):
    model = create_model(arch)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == timm_state_shapes(d)


@pytest.mark.parametrize("wrap", ["plain", "model", "safetensors"])
def test_checkpoint_round_trip(tmp_path, wrap):
    state = timm_like_state(192, seed=11)
    path = tmp_path / ("ckpt.safetensors" if wrap == "safetensors" else "ckpt.pth")
    if wrap == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state, "epoch": 300} if wrap == "model" else state, path)
    model = create_model("deit_tiny", checkpoint=str(path), preset="deit_tiny_058")
    assert model.checkpoint == str(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    seeded = create_model("deit_tiny", preset="deit_tiny_058")
    images = torch.from_numpy(sample_images(2))
    with torch.no_grad():
        assert not torch.allclose(model(images), seeded(images))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(timm_like_state(192, seed=1), path)
    with pytest.raises(TpdeployError, match=r"does not fit deit_small: cls_token has shape \[1, 1, 192\], expected \[1, 1, 384\] \(it looks like deit_tiny\)"):
        create_model("deit_small", checkpoint=str(path))


def test_distilled_checkpoint_is_refused(tmp_path):
    state = timm_like_state(192, seed=1)
    state["dist_token"] = torch.zeros(1, 1, 192)
    state["pos_embed"] = torch.zeros(1, 198, 192)
    path = tmp_path / "distilled.pth"
    torch.save(state, path)
    with pytest.raises(TpdeployError, match="distilled"):
        create_model("deit_tiny", checkpoint=str(path))


@pytest.mark.parametrize("content,message", [(None, "not found"), (b"not a checkpoint", "cannot read checkpoint"),
                                              (b"", "cannot read checkpoint")])
def test_missing_or_corrupt_checkpoint(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TpdeployError, match=message):
        create_model("deit_tiny", checkpoint=str(path))


def _plain_deit(state, images, heads):
    """DeiT written out with torch.nn.functional from the state dict alone: the dense reference."""
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1), x], 1) + state["pos_embed"]
    d = x.shape[-1]
    for i in range(12):
        p = {k: state[f"blocks.{i}.{k}"] for k in BLOCK_KEYS}
        h = F.layer_norm(x, (d,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, p["attn.qkv.weight"], p["attn.qkv.bias"]).reshape(len(x), -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-1, -2)) / (d // heads) ** 0.5).softmax(-1) @ v
        x = x + F.linear(a.transpose(1, 2).reshape(len(x), -1, d), p["attn.proj.weight"], p["attn.proj.bias"])
        h = F.layer_norm(x, (d,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"])
    x = F.layer_norm(x, (d,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    return F.linear(x[:, 0], state["head.weight"], state["head.bias"])


def test_dense_equals_a_plain_deit(tmp_path):
    state = timm_like_state(192, seed=5)
    torch.save(state, tmp_path / "t.pth")
    model = create_model("deit_tiny", checkpoint=str(tmp_path / "t.pth"), method="none")
    images = torch.from_numpy(sample_images(2))
    with torch.no_grad():
        torch.testing.assert_close(model(images), _plain_deit(state, images, heads=3), rtol=1e-4, atol=1e-5)


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


@pytest.mark.parametrize("kwargs,message", [
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
])
def test_bad_model_requests_raise_one_clear_error(kwargs, message):
    with pytest.raises(TpdeployError, match=message):
        create_model("deit_tiny", **kwargs)


def test_unknown_arch():
    with pytest.raises(TpdeployError, match="unknown architecture"):
        create_model("vit_huge")


def test_timm_names_are_accepted():
    assert create_model("deit_tiny_patch16_224").cfg.name == "deit_tiny"


def test_seeded_random_weights_are_reproducible():
    a, b = create_model("deit_tiny"), create_model("deit_tiny")
    assert a.checkpoint is None
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not np.allclose(create_model("deit_tiny", seed=1).head.weight.detach(), a.head.weight.detach())
