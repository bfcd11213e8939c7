"""The TensorRT plugin library, loaded once per process.

TensorRT's `IPluginRegistry.loadLibrary` refuses a library whose creators are already registered, so a second load
of the same plugin in one process (build then run, `compare a.plan b.plan`, `bench --baseline`) would fail:
`PluginLibraries` loads each library once and refuses a second, different TokenPool library (TensorRT cannot hold two
creators of one name, version and namespace). Where the library is: `tpdeploy.tokenpool.libraries`.
"""

from __future__ import annotations

import os
import threading

from tpdeploy.artifacts.files import sha256
from tpdeploy.errors import DeviceError, UserError


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
                raise UserError(
                    f"another TokenPool plugin library ({other}) is already loaded in this process; "
                    f"TensorRT cannot register a second one ({path}): use one plugin library per process"
                )
            handle = load_library(os.path.abspath(path))
            if not handle:
                raise DeviceError(
                    f"TensorRT could not load the plugin library {path} (built for another TensorRT "
                    f"or CUDA? check `ldd {path}`)"
                )
            self._loaded[digest] = (path, handle)
            return handle

    def loaded(self) -> list[str]:
        with self._lock:
            return [p for p, _ in self._loaded.values()]


PLUGINS = PluginLibraries()  # the process's one registry of loaded plugin libraries
