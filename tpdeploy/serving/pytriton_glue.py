"""The one module that touches PyTriton's private API (PyTriton 0.7): everything else of tpdeploy uses PyTriton's
public classes only, so a PyTriton upgrade that breaks these overrides breaks them here.

- `Triton._wait_for_server` / `_is_alive_impl`: PyTriton's own wait polls for 120 s even after tritonserver has
  exited and cannot be interrupted; `TritonService` waits instead, giving up when tritonserver exits or a stop is
  requested.
- `Triton._prepare_triton_inference_server`: the folder holding the tritonserver binary, which is wrapped so that
  it starts with SIGINT and SIGTERM ignored (below).
- `pytriton.client.auth.create_auth_headers` and `Triton.get_access_token`: the token PyTriton protects Triton's
  model-repository endpoint with, to unload the models while stopping.
"""

from __future__ import annotations

import functools
import os

from tpdeploy.optional import lazy_import


def pytriton():
    """PyTriton's public modules: (pytriton.triton, pytriton.model_config, its Workspace class)."""
    triton = lazy_import("pytriton.triton", "serving")
    model_config = lazy_import("pytriton.model_config", "serving")
    workspace = lazy_import("pytriton.utils.workspace", "serving")
    return triton, model_config, workspace.Workspace


@functools.cache
def triton_class():
    triton_mod = lazy_import("pytriton.triton", "serving")

    class Triton(triton_mod.Triton):
        """PyTriton's Triton, waiting for the server the caller's way, its binary started with signals ignored."""

        def __init__(self, wait_for_server, **kwargs):
            """`wait_for_server(is_alive)`: returns once the server answers; `is_alive()` says whether it runs."""
            super().__init__(**kwargs)
            self._wait = wait_for_server

        def _wait_for_server(self) -> None:
            self._wait(self._is_alive_impl)

        def _prepare_triton_inference_server(self):
            path = super()._prepare_triton_inference_server()
            _start_with_signals_ignored(path / "bin" / "tritonserver")
            return path

    return Triton


# tritonserver installs its SIGINT/SIGTERM handlers only once its models are loaded; until then a Ctrl+C or a
# supervisor's SIGTERM to the whole process group kills it on the spot, and its Python-backend stubs live on for
# good. Started with both ignored (dispositions survive exec), it and its stubs ignore them until its handlers are
# in place; `TritonService.stop()` waits for those before it signals tritonserver.
_WRAPPER = """#!/bin/sh
trap '' INT TERM
exec "$0.bin" "$@"
"""


def _start_with_signals_ignored(binary) -> None:
    os.rename(binary, f"{binary}.bin")
    with open(binary, "w", encoding="ascii") as f:
        f.write(_WRAPPER)
    os.chmod(binary, 0o755)


def auth_headers(triton, protocol: str) -> dict:
    """The headers that authorise a client on PyTriton's protected endpoints (unloading models)."""
    from pytriton.client.auth import create_auth_headers

    return create_auth_headers(triton.get_access_token(), protocol)
