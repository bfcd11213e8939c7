"""The TokenPool ONNX function, alone in a one-node graph on stock onnxruntime, against tpdeploy.token_pool: as
exported files hold it (iterations unrolled, each after the first behind the early exit's If) and inlined without
the early exit, as TensorRT parses it with --no-plugin."""

import itertools
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from test_op import EXACTNESS_SUITES, MODES, bits, pools

from tpdeploy import token_pool
from tpdeploy.tokenpool import onnx_function

BODIES = ["function", "inlined"]


def run_function(x, w, k, t, mode, weighted, dtype="float32", body="function"):
    model = onnx_function.single_op_model(dtype, k, t, mode, weighted)
    if body == "inlined":
        model = onnx_function.inline_functions(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x, "W": w})[0]


def reference(x, w, k, t, mode, weighted):
    return token_pool(torch.from_numpy(x), torch.from_numpy(w), k, t, mode, weighted).numpy()


@pytest.mark.parametrize("mode,weighted", MODES)
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_checker_accepts_the_function_model_and_its_inlined_body(mode, weighted, iterations):
    model = onnx_function.single_op_model("float32", 3, iterations, mode, weighted)
    onnx.checker.check_model(model, full_check=True)
    onnx.checker.check_model(onnx_function.inline_functions(model), full_check=True)


def _ops(nodes):
    for n in nodes:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _ops(a.g.node)


@pytest.mark.parametrize("mode", ["kmedoids", "kmeans"])
@pytest.mark.parametrize("iterations", [0, 1, 2, 5])
def test_iterations_are_unrolled_with_an_if_per_early_exit(mode, iterations):
    """No Loop: the file's function runs `iterations` steps, each one that can follow a fixed point inside an If
    (taken while the step before changed the medoids, or the kmeans assignment); the inlined body has neither."""
    fn = onnx_function.function_proto(onnx_function.MIN_OPSET, mode, iterations)
    ops = [n.op_type for n in _ops(fn.node)]
    gated = iterations - 1 if mode == "kmedoids" else iterations - 2  # kmeans compares two steps' assignments
    assert "Loop" not in ops and ops.count("If") == max(gated, 0)
    assert ops.count("ArgMin") == iterations
    inlined = onnx_function.inline_functions(onnx_function.single_op_model("float32", 3, iterations, mode, True))
    assert not {"If", "Loop"} & {n.op_type for n in inlined.graph.node}


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("mode,weighted", MODES)
@pytest.mark.parametrize("seed", range(3))
def test_function_equals_reference_exactly_on_random_inputs(mode, weighted, seed, body):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 60, 32)).astype(np.float32)
    w = rng.random((4, 60)).astype(np.float32)
    for k, t in [(1, 3), (17, 3), (60, 2), (25, 0)]:
        got = run_function(x, w, k, t, mode, weighted, body=body)
        np.testing.assert_array_equal(got, reference(x, w, k, t, mode, weighted))


@pytest.mark.parametrize("mode", ["kmedoids", "kmeans"])
def test_function_equals_reference_at_the_largest_registered_size(mode):
    """The first pooling step of vit_large_patch16_384_058: 576 tokens of 1024 channels to 546."""
    rng = np.random.default_rng(576)
    x = rng.normal(size=(2, 576, 1024)).astype(np.float32)
    w = rng.random((2, 576)).astype(np.float32)
    np.testing.assert_array_equal(run_function(x, w, 546, 3, mode, True), reference(x, w, 546, 3, mode, True))


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("mode,weighted", MODES)
@pytest.mark.parametrize("suite", list(EXACTNESS_SUITES))
def test_function_is_bit_identical_to_the_reference_on_the_exactness_suites(mode, weighted, suite, body):
    """Ties and duplicates, everything tied, NaN/Inf, normal: the reference's bits, NaNs in the same places."""
    for seed in range(3):
        x, w = EXACTNESS_SUITES[suite](seed)
        n = x.shape[1]
        for k, t in [(1, 3), (5, 4), (n // 2, 0), (n, 2), (7, 10)]:
            got = torch.from_numpy(run_function(x, w, k, t, mode, weighted, body=body))
            want = torch.from_numpy(reference(x, w, k, t, mode, weighted))
            assert torch.equal(bits(got), bits(want)), f"{suite} seed={seed} K={k} T={t}"


@pytest.mark.parametrize("body", BODIES)
@settings(max_examples=40, deadline=None)
@given(p=pools())
def test_function_equals_reference_property(p, body):
    x, w, k, t, (mode, weighted) = p
    got = run_function(x, w, k, t, mode, weighted, body=body)
    np.testing.assert_array_equal(got, reference(x, w, k, t, mode, weighted))


@pytest.mark.parametrize("mode,weighted", MODES)
def test_function_in_float16(mode, weighted):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 40, 16)).astype(np.float16)
    w = rng.random((2, 40)).astype(np.float16)
    got = run_function(x, w, 12, 3, mode, weighted, dtype="float16")
    assert got.dtype == np.float16
    want = token_pool(torch.from_numpy(x), torch.from_numpy(w), 12, 3, mode, weighted).numpy()
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3)


def test_node_carries_the_plugin_attributes():
    node = onnx_function.make_node("X", "W", "Y", 5, 2, "kmeans", False)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (node.domain, node.op_type) == ("tpdeploy", "TokenPool")
    assert attrs == {
        "num_clusters": 5,
        "iterations": 2,
        "mode": b"kmeans",
        "weighted": 0,
        "plugin_version": b"1",
        "plugin_namespace": b"tpdeploy",
    }


@pytest.mark.parametrize("mode", ["kmedoids", "kmeans"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_session_prints_nothing(tmp_path, mode, dtype):
    """onnxruntime's optimizer rewrites some values that the early exit's Ifs read; it must find nothing it
    would rename in them, or it warns at every session start (test_export checks whole models too)."""
    path = tmp_path / "op.onnx"
    onnx.save(onnx_function.single_op_model(dtype, 5, 3, mode, True), path)
    code = "import sys, onnxruntime as ort; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


def test_function_body_uses_standard_ops_only():
    for mode, iterations in itertools.product(("kmedoids", "kmeans"), (0, 1, 3)):
        fn = onnx_function.function_proto(onnx_function.MIN_OPSET, mode, iterations)
        assert {n.domain for n in _ops(fn.node)} == {""}
        assert not any(
            n.op_type == "Constant" and any(a.type == onnx.AttributeProto.STRING for a in n.attribute)
            for n in _ops(fn.node)
        )  # no strings: TensorRT can import the function too


def test_old_opsets_are_refused():
    with pytest.raises(ValueError, match="opset >= 18"):
        onnx_function.function_proto(17, "kmedoids", 3)
