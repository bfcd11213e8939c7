"""What a user gets for a mistake: one line `error: ...`, the exit code of its kind (1 a mistake, 2 a usage
error), never a traceback, and no file written, left behind or changed (every file's hash before and after).

The command line runs in-process through click's CliRunner (the same `main` as the `tpdeploy` command);
the Python API raises TpdeployError subclasses, never a raw TypeError or a silent truncation."""

import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from standin import quantization, standin_engine, standin_onnx
from test_evaluate import devkit, images

from tpdeploy import create_model, runtime, token_pool
from tpdeploy.artifacts.recipe import DataConfig
from tpdeploy.cli import main
from tpdeploy.convert import export
from tpdeploy.data.datasets import Dataset
from tpdeploy.data.preprocess import preprocess_image
from tpdeploy.data.samples import sample_images
from tpdeploy.errors import InvalidArgumentError, TpdeployError, UserError
from tpdeploy.serving.triton_repo import write_repository
from tpdeploy.tasks.evaluate import evaluate
from tpdeploy.tasks.sweep import SweepPlan


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
    standin_onnx(folder / "px.onnx", size=96, tokens=144, pools=((100, "kmedoids"),), classes=1000)
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "garbage.onnx").write_bytes(b"this is not a protobuf")
    (folder / "garbage.pth").write_bytes(b"not a checkpoint")
    (folder / "random.plan").write_bytes(os.urandom(100))
    (folder / "model.bin").write_bytes(b"x")
    (folder / "bad.toml").write_text("arch = 'deit_tiny'\ntokens = 'many'\n")
    (folder / "dir.onnx").mkdir()
    (folder / "random.pth").write_bytes(os.urandom(2000))
    images(folder / "data", ["a.png", "b.png"])  # a flat folder of plain images
    devkit(folder / "devkit", [1, 2])  # the ILSVRC2012 devkit: data/meta.mat, data/ILSVRC2012_validation_...
    images(folder / "val", ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"])
    (folder / "dup.csv").write_text("a.png,1\nb.png,2\na.png,3\n")
    (folder / "strip").mkdir()  # an image whose resize to 248 px on the shorter side is 2.5 gigapixels
    Image.new("RGB", (1, 40000)).save(folder / "strip" / "thin.png")
    Image.new("RGB", (64, 64)).save(folder / "strip" / "fine.png")
    for name, change in CONTRADICTIONS.items():  # ONNX files whose recipe contradicts the graph
        recipe_edited(folder / "tp.onnx", folder / f"{name}.onnx", change)
    engine_path, sidecar = standin_engine(
        folder, standin_onnx(folder / "standin.onnx"), name="fine.plan", no_plugin=True
    )
    for name, change in SIDECAR_CONTRADICTIONS.items():  # engines whose sidecar lies
        shutil.copy(engine_path, folder / f"{name}.plan")
        d = json.loads(sidecar.to_json())
        change(d)
        (folder / f"{name}.plan.json").write_text(json.dumps(d))
    os.makedirs(folder / "repo" / "tiny")
    shutil.copy(folder / "tp.onnx", folder / "repo" / "tiny" / "extra.onnx")
    return folder


def recipe_edited(source, target, change):
    """A copy of the ONNX file whose recipe has `change` (a function of its JSON dict) applied."""
    model = onnx.load(str(source))
    prop = next(p for p in model.metadata_props if p.key == "tpdeploy.recipe")
    d = json.loads(prop.value)
    change(d)
    prop.value = json.dumps(d)
    onnx.save(model, str(target))


CONTRADICTIONS = {
    "classes10": lambda d: d.update(num_classes=10),
    "px384": lambda d: d["data_config"].update(input_size=384),
    "dense11": lambda d: d.update(method="none", tokens=[196] * 12),
    "seedneg": lambda d: d.update(seed=-5),
    "fp16recipe": lambda d: d.update(dtype="fp16"),
    "int8recipe": lambda d: d.update(quantization=dataclasses.asdict(quantization())),
}
SIDECAR_CONTRADICTIONS = {
    "int8": lambda d: d["spec"]["input"].update(dtype="int8"),
    "abc": lambda d: d["spec"]["input"].update(shape="abc"),
    "range": lambda d: d["spec"].update(min_batch=64, max_batch=2),
    "px384": lambda d: d["recipe"]["data_config"].update(input_size=384),
    "nodes": lambda d: d["build"].update(token_pool_nodes=11),
}


def snapshot(folder):
    """Every file's hash and every folder (an empty folder left behind counts too)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        out.update({os.path.relpath(os.path.join(root, d), folder): "folder" for d in dirs})
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


DENSE = ",".join(["196"] * 12)
FINETUNE = ["finetune", "--arch", "deit_tiny", "--flops-ratio", "0.45", "--batch", "8"]
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
        "garbage.pth is not a checkpoint",
    ),
    (
        "export random bytes as a checkpoint",
        ["export", "--arch", "deit_tiny", "--checkpoint", "random.pth", "-o", "x.onnx"],
        1,
        "random.pth is not a checkpoint: neither a torch.save file",
    ),
    (
        "export clustering too costly for the ratio",
        ["export", "--arch", "deit_tiny", "--flops-ratio", "0.5", "--iterations", "100000", "-o", "x.onnx"],
        1,
        "use fewer --iterations",
    ),
    (
        "export more iterations than 32 bits",
        ["export", "--arch", "deit_tiny", "--flops-ratio", "0.5", "--iterations", "99999999999", "-o", "x.onnx"],
        1,
        "iterations must be in [0, 2147483647]",
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
    (
        "info a preset's schedule changed by grid",
        ["info", "--preset", "deit_tiny_058", "--method", "grid"],
        1,
        "preset deit_tiny_058 with method 'grid'",
    ),
    # files that contradict themselves: every stage reads them through the artifacts layer
    ("info 10 classes beside 1000 logits", ["info", "classes10.onnx"], 1, "recipe has 10 classes, its output 1000"),
    ("info a 384 px recipe beside 224 px", ["info", "px384.onnx"], 1, "images are 384 px, its input 224 px"),
    ("info a dense recipe beside 11 nodes", ["info", "dense11.onnx"], 1, "means TokenPool nodes of none clusters"),
    ("info seed -5", ["info", "seedneg.onnx"], 1, "seed -5 is not an integer >= 0"),
    ("info an fp16 recipe of an fp32 graph", ["info", "fp16recipe.onnx"], 1, "its recipe says fp16, its input"),
    ("info an int8 recipe of a float graph", ["info", "int8recipe.onnx"], 1, "says int8 Q/DQ, the graph has no"),
    ("bench a recipe that lies", ["bench", "classes10.onnx"], 1, "contradicts itself"),
    ("eval a recipe that lies", ["eval", "px384.onnx", "--data", "data", "--baseline", "tp.onnx"], 1, "384 px"),
    ("triton-repo a recipe that lies", ["triton-repo", "dense11.onnx", "--repository", "r"], 1, "contradicts"),
    ("serve a recipe that lies", ["serve", "classes10.onnx"], 1, "contradicts itself"),
    ("info an int8 input in a sidecar", ["info", "int8.plan"], 1, "is int8; a tpdeploy model takes"),
    ("info a shape 'abc' in a sidecar", ["info", "abc.plan"], 1, "shape 'abc' is not a list of sizes"),
    ("info a batch range 64..2", ["info", "range.plan"], 1, "batch range 64..2 is empty"),
    ("info a 384 px recipe in a sidecar", ["info", "px384.plan"], 1, "images are 384 px, its input 224 px"),
    ("info 11 nodes in a sidecar", ["info", "nodes.plan"], 1, "its build 11"),
    ("triton-repo a sidecar that lies", ["triton-repo", "range.plan", "--repository", "r"], 1, "64..2 is empty"),
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
    ("bench json onto an engine's sidecar", ["bench", "fine.plan", "--json", "fine.plan.json"], 1, "also an input"),
    ("bench two image sizes", ["bench", "tp.onnx", "--baseline", "px.onnx"], 1, "px.onnx takes 96 px"),
    # eval: --json never over, into or around what it reads
    (
        "eval json onto an image",
        ["eval", "tp.onnx", "--data", "data", "--baseline", "tp.onnx", "--json", "data/a.png"],
        1,
        "is inside the input data",
    ),
    (
        "eval json onto the devkit's meta.mat",
        ["eval", "tp.onnx", "--data", "val", "--labels", "devkit", "--json", "devkit/data/meta.mat"],
        1,
        "is inside the input devkit",
    ),
    (
        "eval json onto the ground truth",
        [
            "eval",
            "tp.onnx",
            "--data",
            "val",
            "--labels",
            "devkit/data/ILSVRC2012_validation_ground_truth.txt",
            "--json",
            "devkit/data/ILSVRC2012_validation_ground_truth.txt",
        ],
        1,
        "also an input",
    ),
    (
        "eval json onto meta.mat beside the labels",
        [
            "eval",
            "tp.onnx",
            "--data",
            "val",
            "--labels",
            "devkit/data/ILSVRC2012_validation_ground_truth.txt",
            "--json",
            "devkit/data/meta.mat",
        ],
        1,
        "also an input",
    ),
    ("eval duplicated labels", ["eval", "tp.onnx", "--data", "data", "--labels", "dup.csv"], 1, "labelled twice"),
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
    (
        "triton-repo into a file",
        ["triton-repo", "tp.onnx", "--repository", "tp.onnx/models"],
        1,
        "inside the input tp.onnx",
    ),
    (
        "triton-repo the name ..",
        ["triton-repo", "tp.onnx", "--repository", "repo", "--name", "..", "--overwrite"],
        1,
        "not . or ..",
    ),
    (
        "triton-repo the name .",
        ["triton-repo", "tp.onnx", "--repository", "repo", "--name", ".", "--overwrite"],
        1,
        "not . or ..",
    ),
    (
        "triton-repo over its own input",
        ["triton-repo", "repo/tiny/extra.onnx", "--repository", "repo", "--name", "tiny", "--overwrite"],
        1,
        "contains the input repo/tiny/extra.onnx",
    ),
    ("triton-repo into its model", ["triton-repo", "tp.onnx", "--repository", "tp.onnx"], 1, "also an input"),
    # sweep: its folder is checked, and its data, before anything is written
    ("sweep into its data", ["sweep", "--arch", "deit_tiny", "--data", "data", "-o", "data"], 1, "also an input"),
    ("sweep around its data", ["sweep", "--arch", "deit_tiny", "--data", "data", "-o", "."], 1, "contains the input"),
    (
        "sweep inside its data",
        ["sweep", "--arch", "deit_tiny", "--data", "data", "-o", "data/out"],
        1,
        "is inside the input data",
    ),
    ("sweep where nothing can be written", ["sweep", "--arch", "deit_tiny", "-o", "/proc/tpdeploy-sweep"], 1, "cannot"),
    ("sweep bad data", ["sweep", "--arch", "deit_tiny", "--data", "dir.onnx", "-o", "out"], 1, "no images found"),
    ("sweep --finetuned a plain checkpoint", ["sweep", "--finetuned", "ck.pth", "-o", "out"], 1, "records no plan"),
    ("sweep --finetuned nothing", ["sweep", "--finetuned", "no.pt", "-o", "out"], 1, "no such file or folder"),
    # finetune: refused before any training
    ("finetune a folder with no images", [*FINETUNE, "--data", "dir.onnx", "-o", "t.pt"], 1, "no images found"),
    ("finetune onto its checkpoint", [*FINETUNE, "--checkpoint", "ck.pth", "-o", "ck.pth"], 1, "is also an input"),
    ("finetune into its data", [*FINETUNE, "--data", "data", "-o", "data/t.pt"], 1, "is inside the input data"),
    ("finetune into its held-out data", [*FINETUNE, "--val", "data", "-o", "data/t.pt"], 1, "inside the input data"),
    (
        "finetune a checkpoint of another architecture",
        ["finetune", "--arch", "deit_small", "--flops-ratio", "0.45", "--checkpoint", "ck.pth", "-o", "t.pt"],
        1,
        "does not fit deit_small",
    ),
    (
        "finetune a schedule out of reach",
        ["finetune", "--arch", "deit_tiny", "--flops-ratio", "0.01", "-o", "t.pt"],
        1,
        "below the smallest reachable",
    ),
    ("finetune a dense schedule", ["finetune", "--arch", "deit_tiny", "-o", "t.pt"], 1, "nothing to fine-tune"),
    ("finetune more batch than images", [*FINETUNE, "--data", "data", "-o", "t.pt"], 1, "more than the 2 training"),
    ("finetune --amp on the CPU", [*FINETUNE, "--amp", "--device", "cpu", "-o", "t.pt"], 1, "--amp needs a CUDA GPU"),
    ("finetune a missing teacher", [*FINETUNE, "--teacher", "no.pth", "-o", "t.pt"], 1, "checkpoint not found"),
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
    ("a crop of True", lambda: DataConfig(crop_pct=True), "crop_pct must be in (0, 1]"),
    ("a preset 123", lambda: create_model("deit_tiny", preset=123), "a preset is a name or a .toml path"),
    ("an arch name to export", lambda: export.to_onnx("deit_tiny"), "model must be a Token-Pooled ViT"),
    ("an output 123", lambda: export.export(create_model("deit_tiny"), 123), "the output must be a file path"),
    (
        "validate_batch 0",
        lambda: export.export(create_model("deit_tiny"), "x.onnx", validate_batch=0),
        "validate_batch must be >= 1",
    ),
    ("opset 10**6", lambda: export.to_onnx(create_model("deit_tiny"), opset=10**6), "opset 1000000 is newer"),
    ("instances 1.5", lambda: _repository(instances=1.5), "instances must be an integer"),
    ("instances 10**12", lambda: _repository(instances=10**12), "instances must be in [1, 2147483647]"),
    ("max_batch 2.5", lambda: _repository(max_batch=2.5), "max_batch must be an integer"),
    ("max_batch True", lambda: _repository(max_batch=True), "max_batch must be an integer"),
    ("repository 123", lambda: _repository(repository=123), "repository must be a path"),
    ("spinning 'no'", lambda: runtime.load(_tiny(), spinning="no"), "spinning must be True or False"),
    ("ratios '0.5'", lambda: SweepPlan("deit_tiny", None, ["topk"], "0.5", "out"), "ratios must be a list"),
    (
        "a label 5000 of 1000 classes",
        lambda: evaluate([runtime.load(_tiny())], Dataset(".", "x", ["a.png"], [5000]), 1),
        "label 5000 of . is not a class of a model with 1000 classes",
    ),
    (
        "1e300 into float32",
        lambda: runtime.load(_tiny()).infer(np.full((1, 3, 224, 224), 1e300)),
        "images overflow the model's float32 input",
    ),
    (
        "1e6 into float16",
        lambda: runtime.load(_fp16()).infer(np.full((1, 3, 224, 224), 1e6, np.float32)),
        "images overflow the model's float16 input",
    ),
]
_TINY = []


def _tiny():
    return _TINY[0]


def _fp16():
    return standin_onnx(os.path.join(os.path.dirname(_tiny()), "standin_fp16.onnx"), dtype="float16")


def _repository(**kwargs):
    args = {"model_path": _tiny(), "repository": os.path.join(os.path.dirname(_tiny()), "api-repo"), "name": "x"}
    return write_repository(**{**args, **kwargs})


@pytest.mark.parametrize("name,call,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_python_api_mistakes(tiny_onnx, name, call, message):
    _TINY[:] = [tiny_onnx]
    with pytest.raises(TpdeployError) as e:
        call()
    assert message in str(e.value) and isinstance(e.value, UserError) and e.value.exit_code == 1
    if "must" in message:  # an argument outside its domain: also a ValueError, never a TypeError
        assert isinstance(e.value, InvalidArgumentError) and isinstance(e.value, ValueError)


def test_export_never_writes_over_the_shipped_preset_it_reads(tmp_path, monkeypatch):
    """`export --preset NAME -o <that preset's own file>`: the shipped file is an input like any other."""
    from tpdeploy.model import schedule

    preset = schedule.load_preset("deit_tiny_058").path
    with open(preset, "rb") as f:
        before = f.read()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["export", "--preset", "deit_tiny_058", "-o", preset])
    assert result.exit_code == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the output {preset} is also an input ({preset}): refusing to write over it"
    )
    with open(preset, "rb") as f:
        assert f.read() == before
    assert schedule.load_preset("deit_tiny_058").tokens and os.listdir(tmp_path) == []
