"""The TokenPool native libraries CMake builds under plugins/ (the CUDA kernels, the TensorRT plugin): where they are.

One search order everywhere (build-engine, the TensorRT runtime, bench, serve, triton-repo, the kernels from
PyTorch): an explicit path (must exist), the environment variable, the engine's own folder, <repo>/build/plugins,
the package folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from tpdeploy.errors import UserError

PLUGIN_LIBRARY, PLUGIN_ENV = "libtpdeploy_plugin.so", "TPDEPLOY_PLUGIN"
KERNELS_LIBRARY, KERNELS_ENV = "libtokenpool_kernels.so", "TPDEPLOY_KERNELS"
_PACKAGE = Path(__file__).resolve().parent.parent


def find_library(filename: str, env_var: str, explicit: str | None = None, beside: str | None = None) -> str | None:
    """The first of: `explicit` (must exist), $env_var, the folder of `beside`, <repo>/build/plugins, the package."""
    if explicit is not None:
        if not os.path.isfile(explicit):
            raise UserError(f"library not found: {explicit}")
        return explicit
    folder = os.path.dirname(os.path.abspath(beside)) if beside else None
    candidates = (
        os.environ.get(env_var),
        folder and os.path.join(folder, filename),
        _PACKAGE.parent / "build" / "plugins" / filename,
        _PACKAGE / filename,
    )
    return next((str(c) for c in candidates if c and os.path.isfile(c)), None)


def find_plugin(explicit: str | None = None, beside: str | None = None, required: bool = True) -> str | None:
    path = find_library(PLUGIN_LIBRARY, PLUGIN_ENV, explicit, beside)
    if path is None and required:
        raise UserError(
            f"TokenPool plugin library {PLUGIN_LIBRARY} not found: build it with `make plugins` "
            f"(needs TensorRT's headers), pass --plugin PATH or set {PLUGIN_ENV}"
        )
    return path
