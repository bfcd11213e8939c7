"""The package's layering: import-linter's contracts (setup.cfg), and the deployment path working in a process where
PyTorch cannot be imported at all."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"  # `import torch` raises ImportError from here on


def run_without_torch(code, *args):
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code, *map(str, args)], capture_output=True, text=True, timeout=600
    )


def test_import_contracts_hold():
    lint = str(Path(sys.executable).parent / "lint-imports")  # import-linter, installed beside this Python
    result = subprocess.run([lint, "setup.cfg"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_deployment_modules_import_without_torch():
    modules = [
        "tpdeploy.runtime",
        "tpdeploy.runtime.onnxrt",
        "tpdeploy.runtime.tensorrt",
        "tpdeploy.serving.lifecycle",
        "tpdeploy.serving.triton_repo",
        "tpdeploy.tasks.info",
        "tpdeploy.convert.engine",
        "tpdeploy.convert.fp16",
        "tpdeploy.tasks.bench",
        "tpdeploy.tasks.compare",
        "tpdeploy.cli",
        "tpdeploy.data.preprocess",
        "tpdeploy.data.samples",
    ]
    result = run_without_torch(f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('ok')")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_the_deployment_path_runs_without_torch(tiny_onnx, tmp_path):
    code = """
import numpy as np
from tpdeploy import runtime
from tpdeploy.serving import triton_repo
from tpdeploy.data.samples import sample_images
from tpdeploy.tasks.info import describe_file
model = runtime.load(sys.argv[1])
assert model.infer(sample_images(2)).shape == (2, 1000)
assert model.recipe.arch == "deit_tiny" and model.data_config.interpolation == "bicubic"
info = describe_file(sys.argv[1])
triton_repo.write_repository(sys.argv[1], sys.argv[2], name="tp")
print(info["token_pool_nodes"])
"""
    result = run_without_torch(code, tiny_onnx, tmp_path / "repo")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["11"] and (tmp_path / "repo" / "tp" / "config.pbtxt").is_file()


def test_the_cli_without_torch(tiny_onnx, tmp_path):
    """info and bench work from the file; export says what to install, in one line."""
    cli = "from tpdeploy.cli import main; sys.argv = ['tpdeploy'] + sys.argv[1:]; main()"
    info = run_without_torch(cli, "info", tiny_onnx, "--json")
    assert info.returncode == 0, info.stderr[-2000:]
    assert json.loads(info.stdout)["arch"] == "deit_tiny"
    bench = run_without_torch(cli, "bench", tiny_onnx, "--iterations", 2, "--warmup-ms", 0)
    assert bench.returncode == 0 and "median" in bench.stdout, bench.stderr[-2000:]
    export = run_without_torch(cli, "export", "--arch", "deit_tiny", "-o", tmp_path / "x.onnx")
    assert export.returncode == 1 and "Traceback" not in export.stderr
    assert export.stderr.strip().splitlines() == ["error: export needs PyTorch: pip install 'tpdeploy[export]'"]
    compare = run_without_torch(cli, "compare", tiny_onnx)  # against PyTorch: needs it
    assert compare.returncode == 1 and "pip install 'tpdeploy[export]'" in compare.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "module",
    [
        "tpdeploy.artifacts.recipe",
        "tpdeploy.artifacts.onnx_file",
        "tpdeploy.artifacts.engine_file",
        "tpdeploy.artifacts.plugins",
    ],
)
def test_the_artifacts_layer_loads_neither_torch_nor_onnxruntime(module):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {module}; print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]
