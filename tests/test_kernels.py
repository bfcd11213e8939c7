"""The TokenPool CUDA kernels (plugins/tokenpool): the CMake build, the C API without a GPU, and, on a GPU,
agreement with the PyTorch reference (tpdeploy.tokenpool.reference.reference_token_pool)."""

import ctypes

import numpy as np
import pytest
import torch
from conftest import REPO, requires_gpu, requires_nvcc

from tpdeploy import create_model
from tpdeploy.data.samples import sample_images
from tpdeploy.tokenpool import cuda_kernels, libraries
from tpdeploy.tokenpool.reference import reference_token_pool

INVALID, UNSUPPORTED = 1, 2
GOOD = dict(batch=2, tokens=196, channels=384, clusters=110, iterations=3, mode=0, weighted=1, x_type=1, w_type=0)


def params(**changes):
    return cuda_kernels.Params(**{**GOOD, **changes})


@pytest.fixture(scope="session")
def library(plugins_build):
    """libtokenpool_kernels.so of the session's CMake build (conftest.plugins_build)."""
    return plugins_build / libraries.KERNELS_LIBRARY


@pytest.fixture(scope="session")
def lib(library):
    return cuda_kernels.load(str(library))


# --- (a) the build -------------------------------------------------------------------------------------------


@requires_nvcc
def test_cmake_builds_the_kernels_library_exporting_only_the_c_api(library, lib):
    assert library.is_file()
    for name in ("tokenPoolWorkspaceSize", "tokenPoolValidate", "tokenPoolLaunch", "tokenPoolStatusString"):
        assert hasattr(lib, name)
    assert not hasattr(lib, "cudaGetLastError")  # the static CUDA runtime stays private


# --- (b) the C API, no GPU needed -----------------------------------------------------------------------------


@requires_nvcc
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"x_type": 0},
        {"w_type": 1},
        {"mode": 1},
        {"weighted": 0},
        {"iterations": 0},
        {"clusters": 196},
        {"clusters": 1},
        {"tokens": 1, "clusters": 1, "channels": 1},
        {"tokens": 1024, "clusters": 512},
        {"channels": 65536},
        {"batch": 65535, "tokens": 8, "clusters": 2},
    ],
)
def test_valid_params(lib, changes):
    p = params(**changes)
    assert lib.tokenPoolValidate(ctypes.byref(p)) == 0
    size = lib.tokenPoolWorkspaceSize(ctypes.byref(p))
    assert size > 0 and size % 256 == 0


@requires_nvcc
@pytest.mark.parametrize(
    "changes,status",
    [
        ({"clusters": 197}, INVALID),  # K > N
        ({"clusters": 0}, INVALID),
        ({"batch": -1}, INVALID),
        ({"tokens": 0, "clusters": 0}, INVALID),
        ({"channels": 0}, INVALID),
        ({"iterations": -1}, INVALID),
        ({"mode": 2}, INVALID),
        ({"weighted": 2}, INVALID),
        ({"x_type": 2}, INVALID),
        ({"w_type": -1}, INVALID),
        ({"tokens": 1025, "clusters": 10}, UNSUPPORTED),  # N over the limit
        ({"channels": 65537}, UNSUPPORTED),
        ({"batch": 65536}, UNSUPPORTED),
    ],
)
def test_invalid_params_are_refused_with_a_status_and_no_workspace(lib, changes, status):
    p = params(**changes)
    assert lib.tokenPoolValidate(ctypes.byref(p)) == status
    assert lib.tokenPoolWorkspaceSize(ctypes.byref(p)) == 0
    # the launcher refuses them too, before touching the GPU
    assert lib.tokenPoolLaunch(ctypes.byref(p), 256, 256, 256, 256, None) == status


@requires_nvcc
def test_null_params(lib):
    assert lib.tokenPoolValidate(None) == INVALID
    assert lib.tokenPoolWorkspaceSize(None) == 0
    assert lib.tokenPoolLaunch(None, 256, 256, 256, 256, None) == INVALID


@requires_nvcc
def test_workspace_holds_the_distance_matrix_and_grows_with_the_batch(lib):
    def size(**changes):
        return lib.tokenPoolWorkspaceSize(ctypes.byref(params(**changes)))

    b, n, c, k = 2, 196, 384, 110
    ld = 208  # N rounded up to 16
    assert size(iterations=0) == 256 * -(-b * k * 4 // 256) + 256  # top-K: the chosen indices (+ alignment slack)
    assert size(iterations=0, mode=1) == size(iterations=0)
    assert size() >= b * ld * ld * 4 + b * k * 4  # kmedoids: the [B, N, N] Gram matrix
    assert size(mode=1) >= b * k * c * 4 + b * k * n * 4  # kmeans: centres and dot products
    assert size(batch=0) == 0
    for changes in ({}, {"mode": 1}):
        assert size(batch=8, **changes) > size(batch=4, **changes) > size(**changes)


@requires_nvcc
def test_launch_checks_pointers_without_a_gpu(lib):
    p = params()
    assert lib.tokenPoolLaunch(ctypes.byref(params(batch=0)), None, None, None, None, None) == 0  # nothing to do
    assert lib.tokenPoolLaunch(ctypes.byref(p), None, 256, 256, 256, None) == INVALID
    assert lib.tokenPoolLaunch(ctypes.byref(p), 256, 256, 256, None, None) == INVALID
    assert lib.tokenPoolLaunch(ctypes.byref(p), 257, 256, 256, 256, None) == INVALID  # fp16 X misaligned
    assert lib.tokenPoolLaunch(ctypes.byref(p), 256, 258, 256, 256, None) == INVALID  # fp32 W misaligned
    assert lib.tokenPoolLaunch(ctypes.byref(params(x_type=0)), 256, 256, 258, 256, None) == INVALID  # fp32 Y misaligned


@requires_nvcc
def test_status_strings(lib):
    texts = [lib.tokenPoolStatusString(s).decode() for s in range(4)]
    assert texts[0] == "success"
    assert "1 <= K <= N" in texts[1] and "1024" in texts[2] and "CUDA" in texts[3]
    assert len(set(texts)) == 4
    assert "unknown" in lib.tokenPoolStatusString(99).decode()


def test_binding_finds_the_library_from_the_environment(monkeypatch, tmp_path):
    lib_file = tmp_path / libraries.KERNELS_LIBRARY
    lib_file.write_bytes(b"")
    monkeypatch.setenv(libraries.KERNELS_ENV, str(lib_file))
    assert cuda_kernels.library_path() == str(lib_file)
    monkeypatch.setenv(libraries.KERNELS_ENV, str(tmp_path / "missing.so"))
    fallbacks = (REPO / "build" / "plugins" / libraries.KERNELS_LIBRARY, REPO / "tpdeploy" / libraries.KERNELS_LIBRARY)
    assert cuda_kernels.library_path() in [None] + [str(f) for f in fallbacks if f.is_file()]


def test_binding_params_refuse_what_the_c_api_cannot_express():
    x, w = torch.zeros(2, 5, 3), torch.ones(2, 5)
    p = cuda_kernels.params(x.half(), w, 4, 2, "kmeans", False)
    assert (p.batch, p.tokens, p.channels, p.clusters, p.iterations, p.mode, p.weighted, p.x_type, p.w_type) == (
        2,
        5,
        3,
        4,
        2,
        1,
        0,
        1,
        0,
    )
    with pytest.raises(ValueError, match="X must be"):
        cuda_kernels.params(x, torch.ones(2, 4), 2, 1, "kmedoids", True)
    with pytest.raises(ValueError, match="float32 or float16"):
        cuda_kernels.params(x.double(), w, 2, 1, "kmedoids", True)
    with pytest.raises(ValueError, match="mode"):
        cuda_kernels.params(x, w, 2, 1, "kmedian", True)
    with pytest.raises(ValueError, match="32 bits"):
        cuda_kernels.params(x, w, 2, 2**31, "kmedoids", True)


def test_binding_is_unavailable_without_cuda():
    if not torch.cuda.is_available():
        assert not cuda_kernels.available()
        with pytest.raises(ValueError, match="CUDA tensors"):
            cuda_kernels.token_pool(torch.zeros(1, 4, 2), torch.ones(1, 4), 2)


# --- (c) on a GPU: the kernels against the reference -------------------------------------------------------------

MODES = [("kmedoids", True), ("kmedoids", False), ("kmeans", True), ("kmeans", False)]
DTYPES = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float32),
    (torch.float16, torch.float16),
    (torch.float32, torch.float16),
]


@pytest.fixture
def gpu(library, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with a CUDA build of torch")
    monkeypatch.setenv(libraries.KERNELS_ENV, str(library))
    cuda_kernels._library.cache_clear()
    assert cuda_kernels.available()
    yield torch.device("cuda")
    cuda_kernels._library.cache_clear()


def poisoned_launch(x, w, k, t, mode, weighted):
    """The kernels with Y pre-filled with NaN and the workspace with 0xFF bytes: every output must be written,
    and no scratch value may be read before it is written."""
    p = cuda_kernels.params(x, w, k, t, mode, weighted)
    y = torch.full((p.batch, k, p.channels), float("nan"), dtype=x.dtype, device=x.device)
    workspace = torch.full((cuda_kernels.workspace_size(p),), 255, dtype=torch.uint8, device=x.device)
    cuda_kernels.launch(p, x, w, y, workspace)
    return y.cpu()


def tied_inputs(gen, b, n, c):
    """Small integers (exact float arithmetic in every order), duplicated tokens, integer weights with zeros."""
    x = torch.randint(-2, 3, (b, n, c), generator=gen).float()
    x[:, n // 2 :] = x[:, : n - n // 2]
    return x, torch.randint(0, 4, (b, n), generator=gen).float()


def mismatched_images(got, want, atol):
    return sum(
        not torch.allclose(g.float(), v.float(), rtol=atol, atol=atol, equal_nan=True) for g, v in zip(got, want)
    )


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("mode,weighted", MODES)
@pytest.mark.parametrize("x_dtype,w_dtype", DTYPES)
@pytest.mark.parametrize("b,n,c", [(4, 33, 5), (3, 200, 24)])
def test_exactly_the_reference_on_tied_integer_inputs(gpu, mode, weighted, x_dtype, w_dtype, b, n, c):
    gen = torch.Generator().manual_seed(n * c)
    x, w = tied_inputs(gen, b, n, c)
    x, w = x.to(x_dtype), w.to(w_dtype)
    for k in (1, n // 3, n):
        for t in (0, 1) if mode == "kmeans" else (0, 1, 4):  # later k-means means are not exact
            got = poisoned_launch(x.to(gpu), w.to(gpu), k, t, mode, weighted)
            want = reference_token_pool(x, w, k, t, mode, weighted)
            assert got.dtype == want.dtype == x_dtype
            assert torch.equal(got, want), (k, t)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("mode,weighted", MODES)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,c", [(49, 64), (196, 384), (577, 32)])
def test_matches_the_reference_on_random_inputs(gpu, mode, weighted, x_dtype, n, c):
    """float32: the same tokens except on near-ties (at most one image of 16 here); float16: against the
    reference on the fp16-rounded inputs, within fp16 rounding."""
    gen = torch.Generator().manual_seed(n + c)
    x, w = torch.randn(16, n, c, generator=gen).to(x_dtype), torch.rand(16, n, generator=gen)
    for k, t in ((1, 3), (n // 4, 3), (n // 2, 1), (n, 2)):
        got = poisoned_launch(x.to(gpu), w.to(gpu), k, t, mode, weighted)
        assert not got.isnan().any()
        want = reference_token_pool(x.float(), w, k, t, mode, weighted)
        atol = 1e-5 if x_dtype == torch.float32 else 2e-3
        assert mismatched_images(got, want, atol) <= 1, (k, t)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("mode,weighted", MODES)
def test_non_finite_inputs_give_the_references_result(gpu, mode, weighted):
    gen = torch.Generator().manual_seed(5)
    x, w = tied_inputs(gen, 3, 40, 6)
    x[0, 3, 1], x[1, 0, 0], x[2, 7, 2], w[0, 5] = float("nan"), float("inf"), -float("inf"), float("nan")
    if mode == "kmedoids":  # k-means sums of x * FLT_MAX would depend on the order of the additions
        w[1, 2] = float("inf")
    t = 1 if mode == "kmeans" else 3
    got = [poisoned_launch(x.to(gpu), w.to(gpu), 9, t, mode, weighted) for _ in range(2)]
    want = reference_token_pool(x, w, 9, t, mode, weighted)
    assert torch.equal(got[0].isnan(), got[1].isnan()) and torch.equal(got[0].nan_to_num(), got[1].nan_to_num())
    np.testing.assert_array_equal(got[0].numpy(), want.numpy())


@pytest.mark.gpu
@requires_gpu
def test_op_dispatches_to_the_kernels_for_cuda_tensors(gpu, monkeypatch):
    calls = []
    monkeypatch.setattr(cuda_kernels, "token_pool", lambda *a: calls.append(a) or torch.zeros(1, 2, 3, device=gpu))
    from tpdeploy.tokenpool.reference import token_pool

    token_pool(torch.randn(1, 5, 3, device=gpu), torch.rand(1, 5, device=gpu), 2, 1)
    assert len(calls) == 1
    token_pool(torch.randn(1, 5, 3, device=gpu, requires_grad=True), torch.rand(1, 5, device=gpu), 2, 1)
    assert len(calls) == 1  # with gradients: the differentiable reference


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("mode", ["kmedoids", "kmeans"])
def test_cuda_tensors_beyond_the_kernels_limits_get_the_references_result(gpu, mode):
    """N > 1024, C > 65536, B > 65535: the kernels refuse them, and tpdeploy.token_pool runs the reference instead."""
    from tpdeploy import token_pool

    for b, n, c in ((2, 1025, 4), (1, 4, 65537), (65536, 2, 1)):
        x, w = tied_inputs(torch.Generator().manual_seed(n), b, n, c)
        k = max(1, n // 4)
        with pytest.raises(ValueError, match="unsupported"):
            cuda_kernels.token_pool(x.to(gpu), w.to(gpu), k, 1, mode)
        with torch.inference_mode():
            got = token_pool(x.to(gpu), w.to(gpu), k, 1, mode)
        assert got.is_cuda and torch.equal(got.cpu(), reference_token_pool(x, w, k, 1, mode)), (b, n, c)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("method", ["wkmedoids", "kmeans", "topk"])
def test_model_forward_on_cuda_matches_the_cpu_reference(gpu, method):
    model = create_model("deit_tiny", preset="deit_tiny_058", method=method)
    images = torch.from_numpy(sample_images(4))
    with torch.inference_mode():
        want = model(images)
    model.to(gpu)
    with torch.inference_mode():
        got = model(images.to(gpu)).cpu()
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    model.half()
    with torch.inference_mode():
        half = model(images.to(gpu).half()).float().cpu()
    assert (half.argmax(1) == want.argmax(1)).all()  # top-1 margins here are ~0.1, fp16 errors ~0.01
    torch.testing.assert_close(half, want, atol=5e-2, rtol=5e-2)
