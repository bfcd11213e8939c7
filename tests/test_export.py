"""Exported ONNX files: structure, onnxruntime vs PyTorch for every method, fp16, file handling."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import FAMILIES

from tpdeploy import TpdeployError, create_model
from tpdeploy.convert.export import export
from tpdeploy.data.samples import sample_images
from tpdeploy.runtime.onnxrt import OnnxRuntimeRunner

METHODS = ["wkmedoids", "kmedoids", "wkmeans", "kmeans", "topk", "grid", "none"]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """(model, path, report) of a deit_tiny export per method, made once per session."""
    folder, cache = tmp_path_factory.mktemp("export"), {}

    def get(method):
        if method not in cache:
            model = create_model("deit_tiny", flops_ratio=None if method == "none" else 0.6, method=method)
            path = str(folder / f"{method}.onnx")
            cache[method] = (model, path, export(model, path))
        return cache[method]

    return get


def rel_error(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("method", METHODS)
def test_onnxruntime_matches_pytorch_for_every_method(exported, method):
    """kmeans centres are weighted means: they carry the upstream float differences between onnxruntime and
    PyTorch on (2.9e-4 of the largest logit measured on one machine), where medoids copy exact rows."""
    tolerance = 1e-3 if method in ("kmeans", "wkmeans") else 1e-4
    model, path, report = exported(method)
    runner = OnnxRuntimeRunner(path)
    for batch in (1, 3):  # one file, dynamic batch
        images = sample_images(batch, seed=batch)
        with torch.no_grad():
            want = model(torch.from_numpy(images)).numpy()
        got = runner.infer(images)
        assert got.shape == (batch, 1000)
        assert rel_error(got, want) <= tolerance
    assert report.max_rel_error <= tolerance and report.top1_agreement == 1.0


@pytest.mark.parametrize("method", ["wkmedoids", "kmeans", "topk"])
def test_one_token_pool_node_per_pooling_step(exported, method):
    model, path, report = exported(method)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    nodes = [n for n in proto.graph.node if n.op_type == "TokenPool"]
    assert len(nodes) == len(model.pools) == report.token_pool_nodes > 0
    mode, weighted = {"wkmedoids": ("kmedoids", 1), "kmeans": ("kmeans", 0), "topk": ("kmedoids", 1)}[method]
    drops = [k for n, k in zip(model.tokens, model.tokens[1:]) if k < n]
    for node, k in zip(nodes, drops):
        assert node.domain == "tpdeploy"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {
            "num_clusters": k,
            "iterations": 0 if method == "topk" else 3,
            "mode": mode.encode(),
            "weighted": weighted,
            "plugin_version": b"1",
            "plugin_namespace": b"tpdeploy",
        }
    assert [(f.domain, f.name) for f in proto.functions] == [("tpdeploy", "TokenPool")]
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("", 20), ("tpdeploy", 1)}
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and proto.graph.input[0].name == "images" and proto.graph.output[0].name == "logits"


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_family_exports_one_token_pool_node_per_step_and_matches_pytorch(family_onnx, arch):
    """At 576 tokens the tolerance is 1e-3: the structured test images have flat regions of nearly identical
    tokens, and upstream float differences of 1e-6 between onnxruntime and PyTorch flip a near-tie between two
    medoid candidates (measured here: image 2 of the export's validation batch, at the third pooling step, gives
    2.8e-4 of the largest logit; the ONNX function itself equals the reference on PyTorch's inputs there)."""
    tolerance = 1e-3 if arch == "vit_small_patch16_384" else 1e-4
    model, path, report = family_onnx(arch)
    cfg = model.cfg
    proto = onnx.load(path)
    nodes = [n for n in proto.graph.node if n.op_type == "TokenPool"]
    assert len(nodes) == len(model.pools) == report.token_pool_nodes == 11
    clusters = [
        onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "num_clusters")) for n in nodes
    ]
    assert clusters == [k for n, k in zip(model.tokens, model.tokens[1:]) if k < n]
    runner = OnnxRuntimeRunner(path)
    assert runner.spec.input.shape == (None, 3, cfg.img_size, cfg.img_size)
    assert runner.data_config == cfg.data_config  # the architecture's preprocessing, recorded in the file
    images = sample_images(3, cfg.img_size, seed=7, config=cfg.data_config)
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    assert rel_error(runner.infer(images), want) <= tolerance
    assert report.max_rel_error <= tolerance and report.top1_agreement == 1.0


def test_dense_export_has_no_token_pool(exported):
    _, path, _ = exported("none")
    proto = onnx.load(path)
    assert not [n for n in proto.graph.node if n.op_type == "TokenPool"] and not proto.functions


@pytest.mark.slow
def test_fixed_batch_export(tmp_path):
    model = create_model("deit_tiny", schedule=[196] * 6 + [100] * 6, method="topk")
    path = str(tmp_path / "b2.onnx")
    export(model, path, batch=2)
    runner = OnnxRuntimeRunner(path)
    assert (runner.min_batch, runner.max_batch) == (2, 2)
    with pytest.raises(TpdeployError, match="batch 3 is outside"):
        runner.infer(sample_images(3))
    images = sample_images(5)  # any number, in chunks of 2, the last one padded (serve and eval rely on it)
    want = np.concatenate([runner.infer(images[:2]), runner.infer(images[2:4]), runner.infer(images[3:5])[1:]])
    np.testing.assert_array_equal(runner.run_any(images), want)


def test_unwritable_output_leaves_nothing(tmp_path):
    model = create_model("deit_tiny", method="none")
    with pytest.raises(TpdeployError, match="does not exist"):
        export(model, str(tmp_path / "missing" / "x.onnx"))
    assert list(tmp_path.iterdir()) == []


def test_old_opset_is_refused():
    with pytest.raises(TpdeployError, match="opset 17 is too old"):
        export(create_model("deit_tiny"), "never.onnx", opset=17)


def test_runner_rejects_wrong_input(exported):
    _, path, _ = exported("topk")
    runner = OnnxRuntimeRunner(path)
    with pytest.raises(TpdeployError, match=r"shape \[B, 3, 224, 224\]"):
        runner.infer(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(TpdeployError, match="float32 or float16"):
        runner.infer(np.zeros((1, 3, 224, 224), np.int64))
    # float64 is cast, like the runtime promises
    assert runner.infer(sample_images(1).astype(np.float64)).shape == (1, 1000)


def test_runtime_serves_without_importing_pytorch(exported):
    _, path, _ = exported("topk")
    code = (
        "import sys, numpy as np; from tpdeploy import runtime; m = runtime.load(sys.argv[1]); "
        "y = m.infer(np.zeros((2, 3, 224, 224), np.float32)); "
        "assert y.shape == (2, 1000) and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_the_recipe_records_the_checkpoints_hash_not_its_path(tmp_path):
    """The exported file says where its weights came from without naming a local path; rebuilding the PyTorch
    model (compare, the torch backend) needs that very checkpoint again."""
    from tpdeploy.artifacts.files import sha256
    from tpdeploy.artifacts.onnx_file import OnnxFile
    from tpdeploy.runtime.pytorch import TorchRunner

    ck = tmp_path / "weights" / "ck.pth"
    ck.parent.mkdir()
    torch.save(create_model("deit_tiny", method="none", seed=7).state_dict(), ck)
    model = create_model("deit_tiny", checkpoint=str(ck), method="none")
    path = str(tmp_path / "dense.onnx")
    export(model, path)
    recipe = OnnxFile.open(path).recipe
    assert recipe.checkpoint_sha256 == sha256(str(ck)) and recipe.seed is None
    assert str(tmp_path).encode() not in open(path, "rb").read()
    images = sample_images(2)
    rebuilt = TorchRunner.from_onnx(path, checkpoint=str(ck))
    np.testing.assert_array_equal(rebuilt.infer(images), model(torch.from_numpy(images)).detach().numpy())
    with pytest.raises(TpdeployError, match="pass it"):
        TorchRunner.from_onnx(path)
    other = tmp_path / "other.pth"
    torch.save(create_model("deit_tiny", method="none", seed=8).state_dict(), other)
    with pytest.raises(TpdeployError, match="not the checkpoint"):
        TorchRunner.from_onnx(path, checkpoint=str(other))


@pytest.mark.parametrize("method", ["wkmedoids", "kmeans", "topk"])
def test_a_stock_onnxruntime_session_prints_nothing(exported, method):
    """Default logging: no 'CanUpdateImplicitInputNameInSubgraphs' warning (one per TokenPool node, once)."""
    _, path, _ = exported(method)
    code = "import sys, onnxruntime as ort; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.slow
def test_files_are_ir_9_and_run_alike_in_the_oldest_onnxruntime_for_opset_20(exported, tmp_path):
    """onnxruntime 1.17 (the first with opset 20) in a throwaway venv, against the installed one."""
    _, path, _ = exported("wkmedoids")
    assert onnx.load(path, load_external_data=False).ir_version == 9
    venv = tmp_path / "ort117"
    python = venv / "bin" / "python"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "onnxruntime==1.17.3",
                "numpy<2",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot install onnxruntime 1.17.3 here (no network?): {str(getattr(e, 'stderr', e))[-300:]}")
    images = sample_images(4, seed=3)
    np.save(tmp_path / "images.npy", images)
    code = (
        "import sys, numpy as np, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1], "
        "providers=['CPUExecutionProvider']); np.save(sys.argv[3], s.run(None, {'images': np.load(sys.argv[2])})[0])"
        "; print(ort.__version__)"
    )
    result = subprocess.run(
        [str(python), "-c", code, path, str(tmp_path / "images.npy"), str(tmp_path / "out.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "1.17.3" and result.stderr == "", result.stderr[-2000:]
    old, new = np.load(tmp_path / "out.npy"), OnnxRuntimeRunner(path).infer(images)
    np.testing.assert_allclose(old, new, atol=1e-4, rtol=1e-4)
    assert (old.argmax(1) == new.argmax(1)).all()
