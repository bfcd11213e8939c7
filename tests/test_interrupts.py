"""Ctrl+C (SIGINT) or SIGTERM at any stage of an export leaves neither the output nor a temporary file."""

import os
import signal
import subprocess
import sys
import time

import pytest

# (the progress line the signal follows, seconds after it): tracing takes seconds, and a signal deep inside PyTorch's
# exporter once came back as its TorchExportError (exit 1) or aborted the process from C++
MOMENTS = (("tracing", 0.0), ("tracing", 1.5), ("tracing", 3.0), ("writing", 0.0), ("validating", 0.0))


@pytest.mark.slow
@pytest.mark.parametrize("stage,delay", MOMENTS, ids=[f"{s}+{d:g}s" for s, d in MOMENTS])
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_export_leaves_nothing(tmp_path, stage, delay, sig, code):
    p = subprocess.Popen(
        [sys.executable, "-m", "tpdeploy", "export", "--arch", "deit_tiny", "--method", "none", "-o", "dense.onnx"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    for line in p.stderr:
        seen.append(line)
        if line.startswith(stage):
            time.sleep(delay)
            p.send_signal(sig)
            break
    rest = p.stderr.read()
    p.wait(timeout=120)
    stderr = "".join(seen) + rest
    assert any(line.startswith(stage) for line in seen), stderr
    assert p.returncode == code, stderr
    assert "Traceback" not in stderr
    assert [line for line in rest.splitlines() if line.startswith("error:")] == [
        f"error: {'interrupted' if sig == signal.SIGINT else 'terminated (SIGTERM)'}"
    ]
    assert os.listdir(tmp_path) == []
