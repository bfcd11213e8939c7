"""Output files appear whole or not at all: write to a temporary name beside the target, then rename."""
from __future__ import annotations

import contextlib
import os
import tempfile

from tpdeploy.errors import TpdeployError


@contextlib.contextmanager
def atomic_output(path: str):
    """Yields a temporary path in the target's folder; renames it to `path` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise TpdeployError(f"cannot write {path}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
    except OSError as e:
        raise TpdeployError(f"cannot write {path}: {e.strerror}") from None
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise TpdeployError(f"cannot write {path}: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
