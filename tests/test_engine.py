"""TensorRT engine building and loading: every decision tested here without TensorRT; the real build is
`pytest -m trt` on a machine with TensorRT and a GPU."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tpdeploy import TpdeployError, engine, onnx_op
from tpdeploy.images import sample_images


def images_model(path, batch="B", dtype=TensorProto.FLOAT, pools=((150, "kmedoids"),)):
    """A stand-in exported model: images in, TokenPool nodes inside (only the graph's interface matters here)."""
    nodes, x = [], "images"
    for i, (k, mode) in enumerate(pools):
        nodes.append(onnx_op.make_node(x, "w", f"y{i}", k, 3, mode, True, name=f"TokenPool_{i}"))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", dtype, [batch, 3, 224, 224]),
                                            helper.make_tensor_value_info("w", dtype, [batch, 3])],
                              [helper.make_tensor_value_info(x, dtype, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("tpdeploy", 1)]),
              str(path))
    return str(path)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    lib = tmp_path / "lib" / engine.PLUGIN_LIBRARY
    lib.write_bytes(b"\x7fELF not really")
    monkeypatch.setenv(engine.PLUGIN_ENV, str(lib))
    return str(lib)


def test_default_profile_and_trt10_fp16_flag(tmp_path, plugin):
    plan = engine.plan_build(images_model(tmp_path / "m.onnx"), "m.plan", trt_major=10, fp16=True)
    assert (plan.min_batch, plan.opt_batch, plan.max_batch) == (1, 8, 32)
    assert plan.builder_fp16_flag and not plan.strongly_typed and not plan.needs_fp16_graph
    assert plan.input_dtype == "float32" and plan.fp16 and plan.plugin == plugin
    assert plan.token_pool_nodes == [{"name": "TokenPool_0", "num_clusters": 150, "iterations": 3,
                                      "mode": "kmedoids", "weighted": 1}]


def test_trt11_fp16_means_an_fp16_graph(tmp_path, plugin):
    fp32 = engine.plan_build(images_model(tmp_path / "a.onnx"), "a.plan", trt_major=11, fp16=True)
    assert fp32.needs_fp16_graph and fp32.strongly_typed and not fp32.builder_fp16_flag
    assert fp32.input_dtype == "float16"
    fp16 = engine.plan_build(images_model(tmp_path / "b.onnx", dtype=TensorProto.FLOAT16), "b.plan", trt_major=11)
    assert fp16.fp16 and not fp16.needs_fp16_graph and fp16.input_dtype == "float16"
    plain = engine.plan_build(images_model(tmp_path / "c.onnx"), "c.plan", trt_major=11)
    assert not plain.fp16 and plain.strongly_typed and plain.input_dtype == "float32"


def test_profile_arguments(tmp_path, plugin):
    path = images_model(tmp_path / "m.onnx")
    plan = engine.plan_build(path, "m.plan", 10, min_batch=4, max_batch=64)
    assert (plan.min_batch, plan.opt_batch, plan.max_batch) == (4, 8, 64)
    plan = engine.plan_build(path, "m.plan", 10, min_batch=16)
    assert (plan.min_batch, plan.opt_batch, plan.max_batch) == (16, 16, 32)
    with pytest.raises(TpdeployError, match="min <= opt <= max"):
        engine.plan_build(path, "m.plan", 10, min_batch=8, opt_batch=4)
    fixed = images_model(tmp_path / "fixed.onnx", batch=4)
    assert engine.plan_build(fixed, "f.plan", 10).max_batch == 4
    with pytest.raises(TpdeployError, match="fixed batch of 4"):
        engine.plan_build(fixed, "f.plan", 10, max_batch=8)
    with pytest.raises(TpdeployError, match="at least 1 MiB"):
        engine.plan_build(path, "m.plan", 10, workspace_mib=0)


def test_plugin_choice(tmp_path, monkeypatch):
    monkeypatch.delenv(engine.PLUGIN_ENV, raising=False)
    monkeypatch.setattr("tpdeploy.libraries._PACKAGE", tmp_path)  # no build/plugins beside this package
    path = images_model(tmp_path / "m.onnx")
    with pytest.raises(TpdeployError, match="--no-plugin"):
        engine.plan_build(path, "m.plan", 10)
    assert engine.plan_build(path, "m.plan", 10, no_plugin=True).plugin is None
    with pytest.raises(TpdeployError, match="library not found"):
        engine.plan_build(path, "m.plan", 10, plugin=str(tmp_path / "nope.so"))
    with pytest.raises(TpdeployError, match="not both"):
        engine.plan_build(path, "m.plan", 10, plugin="x.so", no_plugin=True)
    dense = images_model(tmp_path / "dense.onnx", pools=())
    assert engine.plan_build(dense, "d.plan", 10).plugin is None  # nothing to plug in


def test_plugin_fields_come_from_the_node_attributes(tmp_path, plugin):
    path = images_model(tmp_path / "m.onnx", pools=((120, "kmeans"), (60, "kmedoids")))
    plan = engine.plan_build(path, "m.plan", 10)
    assert [(n["num_clusters"], n["mode"]) for n in plan.token_pool_nodes] == [(120, "kmeans"), (60, "kmedoids")]
    proto = onnx.load(path)
    for a in proto.graph.node[0].attribute:
        if a.name == "num_clusters":
            a.type, a.s = onnx.AttributeProto.STRING, b"120"
    onnx.save(proto, path)
    with pytest.raises(TpdeployError, match="num_clusters is missing or of the wrong type"):
        engine.plan_build(path, "m.plan", 10)


def test_no_plugin_inlines_the_function_into_standard_ops(tmp_path):
    """--no-plugin hands TensorRT the function body; the inlined graph computes the same as the original."""
    model = onnx_op.single_op_model("float32", 5, 3, "kmedoids", True)
    path = tmp_path / "op.onnx"
    onnx.save(model, str(path))
    inlined = onnx.load_from_string(engine._onnx_bytes(str(path), inline=True))
    assert not inlined.functions and all(n.domain == "" for n in inlined.graph.node)
    rng = np.random.default_rng(0)
    feeds = {"X": rng.normal(size=(2, 20, 8)).astype(np.float32), "W": rng.random((2, 20)).astype(np.float32)}
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, feeds)[0]  # noqa: E731
    np.testing.assert_array_equal(run(inlined), run(model))


def sidecar_for(tmp_path, plugin):
    plan = engine.plan_build(images_model(tmp_path / "m.onnx"), str(tmp_path / "m.plan"), 10, fp16=True)
    return engine.make_sidecar(plan, "10.8.0.43", "NVIDIA H100 80GB HBM3", "90")


def test_sidecar_records_what_the_engine_needs(tmp_path, plugin):
    sidecar = sidecar_for(tmp_path, plugin)
    json.dumps(sidecar)  # serialisable
    assert sidecar["plugin_sha256"] == engine.sha256(plugin) and len(sidecar["onnx_sha256"]) == 64
    assert sidecar["build_args"]["fp16"] and sidecar["max_batch"] == 32 and sidecar["input_dtype"] == "float32"


def test_engines_built_elsewhere_are_refused_with_the_reason(tmp_path, plugin):
    sidecar = sidecar_for(tmp_path, plugin)
    h = engine.sha256(plugin)
    engine.check_compatible(sidecar, "10.8.0.43", "90", h)
    with pytest.raises(TpdeployError, match=r"built with TensorRT 10.8.0.43 .*this machine has TensorRT 10.9.0.1"):
        engine.check_compatible(sidecar, "10.9.0.1", "90", h)
    with pytest.raises(TpdeployError, match=r"sm_90.*this GPU is sm_89.*rebuild"):
        engine.check_compatible(sidecar, "10.8.0.43", "89", h)
    with pytest.raises(TpdeployError, match="another TokenPool plugin library"):
        engine.check_compatible(sidecar, "10.8.0.43", "90", "0" * 64)


def test_runtime_plugin_choice(tmp_path, plugin, monkeypatch):
    assert engine.runtime_plugin(None, {"plugin": plugin}) == plugin
    assert engine.runtime_plugin(None, {"plugin": None}) is None  # built with --no-plugin
    assert engine.runtime_plugin(None, None) == plugin  # unknown engine: load what there is
    moved = {"plugin": str(tmp_path / "gone.so")}
    assert engine.runtime_plugin(None, moved) == plugin  # found again by the default search
    monkeypatch.delenv(engine.PLUGIN_ENV)
    monkeypatch.setattr("tpdeploy.libraries._PACKAGE", tmp_path)
    with pytest.raises(TpdeployError, match="plugin library .* not found"):
        engine.runtime_plugin(None, moved)


def test_info_on_an_engine_reads_its_sidecar(tmp_path, plugin):
    plan_path = tmp_path / "m.plan"
    plan_path.write_bytes(b"engine bytes")
    Path(engine.sidecar_path(str(plan_path))).write_text(json.dumps(sidecar_for(tmp_path, plugin)))
    result = subprocess.run([sys.executable, "-m", "tpdeploy", "info", str(plan_path), "--json"],
                            capture_output=True, text=True)
    info = json.loads(result.stdout)
    assert info["tensorrt_version"] == "10.8.0.43" and info["compute_capability"] == "90" and info["fp16"]


def _has_tensorrt():
    try:
        import tensorrt  # noqa: F401
        return hasattr(tensorrt, "Builder")
    except ImportError:
        return False


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed: the missing-TensorRT path cannot be shown")
def test_build_engine_without_tensorrt_says_what_to_install(tmp_path):
    onnx_path = images_model(tmp_path / "m.onnx")
    result = subprocess.run([sys.executable, "-m", "tpdeploy", "build-engine", onnx_path, "-o", str(tmp_path / "m.plan"),
                             "--fp16"], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: TensorRT is not installed: ")
    assert "pip install tensorrt" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    result = subprocess.run([sys.executable, "-m", "tpdeploy", "bench", str(tmp_path / "m.onnx").replace(".onnx", ".plan")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "not found" in result.stderr


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed")
def test_runtime_engine_without_tensorrt(tmp_path):
    from tpdeploy import runtime
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(TpdeployError, match="TensorRT is not installed"):
        runtime.load(str(plan))


# --- with TensorRT and a GPU ------------------------------------------------------------------------------

def _trt_ready():
    if not _has_tensorrt():
        return "needs TensorRT (pip install tensorrt) and an NVIDIA GPU"
    try:
        engine.gpu_identity()
    except TpdeployError as e:
        return f"needs an NVIDIA GPU: {e}"
    try:
        engine.find_plugin()
    except TpdeployError:
        return "needs the plugin library: make plugins TENSORRT_ROOT=..."
    return None


requires_trt = pytest.mark.skipif(_trt_ready() is not None, reason=str(_trt_ready()))


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from tpdeploy import create_model
    from tpdeploy.export import export
    folder = tmp_path_factory.mktemp("trt")
    out = {}
    for name, kwargs in {"pooled": {"preset": "deit_small_058"}, "dense": {"method": "none"}}.items():
        onnx_path = str(folder / f"{name}.onnx")
        export(create_model("deit_small", **kwargs), onnx_path)
        trt = engine.import_tensorrt()
        for precision in ("fp32", "fp16"):
            plan = engine.plan_build(onnx_path, str(folder / f"{name}_{precision}.plan"), engine.trt_major(trt),
                                     fp16=precision == "fp16", max_batch=16)
            engine.build(plan)
            out[name, precision] = (onnx_path, plan.output)
    return out


@pytest.mark.trt
@requires_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnxruntime(engines, precision):
    from tpdeploy import runtime
    onnx_path, plan = engines["pooled", precision]
    images = sample_images(8, seed=4)
    want = runtime.load(onnx_path).infer(images)
    got = runtime.load(plan).infer(images).astype(np.float32)
    if precision == "fp32":
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-3
    else:
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.875


@pytest.mark.trt
@requires_trt
def test_engine_from_8_threads(engines):
    from tpdeploy import runtime
    onnx_path, plan = engines["pooled", "fp32"]
    model = runtime.load(plan)
    images = [sample_images(b, seed=b) for b in range(1, 9)]
    want = [runtime.load(onnx_path).infer(x) for x in images]
    errors = []

    def worker(i):
        try:
            for _ in range(20):
                got = model.infer(images[i])
                assert np.abs(got - want[i]).max() / np.abs(want[i]).max() <= 1e-3
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.trt
@requires_trt
def test_engine_dense_vs_pooled_timing(engines):
    from tpdeploy import bench, runtime
    calls = [runtime.load(engines[name, "fp16"][1]).timed_call(sample_images(16)) for name in ("pooled", "dense")]
    pooled, dense = (bench.LatencyStats.of(t, 16) for t in bench.measure(calls, 200, iterations=50))
    print(f"TensorRT fp16 batch 16: pooled {pooled.median:.3f} ms, dense {dense.median:.3f} ms, "
          f"speed-up {dense.median / pooled.median:.2f}x")
    assert pooled.median > 0 and dense.median > 0

