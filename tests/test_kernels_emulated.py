"""The TokenPool CUDA kernels (plugins/tokenpool) run on the CPU against the PyTorch reference
(tpdeploy.tokenpool.reference.reference_token_pool), on every run and without a GPU: indexing, barriers, tie rules,
early exit, NaN/Inf handling, kmedoids and kmeans, float32 and float16.

harness/cuda_emulator (see its README.md) compiles the kernel sources with g++ (no CUDA toolkit needed), every CUDA
thread a fiber. Each case runs under one of several thread orders (ascending, descending, random), so a missing
barrier or an order-dependent result changes the answer; shared memory, the workspace and the output start full
of garbage, and the inputs sit between NaN guards, so uninitialised and out-of-bounds reads show too.

TP_EMULATOR_KERNEL_DIR=<folder with tokenPoolKernel.cu> tests other sources (a deliberately broken copy, say).
"""

import ctypes
import itertools
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_onnx_op import run_function

from harness.cuda_emulator import build as emulator_build
from tpdeploy.tokenpool import cuda_kernels
from tpdeploy.tokenpool import definition as tokenpool
from tpdeploy.tokenpool.reference import reference_token_pool

F32, F16 = torch.float32, torch.float16
NAN, INF = float("nan"), float("inf")
GUARD = 64  # elements (bytes for the workspace) of guard on each side of every buffer
COMBOS = [
    pytest.param(
        mode, weighted, xd, wd, id=f"{mode}-{'w' if weighted else 'unw'}-x{xd.itemsize * 8}-w{wd.itemsize * 8}"
    )
    for mode in ("kmedoids", "kmeans")
    for weighted in (True, False)
    for xd in (F32, F16)
    for wd in (F32, F16)
]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("needs g++ (C++17) to build the CUDA emulator")
    kernel_dir = Path(os.environ.get("TP_EMULATOR_KERNEL_DIR", emulator_build.KERNEL_DIR))
    path = emulator_build.build(tmp_path_factory.mktemp("cuda_emulator"), kernel_dir)
    return with_controls(
        cuda_kernels.load(str(path))
    )  # the C API of tokenPoolKernel.h, as tpdeploy/tokenpool/cuda_kernels.py declares it


def with_controls(lib):
    """Declares the emulator's own functions (emulator.cpp) on a loaded library."""
    lib.emuSetSchedule.argtypes, lib.emuSetSchedule.restype = [ctypes.c_uint], None
    lib.emuLastFault.argtypes, lib.emuLastFault.restype = [], ctypes.c_char_p
    return lib


# --- inputs ------------------------------------------------------------------------------------------------


def small_integers(seed, b, n, c):
    """Every sum exact, so the kernels must match the reference bit for bit. The second half of the tokens
    repeats the first (distance-0 ties) and the weights are 0..3 (ties in the top-K order, weightless clusters)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (b, n, c), generator=g).float()
    x[:, n // 2 :] = x[:, : n - n // 2].clone()
    return x, torch.randint(0, 4, (b, n), generator=g).float()


def normal(seed, b, n, c):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, generator=g), torch.rand(b, n, generator=g)


# --- running the emulated kernels --------------------------------------------------------------------------


def guarded(t, shift=0):
    """(buffer, view): a copy of t that starts `shift` elements past a 16-byte boundary, NaN on both sides."""
    buffer = torch.full((GUARD + shift + t.numel() + GUARD,), NAN, dtype=t.dtype)
    view = buffer[GUARD + shift : GUARD + shift + t.numel()].view(t.shape)
    view.copy_(t)
    return buffer, view


def bits(t):
    return t.view(torch.int16 if t.dtype == F16 else torch.int32)


def run(lib, x, w, k, t, mode, weighted, schedule, workspace_offset=0, shift=0):
    """Y of the emulated kernels. Checks the status, that the inputs are untouched and that nothing was written
    outside Y and the workspace (which starts workspace_offset bytes past a 256-byte boundary)."""
    p = cuda_kernels.params(x, w, k, t, mode, weighted)
    assert lib.tokenPoolValidate(ctypes.byref(p)) == 0
    size = lib.tokenPoolWorkspaceSize(ctypes.byref(p))
    xb, xv = guarded(x, shift)
    wb, wv = guarded(w, shift)
    yb, yv = guarded(torch.full((p.batch, k, p.channels), NAN, dtype=x.dtype), shift)
    ws = torch.full((GUARD + 255 + workspace_offset + size + GUARD,), 0x5A, dtype=torch.uint8)
    start = GUARD + (-(ws.data_ptr() + GUARD)) % 256 + workspace_offset
    ws[start : start + size] = 0xFF  # NaN as float, -1 as int
    before = [bits(xb).clone(), bits(wb).clone(), bits(yb).clone(), ws.clone()]

    lib.emuSetSchedule(schedule)
    status = lib.tokenPoolLaunch(
        ctypes.byref(p), xv.data_ptr(), wv.data_ptr(), yv.data_ptr(), ws.data_ptr() + start, None
    )
    assert status == 0, f"{lib.tokenPoolStatusString(status).decode()}: {lib.emuLastFault().decode()}"
    assert torch.equal(bits(xb), before[0]) and torch.equal(bits(wb), before[1]), "the kernels wrote to X or W"
    inner = slice(GUARD + shift, GUARD + shift + yv.numel())
    assert torch.equal(bits(yb[: inner.start]), before[2][: inner.start]), "wrote before Y"
    assert torch.equal(bits(yb[inner.stop :]), before[2][inner.stop :]), "wrote after Y"
    assert torch.equal(ws[:start], before[3][:start]), "wrote before the workspace"
    assert torch.equal(ws[start + size :], before[3][start + size :]), "wrote after the workspace"
    return yv.clone()


def check(lib, x, w, k, t, mode, weighted, schedule, exact, **launch):
    """Emulated kernels == reference: bit for bit with the same NaNs where `exact`, else to within rounding."""
    got = run(lib, x, w, k, t, mode, weighted, schedule, **launch)
    want = reference_token_pool(x, w, k, t, mode, weighted)
    case = f"{mode} weighted={weighted} X {x.dtype} {tuple(x.shape)} W {w.dtype} K={k} T={t} schedule={schedule}"
    assert got.dtype == want.dtype and got.shape == want.shape, case
    if exact:
        nan = want.isnan()
        wrong = (got.isnan() != nan) | ((bits(got) != bits(want)) & ~nan)
        if wrong.any():
            rows = wrong.any(2).nonzero().tolist()
            b, r = rows[0]
            pytest.fail(
                f"{case}: {len(rows)} of {k * x.shape[0]} output rows differ, the first is [{b}, {r}]: "
                f"got {got[b, r, :8].tolist()}, want {want[b, r, :8].tolist()}"
            )
    else:
        tol = 1e-5 if x.dtype == F32 else 2e-3
        torch.testing.assert_close(
            got.float(), want.float(), rtol=tol, atol=tol, equal_nan=True, msg=lambda m: f"{case}: {m}"
        )


def schedules():
    """Thread orders (emuSetSchedule) for successive cases: ascending, descending, two seeded random orders."""
    return itertools.cycle((0, 1, 2, 3))


# --- the tests -------------------------------------------------------------------------------------------

# (B, N, C, [(K, T), ...]): N around the Gram matrix's 16-row padding and the 64-token tiles, K = 1 and K = N
SMALL_INTEGER_CASES = [
    (1, 1, 1, [(1, 0), (1, 3)]),
    (2, 16, 8, [(1, 4), (5, 4), (16, 1), (8, 0)]),
    (2, 17, 3, [(1, 4), (5, 4), (17, 1), (8, 0)]),
    (3, 64, 80, [(1, 2), (21, 4), (64, 1), (32, 0)]),  # C > 64: several depth steps of both Gram kernels
    (2, 300, 16, [(100, 4)]),
]


@pytest.mark.parametrize("mode,weighted,x_dtype,w_dtype", COMBOS)
def test_small_integer_inputs_match_bit_for_bit(lib, mode, weighted, x_dtype, w_dtype):
    order = schedules()
    for b, n, c, cases in SMALL_INTEGER_CASES:
        x, w = small_integers(1000 * n + c, b, n, c)
        for k, t in cases:
            # kmeans means after the first iteration are no longer integers: their dot products round
            exact = mode == "kmedoids" or t <= 1
            check(lib, x.to(x_dtype), w.to(w_dtype), k, t, mode, weighted, next(order), exact)


@pytest.mark.parametrize("mode,weighted,x_dtype,w_dtype", COMBOS)
def test_everything_tied(lib, mode, weighted, x_dtype, w_dtype):
    """All tokens equal: every distance, cost and weight ties, so each tie rule alone decides the result."""
    x = torch.ones(2, 17, 5)
    x[1] = -2.0
    order = schedules()
    for w in (torch.full((2, 17), 2.0), torch.zeros(2, 17)):  # all weightless: every medoid/centre stays
        for k, t in ((5, 3), (17, 2)):
            check(lib, x.to(x_dtype), w.to(w_dtype), k, t, mode, weighted, next(order), exact=True)


@pytest.mark.parametrize("mode,weighted,x_dtype,w_dtype", COMBOS)
def test_normal_inputs_choose_the_same_tokens(lib, mode, weighted, x_dtype, w_dtype):
    """Sums round differently from the reference's BLAS, but without near-ties the chosen tokens are the same
    (so kmedoids' outputs are equal) and kmeans' centres agree to rounding. T = 10 runs into the early exit."""
    x, w = normal(7, 2, 64, 72)
    order = schedules()
    for k, t in ((16, 10), (32, 3)):
        check(lib, x.to(x_dtype), w.to(w_dtype), k, t, mode, weighted, next(order), exact=mode == "kmedoids")


@pytest.mark.parametrize("mode,weighted,x_dtype,w_dtype", COMBOS)
def test_nan_and_inf_inputs(lib, mode, weighted, x_dtype, w_dtype):
    """NaN/Inf/huge X (distances clamp to FLT_MAX) and NaN/±Inf/negative/huge W (order weights clamp to
    [0, FLT_MAX]): the same outputs and NaN positions as the reference."""
    x, w = small_integers(11, 3, 40, 6)
    x[0, 3, 1], x[1, 0, 0], x[2, 7, 2], x[1, 11, 4] = NAN, INF, -INF, 1e20
    w[0, 5], w[1, 2], w[2, 4], w[2, 6], w[0, 8], w[1, 9] = NAN, INF, -INF, -1.5, 3e38, 2.5e38
    order = schedules()
    for k, t in ((9, 3), (40, 1)):
        check(lib, x.to(x_dtype), w.to(w_dtype), k, t, mode, weighted, next(order), exact=mode == "kmedoids" or t <= 1)


@pytest.mark.parametrize(
    "mode,x_dtype,c",
    [
        # tensor-core Gram, 16-byte loads, three 128-row tiles (the off-diagonal ones stored with their mirrors)
        pytest.param("kmedoids", F16, 128, id="kmedoids-x16-c128"),
        # element loads (C % 8 != 0) and a partial last depth step
        pytest.param("kmedoids", F16, 130, id="kmedoids-x16-c130"),
        pytest.param("kmedoids", F32, 128, id="kmedoids-x32-c128"),  # CUDA-core Gram: five 64-row tiles
        pytest.param("kmeans", F32, 128, id="kmeans-x32-c128"),
        pytest.param("kmeans", F16, 128, id="kmeans-x16-c128"),
    ],
)
def test_n300_gram_and_dot_product_paths(lib, mode, x_dtype, c):
    order = schedules()
    x, w = normal(300 + c, 2, 300, c)
    check(lib, x.to(x_dtype), w, 75, 3, mode, True, next(order), exact=mode == "kmedoids")
    x, w = small_integers(301 + c, 2, 300, c)
    check(lib, x.to(x_dtype), w.half(), 100, 4 if mode == "kmedoids" else 1, mode, False, next(order), exact=True)


@pytest.mark.parametrize(
    "mode,x_dtype",
    [
        pytest.param(m, d, id=f"{m}-x{d.itemsize * 8}")
        for m, d in (("kmedoids", F16), ("kmedoids", F32), ("kmeans", F32))
    ],
)
def test_largest_n(lib, mode, x_dtype):
    """N = TP_MAX_TOKENS = 1024: one token per thread of the per-image kernels."""
    x, w = small_integers(1024, 1, 1024, 3)
    check(lib, x.to(x_dtype), w, 100, 2 if mode == "kmedoids" else 1, mode, True, 1, exact=True)


@pytest.mark.parametrize("mode", ["kmedoids", "kmeans"])
def test_the_largest_registered_architecture(lib, mode):
    """vit_large_patch16_384_058's first pooling step: 576 patch tokens of 1024 channels to 546, in float16."""
    x, w = small_integers(576, 1, 576, 1024)
    check(lib, x.half(), w, 546, 3 if mode == "kmedoids" else 1, mode, True, 2, exact=True)


@pytest.mark.parametrize(
    "mode,x_dtype",
    [pytest.param(m, d, id=f"{m}-x{d.itemsize * 8}") for m in ("kmedoids", "kmeans") for d in (F16, F32)],
)
def test_misaligned_pointers(lib, mode, x_dtype):
    """A workspace at any byte offset (the kernels align it themselves), and X, W, Y off 16-byte alignment,
    which switches the Gram loads and the row copies to narrower units."""
    x, w = small_integers(5, 2, 50, 16)
    x = x.to(x_dtype)
    t = 3 if mode == "kmedoids" else 1
    order = schedules()
    for workspace_offset, shift in ((1, 0), (8, 1), (200, 2), (255, 3)):
        check(lib, x, w, 7, t, mode, True, next(order), exact=True, workspace_offset=workspace_offset, shift=shift)


def negative_zero_case():
    """Image 0's first centre is token 0, whose first coordinate is -0.0; its cluster (tokens 0 and 1) has the
    mean +0.0 there while its second coordinate moves. Image 1 converges at once (each centre stays, the
    -0.0 coordinate equal in value to its mean +0.0)."""
    x = torch.tensor(
        [[[-0.0, 0.0], [0.0, 2.0], [10.0, 10.0], [10.0, 12.0]], [[-0.0, 1.0], [5.0, 5.0], [50.0, 50.0], [60.0, 60.0]]]
    )
    return x, torch.tensor([[4.0, 1.0, 3.0, 2.0], [4.0, 3.0, 0.0, 0.0]])


@pytest.mark.parametrize("weighted", [True, False], ids=["w", "unw"])
@pytest.mark.parametrize("x_dtype", [F32, F16], ids=["x32", "x16"])
def test_kmeans_replaces_a_negative_zero_centre_by_its_positive_zero_mean(lib, weighted, x_dtype):
    """The mean's bits replace the centre's even when they are equal in value (-0.0 == +0.0): as the reference's
    `centres = new` and the ONNX function's centres. Image 1 alone converges before any update, where the
    reference keeps X's -0.0 (test below); in this batch image 0 still moves, so the reference updates both."""
    x, w = negative_zero_case()
    x = x.to(x_dtype)
    want = run_function(x.numpy(), w.to(x_dtype).numpy(), 2, 3, "kmeans", weighted, str(x_dtype).removeprefix("torch."))
    assert not np.signbit(want).any()  # the ONNX function writes +0.0 everywhere
    for schedule in (0, 1, 2):
        check(lib, x, w, 2, 3, "kmeans", weighted, schedule, exact=True)  # the reference, bit for bit
        assert torch.equal(bits(run(lib, x, w, 2, 3, "kmeans", weighted, schedule)), bits(torch.from_numpy(want)))
        got = run(lib, x[1:], w[1:], 2, 3, "kmeans", weighted, schedule)  # image 1 alone: the same bits
        assert torch.equal(bits(got), bits(torch.from_numpy(want[1:])))


def test_reference_agrees_with_the_onnx_function_on_a_negative_zero_centre():
    """The reference once broke out of its loop before taking the means when nothing moved in value, so an image
    kept X's -0.0 when its whole batch converged in the first iteration (and +0.0 when another image still
    moved): every implementation writes the mean's bits."""
    x, w = negative_zero_case()
    x, w = x[1:], w[1:]
    want = run_function(x.numpy(), w.numpy(), 2, 3, "kmeans", True)
    assert torch.equal(bits(reference_token_pool(x, w, 2, 3, "kmeans", True)), bits(torch.from_numpy(want)))


def test_the_dispatch_goes_to_the_kernels_exactly_within_their_limits(lib):
    """token_pool (tpdeploy.tokenpool.reference) hands CUDA tensors to the kernels only where kernels_support says
    so: the limits of tokenPoolKernel.h, and exactly the sizes the library accepts (the others it refuses as
    unsupported, and the reference runs them)."""
    header = (emulator_build.KERNEL_DIR / "tokenPoolKernel.h").read_text()
    assert dict(re.findall(r"#define (TP_MAX_\w+) (\d+)", header)) == {
        "TP_MAX_TOKENS": str(tokenpool.KERNEL_MAX_TOKENS),
        "TP_MAX_CHANNELS": str(tokenpool.KERNEL_MAX_CHANNELS),
        "TP_MAX_BATCH": str(tokenpool.KERNEL_MAX_BATCH),
    }
    unsupported = 2  # TP_ERROR_UNSUPPORTED
    for b, n, c in (
        (2, 196, 384),
        (1, 1024, 8),
        (1, 1025, 8),
        (1, 8, 65536),
        (1, 8, 65537),
        (65535, 8, 8),
        (65536, 8, 8),
        (70000, 2000, 70000),
    ):
        status = lib.tokenPoolValidate(ctypes.byref(cuda_kernels.Params(b, n, c, 1, 3, 0, 1, 1, 0)))
        assert status == (0 if tokenpool.kernels_support(b, n, c) else unsupported), (b, n, c)


def test_batch_zero_launches_nothing(lib):
    p = cuda_kernels.Params(0, 5, 3, 2, 1, 0, 1, 0, 0)
    assert lib.tokenPoolWorkspaceSize(ctypes.byref(p)) == 0
    assert lib.tokenPoolLaunch(ctypes.byref(p), None, None, None, None, None) == 0


# --- the emulator itself: it must see the bugs these tests are for -----------------------------------------

SELF_TEST = r"""
#include <cuda_runtime_api.h>

__global__ void rotate(const int* in, int* out, int sync) {  // out[t] = in[(t + 1) % n] through shared memory
    __shared__ int s[64];
    s[threadIdx.x] = in[threadIdx.x];
    if (sync) __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}
__global__ void divergent(int* out) {
    if (threadIdx.x < 16)
        __syncthreads();
    else
        __syncthreads();
    out[threadIdx.x] = 1;
}
__global__ void early_return(int* out) {
    if (threadIdx.x == 3) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}
__global__ void wild_write(int* out) { out[threadIdx.x * 0x10000000ll] = 1; }
__global__ void warp_sum(const int* in, int* out) {
    int v = in[threadIdx.x];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    out[threadIdx.x] = v;
}

extern "C" int run(int kernel, const int* in, int* out, int sync) {
    if (kernel == 0) rotate<<<1, 64>>>(in, out, sync);
    if (kernel == 1) divergent<<<1, 64>>>(out);
    if (kernel == 2) early_return<<<1, 64>>>(out);
    if (kernel == 3) warp_sum<<<1, 64>>>(in, out);
    if (kernel == 4) wild_write<<<1, 64>>>(out);
    return cudaGetLastError();
}
"""


def test_the_emulator_sees_races_divergent_barriers_deadlocks_and_bad_addresses(tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("needs g++ (C++17) to build the CUDA emulator")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "self_test.cu").write_text(SELF_TEST)
    lib = with_controls(ctypes.CDLL(str(emulator_build.build(tmp_path / "build", tmp_path / "src", "self_test.cu"))))
    data = torch.arange(100, 164, dtype=torch.int32)

    def launch(kernel, schedule, sync=1):
        out = torch.zeros(64, dtype=torch.int32)
        lib.emuSetSchedule(schedule)
        status = lib.run(kernel, ctypes.c_void_p(data.data_ptr()), ctypes.c_void_p(out.data_ptr()), sync)
        return status, out, lib.emuLastFault().decode()

    for schedule in (0, 1, 2, 3):
        status, out, fault = launch(0, schedule)
        assert status == 0 and fault == "" and torch.equal(out, data.roll(-1))
        status, out, _ = launch(0, schedule, sync=0)  # without the barrier some thread reads too early
        assert status == 0 and not torch.equal(out, data.roll(-1))
        status, _, fault = launch(1, schedule)
        assert status != 0 and "different __syncthreads" in fault
        status, _, fault = launch(2, schedule)
        assert status != 0 and "deadlock" in fault
        status, out, _ = launch(3, schedule)
        assert status == 0 and torch.equal(out, data.view(2, 32).sum(1, dtype=torch.int32).repeat_interleave(32))
        status, _, fault = launch(4, schedule)  # a segmentation fault becomes a failed launch, as on a GPU
        assert status != 0 and "invalid memory access" in fault
