"""Load test of `tpdeploy serve` (Triton Inference Server through PyTriton): Token-Pooled DeiT-S vs dense DeiT-S.

Both servers run side by side (one process each, as `tpdeploy serve` runs them). Each concurrency level is
measured in --rounds short rounds with the two models alternating (so drift and busy neighbours hit both alike).
Every client is a thread with its own tritonclient connection sending one image per request, back to back
(closed loop). A round's window opens once every client has had its first answer (steady load) and lasts
--duration / --rounds seconds; requests answered inside it give requests/s and the p50/p95/p99 latency. The
dynamic batcher's mean batch size comes from Triton's own counters over the same windows (its statistics API:
inferences / executions). The servers are started with harness/serving.py, as the tests start theirs.

    python benchmarks/serve_load.py [--tp tp.onnx --dense dense.onnx] [--concurrency 1,8,32] [--duration 60]

Without --tp/--dense it exports deit_small (preset deit_small_058) and dense deit_small (--method none) into
--workdir first (seeded-random weights: speed does not depend on them).
"""

import argparse
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # harness/
from exports import export_if_missing

from harness.serving import ServerProcess, inference_counts
from tpdeploy.data.samples import sample_images
from tpdeploy.tasks import bench

TP, DENSE = "Token-Pooled DeiT-S", "dense DeiT-S"


class Window:
    """The measured window: it opens once every client has had one answer (steady load), lasts `duration`."""

    def __init__(self, clients, duration):
        self.clients, self.duration = clients, duration
        self.lock = threading.Lock()
        self.answered = 0
        self.opened = threading.Event()
        self.start = self.end = None

    def first_answer(self):
        with self.lock:
            self.answered += 1
            if self.answered == self.clients:
                self.start = time.perf_counter()
                self.end = self.start + self.duration
                self.opened.set()

    def over(self, now, hard_stop):
        return now > hard_stop or (self.end is not None and now > self.end)


def client_loop(server, name, protocol, images, window, hard_stop, max_requests, samples, errors):
    """Back-to-back requests until the window closes; `samples` gets (completion time, latency) of each answer."""
    if protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(server.grpc_url)
        kwargs = {"client_timeout": 300}
    else:
        import tritonclient.http as module

        client = module.InferenceServerClient(server.http_address, connection_timeout=300, network_timeout=300)
        kwargs = {}
    binary = {"binary_data": True} if protocol == "http" else {}
    inputs = []
    for k in range(len(images)):
        inp = module.InferInput("images", [1, 3, 224, 224], "FP32")
        inp.set_data_from_numpy(images[k : k + 1], **binary)
        inputs.append(inp)
    outputs = [module.InferRequestedOutput("logits", **binary)]
    i = 0
    try:
        while not window.over(time.perf_counter(), hard_stop) and i < max_requests:
            t0 = time.perf_counter()
            try:
                client.infer(name, [inputs[i % len(inputs)]], outputs=outputs, **kwargs).as_numpy("logits")
                t1 = time.perf_counter()
                samples.append((t1, t1 - t0))
            except Exception as e:  # counted and reported
                errors.append((time.perf_counter(), repr(e)[:200]))
            if i == 0:
                window.first_answer()
            i += 1
    finally:
        client.close()


def run_level(server, name, protocol, images, clients, duration, max_requests, settle_timeout=600.0):
    """`clients` closed-loop clients; measured over a `duration`-second window that opens once every client has
    had an answer. Returns latencies (s) and errors inside the window, its length, and Triton's (inferences,
    executions) counts over it."""
    window = Window(clients, duration)
    samples, errors = [], []
    hard_stop = time.perf_counter() + settle_timeout + duration
    threads = [
        threading.Thread(
            target=client_loop, args=(server, name, protocol, images, window, hard_stop, max_requests, samples, errors)
        )
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    if not window.opened.wait(settle_timeout):
        raise SystemExit(f"{name}: not every client had an answer within {settle_timeout:.0f} s")
    before = inference_counts(server, name)
    time.sleep(max(0.0, window.end - time.perf_counter()))
    after = inference_counts(server, name)
    for t in threads:
        t.join()  # the requests in flight at the end finish outside the window
    lat = [dt for t_end, dt in samples if window.start <= t_end <= window.end]
    err = [e for t_end, e in errors if window.start <= t_end <= window.end]
    return lat, err, window.end - window.start, [a - b for a, b in zip(after, before)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", help="Token-Pooled DeiT-S ONNX (default: export preset deit_small_058)")
    ap.add_argument("--dense", help="dense DeiT-S ONNX (default: export deit_small --method none)")
    ap.add_argument("--workdir", default="build/serve_load", help="where the default exports go")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds measured per model and level (all rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per level, the two models alternating")
    ap.add_argument("--max-requests", type=int, default=100000, help="cap per client per window")
    ap.add_argument("--protocol", choices=["http", "grpc"], default="http")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-queue-delay-us", type=int, default=500)
    ap.add_argument("--instances", type=int, default=1)
    args = ap.parse_args()

    os.makedirs(args.workdir, exist_ok=True)
    tp = args.tp or export_if_missing(
        os.path.join(args.workdir, "deit_small_058.onnx"), "deit_small", preset="deit_small_058"
    )
    dense = args.dense or export_if_missing(
        os.path.join(args.workdir, "deit_small_dense.onnx"), "deit_small", method="none"
    )
    levels = [int(c) for c in args.concurrency.split(",")]
    images = sample_images(8, seed=0)
    machine = bench.machine()
    print(
        f"tpdeploy serve load test: {machine['cpu']}, {machine['cpu_count']} CPUs, Python {machine['python']}, "
        f"{args.protocol}, max batch {args.max_batch}, max queue delay {args.max_queue_delay_us} us, "
        f"{args.instances} instance(s), {args.duration:.0f} s per point in {args.rounds} rounds, "
        f"load average {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )

    servers = {}
    try:
        for label, path, name in ((TP, tp, "tp"), (DENSE, dense, "dense")):
            print(f"starting the server for {label} ({path})", file=sys.stderr)
            servers[label] = (
                ServerProcess(
                    path,
                    name=name,
                    max_batch=args.max_batch,
                    max_queue_delay_us=args.max_queue_delay_us,
                    instances=args.instances,
                )
                .launch()
                .wait_ready(),
                name,
            )
        rows = []
        for clients in levels:
            acc = {label: {"lat": [], "errors": [], "elapsed": 0.0, "images": 0.0, "execs": 0.0} for label in servers}
            for rnd in range(args.rounds):  # short rounds, alternating the order: drift and neighbours hit both
                order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
                for label in order:
                    server, name = servers[label]
                    print(f"  {label}: {clients} client(s), round {rnd + 1}/{args.rounds} ...", file=sys.stderr)
                    lat, errors, elapsed, counts = run_level(
                        server, name, args.protocol, images, clients, args.duration / args.rounds, args.max_requests
                    )
                    a = acc[label]
                    a["lat"] += lat
                    a["errors"] += errors
                    a["elapsed"] += elapsed
                    a["images"] += counts[0]
                    a["execs"] += counts[1]
            for label, a in acc.items():
                ms = np.array(a["lat"]) * 1e3
                p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if len(ms) else (float("nan"),) * 3
                mean_batch = a["images"] / a["execs"] if a["execs"] else 0.0
                rows.append(
                    (label, clients, len(ms) / a["elapsed"], p50, p95, p99, mean_batch, len(ms), len(a["errors"]))
                )
                if a["errors"]:
                    print(f"    {label}: {len(a['errors'])} errors, e.g. {a['errors'][0]}", file=sys.stderr)
    finally:
        for server, _ in servers.values():
            server.close()

    head = (
        f"{'model':<22}{'clients':>8}{'req/s':>9}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'mean batch':>12}"
        f"{'requests':>10}{'errors':>8}"
    )
    print(head)
    print("-" * len(head))
    for label, clients, rps, p50, p95, p99, mb, n, nerr in sorted(rows, key=lambda r: (r[1], r[0] != TP)):
        print(f"{label:<22}{clients:>8}{rps:>9.2f}{p50:>10.1f}{p95:>10.1f}{p99:>10.1f}{mb:>12.2f}{n:>10}{nerr:>8}")
    for clients in levels:
        by = {r[0]: r for r in rows if r[1] == clients}
        if len(by) == 2:
            t, d = by[TP], by[DENSE]
            print(
                f"{clients:>3} client(s): Token-Pooled / dense throughput {t[2] / d[2]:.2f}x, "
                f"p50 latency {t[3] / d[3]:.2f}x"
            )
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(
        "one image per request; latency per request as the client sees it; mean batch = images per model "
        "execution (Triton's dynamic batcher)"
    )


if __name__ == "__main__":
    main()
