"""The processes a served model runs as, read from /proc (Linux): what tritonserver started, and whether a process
handles a signal yet. `TritonService` uses these to stop cleanly and to leave nothing running."""

from __future__ import annotations

import os


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def live_processes() -> dict[int, int]:
    """{pid: parent pid} of every live (not zombie) process, from /proc."""
    return {
        int(e): int(fields[1])
        for e in os.listdir("/proc")
        if e.isdigit() and (fields := proc_stat(int(e))) and fields[0] != "Z"
    }


def descendants(pid: int) -> list[int]:
    """Live processes below `pid`."""
    children: dict[int, list[int]] = {}
    for p, parent in live_processes().items():
        children.setdefault(parent, []).append(p)
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def start_time(pid: int) -> str | None:
    """When a live process started (clock ticks since boot), or None: tells a process from a later one of its pid."""
    fields = proc_stat(pid)
    return fields[19] if fields and fields[0] != "Z" else None


def cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0") or [b""]
    except OSError:
        return [b""]


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def catches(pid: int, signum: int) -> bool:
    """Has process `pid` installed a handler for `signum` (/proc/<pid>/status SigCgt)?"""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bool(caught >> (signum - 1) & 1)
