"""`tpdeploy serve`: a model on NVIDIA Triton Inference Server, through PyTriton.

PyTriton (`pip install nvidia-pytriton`) ships the `tritonserver` binary and runs it as a child process; Triton
does the HTTP/gRPC endpoints, health/readiness, Prometheus metrics and the dynamic batching, and hands each batch
to a Python callable in this process, which runs it on a `tpdeploy.runtime` Runner (onnxruntime, TensorRT or
PyTorch). Two models are served:

- `<name>`: `images` FP32 [-1, 3, S, S] (S: the model's input size, e.g. 224 or 384) -> `logits` FP32
  [-1, classes]; dynamic batching (`max_batch_size`, `max_queue_delay_microseconds`).
- `<name>_classify`: `image` BYTES [-1, 1] (JPEG/PNG/WebP files) -> `classes` INT64 [-1, 5] and `scores` FP32
  [-1, 5] (softmax probabilities, best first), with the model's own evaluation preprocessing (the data config
  its file records) through `tpdeploy.preprocess`. Triton's default scheduler: one request per execution, so a bad image fails only its
  own request (PyTriton reports a callable's exception for every request of the batch it was given).

    from tpdeploy.serve import TritonService
    with TritonService("tp.onnx", http_port=8000, grpc_port=8001, metrics_port=8002) as service:
        ...                                           # serving in this process until the block ends

    from tpdeploy.serve import ServerProcess          # the same in a child process (tests, benchmarks)
    with ServerProcess("tp.onnx") as server:
        print(server.http_url, server.grpc_url, server.metrics_url)

`serve(...)` is what `tpdeploy serve` runs: it blocks until SIGINT or SIGTERM, then stops Triton and its
Python-backend stubs and returns. One Runner is loaded and shared by every model instance (the Runner is
thread-safe; see `TritonService`).
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from tpdeploy import runtime
from tpdeploy.errors import TpdeployError, UserError, one_line
from tpdeploy.triton_repo import DEFAULT_MAX_BATCH, DEFAULT_QUEUE_DELAY_US, check_batching, model_name

LOG = logging.getLogger("tpdeploy.serve")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT = 8000, 8001, 8002  # Triton's own defaults
DEFAULT_EXIT_TIMEOUT_S = 10
TOP_K = 5
STARTUP_TIMEOUT_S = 180.0


def _quiet(msg: str) -> None:
    pass


class RequestError(ValueError):
    """A bad request: Triton answers it with an error response; the server goes on serving.

    Its traceback is hidden from the response (PyTriton formats the exception with its traceback into the
    message the client gets; a client needs the one line, not our stack)."""

    __traceback__ = property(lambda self: None, lambda self, value: None)


# ---------------------------------------------------------------------------------------------- helpers

def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot serve {what} on {host}:{port}: {e.strerror or e}") from None


def python_library_dir() -> str | None:
    """The folder holding this interpreter's own libpython (e.g. pyenv's ~/.pyenv/versions/3.11.7/lib), if any."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    if libdir and os.path.isfile(os.path.join(libdir, soname)):
        return libdir
    return None


@contextlib.contextmanager
def python_library_on_ld_path():
    """Put this interpreter's LIBDIR first on LD_LIBRARY_PATH while Triton starts.

    PyTriton's Python-backend stub links `libpython3.X.so.1.0` and would otherwise get the system one
    (/lib/x86_64-linux-gnu) under a pyenv or other non-system Python: a different patch release whose C code
    does not match the interpreter's standard library (e.g. "'_thread.RLock' object has no attribute
    '_recursion_count'" when the model loads). tritonserver copies our environment when it starts, and the
    stubs inherit tritonserver's, so the variable is restored afterwards."""
    libdir = python_library_dir()
    old = os.environ.get("LD_LIBRARY_PATH")
    parts = [p for p in (old or "").split(os.pathsep) if p]
    if libdir is None or (parts and os.path.realpath(parts[0]) == os.path.realpath(libdir)):
        yield
        return
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + parts)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


def top_classes(logits: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Top-k classes (int64, best first; ties: lowest index) and their softmax probabilities (float32)."""
    logits = np.asarray(logits, dtype=np.float64)
    k = min(k, logits.shape[1])
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(probs, order, axis=1).astype(np.float32)


class BatchStats:
    """What the dynamic batcher handed to a model: executions, requests and images, per batch size."""

    def __init__(self):
        self._lock = threading.Lock()
        self.executions = self.requests = self.images = self.failed = 0
        self.batch_sizes: collections.Counter = collections.Counter()

    def record(self, requests: int, images: int) -> None:
        with self._lock:
            self.executions += 1
            self.requests += requests
            self.images += images
            self.batch_sizes[images] += 1

    def record_failure(self) -> None:
        with self._lock:
            self.failed += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"executions": self.executions, "requests": self.requests, "images": self.images,
                    "failed_executions": self.failed,
                    "mean_batch": self.images / self.executions if self.executions else 0.0,
                    "mean_requests_per_execution": self.requests / self.executions if self.executions else 0.0,
                    "batch_sizes": dict(sorted(self.batch_sizes.items()))}


def read_metrics(metrics_url: str, timeout: float = 10.0) -> dict:
    """Triton's Prometheus metrics as {(metric, model): value}, e.g. ('nv_inference_exec_count', 'tp')."""
    with urllib.request.urlopen(metrics_url, timeout=timeout) as r:
        text = r.read().decode("utf-8", "replace")
    out: dict = {}
    for line in text.splitlines():
        m = re.match(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+|NaN)$', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if "model" in labels:
            key = (m.group(1), labels["model"])
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def mean_batch_from_metrics(before: dict, after: dict, model: str) -> float:
    """Mean dynamic batch size of `model` between two `read_metrics` snapshots (inferences / executions)."""
    count = after.get(("nv_inference_count", model), 0) - before.get(("nv_inference_count", model), 0)
    execs = after.get(("nv_inference_exec_count", model), 0) - before.get(("nv_inference_exec_count", model), 0)
    return count / execs if execs else 0.0


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------- in-process

def _pytriton():
    try:
        from pytriton import model_config, triton
    except ImportError as e:
        raise UserError(f"serving needs PyTriton (which ships Triton Inference Server): "
                            f"pip install 'tpdeploy[serve]' (nvidia-pytriton; Linux x86_64/aarch64, glibc >= 2.35) "
                            f"[{one_line(e)}]") from None
    return triton, model_config


class TritonService:
    """A Runner served by Triton Inference Server (PyTriton) from this process; `start()`/`stop()` or `with`.

    One Runner serves every instance of both models: the Runner is thread-safe, so `instances` N means N
    Python-backend instances whose callables run concurrently on that one Runner. That keeps one copy of
    the weights (and, with TensorRT, of the engine), and on a CPU one onnxruntime thread pool instead of N
    pools competing for the same cores."""

    def __init__(self, model_path: str, backend: str | None = None, host: str = DEFAULT_HOST,
                 http_port: int = DEFAULT_HTTP_PORT, grpc_port: int = DEFAULT_GRPC_PORT,
                 metrics_port: int | None = DEFAULT_METRICS_PORT, max_batch: int = DEFAULT_MAX_BATCH,
                 max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, instances: int = 1, name: str | None = None,
                 device: str = "cpu", plugin: str | None = None, threads: int | None = None,
                 exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S, verbose: bool = False, progress=_quiet):
        check_batching(max_batch, instances, max_queue_delay_us)
        self.name = model_name(model_path, name)
        self.classify_name = f"{self.name}_classify"
        self.model_path, self.backend, self.device = model_path, backend, device
        self.plugin, self.threads = plugin, threads
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.max_batch, self.max_queue_delay_us, self.instances = max_batch, max_queue_delay_us, instances
        self.exit_timeout_s, self.verbose, self.progress = exit_timeout_s, verbose, progress
        self.runner = None
        self.num_classes = 0
        self.stats = {self.name: BatchStats(), self.classify_name: BatchStats()}
        self._triton = None
        self._log_dir = None
        self._started = False

    # endpoints
    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str | None:
        return f"http://{self.host}:{self.metrics_port}/metrics" if self.metrics_port else None

    # inference
    def _run(self, images: np.ndarray) -> np.ndarray:
        """Logits for any batch size: chunks above the Runner's max batch, pads below its min (static engines)."""
        r = self.runner
        n = images.shape[0]
        if n >= r.min_batch and (r.max_batch is None or n <= r.max_batch):
            return np.asarray(r.infer(images), dtype=np.float32)
        step = r.max_batch or n
        outs = []
        for i in range(0, n, step):
            chunk = images[i:i + step]
            k = chunk.shape[0]
            if k < r.min_batch:
                chunk = np.concatenate([chunk, np.zeros((r.min_batch - k,) + chunk.shape[1:], chunk.dtype)])
            outs.append(np.asarray(r.infer(chunk), dtype=np.float32)[:k])
        return np.concatenate(outs)

    def _images_fn(self):
        stats = self.stats[self.name]

        def infer_images(requests):
            try:
                arrays = [np.asarray(req["images"]) for req in requests]
                for a in arrays:  # Triton checks dtype and dims already; a defensive check costs nothing
                    if a.dtype != np.float32 or a.ndim != 4:
                        raise RequestError(f"images must be FP32 [B, 3, H, W], got {a.dtype} {list(a.shape)}")
                batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
                logits = self._run(batch)
            except RequestError:
                stats.record_failure()
                raise
            except TpdeployError as e:
                stats.record_failure()
                raise RequestError(str(e)) from None
            stats.record(len(requests), batch.shape[0])
            out, i = [], 0
            for a in arrays:
                out.append({"logits": logits[i:i + a.shape[0]]})
                i += a.shape[0]
            return out

        return infer_images

    def _classify_fn(self):
        from tpdeploy.preprocess import preprocess_image
        stats = self.stats[self.classify_name]
        config = self.runner.data_config

        def classify(requests):
            out = []
            for req in requests:  # one request per execution (no dynamic batcher): errors stay per request
                try:
                    blobs = np.asarray(req["image"]).reshape(-1)
                    if blobs.size == 0:
                        raise RequestError("no image in the request")
                    images = np.stack([preprocess_image(_as_bytes(b), config) for b in blobs])
                    classes, scores = top_classes(self._run(images), TOP_K)
                except TpdeployError as e:
                    stats.record_failure()
                    LOG.warning("refused a request to %s: %s", self.classify_name, e)
                    raise RequestError(str(e)) from None
                except RequestError as e:
                    stats.record_failure()
                    LOG.warning("refused a request to %s: %s", self.classify_name, e)
                    raise
                stats.record(1, len(blobs))
                out.append({"classes": classes, "scores": scores})
            return out

        return classify

    def _uses_gpu(self) -> bool:
        return self.device == "cuda" or (self.backend or runtime.default_backend(self.model_path)) == "trt"

    # lifecycle
    def start(self) -> "TritonService":
        if self._started:
            return self
        triton_mod, mc = _pytriton()
        ports = [(self.http_port, "HTTP"), (self.grpc_port, "gRPC")]
        if self.metrics_port:
            ports.append((self.metrics_port, "metrics"))
        if len({p for p, _ in ports}) != len(ports):
            raise UserError(f"the HTTP, gRPC and metrics ports must differ, got {[p for p, _ in ports]}")
        for port, what in ports:
            _check_port_free(self.host, port, what)

        self.progress(f"loading {self.model_path} ({self.backend or runtime.default_backend(self.model_path)}, "
                      f"{self.device})")
        self.runner = runtime.load(self.model_path, backend=self.backend, device=self.device, plugin=self.plugin,
                                   threads=self.threads)
        r = self.runner
        if r.max_batch is not None and self.max_batch > r.max_batch:
            self.progress(f"note: {self.model_path} takes at most batch {r.max_batch}: max batch {self.max_batch} "
                          f"-> {r.max_batch}")
            self.max_batch = r.max_batch
        warm = np.zeros((max(1, r.min_batch), 3, r.image_size, r.image_size), np.float32)
        self.num_classes = int(self._run(warm).shape[1])  # warm-up, and the output width

        self.progress("starting Triton Inference Server (PyTriton)")
        self._log_dir = tempfile.mkdtemp(prefix="tpdeploy-triton-")
        config = triton_mod.TritonConfig(
            http_address=self.host, http_port=self.http_port, grpc_address=self.host, grpc_port=self.grpc_port,
            allow_metrics=bool(self.metrics_port), allow_gpu_metrics=None if self._uses_gpu() else False,
            metrics_address=self.host if self.metrics_port else None,
            metrics_port=self.metrics_port or None, exit_timeout_secs=self.exit_timeout_s,
            log_verbose=1 if self.verbose else None,
            log_file=None if self.verbose else os.path.join(self._log_dir, "tritonserver.log"))
        if not self.verbose:
            logging.getLogger("pytriton").setLevel(logging.ERROR)
        size, c = r.image_size, self.num_classes
        try:
            triton = triton_mod.Triton(config=config)
            self._triton = triton
            triton.bind(
                model_name=self.name,
                infer_func=[self._images_fn() for _ in range(self.instances)],
                inputs=[mc.Tensor(name="images", dtype=np.float32, shape=(3, size, size))],
                outputs=[mc.Tensor(name="logits", dtype=np.float32, shape=(c,))],
                config=mc.ModelConfig(batching=True, max_batch_size=self.max_batch,
                                      batcher=mc.DynamicBatcher(max_queue_delay_microseconds=self.max_queue_delay_us)),
                strict=True)
            triton.bind(
                model_name=self.classify_name,
                infer_func=[self._classify_fn() for _ in range(self.instances)],
                inputs=[mc.Tensor(name="image", dtype=np.bytes_, shape=(1,))],
                outputs=[mc.Tensor(name="classes", dtype=np.int64, shape=(min(TOP_K, c),)),
                         mc.Tensor(name="scores", dtype=np.float32, shape=(min(TOP_K, c),))],
                config=mc.ModelConfig(batching=True, max_batch_size=self.max_batch, batcher=None),
                strict=True)
            with python_library_on_ld_path():
                triton.run()
            if not triton.is_alive():
                raise UserError("Triton Inference Server stopped while loading the models")
        except BaseException as e:
            tail = self.log_tail()
            self.stop()
            if isinstance(e, KeyboardInterrupt):
                raise
            msg = e if isinstance(e, TpdeployError) else f"Triton Inference Server did not start: {one_line(e)}"
            hint = ""
            if "_recursion_count" in tail or "libpython" in tail:
                hint = (f" (the Python-backend stub loaded another libpython than this interpreter's; "
                        f"put {sysconfig.get_config_var('LIBDIR')} on LD_LIBRARY_PATH)")
            raise UserError(f"{msg}{hint}" + (f"; server log ends: {tail[-400:]!r}" if tail else "")) from None
        self._started = True
        self.progress(f"serving {self.name!r}: images FP32 [-1, 3, {size}, {size}] -> logits FP32 [-1, {c}] "
                      f"(dynamic batching: max batch {self.max_batch}, max queue delay {self.max_queue_delay_us} us)")
        self.progress(f"serving {self.classify_name!r}: image BYTES [-1, 1] (JPEG/PNG) -> top-{min(TOP_K, c)} "
                      f"classes INT64, scores FP32")
        self.progress(f"  {r.describe()}, {self.instances} instance(s) per model")
        self.progress(f"  HTTP    {self.http_url}  (health: {self.http_url}/v2/health/ready)")
        self.progress(f"  gRPC    {self.grpc_url}")
        if self.metrics_url:
            self.progress(f"  metrics {self.metrics_url}")
        return self

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def log_tail(self, chars: int = 4000) -> str:
        if not self._log_dir:
            return ""
        try:
            with open(os.path.join(self._log_dir, "tritonserver.log"), encoding="utf-8", errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop Triton (it finishes in-flight requests, up to exit_timeout_s), its stubs, and the Runner."""
        triton, self._triton = self._triton, None
        if triton is not None:
            try:
                triton.stop()
            except Exception as e:  # noqa: BLE001 - stopping must not hide the reason we stop
                LOG.warning("stopping Triton: %s", one_line(e))
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        if self._log_dir:
            import shutil
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None
        self._started = False

    def summary(self) -> str:
        parts = []
        for model, st in self.stats.items():
            s = st.snapshot()
            parts.append(f"{model}: {s['requests']} requests, {s['images']} images in {s['executions']} executions "
                         f"(mean batch {s['mean_batch']:.2f}), {s['failed_executions']} refused")
        return "; ".join(parts)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _as_bytes(item) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.bytes_):
        return bytes(item)
    raise RequestError(f"image must be BYTES (the encoded file), got {type(item).__name__}")


def serve(model_path: str, backend: str | None = None, host: str = DEFAULT_HOST,
          http_port: int = DEFAULT_HTTP_PORT, grpc_port: int = DEFAULT_GRPC_PORT,
          max_batch: int = DEFAULT_MAX_BATCH, max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
          instances: int = 1, name: str | None = None, metrics_port: int | None = DEFAULT_METRICS_PORT,
          device: str = "cpu", plugin: str | None = None, threads: int | None = None,
          exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S, verbose: bool = False, progress=_quiet,
          stop_event: threading.Event | None = None) -> dict:
    """Serve until SIGINT/SIGTERM (or `stop_event`), then shut down cleanly; returns the batch statistics."""
    stop = stop_event or threading.Event()
    received = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    service = TritonService(model_path, backend=backend, host=host, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                            instances=instances, name=name, device=device, plugin=plugin, threads=threads,
                            exit_timeout_s=exit_timeout_s, verbose=verbose, progress=progress)
    try:
        service.start()
        if not stop.is_set():
            progress("ready (Ctrl+C or SIGTERM stops the server)")
        died = False
        while not stop.wait(0.5):
            if not service.is_alive():
                died = True
                break
        if died:
            tail = service.log_tail(600)
            raise UserError("Triton Inference Server stopped unexpectedly" + (f": {tail!r}" if tail else ""))
        progress(f"{received[0] if received else 'stop'} received: stopping Triton (in-flight requests finish, "
                 f"at most {exit_timeout_s} s)")
        stats = {m: s.snapshot() for m, s in service.stats.items()}
        service.stop()
        progress(f"stopped. {service.summary()}")
        return stats
    finally:
        service.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------- child process

class ServerProcess:
    """`serve(...)` in a child process, as `tpdeploy serve` runs it: ready when both models are, stopped with
    SIGTERM (SIGKILL for the whole process group if it does not exit in time). Free ports by default.

        with ServerProcess("tp.onnx", max_batch=16) as server:
            client = tritonclient.http.InferenceServerClient(server.http_address)
    """

    def __init__(self, model_path: str, backend: str | None = None, host: str = DEFAULT_HOST,
                 http_port: int | None = None, grpc_port: int | None = None, metrics_port: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                 instances: int = 1, name: str | None = None, device: str = "cpu", plugin: str | None = None,
                 threads: int | None = None, exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S, log_path: str | None = None, env: dict | None = None):
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.name = model_name(model_path, name)
        self.classify_name = f"{self.name}_classify"
        self.kwargs = dict(model_path=os.path.abspath(model_path), backend=backend, host=host,
                           http_port=self.http_port, grpc_port=self.grpc_port, metrics_port=self.metrics_port,
                           max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instances=instances,
                           name=self.name, device=device, plugin=plugin, threads=threads,
                           exit_timeout_s=exit_timeout_s)
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self._own_log = log_path is None
        self.log_path = log_path or tempfile.mkstemp(prefix="tpdeploy-serve-", suffix=".log")[1]
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.killed: list[int] = []

    http_address = property(lambda self: f"{self.host}:{self.http_port}")
    http_url = property(lambda self: f"http://{self.host}:{self.http_port}")
    grpc_url = property(lambda self: f"{self.host}:{self.grpc_port}")
    metrics_url = property(lambda self: f"http://{self.host}:{self.metrics_port}/metrics")
    pid = property(lambda self: self.process.pid if self.process else None)

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def ready(self) -> bool:
        return all(_http_ok(f"{self.http_url}{path}") for path in
                   ("/v2/health/ready", f"/v2/models/{self.name}/ready", f"/v2/models/{self.classify_name}/ready"))

    def start(self) -> "ServerProcess":
        cmd = [sys.executable, "-m", "tpdeploy.serve", json.dumps(self.kwargs)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=self.env)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.returncode = self.process.returncode
                raise UserError(f"the server exited ({self.returncode}) while starting: "
                                    f"{self.log().strip()[-1500:]}")
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise UserError(f"the server was not ready after {self.startup_timeout_s:.0f} s: {self.log()[-1500:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0, group_timeout_s: float = 10.0) -> int | None:
        """Signal the server and wait for it. Whatever of its process group (tritonserver, stubs) is still
        there group_timeout_s later is killed, and its pids are kept in `self.killed` (empty after a clean stop)."""
        p = self.process
        if p is None:
            return self.returncode
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.killed.append(p.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        deadline = time.monotonic() + group_timeout_s
        while _group_members(p.pid):
            if time.monotonic() > deadline:
                self.killed += _group_members(p.pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        self.returncode = p.returncode
        self.process = None
        return self.returncode

    def close(self) -> None:
        self.stop()
        if self._own_log:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _child_main(argv: list[str]) -> int:
    """`python -m tpdeploy.serve '{"model_path": ...}'`: the child of ServerProcess (keyword arguments of serve)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        serve(**json.loads(argv[0]), progress=progress)
    except TpdeployError as e:
        progress(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
