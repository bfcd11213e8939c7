"""One style, checked on every run: ruff (lint and format, pyproject.toml) for the Python, clang-format
(.clang-format) for the C++ and CUDA. Both tools are pinned in the test extras, so the verdict does not move with
their releases."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent  # the tools installed beside this Python (the test extras)


def run(*command):
    return subprocess.run([str(BIN / command[0]), *command[1:]], cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing():
    lint = run("ruff", "check", "--output-format", "concise", ".")
    assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-1000:]


def test_the_python_is_formatted():
    fmt = run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout[-3000:] + fmt.stderr[-1000:]


def test_the_cpp_and_cuda_are_formatted():
    sources = subprocess.run(
        ["git", "ls-files", "*.cpp", "*.h", "*.cu", "*.cuh"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert any(s.startswith("plugins/") for s in sources)
    fmt = run("clang-format", "--dry-run", "--Werror", *sources)
    assert fmt.returncode == 0, fmt.stderr[-3000:]
