"""TritonService: a Runner's two models (see handlers.py) on NVIDIA Triton Inference Server, through PyTriton.

PyTriton (`pip install nvidia-pytriton`) ships the `tritonserver` binary and runs it as a child process; Triton does
the HTTP/gRPC endpoints, health, Prometheus metrics and the dynamic batching, and hands each batch to a handler in
this process. One Runner serves every instance of both models (it is thread-safe): one copy of the weights (and,
with TensorRT, of the engine), and on a CPU one onnxruntime thread pool instead of N competing ones.

What an orchestrator can rely on, and how (PyTriton 0.7 does none of it by default):

- Readiness means "answers requests". The models are written into a local model store before tritonserver starts
  (PyTriton's `local_model_store` policy), so Triton loads them at start-up and opens no endpoint before they are
  loaded: /v2/health/ready cannot answer 200 for a server without models (PyTriton's default loads them through
  the API after the server is up, which left ~2-7 s of "ready" with no model). The handlers here connect right
  after; a request in between waits for them instead of failing. Before `start()` returns, one request per model
  goes through Triton end to end.
- Statuses: the handlers raise `RequestRefused` (HTTP 400 / INVALID_ARGUMENT) or `RequestFailed` (500 / INTERNAL);
  `triton_stub/tpdeploy_model.py`, installed beside PyTriton's proxy in each model folder, turns them into
  per-request errors with one-line messages (PyTriton alone sends 500 with the Python traceback).
- Stopping at any moment: `request_stop()` (a signal handler may call it) makes a `start()` in progress give up at
  its next step, the wait for tritonserver included. `stop()` first signals tritonserver (readiness turns red at
  once; in-flight requests finish), then unloads the models itself: Triton's HTTP front-end waits for its
  keep-alive connections until the exit timeout, and under steady load would reach it with the models still loaded
  and exit "immediately", orphaning the Python-backend stubs (which then live on, holding their shared memory).
  Whatever of tritonserver and its stubs is still alive afterwards is killed (and logged), so nothing is left.
- A port is checked free with SO_REUSEADDR, as Triton binds it: connections in TIME_WAIT from the last run do
  not block a restart.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
import time

import numpy as np

from tpdeploy import runtime
from tpdeploy.errors import DeviceError, TpdeployError, UserError, one_line
from tpdeploy.optional import lazy_import
from tpdeploy.runtime.base import Runner
from tpdeploy.serving import processes, pytriton_glue
from tpdeploy.serving.handlers import TOP_K, ModelHandlers
from tpdeploy.serving.settings import ServeSettings

LOG = logging.getLogger("tpdeploy.serve")

STUB_MODEL = os.path.join(os.path.dirname(__file__), "triton_stub", "tpdeploy_model.py")
# PyTriton protects these Triton endpoints with a token it generates; statistics stay readable, as in Triton
PROTECTED_ENDPOINTS = ["shared-memory", "model-repository", "trace", "logging"]
READY_POLL_S = 0.05
SERVING_NEEDS = ("PIL.Image", "tritonclient.http", "tritonclient.grpc")


def _quiet(msg: str) -> None:
    pass


class StartCancelled(Exception):
    """`request_stop()` was called while the service was starting: it stopped instead."""


# ---------------------------------------------------------------------------------------------- the machine


def check_port_free(host: str, port: int, what: str) -> None:
    """UserError unless `port` can be bound on `host`; SO_REUSEADDR, like Triton's own listeners, so sockets in
    TIME_WAIT (a restart right after a stop that served traffic) do not count, while a listening one does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def _png(size: int = 32) -> bytes:
    """A small grey PNG: the classify model's warm-up request."""
    image = lazy_import("PIL.Image", "serving")
    buf = io.BytesIO()
    image.new("RGB", (size, size), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- the service


class TritonService:
    """The settings' model (or `runner`, already loaded) served by Triton from this process; `start()`/`stop()` or
    `with`. `problem()` says why it can no longer serve (a broken backend, tritonserver gone), else None."""

    def __init__(self, settings: ServeSettings, runner: Runner | None = None, progress=_quiet):
        self.settings = settings
        self.progress = progress
        self.runner = runner
        self._own_runner = runner is None
        self.handlers: ModelHandlers | None = None
        self.max_batch = settings.max_batch
        self._cancel = threading.Event()
        self._broken = threading.Event()
        self._triton = None
        self._workspace_dir: str | None = None
        self._processes: dict[int, str | None] = {}  # pid: start time
        self._stop_lock = threading.Lock()
        self._started = False

    # -- start
    def request_stop(self) -> None:
        """Ask a `start()` in progress to give up at its next step (safe from a signal handler)."""
        self._cancel.set()

    def _give_up_if_asked(self) -> None:
        if self._cancel.is_set():
            raise StartCancelled()

    def start(self) -> TritonService:
        if self._started:
            return self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self._started = True
        return self

    def _start(self) -> None:
        s = self.settings
        triton_mod, mc, Workspace = pytriton_glue.pytriton()
        for module in SERVING_NEEDS:  # all of the serve extra, before anything starts (Pillow: the classify model)
            lazy_import(module, "serving")
        for what, port in s.ports:
            check_port_free(s.host, port, what)
        if self.runner is None:
            self.progress(f"loading {s.model_path} ({s.backend or runtime.default_backend(s.model_path)}, {s.device})")
            self.runner = runtime.load(
                s.model_path,
                backend=s.backend,
                device=s.device,
                plugin=s.plugin,
                threads=s.threads,
                checkpoint=s.checkpoint,
            )
        self._give_up_if_asked()
        r = self.runner
        if r.max_batch is not None and s.max_batch > r.max_batch:
            self.progress(
                f"note: {s.model_path} takes at most batch {r.max_batch}: max batch {s.max_batch} -> {r.max_batch}"
            )
            self.max_batch = r.max_batch
        self.handlers = ModelHandlers(r, s.name, s.max_image_pixels, on_broken=self._on_broken)  # warms it up
        self._give_up_if_asked()

        self.progress("starting Triton Inference Server (PyTriton)")
        self._workspace_dir = tempfile.mkdtemp(prefix="tpdeploy-triton-")
        workspace = Workspace(os.path.join(self._workspace_dir, "workspace"))  # PyTriton deletes it when stopped
        uses_gpu = r.capabilities.on_gpu
        config = triton_mod.TritonConfig(
            http_address=s.host,
            http_port=s.http_port,
            grpc_address=s.host,
            grpc_port=s.grpc_port,
            allow_metrics=bool(s.metrics_port),
            allow_gpu_metrics=None if uses_gpu else False,
            metrics_address=s.host if s.metrics_port else None,
            metrics_port=s.metrics_port or None,
            exit_timeout_secs=s.exit_timeout_s,
            log_verbose=1 if s.verbose else None,
            log_file=None if s.verbose else self._log_path(),
        )
        if not s.verbose:
            logging.getLogger("pytriton").setLevel(logging.ERROR)
        self._triton = pytriton_glue.triton_class()(
            self._wait_for_server,
            config=config,
            workspace=workspace,
            triton_lifecycle_policy=triton_mod.TritonLifecyclePolicy(local_model_store=True),
            security_config=triton_mod.TritonSecurityConfig(restricted_endpoints=list(PROTECTED_ENDPOINTS)),
        )
        self._bind(mc, workspace.model_store_path)
        try:
            with python_library_on_ld_path():
                self._triton.run()
        except (StartCancelled, TpdeployError):
            raise
        except Exception as e:  # PyTriton's own failures, in one line with the server's log
            raise UserError(f"Triton Inference Server did not start: {one_line(e)}{self._log_hint()}") from None
        server = self._server_pid()
        if server is not None:  # tritonserver, the stubs and their helpers, to make sure of in stop()
            self._processes = {p: processes.start_time(p) for p in [server, *processes.descendants(server)]}
        self._give_up_if_asked()
        self._self_check()
        self.handlers.reset_stats()  # what clients asked for, from now on
        self._describe()

    def _bind(self, mc, model_store) -> None:
        s, r, c = self.settings, self.runner, self.handlers.num_classes
        size, k = r.image_size, min(TOP_K, self.handlers.num_classes)
        self._triton.bind(
            model_name=s.name,
            infer_func=[self.handlers.infer_images] * s.instances,
            inputs=[mc.Tensor(name="images", dtype=np.float32, shape=(3, size, size))],
            outputs=[mc.Tensor(name="logits", dtype=np.float32, shape=(c,))],
            config=mc.ModelConfig(
                batching=True,
                max_batch_size=self.max_batch,
                batcher=mc.DynamicBatcher(max_queue_delay_microseconds=s.max_queue_delay_us),
            ),
            strict=True,
        )
        self._triton.bind(
            model_name=s.classify_name,
            infer_func=[self.handlers.classify] * s.instances,
            inputs=[mc.Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[
                mc.Tensor(name="classes", dtype=np.int64, shape=(k,)),
                mc.Tensor(name="scores", dtype=np.float32, shape=(k,)),
            ],
            config=mc.ModelConfig(batching=True, max_batch_size=self.max_batch, batcher=None),
            strict=True,
        )
        for name in (s.name, s.classify_name):  # our statuses on top of PyTriton's proxy (module docstring)
            folder = model_store / name
            version = next(p for p in folder.iterdir() if p.is_dir())
            shutil.copyfile(STUB_MODEL, version / os.path.basename(STUB_MODEL))
            with open(folder / "config.pbtxt", "a", encoding="utf-8") as f:
                f.write(f'default_model_filename: "{os.path.basename(STUB_MODEL)}"\n')

    def _wait_for_server(self, triton_alive) -> None:
        """Until Triton answers ready; gives up as soon as tritonserver exits or a stop is requested."""
        client = self._http_client(timeout=2.0)
        try:
            while True:
                self._give_up_if_asked()
                if not triton_alive():
                    raise UserError(f"Triton Inference Server exited while loading the models{self._log_hint()}")
                with contextlib.suppress(Exception):
                    if client.is_server_ready():
                        return
                time.sleep(READY_POLL_S)
        finally:
            client.close()

    def _self_check(self) -> None:
        """One request per model through Triton, end to end, before anyone is told the server is up."""
        import tritonclient.http as http

        s, r = self.settings, self.runner
        client = self._http_client(timeout=60.0)
        try:
            images = http.InferInput("images", [1, 3, r.image_size, r.image_size], "FP32")
            images.set_data_from_numpy(np.zeros((1, 3, r.image_size, r.image_size), np.float32))
            client.infer(s.name, [images])
            blob = http.InferInput("image", [1, 1], "BYTES")
            blob.set_data_from_numpy(np.array([[_png()]], dtype=object))
            client.infer(s.classify_name, [blob])
        except Exception as e:  # tritonclient raises its own type and socket errors
            raise DeviceError(f"the served models do not answer: {one_line(e)}{self._log_hint()}") from None
        finally:
            client.close()

    def _http_client(self, timeout: float):
        http = lazy_import("tritonclient.http", "serving")
        s = self.settings
        return http.InferenceServerClient(
            f"{s.host}:{s.http_port}", connection_timeout=timeout, network_timeout=timeout
        )

    def _describe(self) -> None:
        s, r, c = self.settings, self.runner, self.handlers.num_classes
        size = r.image_size
        self.progress(
            f"serving {s.name!r}: images FP32 [-1, 3, {size}, {size}] -> logits FP32 [-1, {c}] "
            f"(dynamic batching: max batch {self.max_batch}, max queue delay {s.max_queue_delay_us} us)"
        )
        self.progress(
            f"serving {s.classify_name!r}: image BYTES [-1, 1] (JPEG/PNG/WebP) -> top-{min(TOP_K, c)} "
            f"classes INT64, scores FP32; preprocessing {r.data_config.describe()}"
        )
        self.progress(f"  {r.describe()}, {s.instances} instance(s) per model")
        self.progress(f"  HTTP    {s.http_url}  (health: {s.http_url}/v2/health/ready)")
        self.progress(f"  gRPC    {s.grpc_url}")
        if s.metrics_url:
            self.progress(f"  metrics {s.metrics_url}")

    # -- while serving
    def _on_broken(self, reason: str) -> None:
        self._broken.set()

    def problem(self) -> str | None:
        """Why the service cannot go on serving, or None."""
        if self._broken.is_set():
            return f"the backend no longer answers: {self.handlers.broken}"
        if self._started and self._triton is not None and not self._triton.is_alive():
            return f"Triton Inference Server stopped unexpectedly{self._log_hint()}"
        return None

    def summary(self) -> str:
        if self.handlers is None:
            return "no request served"
        s = self.settings
        return (
            f"{s.name}: {self.handlers.images_stats.describe()}; "
            f"{s.classify_name}: {self.handlers.classify_stats.describe()}"
        )

    # -- stop
    def stop(self) -> None:
        """Stop Triton (in-flight requests finish, up to the exit timeout), its stubs and the Runner; idempotent."""
        with self._stop_lock:
            triton, self._triton = self._triton, None
            if triton is not None:
                self._stop_triton(triton)
            if self.runner is not None and self._own_runner:
                self.runner.close()
            self.runner = None
            if self._workspace_dir:
                shutil.rmtree(self._workspace_dir, ignore_errors=True)
                self._workspace_dir = None
            self._started = False

    def _server_pid(self) -> int | None:
        """Our tritonserver: a child process of this one, run from our workspace."""
        for pid in processes.descendants(os.getpid()):
            binary = processes.cmdline(pid)[0]
            if self._workspace_dir.encode() in binary and os.path.basename(binary).startswith(b"tritonserver"):
                return pid
        return None

    def _stop_triton(self, triton) -> None:
        server = self._server_pid()
        if server is not None:
            deadline = time.monotonic() + 60  # still loading the models: until its handlers are in place
            while (
                not processes.catches(server, signal.SIGINT)
                and processes.proc_stat(server)
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):  # readiness turns red; HTTP drains, then in-flight
                os.kill(server, signal.SIGINT)
            self._unload_models(triton)
        try:
            triton.stop()  # waits for tritonserver, then closes the handlers and deletes the workspace
        except Exception as e:  # stopping must not hide why we stop
            LOG.warning("stopping Triton: %s", one_line(e))
        # PyTriton may be stopping from its own thread (tritonserver exited first): wait for it to finish
        deadline = time.monotonic() + self.settings.exit_timeout_s + 5
        while os.path.exists(os.path.join(self._workspace_dir, "workspace")) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """A tritonserver that died (a crash, SIGKILL) leaves its Python-backend stubs, or their helper processes,
        running for good, with their shared memory: kill whatever still runs from our workspace (tritonserver, the
        stubs) or of the processes seen at start-up, and remove the stubs' shared-memory regions. Python's resource
        trackers are spared: once the processes they track are gone they unlink what those left, and exit."""
        started = [p for p in processes.live_processes() if self._workspace_dir.encode() in processes.cmdline(p)[0]]
        seen = [p for p, t in self._processes.items() if processes.start_time(p) == t]
        left = [
            p
            for p in dict.fromkeys(started + seen + [c for p in started for c in processes.descendants(p)])
            if b"resource_tracker" not in b" ".join(processes.cmdline(p))
        ]
        if not left:
            return
        LOG.warning("killing what Triton left running: %s", ", ".join(f"{p} ({processes.comm(p)})" for p in left))
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)  # the stubs ignore SIGTERM
        for pid in started:
            args = processes.cmdline(pid)
            if os.path.basename(args[0]) == b"triton_python_backend_stub" and len(args) > 2:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(b"/dev/shm", os.path.basename(args[2])))

    def _unload_models(self, triton) -> None:
        """Unload both models while Triton drains its HTTP connections (module docstring: why)."""
        grpc = lazy_import("tritonclient.grpc", "serving")
        s = self.settings
        client = grpc.InferenceServerClient(s.grpc_url)
        try:
            headers = pytriton_glue.auth_headers(triton, "grpc")
            for name in (s.name, s.classify_name):
                client.unload_model(name, headers=headers, client_timeout=s.exit_timeout_s)
        except Exception as e:  # a server that is already gone has nothing to unload
            LOG.debug("unloading the models: %s", one_line(e))
        finally:
            client.close()

    def _log_path(self) -> str:
        return os.path.join(self._workspace_dir, "tritonserver.log")

    def _log_hint(self) -> str:
        """The end of Triton's log (and the libpython hint when that is the cause), for an error message."""
        if not self._workspace_dir:
            return ""
        try:
            with open(self._log_path(), encoding="utf-8", errors="replace") as f:
                tail = f.read()[-400:]
        except OSError:
            return ""
        hint = ""
        if "_recursion_count" in tail or "libpython" in tail:
            hint = (
                f" (the Python-backend stub loaded another libpython than this interpreter's; put "
                f"{sysconfig.get_config_var('LIBDIR')} on LD_LIBRARY_PATH)"
            )
        return f"{hint}; server log ends: {tail!r}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
