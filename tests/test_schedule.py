"""MAC counts, schedule validation, the FLOPs solver and the shipped presets."""

import subprocess
import sys

import pytest
from conftest import REPO

from tpdeploy.model import schedule as sched
from tpdeploy.model.factory import create_model
from tpdeploy.model.registry import get_config, list_archs, parameter_count

# Dense GMACs and params (M) as timm publishes them: huggingface/pytorch-image-models,
# results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv (columns infer_gmacs, param_count)
TIMM_FIGURES = {
    "deit_tiny": (1.26, 5.72),
    "deit_small": (4.61, 22.05),
    "deit_base": (17.58, 86.57),
    "deit_tiny_distilled_patch16_224": (1.27, 5.91),
    "deit_small_distilled_patch16_224": (4.63, 22.44),
    "deit_base_distilled_patch16_224": (17.68, 87.34),
    "deit3_small_patch16_224": (4.61, 22.06),
    "deit3_base_patch16_224": (17.58, 86.59),
    "vit_small_patch16_224": (4.61, 22.05),
    "vit_small_patch16_384": (15.52, 22.2),
    "vit_base_patch16_224": (17.58, 86.57),
    "vit_base_patch16_384": (55.54, 86.86),
    "vit_base_patch32_224": (4.41, 88.22),
    "vit_large_patch16_224": (61.6, 304.33),
    "vit_large_patch16_384": (191.21, 304.72),
}


def test_every_architecture_has_reference_figures():
    assert sorted(TIMM_FIGURES) == sorted(list_archs())


@pytest.mark.parametrize("arch", sorted(TIMM_FIGURES))
def test_dense_figures_match_timm(arch):
    gmacs, params_m = TIMM_FIGURES[arch]
    d = get_config(arch).dims
    assert sched.macs(sched.dense(d), d) / 1e9 == pytest.approx(gmacs, rel=0.01)
    assert parameter_count(get_config(arch)) / 1e6 == pytest.approx(params_m, abs=0.005)


def test_parameter_count_is_the_modules():
    model = create_model("deit_tiny_distilled_patch16_224")
    assert sum(p.numel() for p in model.parameters()) == parameter_count(model.cfg)


def test_pooling_cost_is_counted():
    d = get_config("deit_small").dims
    tokens = (196, 150) + (150,) * 10
    blocks_only = sched.macs(tokens, d, "topk")  # top-K is a sort: no arithmetic
    assert sched.macs(tokens, d, "wkmedoids", 3) - blocks_only == 196 * 196 * 384 + 3 * 196 * 196
    assert sched.macs(tokens, d, "kmeans", 2) - blocks_only == 2 * (196 * 150 * 384 + 196 * 384)
    assert sched.macs(tokens, d, "wkmedoids", 0) == blocks_only


@pytest.mark.parametrize("ratio", [0.45, 0.58, 0.7, 0.9])
@pytest.mark.parametrize("method", ["wkmedoids", "kmeans", "topk", "grid"])
def test_solver_meets_the_target_from_below(ratio, method):
    d = get_config("deit_small").dims
    tokens = sched.solve(ratio, d, method, 3)
    sched.validate(tokens, d, method)
    got = sched.macs(tokens, d, method, 3) / sched.macs(sched.dense(d), d)
    assert got <= ratio
    assert got > ratio - (0.05 if method == "grid" else 0.01)


@pytest.mark.parametrize("arch", ["vit_large_patch16_384", "vit_base_patch32_224", "deit_tiny_distilled_patch16_224"])
def test_solver_for_any_depth_and_token_count(arch):
    """24 blocks of 576 patches, 12 of 49, two prefix tokens and two heads."""
    d = get_config(arch).dims
    tokens = sched.solve(0.58, d, "wkmedoids", 3)
    assert len(tokens) == d.depth and tokens[0] == d.num_patches
    assert 0.57 < sched.macs(tokens, d) / sched.macs(sched.dense(d), d) <= 0.58


def test_presets_are_valid_and_on_target():
    presets = sched.presets()
    for arch in ("deit_tiny", "deit_small"):
        assert {f"{arch}_045", f"{arch}_058", f"{arch}_075"} <= set(presets)
    assert {f"{arch}_058" for arch in list_archs()} <= set(presets)
    for name, p in presets.items():
        d = get_config(p.arch).dims
        sched.validate(p.tokens, d, p.method)
        ratio = sched.macs(p.tokens, d, p.method, p.iterations) / sched.macs(sched.dense(d), d)
        assert ratio == pytest.approx(int(name[-3:]) / 100, abs=0.01), name


def test_preset_file_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'arch = "deit_tiny"\nmethod = "topk"\ntokens = [196, 196, 150, 150, 150, 150, 100, 100, 100, 100, 100, 100]\n'
    )
    model = create_model("deit_tiny", preset=str(path))
    assert model.method == "topk" and model.tokens[2] == 150
    path.write_text("arch = \n")
    with pytest.raises(Exception, match="not a valid preset"):
        create_model("deit_tiny", preset=str(path))


def test_presets_load_from_a_source_tree_that_was_not_installed():
    """The GPU check's fallback runs tpdeploy from PYTHONPATH: the presets then come from the tree's models/."""
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from tpdeploy.model import schedule; " + (
        "p = schedule.load_preset('deit_tiny_058'); print(len(schedule.presets()), p.path)"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)  # -S: no site-packages
    assert done.returncode == 0, done.stderr
    count, path = done.stdout.split()
    assert int(count) == len(sched.presets()) and path == str(REPO / "models" / "deit_tiny_058.toml")
