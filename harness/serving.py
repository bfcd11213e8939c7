"""Test harness for `tpdeploy serve`: the server in a child process, run as an operator runs it.

Used by tests/test_serve.py and by benchmarks/serve_*.py (which put the repository on sys.path): it is test
machinery, so it lives outside the package. Loopback only; free ports chosen here.

    with ServerProcess(model_path) as server:            # `python -m tpdeploy serve MODEL ...`, ready
        client = server.http_client()
    rc = server.stop(signal.SIGINT, group=True)          # Ctrl+C: the whole process group
    server.leftovers, server.stop_seconds                # what still ran afterwards (killed), how long it took

`python harness/serving.py MODEL --fault-trigger FILE ...` serves MODEL with `FaultInjectingRunner`: the
real onnxruntime Runner, which fails like a broken device once FILE exists.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import psutil

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 180.0
READY_LINE = "ready (Ctrl+C or SIGTERM stops the server)"


def free_ports(n: int, host: str = HOST) -> list[int]:
    """`n` distinct TCP ports that are free on `host` right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def encoded_image(fmt: str = "JPEG", seed: int = 0, size: tuple[int, int] = (300, 260)) -> bytes:
    """A structured test picture (`tpdeploy.data.samples`, not noise), resized and encoded (JPEG or PNG)."""
    import io

    from PIL import Image

    from tpdeploy.data.samples import sample_images

    x = sample_images(1, 256, seed=seed)[0].transpose(1, 2, 0)
    rgb = np.clip((x * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])) * 255, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).resize(size).save(
        buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {})
    )
    return buf.getvalue()


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class ServerProcess:
    """`tpdeploy serve` in a child process (its own session, so its process group is its own)."""

    def __init__(
        self,
        model_path: str,
        name: str = "tp",
        ports: list[int] | None = None,
        max_batch: int = 8,
        max_queue_delay_us: int = 2000,
        instances: int = 1,
        fault_trigger: str | None = None,
        env: dict | None = None,
    ):
        self.model_path, self.name, self.classify_name = os.path.abspath(model_path), name, f"{name}_classify"
        self.http_port, self.grpc_port, self.metrics_port = ports or free_ports(3)
        args = [
            self.model_path,
            "--name",
            name,
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            "--max-batch",
            str(max_batch),
            "--max-queue-delay-us",
            str(max_queue_delay_us),
            "--instances",
            str(instances),
        ]
        if fault_trigger:
            self.cmd = [sys.executable, os.path.abspath(__file__), *args, "--fault-trigger", fault_trigger]
        else:
            self.cmd = [sys.executable, "-m", "tpdeploy", "serve", *args]
        self.env = env
        self.log_path = tempfile.mkstemp(prefix="tpdeploy-serve-", suffix=".log")[1]
        self.process: subprocess.Popen | None = None
        self.launched_at = 0.0
        self.returncode: int | None = None
        self.stop_seconds: float | None = None
        self.leftovers: list[str] = []
        self.shared_memory: set[str] = set()

    ports = property(lambda self: [self.http_port, self.grpc_port, self.metrics_port])
    http_address = property(lambda self: f"{HOST}:{self.http_port}")
    http_url = property(lambda self: f"http://{HOST}:{self.http_port}")
    grpc_url = property(lambda self: f"{HOST}:{self.grpc_port}")
    metrics_url = property(lambda self: f"http://{HOST}:{self.metrics_port}/metrics")
    pid = property(lambda self: self.process.pid if self.process else None)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def launch(self) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        self.launched_at = time.monotonic()
        return self

    def ready(self) -> bool:
        return all(
            http_status(f"{self.http_url}{path}") == 200
            for path in ("/v2/health/ready", f"/v2/models/{self.name}/ready", f"/v2/models/{self.classify_name}/ready")
        )

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> ServerProcess:
        """Until Triton says ready and the server has said so too (after its own end-to-end check)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({self.process.returncode}) while starting:\n{self.log()[-3000:]}"
                )
            if self.ready() and READY_LINE in self.log():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s:\n{self.log()[-3000:]}")

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{text!r} never appeared in the log:\n{self.log()[-3000:]}")
            time.sleep(0.02)

    def processes(self) -> list[psutil.Process]:
        """The live processes of the server's session: it, tritonserver, the stubs and their helpers."""
        out = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) == self.pid and alive(p):
                    out.append(p)
        return out

    def mapped_shared_memory(self) -> set[str]:
        """The /dev/shm files the server's processes have mapped now."""
        names = set()
        for p in self.processes():
            with contextlib.suppress(psutil.Error, OSError):
                names |= {os.path.basename(m.path) for m in p.memory_maps() if m.path.startswith("/dev/shm/")}
        return names

    def stop(self, sig: int = signal.SIGTERM, group: bool = False, timeout_s: float = 30.0) -> int | None:
        """Send `sig` to the server (or, `group`, to its whole process group as a terminal's Ctrl+C does) and wait.
        Afterwards `leftovers` names what of its session still ran (then killed) and `shared_memory` what of the
        shared memory it had mapped is still there (then removed); both are empty after a clean stop."""
        p = self.process
        if p is None:
            return self.returncode
        if p.poll() is None:
            self.shared_memory = self.mapped_shared_memory()
            t0 = time.monotonic()
            if group:
                os.killpg(p.pid, sig)
            else:
                p.send_signal(sig)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.stop_seconds = time.monotonic() - t0
        self.returncode = p.returncode
        time.sleep(0.5)  # what the server killed at the very end may take a moment to be gone
        left = self.processes()
        self.leftovers = [f"{q.pid} {q.name()}" for q in left]
        for q in left:
            with contextlib.suppress(psutil.Error):
                q.kill()
        self.shared_memory = {n for n in self.shared_memory if os.path.exists(f"/dev/shm/{n}")}
        for n in self.shared_memory:
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{n}")
        self.process = None
        return self.returncode

    def http_client(self):
        import tritonclient.http as http

        return http.InferenceServerClient(self.http_address, connection_timeout=60, network_timeout=60)

    def grpc_client(self):
        import tritonclient.grpc as grpc

        return grpc.InferenceServerClient(self.grpc_url)

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)

    def __enter__(self):
        try:
            return self.launch().wait_ready()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()


def inference_counts(server: ServerProcess, model: str) -> tuple[int, int]:
    """(inferences, executions) of `model` so far, from Triton's statistics API."""
    client = server.http_client()
    try:
        stats = client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()
    return int(stats["inference_count"]), int(stats["execution_count"])


# ---------------------------------------------------------------------------------------------- fault injection


def fault_injecting_runner(model_path: str, trigger: str):
    """The onnxruntime Runner on `model_path`, failing with DeviceError (as a broken GPU would) once `trigger`
    exists."""
    from tpdeploy import runtime
    from tpdeploy.errors import DeviceError
    from tpdeploy.runtime.base import Runner

    class FaultInjectingRunner(Runner):
        def __init__(self, inner):
            self.inner, self.spec, self.recipe, self.backend = inner, inner.spec, inner.recipe, inner.backend

        def _infer(self, images: np.ndarray) -> np.ndarray:
            if os.path.exists(trigger):
                raise DeviceError("injected device fault (CUDA error: an illegal memory access was encountered)")
            return self.inner._infer(images)

        def close(self) -> None:
            self.inner.close()

    return FaultInjectingRunner(runtime.load(model_path))


def _main(argv: list[str]) -> int:
    """`tpdeploy serve`'s options, with the model served by fault_injecting_runner."""
    from tpdeploy.errors import TpdeployError
    from tpdeploy.serving.lifecycle import serve
    from tpdeploy.serving.settings import ServeSettings

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--fault-trigger", required=True)
    for option in (
        "--http-port",
        "--grpc-port",
        "--metrics-port",
        "--max-batch",
        "--max-queue-delay-us",
        "--instances",
    ):
        ap.add_argument(option, type=int, required=True)
    ap.add_argument("--name", required=True)
    a = ap.parse_args(argv)
    settings = ServeSettings(
        a.model,
        name=a.name,
        http_port=a.http_port,
        grpc_port=a.grpc_port,
        metrics_port=a.metrics_port,
        max_batch=a.max_batch,
        max_queue_delay_us=a.max_queue_delay_us,
        instances=a.instances,
    )

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        serve(settings, progress=progress, runner=fault_injecting_runner(a.model, a.fault_trigger))
    except TpdeployError as e:
        progress(f"error: {e}")
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
