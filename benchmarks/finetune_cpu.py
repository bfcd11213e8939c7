"""Fine-tuning on this machine: training images/s for each architecture with one and with two processes
(torchrun, gloo, one thread each where there are two), and the held-out agreement with the dense teacher before
and after each epoch for each FLOPs ratio. Each run is `tpdeploy finetune --json`, in a fresh folder.

    python benchmarks/finetune_cpu.py [--archs deit_tiny,deit_small] [--images 64] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from PIL import Image

from tpdeploy.data.samples import sample_rgb_images


def finetune(args: list[str], processes: int, folder: str) -> dict:
    out = os.path.join(folder, f"run{time.monotonic_ns()}")
    launcher = [sys.executable, "-m", "tpdeploy"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        launcher += ["-m", "tpdeploy"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    cmd = [*launcher, "finetune", *args, "-o", out + ".pt", "--json", out + ".json"]
    print("  $", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(out + ".json") as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="deit_tiny,deit_small")
    parser.add_argument("--ratios", default="0.45,0.58")
    parser.add_argument("--images", type=int, default=64, help="training images (generated)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the agreement curves")
    parser.add_argument("--batch", type=int, default=16)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "images")
        os.makedirs(data)
        for i in range(a.images):  # training images in a folder: no held-out evaluation in the throughput runs
            Image.fromarray(sample_rgb_images(1, seed=1_000_000 + i)[0]).save(os.path.join(data, f"{i:04d}.png"))

        print(f"training throughput: {a.images} images, 1 epoch, batch {a.batch}, {os.cpu_count()} CPUs", flush=True)
        print(f"{'arch':<12}{'processes':>10}{'images/s':>10}{'vs 1':>7}")
        for arch in a.archs.split(","):
            single = None
            for processes in (1, 2):
                args = ["--arch", arch, "--flops-ratio", "0.58", "--data", data, "--epochs", "1", "--batch"]
                report = finetune([*args, str(a.batch)], processes, folder)
                rate = report["epochs"][0]["images_per_s"]
                single = single or rate
                print(f"{arch:<12}{processes:>10}{rate:>10.1f}{rate / single:>7.2f}", flush=True)

        arch = a.archs.split(",")[0]
        print(
            f"\nheld-out agreement with the dense teacher, {arch}: {a.images} generated training images, "
            f"{a.epochs} epochs, batch 8, lr 3e-5; 128 held-out generated images",
            flush=True,
        )
        for ratio in a.ratios.split(","):
            args = ["--arch", arch, "--flops-ratio", ratio, "--limit", str(a.images), "--epochs", str(a.epochs)]
            report = finetune([*args, "--batch", "8", "--lr", "3e-5"], 1, folder)
            curve = [report["before"]["agreement"]] + [e["held_out"]["agreement"] for e in report["epochs"]]
            losses = [e["loss"] for e in report["epochs"]]
            print(
                f"{ratio}x: agreement "
                + " -> ".join(f"{100 * c:.1f}%" for c in curve)
                + "; loss "
                + " -> ".join(f"{x:.4f}" for x in losses),
                flush=True,
            )


if __name__ == "__main__":
    main()
