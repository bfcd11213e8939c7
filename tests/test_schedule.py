"""MAC counts, schedule validation, the FLOPs solver and the shipped presets."""
import pytest

from tpdeploy import schedule as sched
from tpdeploy.model import create_model, get_config


@pytest.mark.parametrize("arch,gmacs,params_m", [("deit_tiny", 1.26, 5.7), ("deit_small", 4.61, 22.1),
                                                  ("deit_base", 17.58, 86.6)])
def test_dense_figures_match_timm(arch, gmacs, params_m):
    d = get_config(arch).dims
    assert sched.macs(sched.dense(d), d) / 1e9 == pytest.approx(gmacs, rel=0.01)
    model = create_model(arch)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=0.01)


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


def test_presets_are_valid_and_on_target():
    presets = sched.presets()
    for arch in ("deit_tiny", "deit_small"):
        assert {f"{arch}_045", f"{arch}_058", f"{arch}_075"} <= set(presets)
    for name, p in presets.items():
        d = get_config(p.arch).dims
        sched.validate(p.tokens, d, p.method)
        ratio = sched.macs(p.tokens, d, p.method, p.iterations) / sched.macs(sched.dense(d), d)
        assert ratio == pytest.approx(int(name[-3:]) / 100, abs=0.01), name


def test_preset_file_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('arch = "deit_tiny"\nmethod = "topk"\ntokens = [196, 196, 150, 150, 150, 150, 100, 100, 100, 100, 100, 100]\n')
    model = create_model("deit_tiny", preset=str(path))
    assert model.method == "topk" and model.tokens[2] == 150
    path.write_text("arch = \n")
    with pytest.raises(Exception, match="not a valid preset"):
        create_model("deit_tiny", preset=str(path))
