"""The deployment install against the full one: install size, and the time from `import tpdeploy.runtime` to the
first answer of `runtime.load(x.onnx).infer` in a fresh process.

    python benchmarks/deploy_install.py MODEL.onnx [--runs 10] [--keep DIR]

Builds the wheel, installs it into two fresh virtual environments (PyPI needed):
  deployment  tpdeploy[cpu]                      numpy, onnx, click, onnxruntime; no PyTorch
  full        torch==2.13.0, tpdeploy[cpu,export,serve]
then times cold starts alternately (deployment, full, deployment, ...) so drift hits both alike, and prints a
table (median and min of --runs processes each).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRST_ANSWER = """
import sys, time
t0 = time.perf_counter()
from tpdeploy import runtime
from tpdeploy.data.samples import sample_images
model = runtime.load(sys.argv[1])
model.infer(sample_images(1))
print(time.perf_counter() - t0, 'torch' in sys.modules)
"""


def pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "-q", "--disable-pip-version-check", *args], check=True)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def make_venv(folder: Path, wheel: Path, extras: str, first: list[str]) -> Path:
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    if first:
        pip(python, "install", *first)
    pip(python, "install", f"{wheel}[{extras}]")
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported .onnx file")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--keep", help="build the environments here (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="tpdeploy-install-"))
    print(f"building the wheel and two environments in {work}", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(REPO)], check=True
    )
    wheel = next((work / "dist").glob("tpdeploy-*.whl"))
    envs = {
        "deployment": make_venv(work / "deployment", wheel, "cpu", []),
        "full": make_venv(work / "full", wheel, "cpu,export,serve", ["torch==2.13.0"]),
    }
    times: dict[str, list[float]] = {name: [] for name in envs}
    for i in range(args.runs):
        for name, python in envs.items():
            out = subprocess.run(
                [str(python), "-c", FIRST_ANSWER, os.path.abspath(args.model)],
                capture_output=True,
                text=True,
                check=True,
                cwd="/",
            ).stdout.split()
            times[name].append(float(out[0]))
            assert out[1] == "False", f"{name}: the runtime imported torch"
        print(f"  run {i + 1}/{args.runs}", file=sys.stderr)
    load = os.getloadavg()[0]
    print(f"| install | size of the environment | first answer, median (min) of {args.runs} processes |")
    print("| --- | --- | --- |")
    for name, python in envs.items():
        size = folder_bytes(python.parent.parent) / 1e6
        t = times[name]
        print(f"| {name} | {size:,.0f} MB | {statistics.median(t):.2f} s ({min(t):.2f} s) |")
    ratio = statistics.median(times["full"]) / statistics.median(times["deployment"])
    print(
        f"\nfull / deployment first-answer time: {ratio:.2f}x; load average {load:.1f}; "
        f"{os.cpu_count()} CPUs; at {time.strftime('%Y-%m-%d %H:%M')}"
    )


if __name__ == "__main__":
    main()
