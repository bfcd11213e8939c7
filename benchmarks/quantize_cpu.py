"""Quantized DeiT-S on onnxruntime's CPU backend: dense fp32, pooled fp32, dense int8, pooled int8 (and onnxruntime's
plain `quantize_dynamic` of the pooled file), interleaved in one run at batches 1, 8 and 32; latency relative to dense
fp32 and top-1 agreement with dense fp32 (and with pooled fp32) on structured images.

Issue 19's goal: pooled int8 >= 3.5x dense fp32 at batch 8. Latency is each run's CPU time on one intra-op thread
(`time.thread_time`, robust to a busy machine; the median wall time beside it), rounds alternating in order.

    python benchmarks/quantize_cpu.py [--work build/bench-quantize] [--rounds 7] [--images 256] [--calib DIR]
"""

import argparse
import os
import sys
import time

import numpy as np
from exports import export_if_missing

from tpdeploy.convert.quantize import quantize
from tpdeploy.data.samples import sample_images
from tpdeploy.runtime.onnxrt import OnnxRuntimeRunner
from tpdeploy.tasks import bench

BATCHES = (1, 8, 32)
GOAL = 3.5  # pooled int8 vs dense fp32 at batch 8


def models(work: str, calib: str | None) -> dict[str, str]:
    """name -> ONNX file: the two exports, each quantized by `tpdeploy quantize`, and the pooled one by
    onnxruntime's quantize_dynamic."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dense = export_if_missing(os.path.join(work, "dense.onnx"), "deit_small", method="none")
    pooled = export_if_missing(os.path.join(work, "pooled.onnx"), "deit_small", preset="deit_small_058")
    files = {"dense fp32": dense, "pooled fp32": pooled}
    for name, source in (("dense int8", dense), ("pooled int8", pooled)):
        path = os.path.join(work, name.replace(" ", "_") + ".onnx")
        if not os.path.exists(path):
            print(f"quantizing {source}", file=sys.stderr)
            print(quantize(source, path, calib=calib).format(), file=sys.stderr)
        files[name] = path
    files["pooled dynamic int8"] = os.path.join(work, "pooled_dynamic.onnx")
    if not os.path.exists(files["pooled dynamic int8"]):
        quantize_dynamic(pooled, files["pooled dynamic int8"], weight_type=QuantType.QInt8)
    return files


def top1(runner, images, batch=16) -> np.ndarray:
    return np.concatenate([runner.infer(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="build/bench-quantize", help="folder for the exported and quantized files")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per batch (each model once per round)")
    ap.add_argument("--images", type=int, default=1024, help="structured images for the top-1 agreement")
    ap.add_argument("--calib", help="calibration images for `tpdeploy quantize` (default: the built-in ones)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    files = models(args.work, args.calib)
    runners = {name: OnnxRuntimeRunner(path, threads=1, spinning=False) for name, path in files.items()}
    images = sample_images(args.images, seed=0)
    predicted = {name: top1(r, images) for name, r in runners.items()}
    rows = []
    for batch in BATCHES:
        x = sample_images(batch, seed=1)
        for r in runners.values():
            r.infer(x)  # warm-up
        cpu, wall = {n: [] for n in runners}, {n: [] for n in runners}
        for i in range(args.rounds):
            for name in list(runners) if i % 2 == 0 else reversed(list(runners)):
                t0, c0 = time.perf_counter(), time.thread_time()
                runners[name].infer(x)
                cpu[name].append(time.thread_time() - c0)
                wall[name].append(time.perf_counter() - t0)
        base = np.median(cpu["dense fp32"])
        for name in runners:
            rows.append((batch, name, np.median(cpu[name]), np.median(wall[name]), base / np.median(cpu[name])))
    print(
        f"DeiT-S (seeded-random weights), onnxruntime CPU, 1 intra-op thread, {args.rounds} rounds interleaved; "
        f"{bench.machine()['cpu']}; load average {os.getloadavg()[0]:.2f} at the end"
    )
    head = (
        f"{'batch':>5}  {'model':<20}{'CPU ms':>9}{'wall ms':>9}{'x dense fp32':>14}{'agree dense':>13}"
        f"{'agree pooled':>14}"
    )
    print(head + "\n" + "-" * len(head))
    for batch, name, c, w, speedup in rows:
        dense = (predicted[name] == predicted["dense fp32"]).mean()
        pooled = (predicted[name] == predicted["pooled fp32"]).mean()
        print(f"{batch:>5}  {name:<20}{1e3 * c:>9.1f}{1e3 * w:>9.1f}{speedup:>13.2f}x{dense:>13.1%}{pooled:>14.1%}")
    at8 = next(s for b, n, _, _, s in rows if b == 8 and n == "pooled int8")
    print(
        f"agreement on {args.images} structured images; goal: pooled int8 >= {GOAL}x dense fp32 at batch 8: "
        f"{at8:.2f}x ({'met' if at8 >= GOAL else 'not met'})"
    )


if __name__ == "__main__":
    main()
