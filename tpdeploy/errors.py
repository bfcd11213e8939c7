"""User-facing errors: the command line prints these as one line and exits non-zero."""


class TpdeployError(Exception):
    """A problem with what the user asked for or gave us (not a bug in tpdeploy)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception from a library, for a TpdeployError message."""
    text = str(exc).strip()
    return (text.splitlines()[0][:limit] if text else type(exc).__name__)
