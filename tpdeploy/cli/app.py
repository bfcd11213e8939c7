"""The `tpdeploy` command group and what it does with every error.

Every error is one line `error: ...` on stderr, never a traceback: exit 1 for a user's mistake, 2 for a usage
error (a bad option), 3 for a fault of the machine or the engine (`tpdeploy.errors`); 130 after Ctrl+C and 143
after SIGTERM, which leave no partial output (SIGTERM is turned into an exception so that every temporary file
is removed on the way out). Set TPDEPLOY_DEBUG=1 to see the traceback of an unexpected error.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from tpdeploy.errors import TpdeployError, one_line


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT."""


_received: list[int] = []  # the signals this process was sent: whatever error they caused is theirs


def _on_signal(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


class Cli(click.Group):
    def main(self, args=None, prog_name=None, **extra):
        _received.clear()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _on_signal)
        try:
            code = self._run(args, prog_name, **extra)
        except BaseException:  # a signal's exception caught and wrapped below us (an ImportError, say)
            if not _received:
                raise
            code = _signal_exit(_received[0])
        sys.exit(code or 0)

    def _run(self, args, prog_name, **extra) -> int:
        try:
            return super().main(args, prog_name, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            return e.exit_code
        except (KeyboardInterrupt, click.exceptions.Abort, Terminated):  # click turns Ctrl+C into Abort
            return _signal_exit(_received[0] if _received else signal.SIGINT)
        except click.ClickException as e:  # usage errors: one line too, with where to look
            command = f"{e.ctx.command_path} --help" if getattr(e, "ctx", None) else "tpdeploy --help"
            click.echo(f"error: {e.format_message()} (see `{command}`)", err=True)
            return e.exit_code
        except Exception as e:
            if _received:  # a library turned the signal's exception into its own error
                return _signal_exit(_received[0])
            if isinstance(e, TpdeployError):
                click.echo(f"error: {e}", err=True)
                return e.exit_code
            if os.environ.get("TPDEPLOY_DEBUG"):
                raise
            click.echo(
                f"error: unexpected {type(e).__name__}: {one_line(e)}"
                f" (a fault of the machine or a bug in tpdeploy; TPDEPLOY_DEBUG=1 shows the traceback)",
                err=True,
            )
            return 3


def _signal_exit(signum: int) -> int:
    """The one line and the exit code of a command stopped by a signal: 130 for SIGINT, 143 for SIGTERM."""
    click.echo("error: interrupted" if signum == signal.SIGINT else "error: terminated (SIGTERM)", err=True)
    return 128 + signum


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tpdeploy")
def main():
    """Deploy Token-Pooled vision transformers: export to ONNX, build TensorRT engines, benchmark, serve."""
