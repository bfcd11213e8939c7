"""`tpdeploy sweep`: every point measured once, saved as it finishes, resumed after an interruption."""

import csv
import json
import os

import pytest

Image = pytest.importorskip("PIL.Image", reason="needs Pillow")
pytest.importorskip("matplotlib", reason="needs matplotlib")

from test_cli import assert_user_error, run

from tpdeploy.errors import UserError
from tpdeploy.tasks import sweep

FIGURE_PIXELS = tuple(round(x * sweep.FIGURE_DPI) for x in sweep.FIGURE_INCHES)


def plan(out_dir, **changes):
    args = dict(
        arch="deit_tiny",
        checkpoint=None,
        methods=["wkmedoids", "topk"],
        ratios=[0.5, 0.75],
        out_dir=str(out_dir),
        limit=4,
        backend="torch",
        batch=2,
        duration_s=0.05,
        warmup_ms=0.0,
    )
    return sweep.SweepPlan(**{**args, **changes})


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_redoing_points(tmp_path):
    first = sweep.Sweep(plan(tmp_path))
    keys = [("none", None), ("wkmedoids", 0.5), ("wkmedoids", 0.75), ("topk", 0.5), ("topk", 0.75)]
    assert [k.key for k in first.todo] == keys
    measured = []
    for point in first.run():  # stopped after two points, as by Ctrl+C between them
        measured.append(point)
        if len(measured) == 2:
            break
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [p["method"] for p in saved["points"]] == ["none", "wkmedoids"]

    again = sweep.Sweep(plan(tmp_path))
    rest = [("wkmedoids", 0.75), ("topk", 0.5), ("topk", 0.75)]
    assert [k.key for k in again.todo] == rest
    assert [p.key for p in again.run()] == rest
    assert again.points[:2] == measured  # the first two, latencies included, are not measured again
    figure = again.draw()

    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["points"]) == 5 and results["config"]["arch"] == "deit_tiny"
    dense = results["points"][0]
    assert dense["tokens"] == [196] * 12 and dense["agreement"] == 1.0 and dense["top1"] is None
    for p in results["points"][1:]:
        assert p["flops_ratio"] == pytest.approx(p["ratio"], abs=0.02) and p["images"] == 4
        assert p["tokens"][0] == 196 and p["tokens"][-1] < 196 and p["latency_samples"] >= sweep.MIN_TIMING_ROUNDS
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["ratio"]) for r in rows] == [
        ("none", ""),
        ("wkmedoids", "0.5"),
        ("wkmedoids", "0.75"),
        ("topk", "0.5"),
        ("topk", "0.75"),
    ]
    assert float(rows[1]["relative_latency"]) == pytest.approx(
        float(rows[1]["latency_ms"]) / float(rows[1]["dense_latency_ms"])
    )
    with Image.open(figure) as img:
        assert img.format == "PNG" and img.size == FIGURE_PIXELS
    assert sorted(os.listdir(tmp_path)) == ["dense_top1.npy", "images", "results.csv", "results.json", "sweep.png"]

    assert sweep.Sweep(plan(tmp_path)).todo == []
    with pytest.raises(UserError, match="holds a sweep of another configuration .*batch"):
        sweep.Sweep(plan(tmp_path, batch=4))


@pytest.mark.slow
def test_sweep_command_on_onnxruntime(tmp_path):
    out = tmp_path / "out"
    args = [
        "sweep",
        "--arch",
        "deit_tiny",
        "--methods",
        "grid",
        "--ratios",
        "0.6",
        "--limit",
        3,
        "--batch",
        1,
        "--duration",
        0.1,
        "--warmup-ms",
        0,
        "-o",
        out,
    ]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert "grid 0.6x" in result.stdout and "wrote" in result.stdout and "validating" in result.stderr
    assert sorted(os.listdir(out)) == ["dense_top1.npy", "images", "results.csv", "results.json", "sweep.png"]
    with Image.open(out / "sweep.png") as img:
        assert img.size == FIGURE_PIXELS
    tokens = json.loads((out / "results.json").read_text())["points"][1]["tokens"]
    assert all(int(t**0.5) ** 2 == t for t in tokens)  # grid pools to square grids
    resumed = run(*args)
    assert resumed.returncode == 0 and "2 of 2 points already" in resumed.stderr
    assert "validating" not in resumed.stderr  # nothing exported again


def test_sweep_errors_are_one_line(tmp_path):
    assert_user_error(
        run("sweep", "--arch", "deit_tiny", "--methods", "grid", "--ratios", "0.01", "-o", tmp_path), "grid at 0.01x"
    )
    assert_user_error(
        run("sweep", "--arch", "deit_tiny", "--ratios", "0.5,abc", "-o", tmp_path),
        "--ratios must be a comma-separated list",
    )
    assert_user_error(run("sweep", "--arch", "deit_tiny", "--methods", "none", "-o", tmp_path), "method must be one of")
    (tmp_path / "file").write_text("x")
    assert_user_error(run("sweep", "--arch", "deit_tiny", "-o", tmp_path / "file"), "is a file, not a folder")
    assert sorted(os.listdir(tmp_path)) == ["file"]
