"""TokenPool's own CPU cost next to ToMe's merge and one DeiT-S block: one thread, interleaved in one run.

Issue 19's targets, at B=8 N=196 C=384 K=110 T=3: TokenPool costs at most ToMe's bipartite merge at the same size
and at most 5% of one DeiT-S block (196 patch tokens + CLS), in PyTorch and in onnxruntime (a single-op model),
choosing the same tokens as before. Each batch size is one interleaved run (bench.measure: round by round, order
alternating) of the block, ToMe's merge and, per method, TokenPool now and as it was at git revision `--before`
(its reference.py and onnx_function.py, read from git), in PyTorch and in onnxruntime. Before timing, every
"now" output is checked bit for bit against its "before" output on the same inputs. The Gram matrix X Xᵀ alone,
which kmedoids' distances start from, is timed too: no kmedoids implementation costs less. Medians of wall-clock time
and of the thread's CPU time (which leaves out the time other processes hold the core: the ratios to read on a
shared machine).

    python benchmarks/op_cpu.py [--batch 8 32] [--duration 20] [--before 2ae43bb] [--methods wkmedoids,wkmeans]

ToMe (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) is written here from the paper's description,
as a baseline, the way its reference code does it (gather / scatter_reduce): tokens split alternately into sets A
and B, cosine similarity of A to B (on the tokens; the paper uses the keys), each A token's best B match, the r most
similar A tokens merged into their matches by size-weighted averaging; r = N - K gives K tokens.
"""

import argparse
import os
import subprocess
import time
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from tpdeploy.model.registry import get_config
from tpdeploy.model.schedule import method_op
from tpdeploy.model.vit import Block
from tpdeploy.tasks import bench
from tpdeploy.tokenpool import onnx_function, reference

REPO = Path(__file__).resolve().parent.parent
BEFORE = "2ae43bb"  # main when issue 19 was filed
BLOCK, TOME = "DeiT-S block", "ToMe merge"


def tome_merge(x: torch.Tensor, size: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite soft matching then size-weighted merging: x [B, N, C], size [B, N, 1] -> N - r tokens and sizes."""
    metric = x / x.norm(dim=-1, keepdim=True)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # A to B
    best, match = scores.max(dim=-1)
    edges = best.argsort(dim=-1, descending=True)[..., None]
    kept, merged = edges[:, r:], edges[:, :r]
    dst_idx = match[..., None].gather(1, merged)

    def merge(t):
        src, dst = t[:, ::2], t[:, 1::2]
        width = t.shape[2]
        unmerged = src.gather(1, kept.expand(-1, -1, width))
        src = src.gather(1, merged.expand(-1, -1, width))
        return torch.cat([unmerged, dst.scatter_reduce(1, dst_idx.expand(-1, -1, width), src, reduce="sum")], 1)

    merged_x, merged_size = merge(x * size), merge(size)
    return merged_x / merged_size, merged_size


def module_at(rev: str, path: str) -> types.ModuleType:
    """The module at `path` as it was at git revision `rev` (it imports the rest of tpdeploy as it is now)."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType(f"{Path(path).stem}_at_{rev}")
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def gram_model() -> onnx.ModelProto:
    """X [B, N, C] -> X Xᵀ: the Gram matrix kmedoids starts from, the floor of its cost."""
    nodes = [
        helper.make_node("Transpose", ["X"], ["XT"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["X", "XT"], ["G"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gram",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["B", "N", "C"])],
        [helper.make_tensor_value_info("G", onnx.TensorProto.FLOAT, ["B", "N", "N"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_function.MIN_OPSET)], ir_version=9)


def runs_for(batch, tokens, clusters, iterations, methods, before_rev) -> dict:
    """{name: callable}: the block, ToMe and, per method, TokenPool now and before in PyTorch and onnxruntime."""
    cfg = get_config("deit_small")
    torch.manual_seed(0)
    block = Block(cfg).eval()
    x = torch.randn(batch, tokens + 1, cfg.embed_dim)
    with torch.inference_mode():  # realistic inputs: the block's own output tokens and attention significance
        out, significance = block(x, want_significance=True)
    patches = out[:, 1:].contiguous()
    feeds = {"X": patches.numpy(), "W": significance.numpy()}
    size = torch.ones(batch, tokens, 1)
    gram = session(gram_model())
    runs = {
        BLOCK: lambda: block(x),
        TOME: lambda: tome_merge(patches, size, tokens - clusters),
        "Gram X Xt torch": lambda: patches @ patches.transpose(1, 2),
        "Gram X Xt ort": lambda: gram.run(None, {"X": feeds["X"]}),
    }
    versions = {"now": (reference, onnx_function)}
    if before_rev:
        versions["before"] = tuple(
            module_at(before_rev, f"tpdeploy/tokenpool/{m}.py") for m in ("reference", "onnx_function")
        )
    for method in methods:
        mode, weighted = method_op(method)
        args = (clusters, iterations, mode, weighted)
        outputs = {}
        for version, (torch_impl, onnx_impl) in versions.items():
            sess = session(onnx_impl.single_op_model("float32", *args))
            runs[f"{method} torch {version}"] = lambda f=torch_impl.token_pool, a=args: f(patches, significance, *a)
            runs[f"{method} ort {version}"] = lambda s=sess: s.run(None, feeds)
            with torch.inference_mode():
                outputs[version] = (
                    torch_impl.token_pool(patches, significance, *args).numpy(),
                    sess.run(None, feeds)[0],
                )
        if before_rev:
            for i, backend in enumerate(("torch", "ort")):
                if not np.array_equal(outputs["now"][i], outputs["before"][i]):
                    raise SystemExit(f"{method} {backend}: the output differs from {before_rev}'s")
    return runs


def measure(runs: dict, duration: float) -> tuple[dict, dict]:
    """Interleaved (bench.measure): {name: wall-clock seconds}, {name: this thread's CPU seconds}, per timed run.
    Everything runs on this thread, so its CPU time leaves out the time other processes hold the core."""
    cpu = {name: [] for name in runs}

    def timed(name, run):
        def call():
            start = time.thread_time()
            run()
            cpu[name].append(time.thread_time() - start)

        return call

    with torch.inference_mode():
        wall = bench.measure(
            [timed(name, run) for name, run in runs.items()], warmup_ms=1000, duration_s=duration, min_rounds=10
        )
    rounds = len(wall[0])
    return dict(zip(runs, wall)), {name: seconds[-rounds:] for name, seconds in cpu.items()}  # without the warm-up


def report(wall: dict, cpu: dict) -> str:
    med = {
        kind: {name: float(np.median(t)) * 1e3 for name, t in d.items()} for kind, d in (("wall", wall), ("cpu", cpu))
    }
    head = f"{'':<24}{'wall ms':>9}{'cpu ms':>9}{'x ToMe':>8}{'of block':>9}  {'wall: x ToMe':>12}{'of block':>9}"
    lines = [head, "-" * len(head)]
    for name in wall:
        ratios = [
            f"{med[kind][name] / med[kind][TOME]:>{w1}.2f}{med[kind][name] / med[kind][BLOCK]:>9.1%}"
            for kind, w1 in (("cpu", 8), ("wall", 14))
        ]
        lines.append(f"{name:<24}{med['wall'][name]:>9.2f}{med['cpu'][name]:>9.2f}{ratios[0]}{ratios[1]}")
    for name in wall:
        before = name.replace(" now", " before")
        if name.endswith(" now") and before in wall:
            lines.append(
                f"{name[: -len(' now')]}: now / before {med['cpu'][name] / med['cpu'][before]:.2f} (cpu), "
                f"{med['wall'][name] / med['wall'][before]:.2f} (wall)"
            )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--tokens", type=int, default=196)
    ap.add_argument("--clusters", type=int, default=110)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--methods", default="wkmedoids,kmedoids,wkmeans,kmeans")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of timed rounds per batch size")
    ap.add_argument("--before", default=BEFORE, help="git revision for the 'before' rows ('' for none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    methods = args.methods.split(",")
    print(
        f"N={args.tokens} C=384 K={args.clusters} T={args.iterations}, one thread, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}, {bench.machine()['cpu']}; before = {args.before or 'not measured'}"
    )
    for batch in args.batch:
        runs = runs_for(batch, args.tokens, args.clusters, args.iterations, methods, args.before)
        load = os.getloadavg()[0]
        wall, cpu = measure(runs, args.duration)
        print(
            f"\nB={batch}: {len(wall[BLOCK])} rounds, load average {load:.2f} at the start, "
            f"{os.getloadavg()[0]:.2f} at the end; medians; x ToMe and of block from CPU time, then from wall time"
        )
        print(report(wall, cpu))


if __name__ == "__main__":
    main()
