"""The `tpdeploy` command end to end, through a subprocess, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import FAMILIES
from test_model import timm_like_state

from tpdeploy.model.registry import get_config, list_archs

TPDEPLOY = [sys.executable, "-m", "tpdeploy"]


def run(*args, cwd=None):
    return subprocess.run(TPDEPLOY + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=900)


def assert_user_error(result, message):
    """One clear line on stderr, exit code 1, no traceback."""
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    pooled = run("export", "--preset", "deit_tiny_058", "-o", "tp.onnx", cwd=folder)
    dense = run("export", "--arch", "deit_tiny", "--method", "none", "-o", "dense.onnx", cwd=folder)
    return folder, pooled, dense


def test_info_json():
    result = run("info", "--preset", "deit_small_058", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["arch"] == "deit_small" and info["method"] == "wkmedoids" and len(info["tokens"]) == 12
    assert info["gmacs"] == pytest.approx(0.58 * info["gmacs_dense"], abs=0.01 * info["gmacs_dense"])
    assert info["params_m"] == pytest.approx(22.05, abs=0.01)


def test_info_table():
    result = run("info", "--arch", "deit_tiny", "--schedule", ",".join(["196"] * 6 + ["100"] * 6), "--method", "topk")
    assert result.returncode == 0 and "<- pooled" in result.stdout and "GMACs" in result.stdout
    assert "seeded-random" in result.stdout + result.stderr


def test_archs_lists_every_architecture_with_its_figures_and_presets():
    listed = json.loads(run("archs", "--json").stdout)
    assert [a["arch"] for a in listed] == list_archs()
    vit = next(a for a in listed if a["arch"] == "vit_base_patch16_384")
    assert vit["timm"] == "vit_base_patch16_384.augreg_in21k_ft_in1k" and vit["patch_tokens"] == 576
    assert vit["gmacs_dense"] == pytest.approx(55.54, rel=0.01) and vit["params_m"] == pytest.approx(86.86, abs=0.01)
    assert vit["data_config"]["crop_pct"] == 1.0 and vit["data_config"]["mean"] == [0.5, 0.5, 0.5]
    assert vit["presets"] == ["vit_base_patch16_384_058"]
    table = run("archs").stdout.splitlines()
    assert table[0].split()[:3] == ["arch", "blocks", "dim"] and len(table) == len(listed) + 2
    assert table[-2].split()[:4] == ["vit_large_patch16_384", "24", "1024", "1+576"]


@pytest.mark.parametrize("arch", FAMILIES)
def test_info_and_bench_on_every_family(family_onnx, arch):
    _, path, _ = family_onnx(arch)
    info = json.loads(run("info", path, "--json").stdout)
    assert info["arch"] == arch and info["token_pool_nodes"] == 11
    assert info["data_config"] == get_config(arch).data_config.describe()
    bench = run("bench", path, "--batch", 1, "--iterations", 1, "--warmup-ms", 0)
    assert bench.returncode == 0 and "p99" in bench.stdout, bench.stderr


def test_export_prints_what_it_built(models):
    folder, pooled, dense = models
    assert pooled.returncode == 0, pooled.stderr
    assert "11 TokenPool nodes" in pooled.stdout and "validation vs PyTorch" in pooled.stdout
    assert "tracing" in pooled.stderr and "validating" in pooled.stderr  # progress
    assert dense.returncode == 0, dense.stderr
    assert sorted(os.listdir(folder)) == ["dense.onnx", "tp.onnx"]  # no temporary files left
    info = json.loads(run("info", folder / "tp.onnx", "--json").stdout)
    assert info["token_pool_nodes"] == 11 and info["local_functions"] == ["tpdeploy::TokenPool"]


def test_bench_json_with_baseline(models):
    folder = models[0]
    result = run(
        "bench",
        folder / "tp.onnx",
        "--baseline",
        folder / "dense.onnx",
        "--batch",
        2,
        "--iterations",
        12,
        "--warmup-ms",
        50,
        "--json",
        folder / "bench.json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads((folder / "bench.json").read_text())
    assert set(data["latency_ms"]) == {"min", "mean", "median", "p90", "p95", "p99", "max"}
    lat = data["latency_ms"]
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["max"]
    assert lat["p95"] is None and lat["p99"] is None  # 12 samples resolve p90, not p95 (20) or p99 (100)
    assert data["samples"] == data["baseline"]["samples"] == 12
    assert data["batch"] == 2 and data["backend"] == "onnxruntime-cpu" and data["machine"]["cpu_count"] >= 1
    assert data["throughput"] == pytest.approx(2e3 / lat["mean"])
    assert data["speedup"] == pytest.approx(data["baseline"]["latency_ms"]["median"] / lat["median"])
    assert data["onnxruntime_spinning"] is False and "spinning is off" in result.stderr
    assert "speed-up vs baseline" in result.stdout and "n/a" in result.stdout
    os.unlink(folder / "bench.json")


def test_bench_torch_backend(models):
    result = run("bench", models[0] / "tp.onnx", "--backend", "torch", "--iterations", 2, "--warmup-ms", 10)
    assert result.returncode == 0, result.stderr
    assert "tp.onnx" in result.stdout


def test_compare_exit_codes(models):
    folder = models[0]
    same = run("compare", folder / "tp.onnx", "--batch", 2)  # vs the PyTorch model it was exported from
    assert same.returncode == 0 and "PASSED" in same.stdout, same.stdout + same.stderr
    different = run("compare", folder / "tp.onnx", folder / "dense.onnx", "--batch", 2)
    assert different.returncode == 1 and "FAILED" in different.stdout
    assert "top-1 agreement" in different.stdout


@pytest.mark.slow
def test_bad_checkpoints_and_schedules(tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage")
    torch.save(timm_like_state("deit_small", seed=0), tmp_path / "small.pth")
    cases = [
        (["--checkpoint", tmp_path / "nope.pth"], "checkpoint not found"),
        (["--checkpoint", tmp_path / "corrupt.pth"], "corrupt.pth is not a checkpoint"),
        (["--arch", "deit_tiny", "--checkpoint", tmp_path / "small.pth"], "does not fit deit_tiny"),
        (["--schedule", "196,196,200,100,100,100,100,100,100,100,100,100"], "not non-increasing"),
        (["--schedule", "196,a"], "comma-separated integers"),
        (["--flops-ratio", "0.01"], "below the smallest reachable"),
    ]
    before = sorted(os.listdir(tmp_path))
    for args, message in cases:
        assert_user_error(run("export", *args, "-o", tmp_path / "out.onnx"), message)
    assert sorted(os.listdir(tmp_path)) == before


def test_unwritable_output(tmp_path):
    assert_user_error(
        run("export", "--arch", "deit_tiny", "--method", "none", "-o", tmp_path / "no" / "x.onnx"), "does not exist"
    )


def test_corrupt_or_missing_model_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    assert_user_error(run("bench", bad, "--iterations", 1), "cannot read ONNX model")
    assert_user_error(run("compare", bad), "cannot")
    assert_user_error(run("info", bad), "cannot read ONNX model")
    assert_user_error(run("bench", tmp_path / "missing.onnx"), "not found")
    (tmp_path / "model.bin").write_bytes(b"x")
    assert_user_error(run("bench", tmp_path / "model.bin"), "cannot tell the format")


def test_usage_errors_exit_2():
    result = run("export", "--method", "kmedian", "-o", "x.onnx")
    assert result.returncode == 2 and "Invalid value" in result.stderr
