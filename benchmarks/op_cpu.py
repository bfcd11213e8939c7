"""TokenPool (PyTorch reference) vs one DeiT-S block on this CPU, interleaved in one run.

Issue target: at B=32, N=196, C=384, K=110, T=3 the op costs at most 15% of one DeiT-S block's forward
at the same batch and token count (196 patch tokens + CLS).

    python benchmarks/op_cpu.py [--batch 32] [--duration 20]
"""

import argparse

import torch

from tpdeploy.model.registry import get_config
from tpdeploy.model.vit import Block
from tpdeploy.tasks import bench
from tpdeploy.tokenpool.reference import token_pool

BLOCK = "DeiT-S block (dense attention)"


def measure(batch=32, tokens=196, clusters=110, iterations=3, duration=20.0) -> dict:
    """{name: LatencyStats} for the block and each TokenPool mode, timed interleaved."""
    cfg = get_config("deit_small")
    torch.manual_seed(0)
    block = Block(cfg).eval()
    x = torch.randn(batch, tokens + 1, cfg.embed_dim)
    # realistic inputs: the block's own output tokens and attention significance
    with torch.no_grad():
        out, significance = block(x, want_significance=True)
    patches = out[:, 1:].contiguous()
    runs = {BLOCK: lambda: block(x)}
    for mode, weighted in [("kmedoids", True), ("kmedoids", False), ("kmeans", True), ("kmeans", False)]:
        name = f"TokenPool {'w' if weighted else ''}{mode}"
        runs[name] = lambda m=mode, w=weighted: token_pool(patches, significance, clusters, iterations, m, w)
    with torch.inference_mode():
        times = bench.measure(list(runs.values()), warmup_ms=1000, duration_s=duration)
    return {name: bench.LatencyStats.of(t, batch) for name, t in zip(runs, times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=196)
    ap.add_argument("--clusters", type=int, default=110)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args()
    stats = measure(args.batch, args.tokens, args.clusters, args.iterations, args.duration)
    print(
        f"B={args.batch} N={args.tokens} C=384 K={args.clusters} T={args.iterations}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {bench.machine()['cpu']}"
    )
    print(bench.table(list(stats.items())))
    for name, s in stats.items():
        if name != BLOCK:
            print(f"{name:<28} {s.median / stats[BLOCK].median:6.1%} of a block (median)")


if __name__ == "__main__":
    main()
