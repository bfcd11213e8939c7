"""Soak of `tpdeploy serve`: --requests requests from --clients concurrent clients, HTTP and gRPC, raw tensors and
JPEGs mixed, every answer checked, the server's memory watched.

One server (harness/serving.py, as `tpdeploy serve` runs it) on Token-Pooled DeiT-Ti. Client i uses gRPC
when i is odd, HTTP otherwise; its requests alternate between one raw image tensor (model NAME, dynamically
batched) and one JPEG (NAME_classify). Each answer is compared with a direct run of the same runtime on the same
image in this process:

- a tensor answer is "exact" when it equals the image's logits at batch 1 (the request's own batch size) to
  1e-5 of the largest logit (how many bit for bit is counted too); "batch-dependent" when it does not but equals
  the image's logits in a batch of 2 or of --max-batch (the dynamic batcher ran it with other requests);
  otherwise "wrong". Top-1 changes of
  batch-dependent answers are counted separately.
- a JPEG answer (run alone: no batcher) must give the top-5 classes of the image preprocessed with the model's
  recorded data config, scores to 1e-5; otherwise "wrong".

Also: throughput, p50/p99 latency, Triton's mean dynamic batch, and the RSS of the server's processes (it,
tritonserver, the stubs) every second: at the end of the --warmup requests and at the end.

    python benchmarks/serve_soak.py [--model tp.onnx] [--requests 10000] [--clients 32]
"""

import argparse
import itertools
import os
import signal
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # harness/
from exports import export_if_missing

from harness.serving import ServerProcess, encoded_image, inference_counts
from tpdeploy import runtime
from tpdeploy.data.preprocess import preprocess_image
from tpdeploy.data.samples import sample_images
from tpdeploy.serving.handlers import top_classes
from tpdeploy.tasks import bench

NAME = "tp"
RTOL = 1e-5


class References:
    """What the runtime answers directly for each pool image: tensors at batch 1, 2 and max, JPEGs' top-5."""

    def __init__(self, runner, tensors, jpegs, max_batch):
        self.tensors, self.jpegs = tensors, jpegs
        n = len(tensors)

        def in_batch(k, b):  # image k first, then the next pool images as companions
            return runner.infer(tensors[[(k + j) % n for j in range(b)]])[0]

        self.alone = np.stack([in_batch(k, 1) for k in range(n)])
        self.batched = [np.stack([in_batch(k, b) for k in range(n)]) for b in sorted({2, max_batch})]
        self.tol = RTOL * float(np.abs(self.alone).max())
        self.top5 = [
            [a[0] for a in top_classes(runner.infer(preprocess_image(j, runner.data_config)[None]))] for j in jpegs
        ]

    def judge_tensor(self, k, logits):
        """('exact' | 'batch-dependent' | 'wrong', top-1 changed, max |logit - batch-1 logit|)."""
        diff = float(np.abs(logits - self.alone[k]).max())
        if diff <= self.tol:
            return "exact", False, diff
        if any(np.abs(logits - ref[k]).max() <= self.tol for ref in self.batched):
            return "batch-dependent", int(logits.argmax()) != int(self.alone[k].argmax()), diff
        return "wrong", False, diff

    def judge_jpeg(self, k, classes, scores):
        want_classes, want_scores = self.top5[k]
        ok = np.array_equal(classes, want_classes) and np.allclose(scores, want_scores, atol=1e-5, rtol=1e-4)
        return ("exact" if ok else "wrong"), False, float(np.abs(scores - want_scores).max())


class Soak:
    def __init__(self, server, refs, requests):
        self.server, self.refs, self.requests = server, refs, requests
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.records = []  # (kind, protocol, end time, latency s, verdict, top-1 changed, max difference)
        self.failures = []

    def client(self, i):
        if i % 2:
            import tritonclient.grpc as module

            client, protocol = module.InferenceServerClient(self.server.grpc_url), "gRPC"
            kwargs, binary = {"client_timeout": 300}, {}
        else:
            import tritonclient.http as module

            client, protocol = self.server.http_client(), "HTTP"
            kwargs, binary = {}, {"binary_data": True}
        refs = self.refs
        try:
            for j in itertools.count():
                n = next(self.counter)
                if n >= self.requests:
                    return
                k = (n // 2) % len(refs.tensors)
                kind = "tensor" if j % 2 == 0 else "JPEG"
                t0 = time.perf_counter()
                try:
                    if kind == "tensor":
                        inp = module.InferInput("images", [1, 3, 224, 224], "FP32")
                        inp.set_data_from_numpy(refs.tensors[k : k + 1], **binary)
                        logits = client.infer(NAME, [inp], **kwargs).as_numpy("logits")[0]
                        verdict = refs.judge_tensor(k, logits)
                    else:
                        inp = module.InferInput("image", [1, 1], "BYTES")
                        inp.set_data_from_numpy(np.array([[refs.jpegs[k]]], dtype=object), **binary)
                        res = client.infer(f"{NAME}_classify", [inp], **kwargs)
                        verdict = refs.judge_jpeg(k, res.as_numpy("classes")[0], res.as_numpy("scores")[0])
                except Exception as e:  # counted and reported
                    with self.lock:
                        self.failures.append(f"{kind} over {protocol}: {str(e)[:200]}")
                    continue
                t1 = time.perf_counter()
                with self.lock:
                    self.records.append((kind, protocol, t1, t1 - t0, *verdict))
        finally:
            client.close()


def rss_mb(server):
    total = 0
    for p in server.processes():
        try:
            total += p.memory_info().rss
        except Exception:  # a process that just ended
            pass
    return total / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="Token-Pooled ONNX file (default: export preset deit_tiny_058)")
    ap.add_argument("--workdir", default="build/serve_soak")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1000, help="requests before the RSS baseline")
    ap.add_argument("--images", type=int, default=16, help="distinct images (tensors and JPEGs each)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-queue-delay-us", type=int, default=500)
    args = ap.parse_args()
    model = args.model or export_if_missing(
        os.path.join(args.workdir, "deit_tiny_058.onnx"), "deit_tiny", preset="deit_tiny_058"
    )
    runner = runtime.load(model)
    tensors = sample_images(args.images, seed=100)
    jpegs = [encoded_image("JPEG", seed=200 + k, size=(320 + 8 * k, 240 + 4 * k)) for k in range(args.images)]
    print("computing the direct references ...", file=sys.stderr)
    refs = References(runner, tensors, jpegs, args.max_batch)
    runner.close()

    m = bench.machine()
    print(
        f"soak of tpdeploy serve: {m['cpu']}, {m['cpu_count']} CPUs, {args.requests} requests, {args.clients} "
        f"clients, max batch {args.max_batch}, max queue delay {args.max_queue_delay_us} us, load average "
        f"{os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    server = ServerProcess(model, name=NAME, max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us)
    rss = []  # (requests answered, MB)
    try:
        server.launch().wait_ready()
        soak = Soak(server, refs, args.requests)
        stats_before = inference_counts(server, NAME)
        done = threading.Event()

        def watch():
            while not done.wait(1.0):
                rss.append((len(soak.records) + len(soak.failures), rss_mb(server)))

        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=soak.client, args=(i,)) for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        done.set()
        watcher.join()
        rss.append((args.requests, rss_mb(server)))
        stats_after = inference_counts(server, NAME)
        rc = server.stop(signal.SIGTERM)
    finally:
        server.close()

    recs = soak.records
    verdicts = [r[4] for r in recs]
    print(f"{'requests':<36}{args.requests}")
    print(f"{'  ok':<36}{len(recs)}")
    print(f"{'  failed':<36}{len(soak.failures)}" + (f"  e.g. {soak.failures[0]}" if soak.failures else ""))
    print(f"{'  wrong':<36}{verdicts.count('wrong')}")
    print(f"{'  exact (= batch-1 direct run)':<36}{verdicts.count('exact')}")
    flips = sum(1 for r in recs if r[4] == "batch-dependent" and r[5])
    print(
        f"{'  batch-dependent (= batched run)':<36}{verdicts.count('batch-dependent')}, of which top-1 changed: {flips}"
    )
    tensor_diffs = np.array([r[6] for r in recs if r[0] == "tensor"])
    if len(tensor_diffs):
        print(
            f"{'  tensors bit-identical to batch 1':<36}{int((tensor_diffs == 0).sum())} of {len(tensor_diffs)}, "
            f"max |dlogit| {tensor_diffs.max():.1e} (tolerance {refs.tol:.1e})"
        )
    print(f"{'throughput':<36}{len(recs) / elapsed:.1f} requests/s ({elapsed:.0f} s)")
    for label, sel in (
        ("latency, all", recs),
        ("latency, tensors", [r for r in recs if r[0] == "tensor"]),
        ("latency, JPEGs", [r for r in recs if r[0] == "JPEG"]),
    ):
        ms = np.array([r[3] for r in sel]) * 1e3
        if len(ms):
            print(f"{label:<36}p50 {np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms ({len(ms)})")
    inferences, executions = (a - b for a, b in zip(stats_after, stats_before))
    print(f"{'mean dynamic batch (tensors)':<36}{inferences / max(executions, 1):.2f}")
    after_warmup = [mb for n, mb in rss if n >= args.warmup]
    if after_warmup:
        print(
            f"{'server RSS':<36}{after_warmup[0]:.0f} MB after {args.warmup} requests, {after_warmup[-1]:.0f} MB "
            f"at the end (max {max(after_warmup):.0f} MB, {len(rss)} samples, 1 per second)"
        )
    print(
        f"{'stop (SIGTERM)':<36}exit {rc} in {server.stop_seconds:.1f} s, left running: {server.leftovers or 'nothing'}"
    )
    print(
        f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; clients and server "
        f"on the same machine"
    )


if __name__ == "__main__":
    main()
