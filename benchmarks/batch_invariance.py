"""How often does an answer depend on the batch it was computed in? Token-Pooled vs dense DeiT on onnxruntime.

A dynamic batcher (Triton's, in `tpdeploy serve`) runs each request inside a batch of whatever else arrived. This
runs each of --images structured images alone (batch 1, the reference), then in batches of each size of
--batches (consecutive images), and, at each size, once more with the images shuffled (other companions, other
positions), and counts per image: logits bit-identical to the reference, top-1 changed, largest logit difference.

    python benchmarks/batch_invariance.py [--tp tp.onnx --dense dense.onnx] [--images 256] [--batches 2,4,8,16,32]

Without --tp/--dense it exports --arch (default deit_tiny: preset <arch>_058, and --method none) into --workdir.
"""

import argparse
import os
import sys

import numpy as np
from exports import export_if_missing

from tpdeploy import runtime
from tpdeploy.data.samples import sample_images
from tpdeploy.tasks import bench


def in_batches(runner, images, order, batch):
    """Logits of images[order] computed `batch` at a time, put back in the images' order."""
    out = np.empty((len(images), runner.num_classes), np.float32)
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        out[idx] = runner.infer(images[idx])
    return out


def compare(got, want):
    same = np.all(got == want, axis=1)
    diff = np.abs(got - want).max(axis=1)
    return {
        "identical": int(same.sum()),
        "flips": int((got.argmax(1) != want.argmax(1)).sum()),
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / np.abs(want).max()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", help="Token-Pooled ONNX file (default: export preset <arch>_058)")
    ap.add_argument("--dense", help="dense ONNX file (default: export <arch> --method none)")
    ap.add_argument("--arch", default="deit_tiny")
    ap.add_argument("--workdir", default="build/batch_invariance")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batches", default="2,4,8,16,32")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tp = args.tp or export_if_missing(
        os.path.join(args.workdir, f"{args.arch}_058.onnx"), args.arch, preset=f"{args.arch}_058"
    )
    dense = args.dense or export_if_missing(
        os.path.join(args.workdir, f"{args.arch}_dense.onnx"), args.arch, method="none"
    )
    batches = [int(b) for b in args.batches.split(",")]
    images = sample_images(args.images, seed=args.seed)
    shuffled = np.random.default_rng(args.seed).permutation(args.images)
    import onnxruntime

    m = bench.machine()
    print(
        f"batch invariance on {m['cpu']}, {m['cpu_count']} CPUs, onnxruntime {onnxruntime.__version__}, "
        f"{args.images} structured images (seed {args.seed}), load average {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    head = f"{'model':<30}{'batch':>6}{'vs':>10}{'identical':>11}{'top-1 flips':>13}{'max |dlogit|':>14}{'rel':>10}"
    rows = []
    for label, path in (("Token-Pooled " + os.path.basename(tp), tp), ("dense " + os.path.basename(dense), dense)):
        runner = runtime.load(path)
        print(f"  {label}: batch 1 ...", file=sys.stderr)
        alone = in_batches(runner, images, np.arange(args.images), 1)
        for b in batches:
            print(f"  {label}: batch {b} ...", file=sys.stderr)
            first = in_batches(runner, images, np.arange(args.images), b)
            again = in_batches(runner, images, shuffled, b)
            rows.append((label, b, "batch 1", compare(first, alone)))
            rows.append((label, b, "shuffled", compare(again, first)))
        runner.close()
    print(head)
    print("-" * len(head))
    for label, b, vs, c in rows:
        print(
            f"{label:<30}{b:>6}{vs:>10}{c['identical']:>7}/{args.images:<3}{c['flips']:>13}{c['max_abs']:>14.2e}"
            f"{c['max_rel']:>10.1e}"
        )
    print(
        f"vs batch 1: each image in batches of that size against the same image alone; vs shuffled: the same "
        f"batch size with other companions and positions against the first run. {args.images} images; "
        f"load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
