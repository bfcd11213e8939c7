"""Ctrl+C and SIGTERM inside code that cannot take an exception at any moment.

PyTorch's exporter runs Python callbacks from C++: a KeyboardInterrupt raised in one of them can come back as the
exporter's own error (TorchExportError: exit 1 instead of 130) or abort the process from a C++ destructor
("terminate called after throwing an instance of 'python_error'"). `deferred_signals()` holds SIGINT and SIGTERM
while such a block runs and delivers the first one received as soon as it ends, to the handlers that were there
(the command line's: exit 130 or 143, nothing left behind).
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_signals(on_hold=lambda signum: None):
    """Hold SIGINT and SIGTERM during the block (`on_hold(signum)` is told at once), then deliver the first one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum, frame):
        if not received:
            received.append(signum)
            on_hold(signum)

    previous = {s: signal.signal(s, hold) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])
