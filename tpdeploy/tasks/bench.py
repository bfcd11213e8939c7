"""`tpdeploy bench`: latency the way trtexec reports it, with an optional dense baseline interleaved."""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np

from tpdeploy.errors import InvalidArgumentError, UserError, check_int, check_number

PERCENTILES = (90, 95, 99)
DEFAULT_WARMUP_MS = 500.0
DEFAULT_DURATION_S = 5.0


def min_samples(percentile: float) -> int:
    """The fewest samples that resolve the percentile, i.e. leave at least one sample above it (p90: 10, p95: 20,
    p99: 100); from fewer it would only be the maximum, or between the two slowest runs."""
    return math.ceil(100 / (100 - percentile) - 1e-9)


@dataclass
class LatencyStats:
    """Milliseconds per batch over `samples` timed runs; throughput in images per second. A percentile that
    the samples cannot resolve (fewer than `min_samples`) is None, printed n/a."""

    min: float
    mean: float
    median: float
    p90: float | None
    p95: float | None
    p99: float | None
    max: float
    throughput: float
    samples: int
    batch: int

    @classmethod
    def of(cls, seconds: list[float], batch: int) -> LatencyStats:
        if len(seconds) == 0:
            raise InvalidArgumentError("no timed runs: latency statistics need at least one sample")
        ms = np.array(seconds) * 1e3
        p = [float(np.percentile(ms, q)) if len(ms) >= min_samples(q) else None for q in PERCENTILES]
        return cls(
            float(ms.min()),
            float(ms.mean()),
            float(np.median(ms)),
            *p,
            float(ms.max()),
            float(batch * 1e3 / ms.mean()),
            len(ms),
            batch,
        )

    def latency_ms(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in ("min", "mean", "median", "p90", "p95", "p99", "max")}

    def to_json(self) -> dict:
        return {"latency_ms": self.latency_ms(), "throughput": self.throughput, "samples": self.samples}


def measure(
    runs,
    warmup_ms: float = DEFAULT_WARMUP_MS,
    iterations: int | None = None,
    duration_s: float = DEFAULT_DURATION_S,
    progress=lambda msg: None,
    min_rounds: int = 1,
) -> list[list[float]]:
    """Time each callable in `runs`, interleaved round by round (so drift hits all alike) with the order
    alternating; stops after `iterations` rounds, or else after `duration_s` and at least `min_rounds` rounds.
    Returns seconds per run. onnxruntime sessions timed together need `spinning=False` (`runtime.load`)."""
    warmup_ms = check_number("warmup_ms", warmup_ms, minimum=0.0)
    min_rounds = check_int("min_rounds", min_rounds, minimum=1)
    if iterations is None:
        check_number("duration_s", duration_s, minimum=0.0, exclusive=True)
    else:
        check_int("iterations", iterations, minimum=1)
    for i, run in enumerate(runs):
        progress(f"warming up {i + 1}/{len(runs)} for {warmup_ms:.0f} ms")
        end = time.perf_counter() + warmup_ms / 1e3
        run()
        while time.perf_counter() < end:
            run()
    times = [[] for _ in runs]
    start = last_report = time.perf_counter()
    rounds = 0
    while (rounds < iterations) if iterations else (time.perf_counter() - start < duration_s or rounds < min_rounds):
        order = range(len(runs)) if rounds % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            t0 = time.perf_counter()
            runs[i]()
            times[i].append(time.perf_counter() - t0)
        rounds += 1
        if time.perf_counter() - last_report > 2.0:
            last_report = time.perf_counter()
            progress(f"  {rounds} rounds, {last_report - start:.0f} s")
    return times


def machine() -> dict:
    """Where the numbers were taken."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def table(rows: list[tuple[str, LatencyStats]]) -> str:
    """trtexec-like summary, one row per model."""
    head = (
        f"{'model':<28}{'batch':>6}{'samples':>8}{'min':>9}{'mean':>9}{'median':>9}{'p90':>9}{'p95':>9}"
        f"{'p99':>9}{'max':>9}{'img/s':>10}"
    )
    lines = [head, "-" * len(head)]
    for name, s in rows:
        p = "".join(f"{'n/a' if v is None else f'{v:.2f}':>9}" for v in (s.p90, s.p95, s.p99))
        lines.append(
            f"{name[:27]:<28}{s.batch:>6}{s.samples:>8}{s.min:>9.2f}{s.mean:>9.2f}{s.median:>9.2f}{p}"
            f"{s.max:>9.2f}{s.throughput:>10.1f}"
        )
    lines.append(
        f"latencies in ms per batch; p{'/p'.join(map(str, PERCENTILES))} need at least "
        f"{'/'.join(str(min_samples(q)) for q in PERCENTILES)} samples (n/a: fewer)"
    )
    return "\n".join(lines)


@dataclass
class BenchReport:
    """What `bench` measured: one row per model (the first is the model, a second one its baseline), timed
    interleaved in one run; the speed-up is the ratio of the median latencies."""

    models: list[str]
    backend: str
    batch: int
    stats: list[LatencyStats]
    onnxruntime_spinning: bool
    machine: dict

    @property
    def speedup(self) -> float | None:
        return self.stats[1].median / self.stats[0].median if len(self.stats) > 1 else None

    def format(self) -> str:
        text = table(list(zip([os.path.basename(m) for m in self.models], self.stats)))
        if self.speedup is not None:
            text += f"\nspeed-up vs baseline (median latency ratio): {self.speedup:.2f}x"
        return text

    def to_json(self) -> dict:
        result = {
            "model": self.models[0],
            "backend": self.backend,
            "batch": self.batch,
            **self.stats[0].to_json(),
            "onnxruntime_spinning": self.onnxruntime_spinning,
            "machine": self.machine,
        }
        if self.speedup is not None:
            result["baseline"] = {"model": self.models[1], **self.stats[1].to_json()}
            result["speedup"] = self.speedup
        return result


def bench(
    runners,
    names: list[str],
    images: np.ndarray,
    warmup_ms: float = DEFAULT_WARMUP_MS,
    iterations: int | None = None,
    duration_s: float = DEFAULT_DURATION_S,
    cuda_graph: bool = True,
    include_transfers: bool = False,
    progress=lambda msg: None,
) -> BenchReport:
    """Time `runners` on `images`, interleaved round by round (see `measure`)."""
    sizes = {name: r.image_size for name, r in zip(names, runners)}
    if len(set(sizes.values())) > 1:
        raise UserError(
            "models timed together must take the same images: "
            + ", ".join(f"{name} takes {size} px" for name, size in sizes.items())
        )
    calls = [r.timed_call(images, cuda_graph, include_transfers) for r in runners]
    times = measure(calls, warmup_ms, iterations, duration_s, progress)
    batch = images.shape[0]
    spinning = any(r.capabilities.thread_spinning for r in runners)
    return BenchReport(names, runners[0].label, batch, [LatencyStats.of(t, batch) for t in times], spinning, machine())
