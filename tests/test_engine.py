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
from conftest import FAMILIES
from standin import standin_engine, standin_onnx

from tpdeploy import TpdeployError
from tpdeploy.artifacts import engine_file, plugins
from tpdeploy.artifacts.files import sha256
from tpdeploy.convert import engine
from tpdeploy.data.samples import sample_images
from tpdeploy.runtime import tensorrt as trt_backend
from tpdeploy.tokenpool import libraries, onnx_function


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    lib = tmp_path / "lib" / libraries.PLUGIN_LIBRARY
    lib.write_bytes(b"\x7fELF not really")
    monkeypatch.setenv(libraries.PLUGIN_ENV, str(lib))
    return str(lib)


@pytest.fixture
def no_plugin_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv(libraries.PLUGIN_ENV, raising=False)
    monkeypatch.setattr(libraries, "_PACKAGE", tmp_path / "pkg")  # no build/plugins beside this package


def test_default_profile_and_fp16_means_a_converted_graph(tmp_path, plugin):
    plan = engine.plan_build(standin_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.plan"), fp16=True)
    assert (plan.spec.min_batch, plan.opt_batch, plan.spec.max_batch) == (1, 8, 32)
    assert plan.convert_to_fp16 and plan.fp16 and plan.spec.input.dtype == plan.spec.output.dtype == "float16"
    assert plan.recipe.dtype == "fp16" and plan.plugin == plugin
    assert plan.token_pool_nodes == [
        {"name": "TokenPool_0", "num_clusters": 150, "iterations": 3, "mode": "kmedoids", "weighted": 1}
    ]
    fp16_file = engine.plan_build(standin_onnx(tmp_path / "h.onnx", dtype="float16"), str(tmp_path / "h.plan"))
    assert fp16_file.fp16 and not fp16_file.convert_to_fp16
    plain = engine.plan_build(standin_onnx(tmp_path / "p.onnx"), str(tmp_path / "p.plan"))
    assert not plain.fp16 and not plain.convert_to_fp16 and plain.spec.input.dtype == "float32"


def test_profile_arguments(tmp_path, plugin):
    path = standin_onnx(tmp_path / "m.onnx")
    out = str(tmp_path / "m.plan")
    plan = engine.plan_build(path, out, min_batch=4, max_batch=64)
    assert (plan.spec.min_batch, plan.opt_batch, plan.spec.max_batch) == (4, 8, 64)
    plan = engine.plan_build(path, out, min_batch=16)
    assert plan.profile() == "16/16/32"
    with pytest.raises(TpdeployError, match="min <= opt <= max"):
        engine.plan_build(path, out, min_batch=8, opt_batch=4)
    fixed = standin_onnx(tmp_path / "fixed.onnx", batch=4)
    assert engine.plan_build(fixed, out).spec.max_batch == 4
    with pytest.raises(TpdeployError, match="fixed batch of 4"):
        engine.plan_build(fixed, out, max_batch=8)
    with pytest.raises(TpdeployError, match="workspace"):
        engine.plan_build(path, out, workspace_mib=0)
    with pytest.raises(TpdeployError, match="also an input"):
        engine.plan_build(path, path)


def test_plugin_choice(tmp_path, no_plugin_anywhere):
    path = standin_onnx(tmp_path / "m.onnx")
    out = str(tmp_path / "m.plan")
    with pytest.raises(TpdeployError, match="--plugin PATH"):
        engine.plan_build(path, out)
    assert engine.plan_build(path, out, no_plugin=True).plugin is None
    with pytest.raises(TpdeployError, match="library not found"):
        engine.plan_build(path, out, plugin=str(tmp_path / "nope.so"))
    with pytest.raises(TpdeployError, match="not both"):
        engine.plan_build(path, out, plugin="x.so", no_plugin=True)
    dense = standin_onnx(tmp_path / "dense.onnx", pools=())
    assert engine.plan_build(dense, out).plugin is None  # nothing to plug in


def test_plugin_fields_come_from_the_node_attributes(tmp_path, plugin):
    path = standin_onnx(tmp_path / "m.onnx", pools=((120, "kmeans"), (60, "kmedoids")))
    plan = engine.plan_build(path, str(tmp_path / "m.plan"))
    assert [(n["num_clusters"], n["mode"]) for n in plan.token_pool_nodes] == [(120, "kmeans"), (60, "kmedoids")]
    proto = onnx.load(path)
    next(a for a in proto.graph.node[2].attribute if a.name == "mode").s = b"kmedian"
    onnx.save(proto, path)
    with pytest.raises(TpdeployError, match="not a TokenPool v1 node the plugin can run"):
        engine.plan_build(path, str(tmp_path / "m.plan"))


@pytest.mark.parametrize("arch", FAMILIES)
def test_the_plan_for_every_family(family_onnx, tmp_path, plugin, arch):
    model, path, _ = family_onnx(arch)
    plan = engine.plan_build(path, str(tmp_path / "m.plan"), fp16=True)
    size = model.cfg.img_size
    assert plan.spec.input.shape == (None, 3, size, size) and plan.spec.input.dtype == "float16"
    assert plan.recipe.data_config == model.cfg.data_config and plan.recipe.dtype == "fp16"
    assert [n["num_clusters"] for n in plan.token_pool_nodes] == [p.num_out for p in model.pools.values()]
    assert plan.plugin == plugin


def test_the_plugin_plan_refuses_what_the_kernels_cannot_run(tmp_path, plugin):
    """N <= 1024, batch <= 65535: beyond, the plan says how to build without the plugin (the ONNX function)."""
    big = standin_onnx(tmp_path / "big.onnx", size=296, tokens=1369, pools=((600, "kmedoids"),))  # ViT/8 at 296 px
    with pytest.raises(
        TpdeployError,
        match=r"TokenPool_0 pools 1369 tokens of 192 channels at batch up to 32; the "
        r"TokenPool kernels take N <= 1024.*--no-plugin",
    ):
        engine.plan_build(big, str(tmp_path / "big.plan"))
    assert engine.plan_build(big, str(tmp_path / "big.plan"), no_plugin=True).plugin is None
    fits = standin_onnx(tmp_path / "fits.onnx", size=384, tokens=576, pools=((514, "kmedoids"),))
    assert engine.plan_build(fits, str(tmp_path / "fits.plan"), max_batch=65535).plugin == plugin
    with pytest.raises(TpdeployError, match="at batch up to 65536; .* or a smaller --max-batch"):
        engine.plan_build(fits, str(tmp_path / "fits.plan"), max_batch=65536)


def test_no_plugin_inlines_the_function_without_control_flow(tmp_path):
    """--no-plugin hands TensorRT the function body unrolled without the early exit: standard ops, no If, no Loop,
    and the same results as the file's function."""
    for mode, iterations in (("kmedoids", 3), ("kmeans", 2), ("kmedoids", 0)):
        model = onnx_function.single_op_model("float32", 5, iterations, mode, True)
        inlined = onnx_function.inline_functions(model)
        assert not inlined.functions and all(n.domain == "" for n in inlined.graph.node)
        assert not {"If", "Loop"} & {n.op_type for n in inlined.graph.node}
        onnx.checker.check_model(inlined, full_check=True)
        rng = np.random.default_rng(iterations)
        feeds = {"X": rng.normal(size=(2, 20, 8)).astype(np.float32), "W": rng.random((2, 20)).astype(np.float32)}

        def run(m, feeds=feeds):
            return ort.InferenceSession(m.SerializeToString()).run(None, feeds)[0]

        np.testing.assert_array_equal(run(inlined), run(model))


def test_network_onnx_is_what_tensorrt_parses(tmp_path, plugin):
    path = standin_onnx(tmp_path / "m.onnx")
    with_plugin = onnx.load_from_string(engine.network_onnx(engine.plan_build(path, str(tmp_path / "a.plan"))))
    assert [n.op_type for n in with_plugin.graph.node].count("TokenPool") == 1
    inlined = onnx.load_from_string(
        engine.network_onnx(engine.plan_build(path, str(tmp_path / "b.plan"), no_plugin=True))
    )
    assert "TokenPool" not in {n.op_type for n in inlined.graph.node} and not inlined.functions


def test_a_node_missing_from_the_plugin_layers_is_reported():
    nodes = [{"name": "TokenPool_0"}, {"name": "TokenPool_1"}]
    assert engine.missing_plugin_layers(nodes, ["TokenPool_0", "TokenPool_1"]) == []
    assert engine.missing_plugin_layers(nodes, ["TokenPool_1"]) == ["TokenPool_0"]


def test_sidecar_records_what_the_engine_needs(tmp_path, plugin):
    plan_path, sidecar = standin_engine(tmp_path, standin_onnx(tmp_path / "m.onnx"), fp16=True)
    text = Path(engine_file.sidecar_path(plan_path)).read_text()
    d = json.loads(text)
    assert d["schema"] == engine_file.SCHEMA and d["plugin_sha256"] == sha256(plugin)
    assert d["engine_sha256"] == sha256(plan_path) and len(d["onnx_sha256"]) == 64
    assert d["spec"]["input"]["dtype"] == "float16" and d["spec"]["max_batch"] == 32 and d["build"]["fp16"]
    assert str(tmp_path) not in text  # no local path in a shipped file
    read = engine_file.read_sidecar(plan_path)
    assert read.spec == sidecar.spec and read.recipe == sidecar.recipe and read.plugin_sha256 == sha256(plugin)


def test_a_changed_engine_or_a_bad_sidecar_is_refused(tmp_path, plugin):
    plan_path, _ = standin_engine(tmp_path, standin_onnx(tmp_path / "m.onnx"))
    Path(plan_path).write_bytes(b"another engine")
    with pytest.raises(TpdeployError, match="not the engine its sidecar describes"):
        engine_file.read_sidecar(plan_path)
    Path(engine_file.sidecar_path(plan_path)).write_text('{"input_dtype": "float16"}')
    with pytest.raises(TpdeployError, match="schema"):
        engine_file.read_sidecar(plan_path)
    os.unlink(engine_file.sidecar_path(plan_path))
    with pytest.raises(TpdeployError, match="no sidecar"):
        engine_file.read_sidecar(plan_path)


def test_engines_built_elsewhere_are_refused_with_the_reason(tmp_path, plugin):
    _, sidecar = standin_engine(tmp_path, standin_onnx(tmp_path / "m.onnx"))
    h = sha256(plugin)
    engine_file.check_compatible(sidecar, "10.8.0.43", "90", h)
    with pytest.raises(TpdeployError, match=r"built with TensorRT 10.8.0.43 .*this machine has TensorRT 10.9.0.1"):
        engine_file.check_compatible(sidecar, "10.9.0.1", "90", h)
    with pytest.raises(TpdeployError, match=r"sm_90.*this GPU is sm_89.*rebuild"):
        engine_file.check_compatible(sidecar, "10.8.0.43", "89", h)
    with pytest.raises(TpdeployError, match="another build"):
        engine_file.check_compatible(sidecar, "10.8.0.43", "90", "0" * 64)


def test_plugin_search_order(tmp_path, no_plugin_anywhere, monkeypatch):
    engine_dir = tmp_path / "deploy"
    engine_dir.mkdir()
    plan = engine_dir / "m.plan"
    assert libraries.find_plugin(beside=str(plan), required=False) is None
    beside = engine_dir / libraries.PLUGIN_LIBRARY
    beside.write_bytes(b"beside")
    assert libraries.find_plugin(beside=str(plan)) == str(beside)
    env = tmp_path / "env.so"
    env.write_bytes(b"env")
    monkeypatch.setenv(libraries.PLUGIN_ENV, str(env))
    assert libraries.find_plugin(beside=str(plan)) == str(env)
    assert libraries.find_plugin(str(beside), beside=str(plan)) == str(beside)  # explicit wins


def test_each_plugin_library_is_loaded_once_per_process(tmp_path):
    """TensorRT's loadLibrary refuses a library whose creators are registered: build then load two engines
    (and bench --baseline, compare a.plan b.plan) must load it once; a different library is refused."""
    calls = []
    registry = plugins.PluginLibraries()
    lib = tmp_path / "libtpdeploy_plugin.so"
    lib.write_bytes(b"plugin")
    copy = tmp_path / "repo" / "libtpdeploy_plugin.so"
    copy.parent.mkdir()
    copy.write_bytes(b"plugin")

    def load_library(path):
        calls.append(path)
        return f"handle:{path}"

    handle = registry.load(str(lib), load_library)  # build-engine
    assert registry.load(str(lib), load_library) == handle  # the first engine's runner
    assert registry.load(str(copy), load_library) == handle  # the same bytes from a model repository
    assert calls == [str(lib)] and registry.loaded() == [str(lib)]
    other = tmp_path / "other.so"
    other.write_bytes(b"another build")
    with pytest.raises(TpdeployError, match="already loaded in this process"):
        registry.load(str(other), load_library)
    failing = plugins.PluginLibraries()
    with pytest.raises(TpdeployError, match="could not load the plugin library") as e:
        failing.load(str(other), lambda path: None)
    assert e.value.exit_code == 3 and failing.loaded() == []


def test_tensorrt_version_rule():
    for ok in ("10.7.0.23", "10.16.1", "11.1.0"):
        trt_backend.check_tensorrt_version(ok)
    for old in ("10.6.0", "8.6.1"):
        with pytest.raises(TpdeployError, match=">= 10.7"):
            trt_backend.check_tensorrt_version(old)


def test_info_on_an_engine_reads_its_sidecar(tmp_path, plugin):
    plan_path, _ = standin_engine(tmp_path, standin_onnx(tmp_path / "m.onnx"), fp16=True)
    result = subprocess.run(
        [sys.executable, "-m", "tpdeploy", "info", plan_path, "--json"], capture_output=True, text=True
    )
    info = json.loads(result.stdout)
    assert info["tensorrt_version"] == "10.8.0.43" and info["compute_capability"] == "90"
    assert "float16" in info["io"] and info["dtype"] == "fp16" and info["build"]["fp16"]


def _has_tensorrt():
    try:
        import tensorrt

        return hasattr(tensorrt, "Builder")
    except ImportError:
        return False


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed: the missing-TensorRT path cannot be shown")
def test_build_engine_without_tensorrt_says_what_to_install(tmp_path, plugin):
    onnx_path = standin_onnx(tmp_path / "m.onnx")
    result = subprocess.run(
        [sys.executable, "-m", "tpdeploy", "build-engine", onnx_path, "-o", str(tmp_path / "m.plan"), "--fp16"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: building and running TensorRT engines needs ")
    assert "pip install 'tpdeploy[tensorrt]'" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["lib", "m.onnx"]


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed")
def test_runtime_engine_without_tensorrt(tmp_path, plugin):
    from tpdeploy import runtime

    plan_path, _ = standin_engine(tmp_path, standin_onnx(tmp_path / "m.onnx"))
    with pytest.raises(TpdeployError, match="needs TensorRT"):
        runtime.load(plan_path)


# --- with TensorRT and a GPU ------------------------------------------------------------------------------


def _trt_ready():
    if not _has_tensorrt():
        return "needs TensorRT (pip install 'tpdeploy[tensorrt]') and an NVIDIA GPU"
    try:
        trt_backend.device_properties()
    except TpdeployError as e:
        return f"needs an NVIDIA GPU: {e}"
    if libraries.find_plugin(required=False) is None:
        return "needs the plugin library: make plugins TENSORRT_ROOT=..."
    return None


requires_trt = pytest.mark.skipif(_trt_ready() is not None, reason=str(_trt_ready()))


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from tpdeploy import create_model
    from tpdeploy.convert.export import export

    folder = tmp_path_factory.mktemp("trt")
    out = {}
    for name, kwargs in {"pooled": {"preset": "deit_small_058"}, "dense": {"method": "none"}}.items():
        onnx_path = str(folder / f"{name}.onnx")
        export(create_model("deit_small", **kwargs), onnx_path)
        for precision in ("fp32", "fp16"):
            plan = engine.plan_build(
                onnx_path, str(folder / f"{name}_{precision}.plan"), fp16=precision == "fp16", max_batch=16
            )
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
def test_two_engines_and_a_build_in_one_process(engines, tmp_path):
    from tpdeploy import runtime

    onnx_path, plan_a = engines["pooled", "fp32"]
    plan_b = engines["pooled", "fp16"][1]
    a, b = runtime.load(plan_a), runtime.load(plan_b)
    images = sample_images(2)
    assert a.infer(images).shape == b.infer(images).shape == (2, 1000)
    engine.build(engine.plan_build(onnx_path, str(tmp_path / "again.plan"), max_batch=4))
    assert len(plugins.PLUGINS.loaded()) == 1


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
        except Exception as e:  # collected and asserted below
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
    from tpdeploy import runtime
    from tpdeploy.tasks import bench

    calls = [runtime.load(engines[name, "fp16"][1]).timed_call(sample_images(16)) for name in ("pooled", "dense")]
    pooled, dense = (bench.LatencyStats.of(t, 16) for t in bench.measure(calls, 200, iterations=50))
    print(
        f"TensorRT fp16 batch 16: pooled {pooled.median:.3f} ms, dense {dense.median:.3f} ms, "
        f"speed-up {dense.median / pooled.median:.2f}x"
    )
    assert pooled.median > 0 and dense.median > 0
