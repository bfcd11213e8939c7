"""Writing files safely: whole or not at all, never over an input, with the permissions any file the user
creates gets (their umask), and checked before the slow work starts.

    check_output(path, inputs=[checkpoint])          # at the start of a command: fails fast
    with atomic_output(path, inputs=[...]) as tmp:   # write tmp; it is renamed to path only on success
        ...
    check_output_folder(folder, inputs=[data])       # a command that writes several files into a folder

The one rule for inputs: a command knows what it reads (files and folders, with what they imply: an engine's
sidecar, a devkit's meta.mat, a shipped preset), and refuses an output that is one of them, is inside one of them,
or contains one of them.

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

from tpdeploy.errors import InvalidArgumentError, UserError

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


def _resolved(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def input_conflict(output: str, given: str | None) -> str | None:
    """How `output` would touch the input `given` (a file or folder): "is", "is inside" or "contains"; None if not.
    A missing input touches nothing (it is its command's own error)."""
    if not given or not os.path.exists(given):
        return None
    out, inp = _resolved(output), _resolved(given)
    if out == inp or (os.path.exists(output) and _same_file(output, given)):
        return "is"
    if out.startswith(inp.rstrip(os.sep) + os.sep):
        return "is inside"
    if inp.startswith(out.rstrip(os.sep) + os.sep):
        return "contains"
    return None


def check_apart_from_inputs(path: str, inputs=(), what: str = "output") -> None:
    """Refuse an output that is, is inside, or contains one of the command's inputs."""
    for given in inputs:
        relation = input_conflict(path, given)
        if relation == "is":
            raise UserError(f"the {what} {path} is also an input ({given}): refusing to write over it")
        if relation == "is inside":
            raise UserError(f"the {what} {path} is inside the input {given}: refusing to write into an input")
        if relation == "contains":
            raise UserError(f"the {what} {path} contains the input {given}: refusing to write over it")


def _output_path(path, inputs, what: str, kind: str) -> str:
    """The output's path as a string, once it is a non-empty path apart from every input."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"the {what} must be a {kind} path, got {path!r}")
    path = os.fspath(path)
    if not path:
        raise UserError(f"the {what} path is empty")
    check_apart_from_inputs(path, inputs, what)
    return path


def check_output(path: str, inputs=(), what: str = "output") -> None:
    """Refuse, before any work, an output file that cannot be written or that is, is inside, or contains one of the
    command's inputs."""
    path = _output_path(path, inputs, what, "file")
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: folder {folder} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK) and not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {path}: permission denied")


def check_output_folder(path: str, inputs=(), what: str = "output folder") -> None:
    """Refuse, before any work, an output folder that is a file, cannot be created or written, or that is, is inside,
    or contains one of the command's inputs."""
    path = _output_path(path, inputs, what, "folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"the {what} {path} is a file, not a folder")
    existing = os.path.abspath(path)
    while not os.path.isdir(existing):  # the folder, or the nearest one above it that exists (makedirs creates it)
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {path}: folder {existing} is not writable")


def make_folder(path: str) -> None:
    """os.makedirs, with a failure as one line (the machine refused: a read-only file system, /proc, a full disk)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create folder {path}: {e.strerror or e}") from None


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
