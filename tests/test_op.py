"""The TokenPool reference (tpdeploy.token_pool) against a slow loop implementation, and its properties."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from slow_reference import plain_token_pool, slow_token_pool

from tpdeploy import token_pool
from tpdeploy.model.registry import get_config
from tpdeploy.model.vit import Block

MODES = [("kmedoids", True), ("kmedoids", False), ("kmeans", True), ("kmeans", False)]


def _t(a, dtype=torch.float32):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


@pytest.mark.parametrize("mode,weighted", MODES)
@pytest.mark.parametrize("seed", range(4))
def test_matches_slow_loop_on_random_inputs(mode, weighted, seed):
    rng = np.random.default_rng(seed)
    b, n, c = 3, int(rng.integers(5, 40)), int(rng.integers(2, 24))
    k, t = int(rng.integers(1, n + 1)), int(rng.integers(0, 5))
    x, w = rng.normal(size=(b, n, c)), rng.random((b, n))
    got = token_pool(_t(x), _t(w), k, t, mode, weighted).numpy()
    want = slow_token_pool(x.astype(np.float32), w.astype(np.float32), k, t, mode, weighted)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _tied_inputs(rng, b, n, c):
    """Small integers: exact float arithmetic, many exact distance ties, duplicate tokens, zero weights."""
    x = rng.integers(-2, 3, size=(b, n, c)).astype(np.float32)
    x[:, n // 2 :] = x[:, : n - n // 2]  # every token in the second half duplicates one in the first
    w = rng.integers(0, 4, size=(b, n)).astype(np.float32)
    return x, w


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_kmedoids_ties_and_duplicates_exactly(weighted, seed):
    rng = np.random.default_rng(100 + seed)
    x, w = _tied_inputs(rng, 2, 16, 3)
    for k in (1, 5, 16):
        got = token_pool(_t(x), _t(w), k, 4, "kmedoids", weighted).numpy()
        np.testing.assert_array_equal(got, slow_token_pool(x, w, k, 4, "kmedoids", weighted))


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_kmeans_ties_and_empty_clusters(weighted, seed):
    rng = np.random.default_rng(200 + seed)
    x, w = _tied_inputs(rng, 2, 16, 3)
    for k in (1, 6, 16):  # duplicates leave clusters empty; zero weights leave them weightless
        got = token_pool(_t(x), _t(w), k, 1, "kmeans", weighted).numpy()
        np.testing.assert_allclose(got, slow_token_pool(x, w, k, 1, "kmeans", weighted), rtol=1e-6)


def test_exact_distance_tie_goes_to_lowest_cluster():
    # token 2 is equidistant from centres 0 and 1 (the two heaviest tokens): it joins cluster 0
    x = _t([[[0.0], [2.0], [1.0]]])
    w = _t([[3.0, 2.0, 1.0]])
    y = token_pool(x, w, 2, 1, "kmeans", weighted=False)
    assert y[0, :, 0].tolist() == [0.5, 2.0]


def test_medoid_cost_tie_goes_to_lowest_index():
    # cluster {0, 1}: both have cost 1, so the medoid is token 0 even though token 1 initialised it
    x = _t([[[0.0], [1.0], [10.0]]])
    w = _t([[1.0, 5.0, 4.0]])
    y = token_pool(x, w, 2, 1, "kmedoids", weighted=False)
    assert y[0, :, 0].tolist() == [0.0, 10.0]


def test_weightless_cluster_keeps_its_centre():
    x = _t([[[0.0], [1.0], [10.0], [11.0]]])
    w = _t([[0.0, 0.0, 0.0, 0.0]])  # init order 0, 1 (stable); every cluster has zero weight
    y = token_pool(x, w, 2, 3, "kmeans", weighted=True)
    assert y[0, :, 0].tolist() == [0.0, 1.0]


# --- properties (hypothesis) -------------------------------------------------------------------------------


@st.composite
def pools(draw, max_n=12):
    b, n, c = draw(st.integers(1, 3)), draw(st.integers(1, max_n)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        x, w = _tied_inputs(rng, b, n, c)
    else:
        x, w = rng.normal(size=(b, n, c)).astype(np.float32), rng.random((b, n)).astype(np.float32)
    return x, w, draw(st.integers(1, n)), draw(st.integers(0, 4)), draw(st.sampled_from(MODES))


def _rows(a):
    return sorted(map(tuple, a.tolist()))


def _separated(x):
    """Distinct tokens farther apart than the float32 rounding of |x|^2 + |y|^2 - 2 x.y: closer ones may tie."""
    for xb in x.astype(np.float64):
        d = ((xb[:, None] - xb[None]) ** 2).sum(-1)
        scale = (xb**2).sum(-1).max() + 1e-30
        if np.any((d > 0) & (d < 1e-5 * scale)):
            return False
    return True


@settings(max_examples=60, deadline=None)
@given(pools())
def test_k_equals_n_kmedoids_returns_a_permutation_of_x(p):
    x, w, _, t, (_, weighted) = p
    assume(_separated(x))
    y = token_pool(_t(x), _t(w), x.shape[1], t, "kmedoids", weighted).numpy()
    for xb, yb in zip(x, y):
        assert _rows(yb) == _rows(xb)


@settings(max_examples=60, deadline=None)
@given(pools())
def test_zero_iterations_is_top_k_by_weight(p):
    x, w, k, _, (mode, weighted) = p
    y = token_pool(_t(x), _t(w), k, 0, mode, weighted).numpy()
    for xb, wb, yb in zip(x, w, y):
        order = sorted(range(len(wb)), key=lambda i: (-wb[i], i))[:k]
        np.testing.assert_array_equal(yb, xb[order])


@settings(max_examples=60, deadline=None)
@given(pools())
def test_medoids_are_rows_of_x(p):
    x, w, k, t, (_, weighted) = p
    y = token_pool(_t(x), _t(w), k, t, "kmedoids", weighted).numpy()
    for xb, yb in zip(x, y):
        rows = set(map(tuple, xb.tolist()))
        assert all(tuple(r) in rows for r in yb.tolist())


@settings(max_examples=60, deadline=None)
@given(pools())
def test_output_is_in_initialisation_order(p):
    """After one iteration, Y[k] belongs to the cluster initialised by the k-th heaviest token."""
    x, w, k, _, (_, weighted) = p
    y = token_pool(_t(x), _t(w), k, 1, "kmedoids", weighted).numpy().astype(np.float64)
    for xb, wb, yb in zip(x.astype(np.float64), w, y):
        init = sorted(range(len(wb)), key=lambda i: (-wb[i], i))[:k]
        for j, row in enumerate(yb):
            d = ((xb[init] - row) ** 2).sum(1)
            assert d[j] == d.min()  # its own initial centre is (one of) the nearest


@settings(max_examples=40, deadline=None)
@given(pools(max_n=10))
def test_matches_slow_loop_on_tied_integer_inputs(p):
    x, w, k, t, (mode, weighted) = p
    if mode == "kmeans":
        t = min(t, 1)  # means after the first update are not exact in float32: compared above on random data
    got = token_pool(_t(x), _t(w), k, t, mode, weighted).numpy()
    np.testing.assert_allclose(got, slow_token_pool(x, w, k, t, mode, weighted), rtol=1e-5, atol=1e-6)


# --- dtypes, gradients, bad and non-finite input -------------------------------------------------------


@pytest.mark.parametrize("mode,weighted", MODES)
def test_float16_inputs_accumulate_in_float32(mode, weighted):
    rng = np.random.default_rng(7)
    x, w = rng.normal(size=(2, 30, 16)), rng.random((2, 30))
    y16 = token_pool(_t(x, torch.float16), _t(w, torch.float16), 9, 3, mode, weighted)
    assert y16.dtype == torch.float16
    x32 = _t(x, torch.float16).float()
    y32 = token_pool(x32, _t(w, torch.float16).float(), 9, 3, mode, weighted)
    np.testing.assert_allclose(y16.float().numpy(), y32.numpy(), atol=2e-3)


@pytest.mark.parametrize("mode", ["kmedoids", "kmeans"])
def test_differentiable_in_x_with_assignments_held(mode):
    rng = np.random.default_rng(3)
    x = _t(rng.normal(size=(2, 12, 5))).requires_grad_(True)
    w = _t(rng.random((2, 12)))
    y = token_pool(x, w, 4, 2, mode)
    (y * torch.arange(5.0)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the gradient of a fixed-assignment function matches finite differences on x
    x64 = x.detach().double().requires_grad_(True)
    torch.autograd.gradcheck(lambda v: token_pool(v.float(), w, 4, 2, mode).double(), (x64,), eps=1e-3, atol=1e-2)


@pytest.mark.parametrize(
    "args,message",
    [
        (((2, 5, 3), (2, 5), 6, 1, "kmedoids"), "num_clusters"),
        (((2, 5, 3), (2, 5), 0, 1, "kmedoids"), "num_clusters"),
        (((2, 5, 3), (2, 4), 2, 1, "kmedoids"), "W must be"),
        (((2, 5), (2, 5), 2, 1, "kmedoids"), "X must be"),
        (((2, 5, 3), (2, 5), 2, -1, "kmedoids"), "iterations"),
        (((2, 5, 3), (2, 5), 2, 1, "kmedian"), "mode"),
    ],
)
def test_bad_arguments_raise_one_clear_error(args, message):
    xs, ws, k, t, mode = args
    with pytest.raises(ValueError, match=message):
        token_pool(torch.zeros(xs), torch.ones(ws), k, t, mode)


def test_integer_inputs_are_refused():
    with pytest.raises(ValueError, match="float32 or float16"):
        token_pool(torch.zeros(1, 4, 2, dtype=torch.int32), torch.ones(1, 4), 2)


@pytest.mark.parametrize("mode,weighted", MODES)
def test_non_finite_inputs_give_a_defined_result(mode, weighted):
    """NaN/Inf never crash or hang: distances count as FLT_MAX, weights as 0 (NaN) or FLT_MAX (Inf)."""
    rng = np.random.default_rng(5)
    x, w = rng.normal(size=(2, 10, 4)).astype(np.float32), rng.random((2, 10)).astype(np.float32)
    x[0, 3, 1], x[1, 0, 0], w[0, 5], w[1, 2] = np.nan, np.inf, np.nan, np.inf
    y1 = token_pool(_t(x), _t(w), 4, 3, mode, weighted)
    y2 = token_pool(_t(x), _t(w), 4, 3, mode, weighted)
    assert y1.shape == (2, 4, 4)
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())  # deterministic, NaN in the same places
    # the infinite weight ranks first, the NaN weight last
    y0 = token_pool(_t(x), _t(w), 10, 0, mode, weighted).numpy()
    np.testing.assert_array_equal(y0[1, 0], x[1, 2])
    np.testing.assert_array_equal(y0[0, 9], x[0, 5])


# --- the reference (made fast for issue 19) against the plain float32 implementation, bit for bit ---------------


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns (so -0.0 differs from +0.0 and NaNs compare equal)."""
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def non_finite_inputs(seed, b, n, c):
    """Tied small integers with NaN/Inf/huge X (distances clamp to FLT_MAX) and NaN/Inf/negative/huge W."""
    x, w = _tied_inputs(np.random.default_rng(seed), b, n, c)
    x[0, 3, 1], x[1, 0, 0], x[2, 7, 2], x[1, 11, 4] = np.nan, np.inf, -np.inf, 1e20
    w[0, 5], w[1, 2], w[2, 4], w[2, 6], w[0, 8], w[1, 9] = np.nan, np.inf, -np.inf, -1.5, 3e38, 2.5e38
    return x, w


EXACTNESS_SUITES = {
    "ties and duplicates": lambda seed: _tied_inputs(np.random.default_rng(seed), 3, 24, 3),
    "everything tied": lambda seed: (
        np.full((3, 17, 4), seed - 2.0, np.float32),
        np.full((3, 17), seed % 2, np.float32),
    ),
    "NaN and Inf": lambda seed: non_finite_inputs(seed, 3, 24, 6),
    "normal": lambda seed: (
        np.random.default_rng(seed).normal(size=(3, 40, 16)).astype(np.float32),
        np.random.default_rng(seed + 1).random((3, 40)).astype(np.float32),
    ),
}


@pytest.mark.parametrize("mode,weighted", MODES)
@pytest.mark.parametrize("suite", list(EXACTNESS_SUITES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["x32", "x16"])
def test_reference_is_bit_identical_to_the_plain_implementation(mode, weighted, suite, dtype):
    """Member-only costs, one packed reduction for the medoid and index_add sums choose the same tokens and give
    the same bits as the plain implementation: exactly where sums are exact, and on normal inputs too (without
    near-ties; kmeans' sums and distances are the very same operations)."""
    for seed in range(3):
        x, w = EXACTNESS_SUITES[suite](seed)
        n = x.shape[1]
        for k, t in [(1, 3), (5, 4), (n // 2, 0), (n, 2), (7, 10)]:
            args = (_t(x, dtype), _t(w, dtype), k, t, mode, weighted)
            got, want = token_pool(*args), plain_token_pool(*args)
            assert torch.equal(bits(got), bits(want)), f"{suite} seed={seed} K={k} T={t}"


@pytest.mark.parametrize("mode,weighted", MODES)
def test_reference_chooses_the_plain_implementations_tokens_on_a_deit_block(mode, weighted):
    """The benchmark's inputs (benchmarks/op_cpu.py): a DeiT-S block's output tokens and significance, 196 -> 110."""
    torch.manual_seed(0)
    block = Block(get_config("deit_small")).eval()
    with torch.inference_mode():
        out, significance = block(torch.randn(4, 197, 384), want_significance=True)
        args = (out[:, 1:].contiguous(), significance, 110, 3, mode, weighted)
        assert torch.equal(bits(token_pool(*args)), bits(plain_token_pool(*args)))
