"""benchmarks/gpu_check.py, the one call on a GPU machine, as a dry run on this CPU: every stage and every Python path
of it runs (the CUDA emulator's kernels standing in, CPU tensors for CUDA ones), and the table and the JSON lines come
out; the same on a machine without g++ and with a compute-sanitizer that refuses the device (each taken from PATH, as
the real run takes them); and its stage runner: a stage that fails or hangs stops none of the others, and what it
wrote survives."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from conftest import REPO, load_script

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
gpu_check = load_script("gpu_check", SCRIPT)
KERNELS = ("gram_f16", "dot_simt", "select_medoids", "gather_rows", "kmeans_init", "kmeans_step", "cast_centres")
ROW_STATUSES = {"ok", "skipped", "met", "missed", "", "spills", "fallback", "timed out"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, request):
    """(completed process, results folder, records of gpu_check.jsonl) of one dry run. Where nvcc is here, its build
    stage rebuilds the session's CMake build in place (same architecture and flags: nothing recompiles), and its
    pytest stage reuses that build."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++ (C++17) to build the CUDA emulator")
    results, wheels = tmp_path_factory.mktemp("gpu-check"), tmp_path_factory.mktemp("wheels")  # pytest is here
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--dry-run",
        "--results",
        str(results),
        "--budget",
        "300",
        "--wheels",
        str(wheels),
    ]
    if shutil.which("nvcc") and shutil.which("cmake"):
        build = request.getfixturevalue("plugins_build")
        arch = re.search(r"CMAKE_CUDA_ARCHITECTURES:\w+=(\d+)", (build / "CMakeCache.txt").read_text())[1]
        cmd += ["--build-dir", str(build), "--cuda-arch", arch]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    records = [json.loads(line) for line in (results / gpu_check.JSONL).read_text().splitlines()]
    return done, results, records


def rows(records, stage):
    return {r["what"]: r for r in records if r.get("stage") == stage and r["what"] != "stage"}


def outcomes(records):
    return {r["stage"]: r["status"] for r in records if r.get("what") == "stage"}


def test_dry_run_runs_every_stage(dry_run):
    done, _, records = dry_run
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert records[0]["dry_run"] is True
    outcomes = {r["stage"]: r for r in records if r.get("what") == "stage"}
    assert list(outcomes) == list(gpu_check.BUDGETS)  # each stage once, in order
    assert records[-1] == {
        "stage": "check",
        "what": "missing answers",
        "result": "none",
        "status": "ok",
        "data": {"missing": []},
    }
    for stage, outcome in outcomes.items():
        assert outcome["status"] in ("ok", "skipped"), outcome
        assert 0 <= outcome["seconds"] <= outcome["limit"] + 1
        mine = rows(records, stage).values()
        assert mine, f"{stage} added no row"
        if outcome["status"] == "skipped":  # a stage that did not apply says why
            assert any(r["status"] == "skipped" and re.search(r"skipped \(.+\)", r["result"]) for r in mine)
    for r in records[1:-1]:
        assert set(r) >= {"stage", "what", "status"}
        if r["what"] == "stage":
            continue
        assert r["status"] in ROW_STATUSES, r
        if r["status"] == "skipped":
            assert re.fullmatch(r"skipped \(.+\)", r["result"]), r


def test_dry_run_prints_one_table_and_logs_it(dry_run):
    done, results, records = dry_run
    table = done.stdout[done.stdout.index("| stage | what | result | status |") :].splitlines()
    assert table[1] == "| --- | --- | --- | --- |"
    body = table[2:]
    assert len(body) == len(records) - 1  # a line a row, and one for each stage's outcome
    assert all(line.startswith("| ") and line.endswith(" |") and line.count(" | ") == 3 for line in body)
    assert [line.split(" | ")[0].removeprefix("| ") for line in body if "| **stage** |" in line] == list(
        gpu_check.BUDGETS
    )
    log = (results / gpu_check.LOG).read_text()
    assert log.rstrip("\n").endswith(table[-1])
    for stage in gpu_check.BUDGETS:  # every stage's own output went to the log too
        assert f"=== {stage}: " in log and f"[{stage}] " in log


def test_dry_run_answers_every_question_of_the_gpu_run(dry_run):
    _, results, records = dry_run
    assert rows(records, "machine")["nvidia-smi"]["result"] == "skipped (dry run)"
    assert rows(records, "torch")["CUDA"]["result"] == "skipped (dry run)"
    install = rows(records, "install")
    assert install["pip install -e . (pip --dry-run)"]["status"] == "ok"
    assert install["tpdeploy resolves from"]["status"] == "ok"  # this tree's, as every stage gets it
    assert "tpdeploy.presets resolve from" in install  # what an earlier install gives: nothing is installed
    assert next(r for what, r in install.items() if what.startswith("pip install pytest from"))["status"] == "ok"

    build = rows(records, "build")
    assert build["emulated kernels (harness/cuda_emulator, g++)"]["status"] == "ok"
    if shutil.which("nvcc") and shutil.which("cmake"):
        assert build["build"]["status"] == "ok"
        for kernel in KERNELS:  # registers, shared memory, spills of every kernel, from ptxas -v
            assert re.search(r"\d+ registers, \d+ B shared", build[f"ptxas {kernel}"]["result"])
        assert (results / "ptxas.txt").is_file()
    else:
        assert build["cmake, nvcc and ptxas -v"]["status"] == "skipped"

    kernels = rows(records, "kernels")
    for label in ("B 1/8/64, DeiT sizes", "N, C at the limits"):
        data = kernels[label]["data"]
        assert kernels[label]["status"] == "ok" and data["cases"] >= 40 and data["failures"] == 0
    assert kernels["beyond the limits (N=1025, C=65537, B=65536)"]["status"] == "ok"

    timing = rows(records, "timing")
    ops = [r for what, r in timing.items() if what.startswith("op ") and "B=" in what]
    assert len(ops) == 3 and all(r["data"]["ms"] > 0 and r["data"]["floor_ms"] > 0 for r in ops)
    assert any("with significance" in what for what in timing)
    assert sum("all kernels" in what for what in timing) == 3  # a breakdown of each op

    model = rows(records, "model")
    assert sum(r["status"] == "ok" for what, r in model.items() if "kernels vs reference" in what) == 2  # fp32, fp16
    assert sum(what.startswith("Token-Pooled (0.58x) vs dense") for what in model) == 2  # B = 1, 2

    pytest_row = next(iter(rows(records, "pytest").values()))
    assert pytest_row["status"] == "ok" and pytest_row["data"]["tests"] > 0 and pytest_row["data"]["failures"] == 0
    assert (results / "pytest.xml").is_file()
    sanitizer = rows(records, "sanitizer")
    if shutil.which("compute-sanitizer") is None:
        assert sanitizer["workload (gpu_measure.py sanitizer-workload)"]["status"] == "ok"
        assert all(
            sanitizer[tool]["result"] == "skipped (dry run: no compute-sanitizer)" for tool in gpu_check.SANITIZER_TOOLS
        )
    else:  # it ran over the emulated workload
        assert all(sanitizer[tool]["status"] == "ok" for tool in gpu_check.SANITIZER_TOOLS)


# --- what a machine without g++, or whose compute-sanitizer refuses the GPU, gets ------------------------------


def path_without(folder, pattern):
    """A PATH of one folder holding a link to each program on $PATH whose name does not match `pattern` (the first
    of a name, as PATH finds it): a machine without those programs."""
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = folder / entry.name
            if not re.fullmatch(pattern, entry.name) and not os.path.lexists(link):
                link.symlink_to(entry.path)
    return str(folder)


GPP = r"(.+-)?[gc]\+\+(-[\d.]+)?"  # g++, c++, g++-12, x86_64-linux-gnu-g++-12 (not c++filt)


def dry_run_with(path, results, *args, **env):
    """(exit status, records of gpu_check.jsonl, table) of a dry run with PATH=path (and `env`)."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--results", str(results), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": path, **env},
    )
    records = [json.loads(line) for line in (results / gpu_check.JSONL).read_text().splitlines()]
    return done.returncode, records, done.stdout[done.stdout.index("| stage | what | result | status |") :]


@pytest.mark.slow
def test_without_gpp_one_row_fails_and_the_stages_that_need_the_kernels_say_why(tmp_path):
    path = path_without(tmp_path / "bin", GPP)
    assert shutil.which("g++", path=path) is None
    code, records, table = dry_run_with(path, tmp_path / "results", "--budget", "300")
    assert code == 1  # a failure
    failed = [r for r in records if r.get("status") == gpu_check.FAIL]
    assert [(r["stage"], r["what"]) for r in failed] == [("build", "g++")]  # one clear row
    assert "| build | g++ | not found: the CUDA emulator, CMake's C++ and nvcc's host side need it | FAIL |" in table
    status = outcomes(records)
    assert status["build"] == "failed (exit 1)"
    assert status["machine"] == status["install"] == "ok"
    for stage in ("kernels", "timing", "model", "sanitizer"):
        assert status[stage] == "skipped (no libtokenpool_emulated.so: the build stage made none)", stage
    if shutil.which("nvcc", path=path) and shutil.which("cmake", path=path):  # else its tests skip without nvcc
        assert status["pytest"] == "skipped (no libtokenpool_kernels.so: the build stage made none)"
    summary = records[-1]
    assert summary["stage"] == "check" and summary["status"] == "missing"
    assert "kernels (no libtokenpool_emulated.so: the build stage made none)" in summary["data"]["missing"]
    assert table.rstrip("\n").endswith(f"| check | missing answers | {summary['result']} | missing |")


FAKE_SANITIZER = """#!/bin/sh
# compute-sanitizer --tool TOOL --OPTION VALUE ... WORKLOAD..., standing in for the real one: memcheck runs the
# workload and passes, racecheck hangs, the others refuse the device as compute-sanitizer does on gVisor
tool=$2
echo "$tool" >> "$FAKE_SANITIZER_LOG"
while [ "${1#--}" != "$1" ]; do shift 2; done
echo "========= COMPUTE-SANITIZER"
case $tool in
    memcheck) "$@" && echo "========= ERROR SUMMARY: 0 errors" ;;
    racecheck) echo "racecheck started"; exec sleep 600 ;;
    *) echo "========= Error: Device not supported"; echo "CUDA error: unknown error (999)"; exit 1 ;;
esac
"""


@pytest.mark.slow
def test_a_sanitizer_that_refuses_the_device_or_hangs_is_recorded_and_the_check_goes_on(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "compute-sanitizer").write_text(FAKE_SANITIZER)
    (fake / "compute-sanitizer").chmod(0o755)
    # without nvcc and cmake the build stage builds the emulator alone: seconds, not a CMake build
    path = f"{fake}{os.pathsep}{path_without(tmp_path / 'bin', r'nvcc|cmake|compute-sanitizer')}"
    log = tmp_path / "invocations"
    code, records, table = dry_run_with(
        path, tmp_path / "results", "--budget", "80", "--stages", "build,sanitizer", FAKE_SANITIZER_LOG=str(log)
    )
    sanitizer = rows(records, "sanitizer")
    assert sanitizer["memcheck"]["status"] == "ok" and "0 errors" in sanitizer["memcheck"]["result"]
    assert sanitizer["racecheck"]["status"] == "timed out"  # within its share of what the budget left
    refused = "skipped (compute-sanitizer refuses this device: Error: Device not supported)"
    assert sanitizer["initcheck"]["result"] == sanitizer["synccheck"]["result"] == refused
    assert log.read_text().split() == ["memcheck", "racecheck", "initcheck"]  # none after the refusal
    output = (tmp_path / "results" / "sanitizer.txt").read_text()
    assert "launches of the kernels (emulated: dry run)" in output  # memcheck's workload ran to its end
    assert "racecheck started" in output  # written as it ran, kept when it was killed
    assert outcomes(records)["sanitizer"] == "ok"
    missing = records[-1]["data"]["missing"]
    assert len(missing) == 3 and all(
        m.startswith(("sanitizer racecheck", "sanitizer initcheck", "sanitizer synccheck")) for m in missing
    )
    assert code == gpu_check.INCOMPLETE  # nothing failed, answers are missing: not a silent 0
    assert "| check | missing answers | sanitizer racecheck" in table


def process_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # killed, not yet reaped
    except FileNotFoundError:
        return True


def test_a_stage_that_fails_or_hangs_stops_no_other(tmp_path):
    python = [sys.executable, "-c"]
    hangs = (
        "import subprocess, time; p = subprocess.Popen(['sleep', '60']); print('started', p.pid, flush=True); "
        "time.sleep(60)"
    )
    stages = [
        gpu_check.Stage("hangs", 2, python + [hangs]),
        gpu_check.Stage("fails", 20, python + ["print('failing'); raise SystemExit(3)"]),
        gpu_check.Stage("does not apply", 20, python + [f"raise SystemExit({gpu_check.SKIPPED})"]),
        gpu_check.Stage("not selected", 20, python + ["raise SystemExit(5)"], skip="not selected"),
        gpu_check.Stage("works", 20, python + ["print('done')"]),
        gpu_check.Stage("needs a file", 20, python + ["print('never')"], needs=tmp_path / "library.so"),
        gpu_check.Stage("takes the rest", None, python + ["import time; time.sleep(60)"]),
        gpu_check.Stage("too late", 20, python + ["print('never')"]),
    ]
    started = time.monotonic()
    outcomes = gpu_check.run_stages(stages, tmp_path, budget=5, min_seconds=0.5)
    assert time.monotonic() - started < 15
    statuses = {o["stage"]: o["status"] for o in outcomes}
    assert statuses["hangs"] == "timed out after 2 s"
    assert statuses["fails"] == "failed (exit 3)"
    assert statuses["does not apply"] == "skipped"
    assert statuses["not selected"] == "skipped (not selected)"
    assert statuses["works"] == "ok"
    assert statuses["needs a file"] == "skipped (no library.so: the build stage made none)"
    assert re.fullmatch(r"timed out after [23] s", statuses["takes the rest"])  # what the budget had left
    assert statuses["too late"].startswith("skipped (no time left")
    log = (tmp_path / gpu_check.LOG).read_text()
    assert "failing" in log and "done" in log and "never" not in log
    pid = int(re.search(r"started (\d+)", log)[1])  # written before the time-out, kept
    assert process_gone(pid)  # the hung stage's own child was killed with it
    lines = (tmp_path / gpu_check.JSONL).read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == [s.name for s in stages]
