"""The README's "Measured" table, regenerated from the current code in one run.

Exports DeiT-S (0.58x preset, fp32 and fp16) and dense DeiT-S, then measures every row and prints a markdown
table (what, figure, samples, command) with the machine and its load average at each row. Minutes on a small
CPU; with the sweep (the default), about twenty more.

    python benchmarks/measure_readme.py [--out build/readme] [--no-sweep]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import op_cpu
import ort_spinning

from tpdeploy.data import datasets
from tpdeploy.data.samples import sample_images, sample_rgb_images
from tpdeploy.runtime.onnxrt import OnnxRuntimeRunner
from tpdeploy.runtime.pytorch import TorchRunner
from tpdeploy.tasks import bench, evaluate, sweep

TPDEPLOY = [sys.executable, "-m", "tpdeploy"]
ROWS = []


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def row(what: str, figure: str, samples: str, command: str, load_before: str) -> None:
    """A table row; `command` is markdown (commands in backticks)."""
    ROWS.append((what, figure, samples, command, f"{load_before} / {load()}"))
    print(f"  {what}: {figure}", file=sys.stderr)


def tpdeploy(*args) -> str:
    """Run a tpdeploy command (stdout returned, failures fatal); the command line as a user types it."""
    command = ["tpdeploy", *map(str, args)]
    print(f"$ {shlex.join(command)}", file=sys.stderr)
    result = subprocess.run(TPDEPLOY + list(map(str, args)), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed:\n{result.stderr}")
    return result.stdout


def command_line(*args) -> str:
    """A tpdeploy command line as markdown code."""
    return f"`{shlex.join(['tpdeploy', *map(str, args)])}`"


def logits(runner, images, batch=32):
    return np.concatenate([runner.infer(images[i : i + batch]) for i in range(0, len(images), batch)]).astype(
        np.float32
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/readme", help="folder for the exported models and outputs")
    ap.add_argument("--no-sweep", action="store_true", help="skip the sweep row (the longest)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tp, dense, tp16 = (
        os.path.join(args.out, n) for n in ("deit_small_058.onnx", "deit_small_dense.onnx", "deit_small_058_fp16.onnx")
    )
    start_load = load()
    exports = {
        tp: ["--preset", "deit_small_058"],
        dense: ["--arch", "deit_small", "--method", "none"],
        tp16: ["--preset", "deit_small_058", "--dtype", "fp16"],
    }
    for path, model_args in exports.items():
        if os.path.exists(path):
            os.unlink(path)
        tpdeploy("export", *model_args, "-o", path)

    before = load()
    stats = op_cpu.measure(duration=20.0)
    block = stats[op_cpu.BLOCK]
    share = {m: stats[f"TokenPool {m}"].median / block.median for m in ("wkmedoids", "kmedoids", "wkmeans", "kmeans")}
    row(
        "TokenPool (PyTorch reference) vs one DeiT-S block, B=32 N=196 C=384 K=110 T=3, medians",
        f"wkmedoids {share['wkmedoids']:.1%} of the block (kmedoids {share['kmedoids']:.1%}, wkmeans "
        f"{share['wkmeans']:.1%}, kmeans {share['kmeans']:.1%})",
        f"{block.samples} rounds",
        "`python benchmarks/op_cpu.py`",
        before,
    )

    before = load()
    bench_json = os.path.join(args.out, "bench.json")
    bench_args = [tp, "--baseline", dense, "--batch", 8, "--duration", 20, "--json", bench_json]
    tpdeploy("bench", *bench_args)
    with open(bench_json, encoding="utf-8") as f:
        b = json.load(f)
    row(
        "Token-Pooled DeiT-S (0.58x preset) vs dense DeiT-S, onnxruntime, batch 8, interleaved",
        f"{1 / b['speedup']:.2f}x the latency ({b['speedup']:.2f}x speed-up; medians {b['latency_ms']['median']:.1f} "
        f"vs {b['baseline']['latency_ms']['median']:.1f} ms)",
        f"{b['samples']} rounds",
        command_line("bench", *bench_args),
        before,
    )

    before = load()
    spin = ort_spinning.measure(tp, dense, batch=1, duration=80.0, block=4.0)
    on, off = spin["pair spin on: dense"], spin["pair spin off: dense"]
    alone_on, alone_off = spin["alone spin on: pooled"], spin["alone spin off: pooled"]
    row(
        "dense DeiT-S interleaved with the 0.58x model, onnxruntime batch 1: idle-thread spinning on vs off",
        f"median {on.median:.0f} ms on, {off.median:.0f} ms off ({on.median / off.median:.2f}x); the 0.58x model "
        f"alone: {alone_on.median:.0f} vs {alone_off.median:.0f} ms",
        f"{on.samples} / {off.samples} runs",
        f"`python benchmarks/ort_spinning.py {tp} {dense} --duration 80 --block 4`",
        before,
    )

    before = load()
    images = sample_images(256, seed=3)
    ort, torch_model = OnnxRuntimeRunner(tp), TorchRunner.from_onnx(tp)
    got, want = logits(ort, images), logits(torch_model, images)
    err = np.abs(got - want).max(1)
    row(
        "onnxruntime vs PyTorch, DeiT-S 0.58x fp32, 256 structured images (computed here; `compare` prints the same "
        "errors)",
        f"{int((err <= 1e-5).sum())} images agree to 1e-5 (largest logit error {err.max():.1e}), top-1 agreement "
        f"{(got.argmax(1) == want.argmax(1)).mean():.1%}",
        "256 images",
        command_line("compare", tp, "--batch", 256),
        before,
    )

    before = load()
    got16 = logits(OnnxRuntimeRunner(tp16), images)
    agree = got16.argmax(1) == want.argmax(1)
    row(
        "fp16 ONNX vs fp32 PyTorch, DeiT-S 0.58x, 256 images (first 128 alone)",
        f"top-1 {agree.mean():.1%} ({agree[:128].mean():.1%}); median abs error {np.median(np.abs(got16 - want)):.1e}",
        "256 images",
        "`pytest tests/test_export.py -k fp16 -s`",
        before,
    )

    before = load()
    jpegs = os.path.join(args.out, "jpegs")
    os.makedirs(jpegs, exist_ok=True)
    from PIL import Image

    for i, rgb in enumerate(sample_rgb_images(200, 500, seed=5)):
        Image.fromarray(rgb[:375]).save(os.path.join(jpegs, f"{i:04d}.jpg"), quality=90)  # ImageNet's typical 500x375
    labels = os.path.join(args.out, "labels.csv")
    with open(labels, "w", encoding="utf-8") as f:
        f.write("".join(f"{i:04d}.jpg,{i % 1000}\n" for i in range(200)))
    # eval and bench of the same runner, alternating in one process (drift hits both alike)
    dataset = datasets.open_dataset(jpegs, labels, 1000)
    # as the commands run them: eval with spinning off (the decoding threads share the cores), bench alone with it on
    runner, quiet, batch = OnnxRuntimeRunner(tp), OnnxRuntimeRunner(tp, spinning=False), 8
    timing_images = sample_images(batch)
    eval_rates, spinning_rates, bench_rates = [], [], []
    for _ in range(3):
        eval_rates.append(evaluate.evaluate([quiet], dataset, batch, workers=2).images_per_s)
        spinning_rates.append(evaluate.evaluate([runner], dataset, batch, workers=2).images_per_s)
        times = bench.measure([lambda: runner.infer(timing_images)], warmup_ms=0, iterations=len(dataset) // batch)
        bench_rates.append(bench.LatencyStats.of(times[0], batch).throughput)
    ratios = [e / b for e, b in zip(eval_rates, bench_rates)]
    eval_rate, bench_rate = np.mean(eval_rates), np.mean(bench_rates)
    row(
        "`eval` on 200 JPEGs (500x375) vs `bench` of the same file, DeiT-S 0.58x onnxruntime batch 8, 2 decode "
        "workers, alternating 3 times",
        f"{eval_rate / bench_rate:.2f}x ({eval_rate:.1f} vs {bench_rate:.1f} images/s; "
        f"per round {min(ratios):.2f}-{max(ratios):.2f}x; eval with onnxruntime's spinning on instead "
        f"{np.mean(spinning_rates) / bench_rate:.2f}x)",
        "3 x 200 images each",
        f"{command_line('eval', tp, '--data', jpegs, '--labels', labels, '--batch', 8, '--workers', 2)} vs "
        f"{command_line('bench', tp, '--batch', 8)}",
        before,
    )

    if not args.no_sweep:
        before = load()
        out = os.path.join(args.out, "sweep")
        if os.path.exists(os.path.join(out, "results.json")):
            os.unlink(os.path.join(out, "results.json"))
        t0 = time.perf_counter()
        tpdeploy("sweep", "-o", out)
        minutes = (time.perf_counter() - t0) / 60
        row(
            "`sweep` built-in default: seeded-random DeiT-S, 4 methods x 3 ratios + dense, 200 generated images, "
            "onnxruntime batch 8",
            f"{minutes:.1f} min (13 exports, evaluations and interleaved timings)",
            f"{sweep.MIN_TIMING_ROUNDS}+ interleaved rounds per point",
            command_line("sweep", "-o", out),
            before,
        )

    machine = bench.machine()
    print(
        f"{machine['cpu']}, {machine['cpu_count']} cores, {machine['platform']}, Python {machine['python']}; "
        f"load average {start_load} at the start, {load()} at the end"
    )
    print()
    print("| what | figure | samples | command | load before / after |")
    print("| --- | --- | --- | --- | --- |")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
