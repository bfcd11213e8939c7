"""The one call on a GPU machine: every answer about the TokenPool kernels, in one table.

    python3 benchmarks/gpu_check.py [--results DIR] [--budget 450] [--dry-run] [--stages a,b,...]
                                    [--build-dir DIR] [--cuda-arch 90] [--wheels DIR]
    make gpu-check [RESULTS=DIR]      (the same with the machine's python3; no venv, nothing from the network)

Made for a bare machine: an NVIDIA GPU, Python with a CUDA build of torch, onnx, CMake and nvcc (pytest, ncu and
compute-sanitizer where present); no TensorRT, no network, no package index. The stages run one after another,
each in a process of its own with a time limit of its own, all within --budget seconds; a crash, a failure or a
time-out of one stops none of the others (a stage that finds no time left is skipped, and says so; a stage that
needs the kernels library is skipped, saying so, when the build stage made none):

  machine    nvidia-smi (GPU, driver, compute capability, other processes), nvcc, cmake, the Python packages, load
  torch      torch and CUDA as torch sees them
  install    pip install --no-deps --no-build-isolation --no-index -e . into this python (pytest too, from
             --wheels DIR); checks that tpdeploy and tpdeploy.presets then resolve from this source tree. Where pip
             cannot install (a setuptools too old to build an editable install without `wheel`), the stages use
             tpdeploy from PYTHONPATH, and the row says so (status "fallback")
  build      g++, then nvcc with its host compiler on a one-line program (one clear row where either is missing or
             refused), then CMake for this GPU's architecture only (-DCMAKE_CUDA_ARCHITECTURES=<cc>-real), with
             ptxas -v
  kernels    the kernels against tpdeploy's reference on many shapes, and the fallback beyond their limits
  timing     a per-kernel breakdown, the op against its memory floor and against one DeiT-S block
  model      Token-Pooled DeiT-S against dense DeiT-S, torch fp16, B = 1/8/64, the kernels in the model
  pytest     the test files with GPU tests (pytest -m gpu ones and the C API ones), on the build stage's library
  sanitizer  compute-sanitizer memcheck, racecheck, initcheck and synccheck on a few launches of every kernel, with
             what the other stages left of the budget, shared among the tools still to run; a device that
             compute-sanitizer refuses ("Device not supported") is recorded and the remaining tools are skipped

(kernels, timing, model and the sanitizer's workload are in gpu_measure.py beside this file.) Into the results
folder (default $OUT, else build/gpu-check), line by line, so that a time-out loses nothing: gpu_check.log
(everything printed), gpu_check.jsonl (one JSON object a line: each row of the table, each stage's outcome, and
last the answers that are missing), and the files of single stages (nvidia-smi.txt, build.log, ptxas.txt,
pytest.xml, sanitizer.txt): seven files, within what a device call brings back (eight).
The table ends with the answers that are missing (a stage or row skipped for a reason other than a dry run or
--stages, or timed out). Exits 0 when every answer is in, 1 when a stage failed, timed out, found no time left or
reported a wrong result, 3 when nothing failed but answers are missing.

--dry-run: the same stages and Python paths on a CPU, so that they have all run before any GPU time is spent
(tests/test_gpu_check.py runs it in CI): the CUDA emulator's library (harness/cuda_emulator) stands in for the
kernels and CPU tensors for CUDA ones, deit_tiny for deit_small, smaller shapes and fewer repeats; pip only
pretends to install (pip --dry-run); CMake, nvcc and ptxas -v run where they are installed (for sm_90, the H200's
architecture, unless --cuda-arch), and the pytest stage reuses that build; a compute-sanitizer on PATH runs over
the emulated workload; what needs the GPU itself (nvidia-smi, CUDA in torch) is recorded as "skipped (dry run)".
Its timings mean nothing. It takes g++, nvcc, cmake and compute-sanitizer from PATH like the real run, so a PATH
without g++, or with a stand-in compute-sanitizer, shows what the real run does then.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # harness/, shared with the tests

from harness.cuda_emulator import build as emulator_build
from harness.plugins_build import DRY_RUN_ARCH, cmake_build

HERE = Path(__file__).resolve().parent
LOG, JSONL = "gpu_check.log", "gpu_check.jsonl"
KERNELS_LIBRARY, EMULATED_LIBRARY = "libtokenpool_kernels.so", "libtokenpool_emulated.so"
SKIPPED = 77  # a stage's exit status for "did not apply here" (automake's convention); its last row says why
INCOMPLETE = 3  # the check's exit status when nothing failed but answers are missing
FAIL = "FAIL"
MIN_STAGE_SECONDS = 5
STAGE_SECONDS = "GPU_CHECK_STAGE_SECONDS"  # the time limit a stage runs under, in its environment
EXIT_SECONDS = 3  # what a stage keeps of its time limit to write its last rows
PYTEST_STOP_SECONDS = 10  # what pytest gets, after a Ctrl+C, to write pytest.xml
# reasons for a skip that leave no answer missing: a dry run's (no GPU) and --stages' ("not selected")
EXPECTED_SKIPS = ("dry run", "not selected")
# seconds; the sum is over the default budget on purpose: the last stages take what the first ones leave, and the
# last one (None) takes all of it
BUDGETS = {
    "machine": 20,
    "torch": 30,
    "install": 45,
    "build": 120,
    "kernels": 60,
    "timing": 45,
    "model": 60,
    "pytest": 75,
    "sanitizer": None,
}
MEASURED = ("torch", "kernels", "timing", "model")  # the stages in gpu_measure.py (they import torch)


# --- the results folder -------------------------------------------------------------------------------------


def append_json(path: Path, record: dict) -> None:
    with open(path, "a") as f:  # one write of one line, flushed on close: a killed stage loses nothing before it
        f.write(json.dumps(record) + "\n")


class Rows:
    """The rows one stage adds to the table: appended to gpu_check.jsonl as they come, and printed."""

    def __init__(self, results: Path, stage: str):
        self.results, self.stage, self.failed = results, stage, False

    def add(self, what: str, result: str, status: str = "", **data) -> None:
        """status: "ok", FAIL (makes the stage fail), "skipped" (result "skipped (reason)"), "timed out" (the answer
        is missing), "fallback" (done another way: the result says how), "met"/"missed" (a target), "" (a fact)."""
        record = {"stage": self.stage, "what": what, "result": result, "status": status}
        if data:
            record["data"] = data  # the numbers behind the result, for whoever reads the JSON
        append_json(self.results / JSONL, record)
        print(f"[{self.stage}] {what}: {result}" + (f"  [{status}]" if status else ""), flush=True)
        self.failed |= status == FAIL

    def skip(self, what: str, reason: str) -> int:
        """Records why the stage does not apply here; returns the exit status that says so."""
        self.add(what, f"skipped ({reason})", "skipped")
        return SKIPPED

    def exit_status(self) -> int:
        return 1 if self.failed else 0


# --- running the stages -------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    budget: float | None  # seconds; None: what is left of the check's budget
    command: list[str]  # run in REPO, in a session of its own (a time-out kills its children too)
    skip: str | None = None  # the reason it does not run
    needs: Path | None = None  # a file an earlier stage makes (the kernels library): skipped without it


def run_stages(
    stages: list[Stage], results: Path, budget: float, env: dict | None = None, min_seconds: float = MIN_STAGE_SECONDS
) -> list[dict]:
    """Runs the stages in order, each within min(its budget, what is left of `budget`; all that is left for a budget
    of None; skipped when that is under min_seconds, or when the file it needs is not there), copying their output
    line by line to stdout and gpu_check.log; appends each one's outcome to gpu_check.jsonl and returns the outcomes.
    A stage finds its time limit in its environment ($GPU_CHECK_STAGE_SECONDS)."""
    deadline = time.monotonic() + budget
    outcomes = []
    with open(results / LOG, "a", buffering=1) as log:
        for stage in stages:
            left = deadline - time.monotonic()
            limit = left if stage.budget is None else min(stage.budget, left)
            started = time.monotonic()
            if stage.skip:
                status, limit = f"skipped ({stage.skip})", 0
            elif stage.needs is not None and not stage.needs.is_file():
                status, limit = f"skipped (no {stage.needs.name}: the build stage made none)", 0
            elif limit < min_seconds:
                status, limit = f"skipped (no time left: {max(left, 0):.0f} s of the {budget:.0f} s budget)", 0
            else:
                say(log, f"\n=== {stage.name} (at most {limit:.0f} s): {' '.join(stage.command)}")
                status = run_one(stage.command, limit, log, {**(env or os.environ), STAGE_SECONDS: f"{limit:.1f}"})
            outcome = {
                "stage": stage.name,
                "what": "stage",
                "status": status,
                "seconds": round(time.monotonic() - started, 1),
                "limit": round(limit, 1),  # the seconds it was given (0: it did not run)
            }
            append_json(results / JSONL, outcome)
            say(log, f"=== {stage.name}: {status} ({outcome['seconds']:.0f} s)")
            outcomes.append(outcome)
    return outcomes


def run_one(command: list[str], limit: float, log, env: dict | None) -> str:
    """Runs one stage's command; its outcome: "ok", "failed (exit N)", "timed out after N s", "skipped"."""
    try:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as e:
        return f"failed (could not start: {e})"
    copier = threading.Thread(target=lambda: [say(log, line.rstrip("\n")) for line in proc.stdout], daemon=True)
    copier.start()
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and whatever it started (cmake, nvcc, pytest, ...)
        proc.wait()
        copier.join(5)
        return f"timed out after {limit:.0f} s"
    copier.join(5)
    if code == 0:
        return "ok"
    if code == SKIPPED:
        return "skipped"
    return f"failed (exit {code})" if code > 0 else f"failed (killed by signal {-code})"


def say(log, line: str) -> None:
    print(line, flush=True)
    log.write(line + "\n")


def table(records: list[dict], stages: list[str]) -> list[str]:
    """The table: each stage's rows, then its outcome."""
    lines = ["| stage | what | result | status |", "| --- | --- | --- | --- |"]
    for stage in stages:
        mine = [r for r in records if r.get("stage") == stage]
        for r in mine:
            if r["what"] != "stage":
                lines.append(f"| {stage} | {cell(r['what'])} | {cell(r['result'])} | {r['status']} |")
        for r in mine:
            if r["what"] == "stage":
                ran = f"{r['seconds']:.0f} s of {r['limit']:.0f} s" if r["limit"] else "did not run"
                lines.append(f"| {stage} | **stage** | {ran} | {r['status']} |")
    return lines


def skip_reason(text: str) -> str | None:
    """The reason in "skipped (reason)"; None for anything else."""
    return text[len("skipped (") : -1] if text.startswith("skipped (") and text.endswith(")") else None


def missing_answers(records: list[dict]) -> list[str]:
    """What the table lacks: each stage and row skipped for a reason other than EXPECTED_SKIPS, each time-out."""
    missing = []
    for r in records:
        if "what" not in r:  # the run's header
            continue
        status, text = r["status"], (r["status"] if r["what"] == "stage" else r["result"])
        reason = skip_reason(text) if status.startswith("skipped") else None
        if reason is not None and not reason.startswith(EXPECTED_SKIPS):
            missing.append(f"{r['stage']}{'' if r['what'] == 'stage' else ' ' + r['what']} ({reason})")
        elif status.startswith("timed out"):
            after = "its rows after the last one" if r["what"] == "stage" else r["what"]
            missing.append(f"{r['stage']} {after} ({status if r['what'] == 'stage' else text})")
    return missing


def cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--results",
        type=Path,
        default=Path(os.environ.get("OUT") or REPO / "build" / "gpu-check"),
        help="the results folder (default: $OUT, else build/gpu-check)",
    )
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all stages together (default 450)")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU with the emulated kernels (see above)")
    ap.add_argument("--stages", help=f"a comma-separated subset of: {','.join(BUDGETS)}")
    ap.add_argument(
        "--build-dir", type=Path, help="the CMake build folder (default build/plugins; in a dry run RESULTS/plugins)"
    )
    ap.add_argument("--cuda-arch", help="the GPU architecture to build for, e.g. 90 (default: nvidia-smi's)")
    ap.add_argument("--wheels", type=Path, help="a folder of wheels to install pytest from where it is missing")
    ap.add_argument("--stage", choices=[s for s in BUDGETS if s not in MEASURED], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.results = args.results.resolve()
    args.results.mkdir(parents=True, exist_ok=True)
    if args.build_dir is None:
        args.build_dir = args.results / "plugins" if args.dry_run else REPO / "build" / "plugins"
    args.build_dir = args.build_dir.resolve()
    if args.stage:  # one stage, in the process the orchestrator started for it
        return STAGES[args.stage](args, Rows(args.results, args.stage))

    selected = args.stages.split(",") if args.stages else list(BUDGETS)
    unknown = sorted(set(selected) - set(BUDGETS))
    if unknown:
        ap.error(f"unknown stages {unknown}: choose from {', '.join(BUDGETS)}")
    (args.results / JSONL).write_text("")  # this run's records only
    (args.results / LOG).write_text("")
    common = ["--results", str(args.results), "--build-dir", str(args.build_dir)] + (["--dry-run"] * args.dry_run)
    library = args.results / "emulator" / EMULATED_LIBRARY if args.dry_run else args.build_dir / KERNELS_LIBRARY
    # the CMake build's library, which the pytest stage's C API tests load (a dry run without nvcc has none)
    built = args.build_dir / KERNELS_LIBRARY if not args.dry_run or cmake_and_nvcc() else None
    needs = {"kernels": library, "timing": library, "model": library, "sanitizer": library, "pytest": built}
    stages = []
    for name, budget in BUDGETS.items():
        if name in MEASURED:
            command = [sys.executable, "-u", str(HERE / "gpu_measure.py"), name, *common]
        else:
            command = [sys.executable, "-u", str(Path(__file__).resolve()), "--stage", name, *common]
            command += ["--cuda-arch", args.cuda_arch] if args.cuda_arch else []
            command += ["--wheels", str(args.wheels.resolve())] if args.wheels else []
        stages.append(Stage(name, budget, command, None if name in selected else "not selected", needs.get(name)))
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TPDEPLOY_KERNELS": str(library),
        "TPDEPLOY_PLUGINS_BUILD": str(args.build_dir),
        # tpdeploy from this tree even if the install stage fails (tpdeploy.presets then needs the install)
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    if args.dry_run:  # one CPU thread: OpenMP's barriers stall many times over on a busy shared CI machine
        env["OMP_NUM_THREADS"] = "1"
    append_json(
        args.results / JSONL,
        {
            "run": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dry_run": args.dry_run,
            "budget": args.budget,
            "python": sys.executable,
            "repo": str(REPO),
        },
    )
    outcomes = run_stages(stages, args.results, args.budget, env)
    records = [json.loads(line) for line in (args.results / JSONL).read_text().splitlines() if line.strip()]
    missing = missing_answers(records)
    summary = {
        "stage": "check",
        "what": "missing answers",
        "result": "; ".join(missing) or "none",
        "status": "missing" if missing else "ok",
        "data": {"missing": missing},
    }
    append_json(args.results / JSONL, summary)
    with open(args.results / LOG, "a", buffering=1) as log:
        say(log, f"\ngpu_check{' --dry-run' if args.dry_run else ''}: {args.results}")
        for line in table([*records, summary], [*BUDGETS, "check"]):
            say(log, line)
    broken = [
        o["stage"]
        for o in outcomes
        if not (o["status"] == "ok" or o["status"].startswith("skipped") and "no time left" not in o["status"])
    ]
    return 1 if broken else INCOMPLETE if missing else 0


# --- the stages without torch -------------------------------------------------------------------------------


def cmake_and_nvcc() -> bool:
    return bool(shutil.which("cmake") and shutil.which("nvcc"))


def command_output(cmd: list[str], timeout: float = 30) -> tuple[int, str]:
    """(exit status, stdout + stderr) of a short command; (127, "not found") when it is not installed."""
    if shutil.which(cmd[0]) is None:
        return 127, "not found"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return done.returncode, (done.stdout + done.stderr).strip()


def first_line(text: str, pattern: str = "") -> str:
    return next((line.strip() for line in text.splitlines() if re.search(pattern, line)), text.strip()[:200])


PACKAGES = (
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "click",
    "setuptools",
    "wheel",
    "pip",
    "pytest",
    "hypothesis",
    "psutil",
    "onnxscript",
    "safetensors",
    "tensorrt",
)
NEEDED_HERE = {
    "pytest": "the pytest stage (--wheels DIR)",
    "setuptools": "the install stage",
    "torch": "every measuring stage",
    "numpy": "every measuring stage",
}


def stage_machine(args, rows: Rows) -> int:
    if args.dry_run:
        rows.add("nvidia-smi", "skipped (dry run)", "skipped")
    else:
        code, out = command_output(["nvidia-smi"])
        (args.results / "nvidia-smi.txt").write_text(out + "\n")
        if code != 0:
            rows.add("nvidia-smi", f"exit {code}: {first_line(out)}", FAIL)
        else:
            fields = "index,name,driver_version,memory.total,compute_cap,clocks.max.sm,power.limit,persistence_mode"
            _, gpus = command_output(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"])
            for gpu in gpus.splitlines():
                rows.add("GPU", gpu.strip(), data=dict(zip(fields.split(","), map(str.strip, gpu.split(",")))))
            _, apps = command_output(
                ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"]
            )
            rows.add("other processes on the GPU", apps.replace("\n", "; ") or "none")
    for tool, pattern in (
        ("nvcc", "release"),
        ("cmake", "version"),
        ("ncu", "Version"),
        ("compute-sanitizer", "Version"),
        ("g++", ""),
    ):
        code, out = command_output([tool, "--version"])
        rows.add(tool, first_line(out, pattern) if code == 0 else out)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    memory = f"{int(meminfo['MemAvailable'].split()[0]) >> 20} of {int(meminfo['MemTotal'].split()[0]) >> 20} GiB free"
    rows.add("host", f"{os.cpu_count()} CPUs, load {load}, {memory}")
    rows.add("python", f"{sys.version.split()[0]} at {sys.executable}")
    versions, missing = [], []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    cupy = importlib.metadata.packages_distributions().get("cupy", [])
    versions += [f"{d} {importlib.metadata.version(d)}" for d in cupy]
    rows.add("packages", ", ".join(versions))
    needed = [f"{m} (needed by {NEEDED_HERE[m]})" for m in missing if m in NEEDED_HERE]
    unused = [m for m in missing if m not in NEEDED_HERE]
    rows.add(
        "missing packages",
        "; ".join(needed + [f"{', '.join(unused)} (this check uses none of them)"] * bool(unused)) or "none",
        FAIL if {"torch", "numpy"} & set(missing) else "",
    )
    return rows.exit_status()


def stage_install(args, rows: Rows) -> int:
    pip = [sys.executable, "-m", "pip", "install", "--no-index", *(["--dry-run"] * args.dry_run)]
    # a throw-away machine's system python: PEP 668 must not refuse it; no network: no version check
    env = {**os.environ, "PIP_BREAK_SYSTEM_PACKAGES": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    dry = " (pip --dry-run)" if args.dry_run else ""
    code, output, seconds = run_pip([*pip, "--no-deps", "--no-build-isolation", "-e", str(REPO)], env)
    # the orchestrator's PYTHONPATH already puts this tree first for every stage: without the install, that is it
    fallback = code != 0
    if fallback:
        rows.add(
            "pip install -e ." + dry,
            f"failed ({pip_error(output)}; {seconds:.0f} s): the stages use tpdeploy from PYTHONPATH={REPO} instead",
            "fallback",
        )
    else:
        rows.add("pip install -e ." + dry, f"{last_line(output)[:200]} ({seconds:.0f} s)", "ok")
    if args.wheels:  # pytest and its dependencies, all from the folder (make gpu-check-wheels)
        code, output, seconds = run_pip([*pip, "--find-links", str(args.wheels), "pytest"], env)
        rows.add(
            f"pip install pytest from {args.wheels}{dry}",
            f"{(last_line(output) if code == 0 else pip_error(output))[:200]} ({seconds:.0f} s)",
            "ok" if code == 0 else FAIL,
        )
    # a fresh interpreter outside the tree: what the install gives (without the orchestrator's PYTHONPATH), or
    # where nothing was installed (a fallback, a dry run) what the stages get (with it)
    probe = (
        "import json, tpdeploy\ntry:\n    import tpdeploy.presets\n    from tpdeploy.model import schedule\n"
        "    presets = [list(tpdeploy.presets.__path__), sorted(schedule.presets())]\n"
        "except ImportError as e:\n    presets = str(e)\nprint(json.dumps([tpdeploy.__file__, presets]))"
    )
    if not (fallback or args.dry_run):
        env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd="/")
    if done.returncode != 0:
        rows.add("tpdeploy imports", first_line(done.stderr, "Error") or "failed", FAIL)
        return rows.exit_status()
    package, presets = json.loads(done.stdout)
    rows.add(
        "tpdeploy resolves from",
        str(Path(package).parent) + (" (PYTHONPATH)" if fallback or args.dry_run else ""),
        "ok" if Path(package).resolve().is_relative_to(REPO) else FAIL,
    )
    here = isinstance(presets, list) and all(Path(p).resolve() == REPO / "models" for p in presets[0])
    if here and "deit_small_058" in presets[1]:
        rows.add("tpdeploy.presets resolve from", f"{', '.join(presets[0])} ({len(presets[1])} presets)", "ok")
    else:
        where = ", ".join(presets[0]) if isinstance(presets, list) else f"nowhere ({presets})"
        if fallback:
            where += (
                " (no install: presets by name may fail; the model stage reads models/ itself, "
                "tests/test_kernels.py's model test loads one by name)"
            )
        elif args.dry_run:
            where += " (dry run: nothing installed; what an earlier install gives)"
        rows.add("tpdeploy.presets resolve from", where, "fallback" if fallback else "" if args.dry_run else FAIL)
    return rows.exit_status()


def pip_error(output: str) -> str:
    """The line of pip's output that says why it failed: the build backend's own error (`error: invalid command
    'bdist_wheel'`, a setuptools too old to build an editable install without `wheel`) before pip's summary codes
    (`error: metadata-generation-failed`)."""
    errors = [line.strip() for line in output.splitlines() if re.search(r"^\s*(error|ERROR)\b|Error:", line)]
    specific = [line for line in errors if not re.fullmatch(r"error: [a-z]+(-[a-z]+)+", line)]
    return (specific or errors or [last_line(output)])[0]


def run_pip(cmd: list[str], env: dict) -> tuple[int, str, float]:
    """(exit status, output, seconds) of a pip command; the output's end is printed (to gpu_check.log)."""
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env, cwd=REPO)
    output = (done.stdout + done.stderr).strip()
    print(output[-3000:], flush=True)
    return done.returncode, output, time.monotonic() - started


def last_line(text: str) -> str:
    return text.splitlines()[-1] if text else ""


def compute_capability(arch: str | None) -> str:
    """ "90" for a GPU of compute capability 9.0: --cuda-arch, else nvidia-smi's, else torch's."""
    if arch:
        return arch.removeprefix("sm_").replace(".", "")
    code, out = command_output(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"])
    if code == 0 and re.fullmatch(r"\d+\.\d+", out.splitlines()[0].strip()):
        return out.splitlines()[0].strip().replace(".", "")
    code, out = command_output(
        [sys.executable, "-c", "import torch; print(*torch.cuda.get_device_capability(), sep='')"], timeout=60
    )
    if code == 0 and out.strip().isdigit():
        return out.strip()
    raise LookupError("the GPU's compute capability is unknown (nvidia-smi and torch both failed): pass --cuda-arch")


def stage_build(args, rows: Rows) -> int:
    # the stages after this one use this run's build or none, never a library an earlier run left
    for library in (args.build_dir / KERNELS_LIBRARY, args.results / "emulator" / EMULATED_LIBRARY):
        library.unlink(missing_ok=True)
    if shutil.which("g++") is None:  # one row, not a failure in every stage that needs the kernels
        rows.add("g++", "not found: the CUDA emulator, CMake's C++ and nvcc's host side need it", FAIL)
        return rows.exit_status()
    if args.dry_run:
        started = time.monotonic()
        try:
            library = emulator_build.build(args.results / "emulator")
        except emulator_build.BuildError as e:
            print(e, flush=True)
            rows.add("emulated kernels (harness/cuda_emulator, g++)", first_line(str(e), r"error"), FAIL)
            return rows.exit_status()
        rows.add(
            "emulated kernels (harness/cuda_emulator, g++)", f"{library} ({time.monotonic() - started:.0f} s)", "ok"
        )
        if not cmake_and_nvcc():
            return rows.skip("cmake, nvcc and ptxas -v", "dry run without nvcc and cmake")
    elif not cmake_and_nvcc():
        rows.add(
            "cmake and nvcc",
            f"cmake {shutil.which('cmake') or 'not found'}, nvcc {shutil.which('nvcc') or 'not found'}",
            FAIL,
        )
        return rows.exit_status()
    try:
        arch = compute_capability(args.cuda_arch or (DRY_RUN_ARCH if args.dry_run else None))
    except LookupError as e:
        rows.add("architecture", str(e), FAIL)
        return rows.exit_status()
    rows.add("architecture", f"sm_{arch} only (CMAKE_CUDA_ARCHITECTURES={arch}-real)")
    started = time.monotonic()
    failed, output = cmake_build(args.build_dir, arch, args.results / "build.log")
    if failed:
        print("\n".join(output[-40:]), flush=True)
        why = next((line.strip() for line in output if re.search(r"\berror\b", line, re.I)), "")
        rows.add("build", f"{failed}{': ' + why[:240] if why and why not in failed else ''} (build.log)", FAIL)
        return rows.exit_status()
    library, plugin = args.build_dir / KERNELS_LIBRARY, args.build_dir / "libtpdeploy_plugin.so"
    rows.add(
        "build",
        f"{library} in {time.monotonic() - started:.0f} s (TensorRT plugin: "
        f"{'built' if plugin.is_file() else 'not built, no TensorRT headers'})",
        "ok" if library.is_file() else FAIL,
    )
    saved = args.build_dir / "ptxas.txt"
    if not any("ptxas" in line for line in output) and saved.is_file():
        rows.add("ptxas -v", f"nothing recompiled: the report of the last compile ({saved})")
    if saved.is_file():
        shutil.copy(saved, args.results / "ptxas.txt")
    report_ptxas(saved.read_text().splitlines() if saved.is_file() else [], rows)
    return rows.exit_status()


def report_ptxas(lines: list[str], rows: Rows) -> None:
    """A row per kernel from ptxas -v: registers, shared memory and spills of each of its instances."""
    entries, current = {}, None
    for line in lines:
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            current = entries.setdefault(m[1], {})
        elif current is None:
            continue
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            current["spill"] = int(m[1]) + int(m[2])
        elif m := re.search(r"Used (\d+) registers", line):
            current["registers"] = int(m[1])
            current["smem"] = int(s[1]) if (s := re.search(r"(\d+) bytes smem", line)) else 0
    if not entries:
        rows.add("ptxas -v", "no report in the build output", FAIL)
        return
    by_kernel = {}
    for mangled, name in demangle(list(entries)).items():
        kernel, _, instance = name.partition("<")
        by_kernel.setdefault(kernel, []).append((f"<{instance}" if instance else "", entries[mangled]))
    for kernel, instances in by_kernel.items():
        spilled = sum(info.get("spill", 0) for _, info in instances)
        rows.add(
            f"ptxas {kernel}",
            "; ".join(
                f"{inst} {info.get('registers', '?')} registers, {info.get('smem', 0)} B shared".lstrip()
                for inst, info in instances
            )
            + f"; {spilled} B spilled",
            "" if spilled == 0 else "spills",
            instances={inst: info for inst, info in instances},
        )


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> short names (`select_medoids<float>`), through c++filt where there is one."""
    code, out = command_output(["c++filt", *names])
    plain = out.splitlines() if code == 0 and len(out.splitlines()) == len(names) else names
    return {n: short_kernel_name(p) for n, p in zip(names, plain)}


def short_kernel_name(kernel: str) -> str:
    """`void (anonymous namespace)::select_medoids<float>(float const*, int)` -> `select_medoids<float>`."""
    name, depth = kernel.replace("(anonymous namespace)::", "").removeprefix("void "), 0
    for i, ch in enumerate(name):
        depth += (ch == "<") - (ch == ">")
        if ch == "(" and depth == 0:
            name = name[:i]  # the parameter list
            break
    return re.sub(r"^(\w+::)+", "", name)


def test_files() -> list[str]:
    """The test files that hold GPU tests (the others need packages a bare GPU machine lacks)."""
    return [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "tests").glob("test_*.py"))
        if "pytest.mark.gpu" in p.read_text()
    ]


def stage_pytest(args, rows: Rows) -> int:
    if importlib.util.find_spec("pytest") is None:
        return rows.skip(
            "pytest",
            "pytest is not installed in this python: pass --wheels DIR with its wheels (make gpu-check-wheels)",
        )
    files, report = test_files(), args.results / "pytest.xml"
    report.unlink(missing_ok=True)
    # conftest's plugins_build fixture reuses the build stage's folder (TPDEPLOY_PLUGINS_BUILD) instead of building
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={report}", *files]
    print(" ".join(cmd), flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO)
    interrupted = False
    try:  # stopped like Ctrl+C before the stage's time limit, pytest still writes the report of what ran
        code = proc.wait(timeout=float(os.environ.get(STAGE_SECONDS, 600)) - EXIT_SECONDS - PYTEST_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        interrupted = True
        proc.send_signal(signal.SIGINT)
        code = proc.wait()
    if not report.is_file():
        rows.add("pytest " + " ".join(files), f"exit {code}, no report", FAIL)
        return rows.exit_status()
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    rows.add(
        "pytest " + " ".join(files),
        f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, "
        f"{counts['skipped']} skipped in {time.monotonic() - started:.0f} s (pytest.xml)"
        + ("; interrupted at the stage's time limit: the tests after these did not run" if interrupted else ""),
        "timed out" if interrupted else "ok" if code == 0 and passed + counts["skipped"] == counts["tests"] else FAIL,
        passed=passed,
        **counts,
    )
    for case in suite.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            rows.add(f"{case.get('classname')}::{case.get('name')}", first_line(problem.get("message") or ""), FAIL)
    return rows.exit_status()


SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
SANITIZER_REFUSAL = r"(?i)device not supported"  # seen on gVisor, then error 999 at the first allocation
WORKLOAD_DONE = "launches of the kernels"  # the workload's last line: it ran to its end under the tool


def stage_sanitizer(args, rows: Rows) -> int:
    workload = [
        sys.executable,
        str(HERE / "gpu_measure.py"),
        "sanitizer-workload",
        "--results",
        str(args.results),
        *(["--dry-run"] * args.dry_run),
    ]
    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer is None:  # the workload alone, so that its Python has run
        done = subprocess.run(workload, capture_output=True, text=True, errors="replace")
        print(done.stdout[-2000:] + done.stderr[-4000:], flush=True)
        rows.add(
            "workload (gpu_measure.py sanitizer-workload)",
            first_line(done.stdout, WORKLOAD_DONE) if done.returncode == 0 else f"exit {done.returncode}",
            "ok" if done.returncode == 0 else FAIL,
        )
        for tool in SANITIZER_TOOLS:
            rows.skip(tool, "dry run: no compute-sanitizer" if args.dry_run else "compute-sanitizer not found")
        return rows.exit_status()
    deadline = time.monotonic() + float(os.environ.get(STAGE_SECONDS, 600)) - EXIT_SECONDS
    # without torch's caching allocator every tensor is an allocation of its own, so memcheck sees its bounds
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    output_path, refused = args.results / "sanitizer.txt", None
    output_path.write_text("")
    for i, tool in enumerate(SANITIZER_TOOLS):
        if refused:
            rows.skip(tool, refused)
            continue
        share = (deadline - time.monotonic()) / (len(SANITIZER_TOOLS) - i)  # what one tool leaves goes to the next
        if share < MIN_STAGE_SECONDS:
            rows.skip(tool, f"no time left: {max(share, 0):.0f} s of the stage's time for it")
            continue
        command = [sanitizer, "--tool", tool, "--error-exitcode", "9", "--print-limit", "20", *workload]
        started = time.monotonic()
        code, output = run_into(command, output_path, share, env)
        seconds = time.monotonic() - started
        if re.search(SANITIZER_REFUSAL, output):
            refused = (
                f"compute-sanitizer refuses this device: {first_line(output, SANITIZER_REFUSAL).strip('= ')[:160]}"
            )
            rows.skip(tool, refused)
        elif code is None:
            rows.add(
                tool, f"ran past its share of the stage's time, {share:.0f} s; its output: sanitizer.txt", "timed out"
            )
        else:
            summary = [line.strip("= ").strip() for line in output.splitlines() if "SUMMARY" in line]
            result = summary[-1] if summary else f"exit {code}: {first_line(output[-2000:], 'rror')}"
            ran = WORKLOAD_DONE in output  # an exit status of 0 proves nothing if the workload never ran
            rows.add(
                tool,
                f"{result}{'' if ran else '; the workload did not run to its end'} ({seconds:.0f} s, sanitizer.txt)",
                "ok" if code == 0 and ran else FAIL,
            )
    return rows.exit_status()


def run_into(command: list[str], path: Path, limit: float, env: dict) -> tuple[int | None, str]:
    """Runs `command` in a session of its own, its output appended to `path` as it comes (a kill keeps what it
    wrote), after a line naming it. (exit status, its output); None for the status when it ran past `limit`
    seconds and was killed with its children."""
    with open(path, "a") as out:
        out.write(f"=== {' '.join(command)} (at most {limit:.0f} s)\n")
        out.flush()
        start = path.stat().st_size
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    with open(path, "rb") as f:
        f.seek(start)
        output = f.read().decode(errors="replace")
    print(output[-3000:], flush=True)
    return code, output


STAGES = {
    "machine": stage_machine,
    "install": stage_install,
    "build": stage_build,
    "pytest": stage_pytest,
    "sanitizer": stage_sanitizer,
}

if __name__ == "__main__":
    sys.exit(main())
