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


def _on_sigterm(signum, frame):
    raise Terminated()


class Cli(click.Group):
    def main(self, args=None, prog_name=None, **extra):
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.ClickException as e:  # usage errors: one line too, with where to look
            command = f"{e.ctx.command_path} --help" if getattr(e, "ctx", None) else "tpdeploy --help"
            click.echo(f"error: {e.format_message()} (see `{command}`)", err=True)
            code = e.exit_code
        except TpdeployError as e:
            click.echo(f"error: {e}", err=True)
            code = e.exit_code
        except (KeyboardInterrupt, click.exceptions.Abort):  # click turns Ctrl+C inside a command into Abort
            click.echo("error: interrupted", err=True)
            code = 130
        except Terminated:
            click.echo("error: terminated (SIGTERM)", err=True)
            code = 143
        except Exception as e:  # never a traceback: a bug or a fault below us
            if os.environ.get("TPDEPLOY_DEBUG"):
                raise
            click.echo(
                f"error: unexpected {type(e).__name__}: {one_line(e)}"
                f" (a fault of the machine or a bug in tpdeploy; TPDEPLOY_DEBUG=1 shows the traceback)",
                err=True,
            )
            code = 3
        sys.exit(code or 0)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tpdeploy")
def main():
    """Deploy Token-Pooled vision transformers: export to ONNX, build TensorRT engines, benchmark, serve."""
