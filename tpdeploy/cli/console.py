"""What commands print: progress lines and bars on stderr, a stage's report on stdout (and as JSON on request)."""

from __future__ import annotations

import json
import sys
import time

import click

from tpdeploy.artifacts.files import write_text


def progress(msg: str) -> None:
    click.echo(msg, err=True)


def note(msg: str) -> None:
    progress(f"note: {msg}")


class ProgressBar:
    """`done/total` on stderr: redrawn in place on a terminal, one line every few seconds in a log."""

    def __init__(self, label: str, unit: str = "images", every_s: float = 5.0):
        self.label, self.unit, self.every_s = label, unit, every_s
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int, unreadable: int = 0, status: str = "") -> None:
        now = time.perf_counter()
        if done < total and now - self.last < (0.2 if self.tty else self.every_s):
            return
        self.last = now
        filled = 30 * done // max(total, 1)
        text = (
            f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {self.unit}, "
            f"{done / max(now - self.start, 1e-9):.1f}/s, {unreadable} unreadable{', ' + status if status else ''}"
        )
        click.echo("\r" + text if self.tty else text, err=True, nl=not self.tty or done >= total)


def write_json(path: str, data, inputs=()) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n", inputs)


def emit(report, json_path: str | None = None, inputs=(), extra: dict | None = None) -> None:
    """Print a stage's report; with `json_path`, also write its JSON there (never over one of `inputs`)."""
    click.echo(report.format())
    if json_path:
        write_json(json_path, {**report.to_json(), **(extra or {})}, inputs)
