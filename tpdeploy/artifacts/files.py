"""Writing files safely: whole or not at all, never over an input, with the permissions any file the user
creates gets (their umask), and checked before the slow work starts.

    check_output(path, inputs=[checkpoint])          # at the start of a command: fails fast
    with atomic_output(path, inputs=[...]) as tmp:   # write tmp; it is renamed to path only on success
        ...

An interrupted command (Ctrl+C, or SIGTERM once the command line turned it into an exception) leaves neither
the output nor the temporary file: the rename happens only when the block ends normally, and the temporary
file is removed on every other way out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading

from tpdeploy.errors import UserError

_umask_lock = threading.Lock()


def umask() -> int:
    """The process's umask (reading it means setting it, so briefly and under a lock)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def user_mode(executable: bool = False) -> int:
    """The mode `open()` would give a new file (0o666, or 0o777 for executables and folders, minus the umask)."""
    return (0o777 if executable else 0o666) & ~umask()


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str, inputs=(), what: str = "output") -> None:
    """Refuse, before any work, an output that cannot be written or that is one of the command's inputs."""
    if not path:
        raise UserError(f"the {what} path is empty")
    for given in inputs:
        if given and os.path.exists(path) and _same_file(path, given):
            raise UserError(f"the {what} {path} is also an input ({given}): refusing to write over it")
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: folder {folder} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK) and not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {path}: permission denied")


@contextlib.contextmanager
def atomic_output(path: str, inputs=(), executable: bool = False):
    """Yields a temporary path beside `path`; renames it to `path` (with the user's permissions) only if the
    block succeeds, and removes it otherwise."""
    check_output(path, inputs)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, user_mode(executable))  # mkstemp made it 0600
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: str, text: str, inputs=()) -> None:
    with atomic_output(path, inputs) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
