"""onnxruntime sessions timed interleaved, with idle-thread spinning on (onnxruntime's default) and off.

Two sessions that take turns on the same cores (`bench --baseline`, `sweep`, `eval --baseline`) each keep a
pool of intra-op threads; with spinning on, the idle pool busy-waits while the other session runs and steals
its cores. This times four configurations in alternating blocks of a few seconds (so drift hits all alike;
blocks rather than single rounds, so one configuration's spinning threads do not bleed into another's runs):
the pair interleaved with spinning on and off, and the first model alone with spinning on and off.

    python benchmarks/ort_spinning.py POOLED.onnx DENSE.onnx [--batch 1] [--duration 60] [--block 3]
"""

import argparse
import os
import time

from tpdeploy import runtime
from tpdeploy.data.samples import sample_images
from tpdeploy.tasks import bench


def measure(pooled: str, dense: str, batch=1, duration=60.0, block=3.0) -> dict:
    """{"pair spin on: pooled": LatencyStats, ...} for pair/alone x spin on/off."""
    images = sample_images(batch)
    runners = {spin: [runtime.load(p, spinning=spin) for p in (pooled, dense)] for spin in (True, False)}
    configs = {}
    for spin in (True, False):
        configs[f"pair spin {'on' if spin else 'off'}"] = [r.infer for r in runners[spin]]
        configs[f"alone spin {'on' if spin else 'off'}"] = [runners[spin][0].infer]
    times = {name: [[] for _ in calls] for name, calls in configs.items()}
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        for name, calls in configs.items():
            for acc, t in zip(
                times[name], bench.measure([lambda c=c: c(images) for c in calls], warmup_ms=200, duration_s=block)
            ):
                acc.extend(t)
    return {
        f"{name}: {model}": bench.LatencyStats.of(t, batch)
        for name, per_model in times.items()
        for model, t in zip(("pooled", "dense"), per_model)
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pooled")
    ap.add_argument("dense")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds in all, over all configurations")
    ap.add_argument("--block", type=float, default=3.0, help="seconds per block of one configuration")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    stats = measure(args.pooled, args.dense, args.batch, args.duration, args.block)
    print(
        f"onnxruntime, batch {args.batch}, {args.duration:.0f} s in blocks of {args.block:.0f} s, "
        f"{bench.machine()['cpu']} ({os.cpu_count()} cores), load average {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; pooled: {args.pooled}, dense: {args.dense}"
    )
    print(bench.table(list(stats.items())))
    for setting, model in (("pair", "pooled"), ("pair", "dense"), ("alone", "pooled")):
        on, off = (stats[f"{setting} spin {s}: {model}"] for s in ("on", "off"))
        print(
            f"{model} {'interleaved' if setting == 'pair' else 'alone'}: median {on.median:.1f} ms spinning on, "
            f"{off.median:.1f} ms off ({on.median / off.median:.2f}x); mean {on.mean:.1f} vs {off.mean:.1f} ms"
        )


if __name__ == "__main__":
    main()
