"""The TokenPool ONNX function, alone in a one-node graph on stock onnxruntime, against tpdeploy.token_pool."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from test_op import MODES, _tied_inputs, pools

from tpdeploy import token_pool
from tpdeploy.tokenpool import onnx_function


def run_function(x, w, k, t, mode, weighted, dtype="float32"):
    model = onnx_function.single_op_model(dtype, k, t, mode, weighted)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x, "W": w})[0]


def reference(x, w, k, t, mode, weighted):
    return token_pool(torch.from_numpy(x), torch.from_numpy(w), k, t, mode, weighted).numpy()


@pytest.mark.parametrize("mode,weighted", MODES)
def test_checker_accepts_the_function_model(mode, weighted):
    onnx.checker.check_model(onnx_function.single_op_model("float32", 3, 2, mode, weighted), full_check=True)


@pytest.mark.parametrize("mode,weighted", MODES)
@pytest.mark.parametrize("seed", range(3))
def test_function_equals_reference_exactly_on_random_inputs(mode, weighted, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 60, 32)).astype(np.float32)
    w = rng.random((4, 60)).astype(np.float32)
    for k, t in [(1, 3), (17, 3), (60, 2), (25, 0)]:
        np.testing.assert_array_equal(run_function(x, w, k, t, mode, weighted), reference(x, w, k, t, mode, weighted))


@pytest.mark.parametrize("mode", ["kmedoids", "kmeans"])
def test_function_equals_reference_at_the_largest_registered_size(mode):
    """The first pooling step of vit_large_patch16_384_058: 576 tokens of 1024 channels to 546."""
    rng = np.random.default_rng(576)
    x = rng.normal(size=(2, 576, 1024)).astype(np.float32)
    w = rng.random((2, 576)).astype(np.float32)
    np.testing.assert_array_equal(run_function(x, w, 546, 3, mode, True), reference(x, w, 546, 3, mode, True))


@pytest.mark.parametrize("mode,weighted", MODES)
@pytest.mark.parametrize("seed", range(4))
def test_function_equals_reference_on_ties_and_duplicates(mode, weighted, seed):
    x, w = _tied_inputs(np.random.default_rng(300 + seed), 3, 16, 3)
    for k in (1, 5, 16):
        np.testing.assert_array_equal(run_function(x, w, k, 3, mode, weighted), reference(x, w, k, 3, mode, weighted))


@settings(max_examples=40, deadline=None)
@given(pools())
def test_function_equals_reference_property(p):
    x, w, k, t, (mode, weighted) = p
    np.testing.assert_array_equal(run_function(x, w, k, t, mode, weighted), reference(x, w, k, t, mode, weighted))


@pytest.mark.parametrize("mode,weighted", MODES)
def test_function_in_float16(mode, weighted):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 40, 16)).astype(np.float16)
    w = rng.random((2, 40)).astype(np.float16)
    got = run_function(x, w, 12, 3, mode, weighted, dtype="float16")
    assert got.dtype == np.float16
    want = token_pool(torch.from_numpy(x), torch.from_numpy(w), 12, 3, mode, weighted).numpy()
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3)


@pytest.mark.parametrize("mode,weighted", MODES)
def test_non_finite_inputs_agree_with_reference(mode, weighted):
    rng = np.random.default_rng(5)
    x, w = rng.normal(size=(2, 10, 4)).astype(np.float32), rng.random((2, 10)).astype(np.float32)
    x[0, 3, 1], x[1, 0, 0], w[0, 5], w[1, 2] = np.nan, np.inf, np.nan, np.inf
    np.testing.assert_array_equal(run_function(x, w, 4, 3, mode, weighted), reference(x, w, 4, 3, mode, weighted))


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


def test_function_body_uses_standard_ops_only():
    def ops(nodes):
        for n in nodes:
            yield n
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from ops(a.g.node)

    for mode in ("kmedoids", "kmeans"):
        fn = onnx_function.function_proto(onnx_function.MIN_OPSET, mode)
        assert {n.domain for n in ops(fn.node)} == {""}
        assert not any(
            n.op_type == "Constant" and any(a.type == onnx.AttributeProto.STRING for a in n.attribute)
            for n in ops(fn.node)
        )  # no strings: TensorRT can import the function too


def test_old_opsets_are_refused():
    with pytest.raises(ValueError, match="opset >= 18"):
        onnx_function.function_proto(17, "kmedoids")
