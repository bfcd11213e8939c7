"""`serve(settings)`: what `tpdeploy serve` runs. Serves until SIGINT or SIGTERM, which may come at any moment,
start-up included; then stops cleanly (in-flight requests finish; nothing left running) and returns.

A backend that breaks while serving (a fault, and then the warm-up batch fails too) stops the server as well:
readiness turns red, in-flight requests finish, and `serve` raises DeviceError (the command exits 3), so a
supervisor restarts it.
"""

from __future__ import annotations

import signal
import threading

from tpdeploy.errors import DeviceError
from tpdeploy.runtime.base import Runner
from tpdeploy.serving.service import StartCancelled, TritonService
from tpdeploy.serving.settings import ServeSettings

POLL_S = 0.2


def _quiet(msg: str) -> None:
    pass


def serve(settings: ServeSettings, progress=_quiet, runner: Runner | None = None) -> dict:
    """Serve until SIGINT/SIGTERM; returns the requests served per model (see handlers.BatchStats)."""
    service = TritonService(settings, runner=runner, progress=progress)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum, _frame):
        if not stop.is_set():  # a second signal while stopping changes nothing
            received.append(signal.Signals(signum).name)
            stop.set()
            service.request_stop()

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    try:
        try:
            service.start()
        except StartCancelled:
            progress(f"{received[0]} received while starting: stopped")
            return {}
        progress("ready (Ctrl+C or SIGTERM stops the server)")
        problem = None
        while not stop.wait(POLL_S) and not (problem := service.problem()):
            pass
        if problem:
            progress(f"stopping: {problem}")
        else:
            progress(
                f"{received[0]} received: stopping (readiness off; in-flight requests finish, at most "
                f"{settings.exit_timeout_s} s)"
            )
        stats = {
            settings.name: service.handlers.images_stats.snapshot(),
            settings.classify_name: service.handlers.classify_stats.snapshot(),
        }
        service.stop()
        progress(f"stopped. {service.summary()}")
        if problem:
            raise DeviceError(problem)
        return stats
    finally:
        service.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
