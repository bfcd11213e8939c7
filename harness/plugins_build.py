"""plugins/ built with CMake the one way both the GPU check (benchmarks/gpu_check.py) and the tests
(tests/conftest.py, `plugins_build`) build it: for one GPU architecture, with ptxas's report."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DRY_RUN_ARCH = "90"  # a dry run's nvcc build, where there is one, is for the H200 the project is checked on


PROBE = "__global__ void probe() {}\nint main() { probe<<<1, 1>>>(); return 0; }\n"


def nvcc_problem(build_dir: Path, arch: str) -> str | None:
    """Why nvcc cannot compile and link a one-kernel program for sm_<arch> with its host compiler (none found, or
    one it refuses: "unsupported GNU version"), in one line; None when it can. CMake says the same in pages."""
    folder = build_dir / "nvcc-probe"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "probe.cu").write_text(PROBE)
    cmd = ["nvcc", f"-arch=sm_{arch}", "probe.cu", "-o", "probe"]
    try:
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, errors="replace", timeout=300)
    except FileNotFoundError:
        return "nvcc not found"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    why = next((line for line in lines if re.search(r"error|fatal|not found", line, re.I)), None)
    return f"nvcc cannot build a one-kernel program with its host compiler: {(why or f'exit {done.returncode}')[:240]}"


def cmake_build(build_dir: Path, arch: str, log_path: Path, extra: list[str] = ()) -> tuple[str | None, list[str]]:
    """Configures and builds plugins/ in build_dir for sm_<arch> alone, with ptxas -v; the whole output goes to
    log_path line by line and ptxas's report to build_dir/ptxas.txt. Returns (the failed step or None, output
    lines): first nvcc on a one-kernel program (nvcc_problem: one line where CMake would print pages), then CMake.
    The GPU check's build stage and the tests' plugins_build fixture, so that CI builds as the GPU check."""
    problem = nvcc_problem(build_dir, arch)
    if problem:
        with open(log_path, "a") as log:
            log.write(problem + "\n")
        return problem, [problem]
    steps = [
        [
            "cmake",
            "-S",
            str(REPO / "plugins"),
            "-B",
            str(build_dir),
            f"-DCMAKE_CUDA_ARCHITECTURES={arch}-real",
            "-DCMAKE_CUDA_FLAGS=--ptxas-options=-v",
            *extra,
        ],
        ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 1)],
    ]
    output = []
    with open(log_path, "a", buffering=1) as log:
        for step in steps:
            log.write("$ " + " ".join(step) + "\n")
            proc = subprocess.Popen(
                step, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
            )
            for line in proc.stdout:
                log.write(line)
                output.append(line.rstrip("\n"))
            if proc.wait() != 0:
                return f"{' '.join(step[:2])}: exit {proc.returncode}", output
    ptxas = [line for line in output if "ptxas" in line or "bytes stack frame" in line]
    if ptxas:  # an up-to-date build compiles nothing, and the last compile's report stays
        (build_dir / "ptxas.txt").write_text("\n".join(ptxas) + "\n")
    return None, output
