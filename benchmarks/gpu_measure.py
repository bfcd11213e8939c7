"""The stages of benchmarks/gpu_check.py that use torch (run one per process by gpu_check.py):

    python benchmarks/gpu_measure.py {torch,kernels,timing,model,sanitizer-workload} --results DIR [--dry-run]

On a GPU the kernels are the build stage's library ($TPDEPLOY_KERNELS) on CUDA tensors. With --dry-run they are
the CUDA emulator's build of the same sources (harness/cuda_emulator, also found through $TPDEPLOY_KERNELS) on CPU
tensors, on smaller shapes with fewer repeats: every path of this file runs, its timings mean nothing.
Each stage adds its rows to DIR/gpu_check.jsonl (gpu_check.Rows); sanitizer-workload only prints.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
from gpu_check import FAIL, Rows, short_kernel_name

from tpdeploy.errors import InvalidArgumentError
from tpdeploy.model import vit as model_module
from tpdeploy.model.factory import create_model
from tpdeploy.tokenpool import cuda_kernels
from tpdeploy.tokenpool import definition as tokenpool
from tpdeploy.tokenpool import reference as op
from tpdeploy.tokenpool.reference import reference_token_pool

REPO = Path(__file__).resolve().parent.parent
F32, F16 = torch.float32, torch.float16
MODES = [("kmedoids", True), ("kmedoids", False), ("kmeans", True), ("kmeans", False)]
DTYPES = [(F32, F32), (F16, F32), (F16, F16), (F32, F16)]  # (X, W)
KINDS = ("random", "tied", "nonfinite")
# (K as a function of N, T), taken in turn by successive cases
KT = [
    (lambda n: 1, 3),
    (lambda n: n, 3),
    (lambda n: n // 4, 3),
    (lambda n: n // 2, 1),
    (lambda n: n // 4, 0),
    (lambda n: n // 3, 5),
]
DRY = False  # set by main: the CPU and the emulated kernels
DEVICE = torch.device("cuda")
ARCH = "deit_small"  # a dry run's is deit_tiny
MODEL_DTYPE = F16  # of the models and blocks timed; a dry run's is fp32 (fp16 is slow on a CPU)


def preset() -> str:
    """ARCH's 0.58x preset, as a file of the tree: the model stage needs no install."""
    return str(REPO / "models" / f"{ARCH}_058.toml")


# --- the kernels, or their stand-in ---------------------------------------------------------------------------


def sync() -> None:
    if not DRY:
        torch.cuda.synchronize()


@functools.cache
def emulated() -> ctypes.CDLL:
    return cuda_kernels.load(cuda_kernels.library_path())


def launch(p, x, w, y, workspace) -> None:
    """cuda_kernels.launch; in a dry run the emulated library's tokenPoolLaunch on CPU memory."""
    if not DRY:
        return cuda_kernels.launch(p, x, w, y, workspace)
    lib = emulated()
    status = lib.tokenPoolLaunch(ctypes.byref(p), x.data_ptr(), w.data_ptr(), y.data_ptr(), workspace.data_ptr(), None)
    if status != 0:
        raise RuntimeError(f"emulated kernels: {lib.tokenPoolStatusString(status).decode()}")


def pool(x, w, k, t, mode, weighted):
    """The kernels' TokenPool: cuda_kernels.token_pool, or in a dry run the same steps on the emulated kernels."""
    if not DRY:
        return cuda_kernels.token_pool(x, w, k, t, mode, weighted)
    p = cuda_kernels.params(x, w, k, t, mode, weighted)
    workspace = torch.empty(cuda_kernels.workspace_size(p), dtype=torch.uint8)
    y = torch.empty(p.batch, k, p.channels, dtype=x.dtype)
    launch(p, x.contiguous(), w.contiguous(), y, workspace)
    return y


def poisoned(x, w, k, t, mode, weighted):
    """The kernels with Y pre-filled with NaN and the workspace with 0xFF bytes: every output must be written and
    no scratch value read before it is written."""
    p = cuda_kernels.params(x, w, k, t, mode, weighted)
    y = torch.full((p.batch, k, p.channels), float("nan"), dtype=x.dtype, device=x.device)
    workspace = torch.full((cuda_kernels.workspace_size(p),), 255, dtype=torch.uint8, device=x.device)
    launch(p, x, w, y, workspace)
    return y


@contextlib.contextmanager
def pooling(token_pool):
    """The models' TokenPool layers call `token_pool` in place of tpdeploy.tokenpool.reference.token_pool."""
    saved = model_module.token_pool
    model_module.token_pool = token_pool
    try:
        yield
    finally:
        model_module.token_pool = saved


def model_pool():
    """What the model's layers use: the product's dispatch (CUDA tensors -> the kernels); the stand-in in a dry run."""
    return pool if DRY else op.token_pool


# --- inputs -------------------------------------------------------------------------------------------------


EXACT = 2**24  # float32 holds every integer below this: sums of such integers are exact in any order


def varying_channels(n: int, c: int) -> int:
    """How many channels of "tied" inputs differ between tokens: a medoid's cost sums up to N weighted distances,
    each weight <= 3 and each distance <= 16 a channel (values -2..2), and must stay below EXACT to be the same in
    any summation order (all C = 65536 channels at N = 64 reach 2**27.6; the sums of two orders differ then)."""
    return min(c, EXACT // (n * 3 * 16))


def make_inputs(kind: str, b: int, n: int, c: int, seed: int):
    """X [B, N, C] and W [B, N] float32 on DEVICE: "random" normal; "tied" small integers whose second half of
    tokens repeats the first (distance ties), weights 0..3 (ties, weightless clusters), with every sum the kernels
    form exact in any order: beyond varying_channels(N, C) the channels are the same for every token of an image
    (they add the same to every Gram entry and nothing to a distance); "nonfinite" the same with NaN, +-Inf in X
    and NaN, -Inf, negative weights in W."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    if kind == "random":
        return (torch.randn(b, n, c, generator=gen, device=DEVICE), torch.rand(b, n, generator=gen, device=DEVICE))
    varying = varying_channels(n, c)
    x = torch.randint(-2, 3, (b, n, c), generator=gen, device=DEVICE).float()
    x[:, :, varying:] = x[:, :1, varying:].clone()
    x[:, n // 2 :] = x[:, : n - n // 2].clone()
    w = torch.randint(0, 4, (b, n), generator=gen, device=DEVICE).float()
    if kind == "nonfinite":
        for i, v in enumerate((float("nan"), float("inf"), -float("inf"))):
            x.view(-1)[(7 * i + 3) % x.numel()] = v
        for i, v in enumerate((float("nan"), -float("inf"), -1.5)):
            w.view(-1)[(5 * i + 2) % w.numel()] = v
    return x, w


def bits(t):
    return t.view(torch.int16 if t.dtype == F16 else torch.int32)


# --- kernels: against the reference ---------------------------------------------------------------------------


def kernel_shapes():
    """(label, B, N, C): B = 1/8/64 on N, C of DeiT-S/B, then N and C at the kernels' limits (and N = 1)."""
    if DRY:
        grid = [(1, 49, 24), (8, 17, 16), (64, 5, 8)]
        limits = [(1, tokenpool.KERNEL_MAX_TOKENS, 4), (1, 4, tokenpool.KERNEL_MAX_CHANNELS), (2, 1, 3)]
    else:
        grid = [(b, n, c) for b in (1, 8, 64) for n, c in ((49, 192), (196, 384), (577, 768))]
        limits = [
            (1, tokenpool.KERNEL_MAX_TOKENS, 384),
            (64, tokenpool.KERNEL_MAX_TOKENS, 64),
            (2, 64, tokenpool.KERNEL_MAX_CHANNELS),
            (64, 1, 7),
        ]
    return [("B 1/8/64, DeiT sizes", *s) for s in grid] + [("N, C at the limits", *s) for s in limits]


def kernel_cases():
    """(label, kind, shape, mode, weighted, X dtype, W dtype, K, T): every mode and dtype pair on every shape and kind
    of input, with K and T taken in turn from KT (twice on a GPU; a dry run thins out its large shapes)."""
    turn = 0
    for label, b, n, c in kernel_shapes():
        # the emulator runs one CTA after another, and C = 65536 is slow there: a few cases of the large shapes
        thin = (24 if c > 4096 else 12) if DRY and (max(n, c) > 64 or b > 8) else 1
        for kind in KINDS:
            for mode, weighted in MODES:
                for x_dtype, w_dtype in DTYPES:
                    for _ in range(1 if DRY else 2):
                        turn += 1
                        if turn % thin:
                            continue
                        kf, t = KT[turn % len(KT)]
                        if kind != "random" and mode == "kmeans":
                            t = min(t, 1)  # later means are no longer exact: ties among them break either way
                        yield label, kind, (b, n, c), mode, weighted, x_dtype, w_dtype, max(1, kf(n)), t


class Tally:
    def __init__(self):
        self.cases = self.failures = self.images = self.differing = 0
        self.max_err = {F32: 0.0, F16: 0.0}


def check_case(x, w, k, t, mode, weighted, exact: bool) -> tuple[list[str], int, float]:
    """(problems, images choosing other tokens than the reference, max abs error where they agree)."""
    got = poisoned(x, w, k, t, mode, weighted)
    want = reference_token_pool(x, w, k, t, mode, weighted)  # on the same device, from the same (rounded) inputs
    problems = []
    if got.dtype != want.dtype or got.shape != want.shape:
        return [f"got {got.dtype} {list(got.shape)}, want {want.dtype} {list(want.shape)}"], x.shape[0], 0.0
    unwritten = got.isnan() & ~want.isnan()
    if unwritten.any():
        problems.append(f"{int(unwritten.sum())} outputs not written")
    if exact:
        same = ((bits(got) == bits(want)) | (got.isnan() & want.isnan())).flatten(1).all(1)
    else:
        tol = 1e-5 if x.dtype == F32 else 2e-3  # fp16: the output's own rounding
        same = torch.isclose(got.float(), want.float(), rtol=tol, atol=tol, equal_nan=True).flatten(1).all(1)
    differing = int((~same).sum())
    if exact and differing:
        problems.append(f"{differing} of {len(same)} images differ from the reference on exact inputs")
    elif differing > max(1, 0.05 * len(same)):
        problems.append(f"{differing} of {len(same)} images choose other tokens")
    agree = (got.float() - want.float()).abs()[same]
    err = agree.nan_to_num(0.0).max().item() if agree.numel() else 0.0
    return problems, differing, err


def stage_kernels(rows: Rows) -> int:
    library = cuda_kernels.library_path()
    rows.add(
        "kernels library", f"{library or 'not found'}{' (emulated: dry run)' if DRY else ''}", "" if library else FAIL
    )
    if not DRY and not cuda_kernels.available():
        rows.add("kernels", f"not available (CUDA: {torch.cuda.is_available()})", FAIL)
        return rows.exit_status()
    tallies, inputs, failures, started = {}, {}, 0, time.monotonic()
    for label, kind, (b, n, c), mode, weighted, x_dtype, w_dtype, k, t in kernel_cases():
        if (kind, b, n, c) not in inputs:
            inputs.clear()  # one shape at a time in memory
            inputs[kind, b, n, c] = make_inputs(kind, b, n, c, seed=b * 100003 + n * 101 + c + KINDS.index(kind))
        x, w = inputs[kind, b, n, c]
        if kind == "nonfinite" and mode == "kmedoids":  # +Inf weights: k-means sums of x * FLT_MAX depend on order
            w = w.clone()
            w.view(-1)[-1] = float("inf")
        exact = kind != "random"
        problems, differing, err = check_case(x.to(x_dtype), w.to(w_dtype), k, t, mode, weighted, exact)
        tally = tallies.setdefault(label, Tally())
        tally.cases += 1
        tally.images += b
        tally.differing += differing if not exact else 0
        tally.max_err[x_dtype] = max(tally.max_err[x_dtype], err)
        if problems:
            tally.failures += 1
            failures += 1
            if failures <= 10:
                rows.add(
                    f"{kind} {mode} weighted={int(weighted)} X {x_dtype} W {w_dtype} B,N,C={b},{n},{c} K={k} T={t}",
                    "; ".join(problems),
                    FAIL,
                )
    for label, tally in tallies.items():
        rows.add(
            label,
            f"{tally.cases} cases (every mode, X/W fp32/fp16, random, tied with duplicates, NaN/Inf; "
            f"K 1..N, T 0..5): {tally.failures} failed; random inputs choosing other tokens: {tally.differing} of "
            f"{tally.images} images; max error where they agree: fp32 {tally.max_err[F32]:.1e}, "
            f"fp16 {tally.max_err[F16]:.1e}",
            "ok" if tally.failures == 0 else FAIL,
            cases=tally.cases,
            failures=tally.failures,
            differing=tally.differing,
            images=tally.images,
        )
    rows.add(
        "kernels vs reference",
        f"{sum(t.cases for t in tallies.values())} cases in "
        f"{time.monotonic() - started:.0f} s{' (emulated: dry run)' if DRY else ''}",
    )
    check_fallback(rows)
    return rows.exit_status()


def check_fallback(rows: Rows) -> None:
    """Beyond the kernels' limits the kernels refuse, and tpdeploy.token_pool gives the reference's result."""
    problems = []
    sizes = [
        (2, tokenpool.KERNEL_MAX_TOKENS + 1, 4),
        (1, 4, tokenpool.KERNEL_MAX_CHANNELS + 1),
        (tokenpool.KERNEL_MAX_BATCH + 1, 2, 1),
    ]
    for b, n, c in sizes:
        x, w = make_inputs("tied", b, n, c, seed=n + c)
        k = max(1, n // 4)
        try:
            pool(x, w, k, 2, "kmedoids", True)
            problems.append(f"the kernels accepted B,N,C={b},{n},{c}")
        except InvalidArgumentError:
            pass
        with torch.inference_mode():
            got = op.token_pool(x, w, k, 2, "kmedoids", True)
        if not torch.equal(got.cpu(), reference_token_pool(x.cpu(), w.cpu(), k, 2, "kmedoids", True)):
            problems.append(f"tpdeploy.token_pool differs from the reference at B,N,C={b},{n},{c}")
    rows.add(
        "beyond the limits (N=1025, C=65537, B=65536)",
        "; ".join(problems) or "the kernels refuse; tpdeploy.token_pool gives the reference's result",
        FAIL if problems else "ok",
    )


# --- timing ---------------------------------------------------------------------------------------------------


def median_ms(calls, repeats: int, warmup: int = 10) -> tuple[float, str]:
    """Median time of one call, in ms, rotating through `calls`: CUDA events around a replay of one CUDA graph of
    all calls where capture works, else around eager calls; in a dry run the CPU clock."""
    if DRY:
        for call in calls:
            call()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            for call in calls:
                call()
            times.append((time.perf_counter() - started) * 1e3 / len(calls))
        return statistics.median(times), "CPU, eager (dry run)"
    how = "CUDA graph"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up before capture, as torch.cuda.graphs asks
            for _ in range(3):
                for call in calls:
                    call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
        replay = graph.replay
    except Exception as e:  # any capture failure means: time it eagerly
        how = f"eager (graph capture failed: {type(e).__name__}: {str(e).splitlines()[0][:80]})"
        torch.cuda.synchronize()

        def replay():
            for call in calls:
                call()

    for _ in range(warmup):
        replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    return statistics.median(times), how


def copy_bandwidth() -> tuple[float, int]:
    """(bytes read + written per second, buffer bytes) of a device-to-device copy (in a dry run, host memory)."""
    size = (16 if DRY else 512) * 2**20
    a = torch.empty(size, dtype=torch.uint8, device=DEVICE)
    b = torch.empty_like(a)
    ms, _ = median_ms([lambda: b.copy_(a)], repeats=3 if DRY else 20, warmup=1 if DRY else 5)
    return 2 * size / (ms * 1e-3), size


OP_RANGE = "TokenPool"


def kernel_breakdown(call, runs: int) -> list[tuple[str, float, float]]:
    """(kernel, launches per call, device us per call) of `call`, from torch.profiler (CUPTI sees every kernel of the
    process, the library's too); in a dry run there are no device kernels: the call's own CPU range."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU] + ([] if DRY else [ProfilerActivity.CUDA])) as prof:
        for _ in range(runs):
            with record_function(OP_RANGE):
                call()
        sync()
    found = []
    for e in prof.key_averages():
        if DRY and e.key == OP_RANGE:
            found.append((f"{OP_RANGE} (CPU range: dry run)", e.count / runs, e.cpu_time_total / runs))
        elif not DRY and e.device_type == DeviceType.CUDA and e.self_device_time_total > 0:
            found.append((short_kernel_name(e.key), e.count / runs, e.self_device_time_total / runs))
    return sorted(found, key=lambda f: -f[2])


def stage_timing(rows: Rows) -> int:
    b, n, k, t = (2, 196, 110, 3) if DRY else (64, 196, 110, 3)
    repeats, copies = (2, 1) if DRY else (200, 8)
    dense = create_model(ARCH, method="none").to(DEVICE, MODEL_DTYPE)  # seeded weights: peaked attention
    block, c = dense.blocks[0], dense.cfg.embed_dim
    bandwidth, size = copy_bandwidth()
    rows.add(
        "copy bandwidth",
        f"{bandwidth / 1e12:.2f} TB/s (read + write, {size >> 20} MiB {'host' if DRY else 'device-to-device'} copy)",
        bytes_per_s=bandwidth,
    )
    with torch.inference_mode():
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        tokens = [torch.randn(b, n + 1, c, device=DEVICE, dtype=MODEL_DTYPE, generator=gen) for _ in range(copies)]
        # the op's inputs as in the model: a block's output patch tokens and their float32 significance
        pools = [(out[:, 1:].contiguous(), sig) for out, sig in (block(x, want_significance=True) for x in tokens)]
        block_ms, how = median_ms([lambda x=x: block(x) for x in tokens], repeats)
        rows.add(
            f"{ARCH} block {name_of(MODEL_DTYPE)}, B={b}, {n + 1} tokens",
            f"{block_ms * 1e3:.1f} us ({how})",
            ms=block_ms,
        )
        sig_ms, how = median_ms([lambda x=x: block(x, want_significance=True) for x in tokens], repeats)
        rows.add(
            f"{ARCH} block {name_of(MODEL_DTYPE)} with significance, B={b}", f"{sig_ms * 1e3:.1f} us ({how})", ms=sig_ms
        )
        for method, mode, dtype in (
            ("wkmedoids", "kmedoids", F16),
            ("wkmedoids", "kmedoids", F32),
            ("wkmeans", "kmeans", F16),
        ):
            name = f"{method} X {name_of(dtype)}"
            ins = [(x.to(dtype), w) for x, w in pools]
            ms, how = median_ms([lambda x=x, w=w, mode=mode: pool(x, w, k, t, mode, True) for x, w in ins], repeats)
            x, w = ins[0]
            moved = x.nbytes + w.nbytes + b * k * c * x.element_size()  # X and W read, Y written
            floor_ms = moved / bandwidth * 1e3
            rows.add(
                f"op {name}, B={b} N={n} C={c} K={k} T={t}",
                f"{ms * 1e3:.1f} us ({how}) = {ms / floor_ms:.1f}x its memory floor of {floor_ms * 1e3:.1f} us "
                f"({moved / 1e6:.2f} MB at the copy bandwidth); {ms / block_ms:.1%} of the block, "
                f"{ms / sig_ms:.1%} of the block with significance",
                ms=ms,
                floor_ms=floor_ms,
                bytes=moved,
            )
            runs = 2 if DRY else 20
            breakdown = kernel_breakdown(lambda x=x, w=w, mode=mode: pool(x, w, k, t, mode, True), runs=runs)
            for kernel, launches, us in breakdown:
                rows.add(
                    f"  {name}: {kernel}",
                    f"{launches:g} launches, {us:.1f} us per call (profiler, eager)",
                    launches=launches,
                    us=us,
                )
            rows.add(f"  {name}: all kernels", f"{sum(us for _, _, us in breakdown):.1f} us per call")
            if method == "wkmedoids" and dtype == F16:
                ratio = ms / block_ms
                rows.add(
                    f"op / block ({name})",
                    f"{ratio:.1%} of the plain block (target <= 10%), {ms / sig_ms:.1%} of the block with significance",
                    "met" if ratio <= 0.10 else "missed",
                )
    return rows.exit_status()


def name_of(dtype) -> str:
    return {F32: "fp32", F16: "fp16"}[dtype]


# --- model ----------------------------------------------------------------------------------------------------


def stage_model(rows: Rows) -> int:
    batches, repeats, copies, check_batch = ((1, 2), 1, 1, 1) if DRY else ((1, 8, 64), 50, 2, 8)
    rows.add(
        "the model's TokenPool layers",
        "the emulated kernels (dry run)"
        if DRY
        else f"the CUDA kernels ({cuda_kernels.library_path()})"
        if cuda_kernels.available()
        else "the reference: NO KERNELS",
        "" if DRY or cuda_kernels.available() else FAIL,
    )
    pooled = create_model(ARCH, preset=preset())
    dense = create_model(ARCH, method="none")
    images = torch.randn(check_batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    for dtype, tol in ((F32, 1e-3), (F16, 2e-2)):  # fp32 first: .to(fp16) rounds the weights
        pooled.to(DEVICE, dtype)
        with torch.inference_mode():
            with pooling(model_pool()):
                got = pooled(images.to(dtype)).float()
            with pooling(reference_token_pool):
                want = pooled(images.to(dtype)).float()
        err = (got - want).abs().max().item()
        top1 = (got.argmax(1) == want.argmax(1)).float().mean().item()
        good = err <= tol * max(1.0, want.abs().max().item()) and top1 == 1.0
        rows.add(
            f"Token-Pooled {ARCH} {name_of(dtype)}, B={check_batch}: kernels vs reference op",
            f"largest logit difference {err:.1e}, top-1 agreement {top1:.0%}",
            "ok" if good else FAIL,
        )
    pooled.to(DEVICE, MODEL_DTYPE)
    dense.to(DEVICE, MODEL_DTYPE)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    with torch.inference_mode(), pooling(model_pool()):
        for b in batches:
            inputs = [
                torch.randn(b, 3, 224, 224, device=DEVICE, dtype=MODEL_DTYPE, generator=gen) for _ in range(copies)
            ]
            p_ms, how = median_ms([lambda x=x: pooled(x) for x in inputs], repeats)
            d_ms, _ = median_ms([lambda x=x: dense(x) for x in inputs], repeats)
            speedup, target = d_ms / p_ms, b == 64
            rows.add(
                f"Token-Pooled (0.58x) vs dense {ARCH}, {name_of(MODEL_DTYPE)}, B={b}",
                f"{p_ms:.2f} ms ({b / p_ms * 1e3:.0f} img/s) vs {d_ms:.2f} ms ({b / d_ms * 1e3:.0f} img/s): "
                f"{speedup:.2f}x{' (target >= 1.5x)' if target else ''} ({how}; median of {repeats})",
                ("met" if speedup >= 1.5 else "missed") if target else "",
                pooled_ms=p_ms,
                dense_ms=d_ms,
            )
    return rows.exit_status()


# --- torch, and the sanitizer's workload ----------------------------------------------------------------------


def stage_torch(rows: Rows) -> int:
    rows.add(
        "torch",
        f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
        f"{torch.get_num_threads()} CPU threads",
    )
    if DRY:
        return rows.skip("CUDA", "dry run")
    if not torch.cuda.is_available():
        rows.add("CUDA", "torch sees no CUDA device", FAIL)
        return rows.exit_status()
    started = time.monotonic()
    torch.ones(1, device="cuda").sum().item()
    rows.add("CUDA initialisation", f"{time.monotonic() - started:.1f} s")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        rows.add(
            f"cuda:{i}",
            f"{p.name}, compute capability {p.major}.{p.minor}, {p.total_memory >> 20} MiB, "
            f"{p.multi_processor_count} SMs",
        )
    return rows.exit_status()


def sanitizer_workload() -> int:
    """A few launches of every kernel, mode and dtype pair, with the workspace and Y uninitialised as the op
    allocates them (compute-sanitizer runs this; it only prints)."""
    shapes = [
        (2, 200, 40, MODES, DTYPES),
        (1, tokenpool.KERNEL_MAX_TOKENS, 8, MODES[::2], DTYPES[:2]),
        (2, 17, 130, MODES[::2], DTYPES[:2]),
    ]
    launches = 0
    for b, n, c, modes, dtypes in shapes:
        x, w = make_inputs("random", b, n, c, seed=n)
        for mode, weighted in modes:
            for x_dtype, w_dtype in dtypes:
                for k, t in ((n // 3, 3), (n // 2, 0)):
                    y = pool(x.to(x_dtype), w.to(w_dtype), max(1, k), t, mode, weighted)
                    launches += 1
        sync()
        assert not y.isnan().any()
    print(f"{launches} launches of the kernels{' (emulated: dry run)' if DRY else ''}", flush=True)
    return 0


STAGES = {"torch": stage_torch, "kernels": stage_kernels, "timing": stage_timing, "model": stage_model}


def main() -> int:
    global DRY, DEVICE, ARCH, MODEL_DTYPE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=[*STAGES, "sanitizer-workload"])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--build-dir", type=Path, help="unused: the library comes from $TPDEPLOY_KERNELS")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    DRY, DEVICE = args.dry_run, torch.device("cpu" if args.dry_run else "cuda")
    ARCH, MODEL_DTYPE = ("deit_tiny", F32) if DRY else ("deit_small", F16)
    torch.manual_seed(0)
    if args.stage == "sanitizer-workload":
        return sanitizer_workload()
    return STAGES[args.stage](Rows(args.results, args.stage))


if __name__ == "__main__":
    sys.exit(main())
