"""What a user gets for a mistake: one line `error: ...`, the exit code of its kind (1 a mistake, 2 a usage
error), never a traceback, and no file written, left behind or changed (every file's hash before and after).

The command line runs in-process through click's CliRunner (the same `main` as the `tpdeploy` command);
the Python API raises TpdeployError subclasses, never a raw TypeError or a silent truncation."""

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from standin import standin_onnx

from tpdeploy import create_model, runtime, token_pool
from tpdeploy.artifacts.recipe import DataConfig
from tpdeploy.cli import main
from tpdeploy.data.preprocess import preprocess_image
from tpdeploy.data.samples import sample_images
from tpdeploy.errors import InvalidArgumentError, TpdeployError, UserError


def _has_tensorrt():
    try:
        import tensorrt

        return hasattr(tensorrt, "Builder")
    except ImportError:
        return False


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_onnx):
    """A folder of the files a user might hand tpdeploy, good and bad."""
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(tiny_onnx, folder / "tp.onnx")
    torch.save(create_model("deit_tiny", method="none").state_dict(), folder / "ck.pth")
    standin_onnx(folder / "ten.onnx", classes=10)
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "garbage.onnx").write_bytes(b"this is not a protobuf")
    (folder / "garbage.pth").write_bytes(b"not a checkpoint")
    (folder / "random.plan").write_bytes(os.urandom(100))
    (folder / "model.bin").write_bytes(b"x")
    (folder / "bad.toml").write_text("arch = 'deit_tiny'\ntokens = 'many'\n")
    (folder / "dir.onnx").mkdir()
    return folder


def snapshot(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


DENSE = ",".join(["196"] * 12)
CLI_CASES = [
    # export: inputs are never written over; bad model requests fail before any file appears
    (
        "export over its checkpoint",
        ["export", "--arch", "deit_tiny", "--method", "none", "--checkpoint", "ck.pth", "-o", "ck.pth"],
        1,
        "also an input",
    ),
    ("export to a folder", ["export", "--arch", "deit_tiny", "-o", "dir.onnx"], 1, "it is a folder"),
    ("export to a missing folder", ["export", "--arch", "deit_tiny", "-o", "no/x.onnx"], 1, "does not exist"),
    (
        "export a missing checkpoint",
        ["export", "--arch", "deit_tiny", "--checkpoint", "no.pth", "-o", "x.onnx"],
        1,
        "checkpoint not found",
    ),
    (
        "export a corrupt checkpoint",
        ["export", "--arch", "deit_tiny", "--checkpoint", "garbage.pth", "-o", "x.onnx"],
        1,
        "cannot read checkpoint",
    ),
    (
        "export a checkpoint of another arch",
        ["export", "--arch", "deit_small", "--checkpoint", "ck.pth", "-o", "x.onnx"],
        1,
        "does not fit deit_small",
    ),
    ("export an unknown arch", ["export", "--arch", "vit_huge", "-o", "x.onnx"], 1, "unknown architecture"),
    (
        "export a growing schedule",
        ["export", "--arch", "deit_tiny", "--schedule", "196,200" + ",100" * 10, "-o", "x.onnx"],
        1,
        "not non-increasing",
    ),
    ("export a non-numeric schedule", ["export", "--schedule", "196,x", "-o", "x.onnx"], 1, "comma-separated"),
    (
        "export a short schedule",
        ["export", "--arch", "deit_tiny", "--schedule", "196,100", "-o", "x.onnx"],
        1,
        "one per block",
    ),
    (
        "export a schedule above 196",
        ["export", "--arch", "deit_tiny", "--schedule", ",".join(["197"] * 12), "-o", "x.onnx"],
        1,
        "must start at 196",
    ),
    (
        "export grid off the square",
        ["export", "--arch", "deit_tiny", "--method", "grid", "--schedule", "196" + ",150" * 11, "-o", "x.onnx"],
        1,
        "not a square",
    ),
    (
        "export dense with a schedule",
        ["export", "--arch", "deit_tiny", "--method", "none", "--schedule", "196" + ",100" * 11, "-o", "x.onnx"],
        1,
        "cannot drop tokens",
    ),
    (
        "export an unreachable ratio",
        ["export", "--arch", "deit_tiny", "--flops-ratio", "0.01", "-o", "x.onnx"],
        1,
        "below the smallest reachable",
    ),
    ("export a zero ratio", ["export", "--flops-ratio", "0", "-o", "x.onnx"], 2, "not a finite number > 0"),
    (
        "export two schedules",
        ["export", "--preset", "deit_tiny_058", "--flops-ratio", "0.5", "-o", "x.onnx"],
        1,
        "at most one",
    ),
    (
        "export a preset of another arch",
        ["export", "--preset", "deit_small_058", "--arch", "deit_tiny", "-o", "x.onnx"],
        1,
        "is for deit_small",
    ),
    ("export a bad preset file", ["export", "--preset", "bad.toml", "-o", "x.onnx"], 1, "not a valid preset"),
    ("export an old opset", ["export", "--arch", "deit_tiny", "--opset", "17", "-o", "x.onnx"], 1, "too old"),
    ("export negative iterations", ["export", "--iterations", "-1", "-o", "x.onnx"], 2, "-1"),
    ("export an unknown method", ["export", "--method", "kmedian", "-o", "x.onnx"], 2, "kmedian"),
    ("export without an output", ["export", "--arch", "deit_tiny"], 2, "Missing option"),
    # info
    ("info an empty file", ["info", "empty.onnx"], 1, "is empty"),
    ("info a corrupt file", ["info", "garbage.onnx"], 1, "cannot read ONNX model"),
    ("info a missing file", ["info", "no.onnx"], 1, "not found"),
    ("info random bytes as an engine", ["info", "random.plan"], 1, "no sidecar"),
    ("info an unknown format", ["info", "model.bin"], 1, "cannot tell the format"),
    ("info a file and options", ["info", "tp.onnx", "--arch", "deit_tiny"], 1, "not both"),
    # compare
    ("compare different outputs", ["compare", "tp.onnx", "ten.onnx"], 1, "differ in shape"),
    ("compare a negative atol", ["compare", "tp.onnx", "tp.onnx", "--atol", "-1"], 2, "not a finite number"),
    ("compare a NaN rtol", ["compare", "tp.onnx", "tp.onnx", "--rtol", "nan"], 2, "not a finite number"),
    ("compare with the wrong checkpoint", ["compare", "tp.onnx", "--checkpoint", "ck.pth"], 1, "seeded-random"),
    ("compare a corrupt file", ["compare", "garbage.onnx", "tp.onnx"], 1, "cannot read ONNX model"),
    # bench
    ("bench zero seconds", ["bench", "tp.onnx", "--duration", "0"], 2, "not a finite number > 0"),
    ("bench negative seconds", ["bench", "tp.onnx", "--duration", "-5"], 2, "not a finite number > 0"),
    ("bench a negative warm-up", ["bench", "tp.onnx", "--warmup-ms", "-5"], 2, "not a finite number >= 0"),
    ("bench batch 0", ["bench", "tp.onnx", "--batch", "0"], 2, "0"),
    ("bench json over the model", ["bench", "tp.onnx", "--json", "tp.onnx"], 1, "also an input"),
    ("bench json in a missing folder", ["bench", "tp.onnx", "--json", "no/b.json"], 1, "does not exist"),
    ("bench random bytes as an engine", ["bench", "random.plan"], 1, "no sidecar"),
    ("bench an ONNX file on trt", ["bench", "tp.onnx", "--backend", "trt"], 1, "build one from tp.onnx"),
    ("bench a missing baseline", ["bench", "tp.onnx", "--baseline", "no.onnx"], 1, "not found"),
    ("bench an engine on ort", ["bench", "ort:random.plan"], 1, "runs ONNX files"),
    # build-engine
    ("build-engine over its input", ["build-engine", "tp.onnx", "-o", "tp.onnx"], 1, "also an input"),
    (
        "build-engine a bad profile",
        ["build-engine", "tp.onnx", "-o", "x.plan", "--min-batch", "8", "--opt-batch", "4"],
        1,
        "min <= opt <= max",
    ),
    ("build-engine a corrupt file", ["build-engine", "garbage.onnx", "-o", "x.plan"], 1, "cannot read ONNX"),
    (
        "build-engine a missing plugin",
        ["build-engine", "tp.onnx", "-o", "x.plan", "--plugin", "no.so"],
        1,
        "library not found",
    ),
    (
        "build-engine plugin and no plugin",
        ["build-engine", "tp.onnx", "-o", "x.plan", "--plugin", "tp.onnx", "--no-plugin"],
        1,
        "not both",
    ),
    pytest.param(
        "build-engine without TensorRT",
        ["build-engine", "tp.onnx", "-o", "x.plan", "--no-plugin"],
        1,
        "pip install 'tpdeploy[tensorrt]'",
        id="build-engine without TensorRT",
        marks=pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed"),
    ),
    # triton-repo
    ("triton-repo random bytes as an engine", ["triton-repo", "random.plan", "--repository", "repo"], 1, "no sidecar"),
    (
        "triton-repo a bad model name",
        ["triton-repo", "tp.onnx", "--repository", "repo", "--name", "a b"],
        1,
        "model name",
    ),
    ("triton-repo into a file", ["triton-repo", "tp.onnx", "--repository", "tp.onnx/models"], 1, "cannot create"),
    # usage
    ("an unknown command", ["exprot"], 2, "No such command"),
]


@pytest.mark.parametrize(
    "name,args,code,message", [c if hasattr(c, "marks") else pytest.param(*c, id=c[0]) for c in CLI_CASES]
)
def test_cli_mistakes(inputs, monkeypatch, name, args, code, message):
    monkeypatch.chdir(inputs)
    monkeypatch.delenv("TPDEPLOY_PLUGIN", raising=False)
    before = snapshot(inputs)
    result = CliRunner().invoke(main, args)
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")]
    assert result.exit_code == code, result.stderr + result.stdout
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert snapshot(inputs) == before  # nothing written, left behind or changed


def test_there_are_at_least_40_cases():
    assert len(CLI_CASES) + len(API_CASES) >= 40


def _x():
    return torch.randn(2, 10, 4), torch.rand(2, 10)


API_CASES = [
    ("iterations 2.5", lambda: token_pool(*_x(), 3, iterations=2.5), "iterations must be an integer"),
    ("num_clusters True", lambda: token_pool(*_x(), True), "num_clusters must be an integer"),
    ("K > N", lambda: token_pool(*_x(), 11), "num_clusters must be in [1, N=10]"),
    ("an unknown mode", lambda: token_pool(*_x(), 3, mode="kmedian"), "mode must be one of"),
    ("weighted 2", lambda: token_pool(*_x(), 3, weighted=2), "weighted must be True or False"),
    (
        "numpy tensors",
        lambda: token_pool(np.zeros((1, 4, 2), np.float32), np.zeros((1, 4), np.float32), 2),
        "X must be a torch.Tensor, got ndarray",
    ),
    (
        "integer tensors",
        lambda: token_pool(torch.zeros(1, 4, 2, dtype=torch.int64), torch.zeros(1, 4), 2),
        "X must be float32 or float16, got torch.int64",
    ),
    ("W of the wrong shape", lambda: token_pool(torch.zeros(1, 4, 2), torch.zeros(1, 5), 2), "W must be [B, N]"),
    ("a float schedule", lambda: create_model("deit_tiny", schedule=[196.7] * 12), "must be an integer"),
    ("iterations 2.5 in a model", lambda: create_model("deit_tiny", iterations=2.5), "iterations must be an integer"),
    ("a NaN FLOPs ratio", lambda: create_model("deit_tiny", flops_ratio=float("nan")), "finite number"),
    ("a negative seed", lambda: create_model("deit_tiny", seed=-1), "seed must be >= 0"),
    ("a schedule string", lambda: create_model("deit_tiny", schedule="196,100"), "a list of token counts"),
    ("device gpu", lambda: runtime.load(_tiny(), device="gpu"), "device must be one of cpu, cuda"),
    ("threads -1", lambda: runtime.load(_tiny(), threads=-1), "threads must be >= 1"),
    ("threads 2.5", lambda: runtime.load(_tiny(), threads=2.5), "threads must be an integer"),
    ("backend tensorrt", lambda: runtime.load(_tiny(), backend="tensorrt"), "backend must be one of"),
    ("a path that is not one", lambda: runtime.load(42), "path must be a file path"),
    (
        "images of the wrong size",
        lambda: runtime.load(_tiny()).infer(np.zeros((1, 3, 32, 32), np.float32)),
        "images must have shape [B, 3, 224, 224]",
    ),
    ("integer images", lambda: runtime.load(_tiny()).infer(sample_images(1).astype(np.int64)), "float32 or float16"),
    ("an empty image", lambda: preprocess_image(b"", DataConfig()), "empty image"),
    ("a size for a config", lambda: preprocess_image(b"x", 224), "must be a DataConfig"),
    ("a crop of 2", lambda: DataConfig(crop_pct=2), "crop_pct must be in (0, 1]"),
]
_TINY = []


def _tiny():
    return _TINY[0]


@pytest.mark.parametrize("name,call,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_python_api_mistakes(tiny_onnx, name, call, message):
    _TINY[:] = [tiny_onnx]
    with pytest.raises(TpdeployError) as e:
        call()
    assert message in str(e.value) and isinstance(e.value, UserError) and e.value.exit_code == 1
    if "must" in message:  # an argument outside its domain: also a ValueError, never a TypeError
        assert isinstance(e.value, InvalidArgumentError) and isinstance(e.value, ValueError)
