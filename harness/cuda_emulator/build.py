"""Build the TokenPool kernels for the CPU emulator (see README.md beside this file).

    python harness/cuda_emulator/build.py OUT_DIR [KERNEL_DIR]

copies the kernel sources (default: plugins/tokenpool) into OUT_DIR with two mechanical rewrites, then compiles
tokenPoolKernel.cu with g++ and the emulator into OUT_DIR/libtokenpool_emulated.so, whose C API is the one of
tokenPoolKernel.h. Needs only g++ (C++17); not the CUDA toolkit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_DIR = HERE.parent.parent / "plugins" / "tokenpool"
SOURCE = "tokenPoolKernel.cu"
LIBRARY = "libtokenpool_emulated.so"
# -ffp-contract=off: a * b + c stays two roundings unless the code asks for an fma (as nvcc's __fmul_rn);
# -fno-strict-aliasing: the kernels copy rows through uint4 pointers, which is fine in CUDA, not in ISO C++.
FLAGS = [
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-Wall",
    "-Wno-unknown-pragmas",
]

# kernel<<<grid, block, shared, stream>>>(args)  ->  emu::Launch(grid, block, shared, stream)(<kernel>)(args)
_LAUNCH = re.compile(r"\b(\w+(?:<[^<>;]*>)?)\s*<<<(.*?)>>>", re.S)
# a __shared__ declaration at the start of a line, up to its semicolon
_SHARED = re.compile(r"^[ \t]*__shared__\s[^;]*;", re.M)


class BuildError(RuntimeError):
    pass


def _declared_names(declaration: str) -> list[str]:
    """The variables of `__shared__ T a[N], b[N];`: split at top-level commas, drop [..] and (..), last word."""
    body = declaration.strip().removeprefix("__shared__").rstrip(";")
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += ch in "<([{"
        depth -= ch in ">)]}"
        if ch == "," and depth == 0:
            pieces.append(body[start:i])
            start = i + 1
    pieces.append(body[start:])
    return [re.findall(r"\w+", re.sub(r"\[[^\]]*\]|\([^)]*\)", " ", piece))[-1] for piece in pieces]


def rewrite(source: str, name: str = "source") -> str:
    """The CUDA source as C++ for the emulator; raises BuildError on a launch or __shared__ it would miss."""
    launches = source.count("<<<")
    source, rewritten = _LAUNCH.subn(lambda m: f"emu::Launch({m[2]})([](auto... a) {{ {m[1]}(a...); }})", source)
    if rewritten != launches:
        raise BuildError(f"{name}: rewrote {rewritten} of {launches} kernel launches (<<<...>>>)")

    def register(m: re.Match) -> str:  # on the same line, so that compiler messages keep their line numbers
        return m[0] + "".join(f" emu::shared(&{v}, sizeof {v});" for v in _declared_names(m[0]))

    source, declarations = _SHARED.subn(register, source)
    in_code = [line for line in source.splitlines() if "__shared__" in line and not line.lstrip().startswith("//")]
    if len(in_code) != declarations:
        raise BuildError(f"{name}: __shared__ outside a declaration statement of its own: {in_code}")
    return source


def build(
    out_dir: Path,
    kernel_dir: Path = KERNEL_DIR,
    source: str = SOURCE,
    compiler: str = "g++",
    extra_sources: Sequence[Path] = (),
) -> Path:
    """Rewrite the sources of kernel_dir into out_dir and compile `source` with the emulator, and with
    extra_sources (plain C++ over the kernels' C API, e.g. the TensorRT plugin's core), into one library; returns
    its path. Raises BuildError with the compiler's messages if it fails."""
    out_dir, kernel_dir = Path(out_dir), Path(kernel_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(kernel_dir.iterdir()):  # everything the kernel includes with "..." comes from out_dir
        if path.suffix in (".cu", ".cuh"):
            (out_dir / path.name).write_text(rewrite(path.read_text(), str(path)))
        elif path.suffix == ".h":
            shutil.copy(path, out_dir / path.name)
    library = out_dir / LIBRARY
    cmd = [
        compiler,
        *FLAGS,
        "-I",
        str(HERE / "include"),
        "-I",
        str(out_dir),
        "-x",
        "c++",
        str(out_dir / source),
        "-x",
        "none",
        str(HERE / "emulator.cpp"),
        *map(str, extra_sources),
        "-o",
        str(library),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}\n{done.stdout[-6000:]}{done.stderr[-6000:]}")
    return library


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    print(build(Path(sys.argv[1]), *(Path(a) for a in sys.argv[2:])))
