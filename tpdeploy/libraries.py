"""Finding the native libraries that CMake builds under plugins/ (kernels, TensorRT plugin)."""
from __future__ import annotations

import os
from pathlib import Path

from tpdeploy.errors import TpdeployError

_PACKAGE = Path(__file__).resolve().parent


def find_library(filename: str, env_var: str, explicit: str | None = None) -> str | None:
    """The first of: `explicit` (must exist), $env_var, <repo>/build/plugins/<filename>, one beside the package."""
    if explicit is not None:
        if not os.path.isfile(explicit):
            raise TpdeployError(f"library not found: {explicit}")
        return explicit
    for candidate in (os.environ.get(env_var), _PACKAGE.parent / "build" / "plugins" / filename, _PACKAGE / filename):
        if candidate and os.path.isfile(candidate):
            return str(candidate)
    return None
