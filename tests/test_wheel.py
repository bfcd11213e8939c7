"""The deployment install: the wheel installed with its `cpu` extra into a fresh virtual environment, without
PyTorch, runs an exported file (info, bench, the Python runtime). Needs PyPI (pip downloads the dependencies)."""

import json
import os
import subprocess
import sys
import venv

import pytest
from conftest import REPO


def pip(python, *args, timeout=900):
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def deployment_venv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheel")
    built = pip(sys.executable, "wheel", "--no-deps", "-q", "-w", str(folder / "dist"), str(REPO))
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = list((folder / "dist").glob("tpdeploy-*.whl"))
    assert len(wheels) == 1
    venv.create(folder / "venv", with_pip=True)
    python = folder / "venv" / "bin" / "python"
    installed = pip(python, "install", "-q", f"{wheels[0]}[cpu]")
    if installed.returncode != 0 and "Could not find a version" in installed.stderr + installed.stdout:
        pytest.skip(f"pip cannot reach an index: {installed.stderr.strip().splitlines()[-1]}")
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


def test_the_wheel_ships_the_package_and_the_presets(deployment_venv):
    code = (
        "import importlib.util as u, json, tpdeploy; from tpdeploy.model import schedule; "
        "print(json.dumps([tpdeploy.__file__, sorted(schedule.presets()), u.find_spec('torch') is None]))"
    )
    result = subprocess.run([str(deployment_venv), "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    location, presets, no_torch = json.loads(result.stdout)
    assert str(REPO) not in location and "site-packages" in location  # the wheel, not this checkout
    assert "deit_small_058" in presets and no_torch


def test_info_bench_and_runtime_without_torch(deployment_venv, tiny_onnx, tmp_path):
    tpdeploy = deployment_venv.parent / "tpdeploy"
    info = subprocess.run([str(tpdeploy), "info", tiny_onnx, "--json"], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr[-2000:]
    assert json.loads(info.stdout)["token_pool_nodes"] == 11
    out = tmp_path / "bench.json"
    bench = subprocess.run(
        [str(tpdeploy), "bench", tiny_onnx, "--iterations", "3", "--warmup-ms", "0", "--json", str(out)],
        capture_output=True,
        text=True,
    )
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert json.loads(out.read_text())["samples"] == 3
    code = (
        "import sys, numpy as np; from tpdeploy import runtime; from tpdeploy.data.samples import sample_images; "
        "y = runtime.load(sys.argv[1]).infer(sample_images(2)); "
        "assert y.shape == (2, 1000) and 'torch' not in sys.modules; print('ok')"
    )
    run = subprocess.run([str(deployment_venv), "-c", code, tiny_onnx], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
    export = subprocess.run([str(tpdeploy), "export", "-o", str(tmp_path / "x.onnx")], capture_output=True, text=True)
    assert export.returncode == 1 and "pip install 'tpdeploy[export]'" in export.stderr
    assert sorted(os.listdir(tmp_path)) == ["bench.json"]
