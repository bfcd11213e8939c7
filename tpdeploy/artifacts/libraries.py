"""The native libraries CMake builds under plugins/: finding them, and loading the TensorRT plugin library once
per process.

One search order everywhere (build-engine, the TensorRT runtime, bench, serve, triton-repo):
an explicit path (must exist), the environment variable, the engine's own folder, <repo>/build/plugins,
the package folder.

TensorRT's `IPluginRegistry.loadLibrary` refuses a library whose creators are already registered, so a
second load of the same plugin in one process (build then run, `compare a.plan b.plan`, `bench --baseline`)
would fail: `PluginLibraries` loads each library once and refuses a second, different TokenPool library
(TensorRT cannot hold two creators of one name, version and namespace).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from tpdeploy.artifacts.files import sha256
from tpdeploy.errors import DeviceError, UserError

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
    candidates = (os.environ.get(env_var), folder and os.path.join(folder, filename),
                  _PACKAGE.parent / "build" / "plugins" / filename, _PACKAGE / filename)
    return next((str(c) for c in candidates if c and os.path.isfile(c)), None)


def find_plugin(explicit: str | None = None, beside: str | None = None, required: bool = True) -> str | None:
    path = find_library(PLUGIN_LIBRARY, PLUGIN_ENV, explicit, beside)
    if path is None and required:
        raise UserError(f"TokenPool plugin library {PLUGIN_LIBRARY} not found: build it with `make plugins` "
                        f"(needs TensorRT's headers), pass --plugin PATH or set {PLUGIN_ENV}")
    return path


class PluginLibraries:
    """Loads TensorRT plugin libraries at most once per process. `load_library(path)` is TensorRT's
    `get_plugin_registry().load_library`, returning a handle or None."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[str, object]] = {}  # sha256 -> (path, handle)

    def load(self, path: str, load_library) -> object:
        digest = sha256(path)
        with self._lock:
            if digest in self._loaded:
                return self._loaded[digest][1]  # the same library (or a byte-identical copy) is already in
            if self._loaded:
                other = next(iter(self._loaded.values()))[0]
                raise UserError(f"another TokenPool plugin library ({other}) is already loaded in this process; "
                                f"TensorRT cannot register a second one ({path}): use one plugin library per process")
            handle = load_library(os.path.abspath(path))
            if not handle:
                raise DeviceError(f"TensorRT could not load the plugin library {path} (built for another TensorRT "
                                  f"or CUDA? check `ldd {path}`)")
            self._loaded[digest] = (path, handle)
            return handle

    def loaded(self) -> list[str]:
        with self._lock:
            return [p for p, _ in self._loaded.values()]


PLUGINS = PluginLibraries()  # the process's one registry of loaded plugin libraries
