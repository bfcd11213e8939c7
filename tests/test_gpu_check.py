"""benchmarks/gpu_check.py, the one call on a GPU machine, as a dry run on this CPU: every stage and every Python path
of it runs (the CUDA emulator's kernels standing in, CPU tensors for CUDA ones), and the table and the JSON lines come
out; and its stage runner: a stage that fails or hangs stops none of the others, and what it wrote survives."""

import json
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
ROW_STATUSES = {"ok", "skipped", "met", "missed", "", "spills"}


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


def test_dry_run_runs_every_stage(dry_run):
    done, _, records = dry_run
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert records[0]["dry_run"] is True
    outcomes = {r["stage"]: r for r in records if r.get("what") == "stage"}
    assert list(outcomes) == list(gpu_check.BUDGETS)  # each stage once, in order
    for stage, outcome in outcomes.items():
        assert outcome["status"] in ("ok", "skipped"), outcome
        assert 0 <= outcome["seconds"] <= outcome["budget"]
        mine = rows(records, stage).values()
        assert mine, f"{stage} added no row"
        if outcome["status"] == "skipped":  # a stage that did not apply says why
            assert any(r["status"] == "skipped" and re.search(r"skipped \(.+\)", r["result"]) for r in mine)
    for r in records[1:]:
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
    assert install["tpdeploy resolves from"]["status"] == "ok"  # tpdeploy.presets from models/ of this tree
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
    assert sanitizer["workload (gpu_measure.py sanitizer-workload)"]["status"] == "ok"
    assert all(sanitizer[tool]["result"] == "skipped (dry run)" for tool in gpu_check.SANITIZER_TOOLS)


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
        gpu_check.Stage("takes the rest", 20, python + ["import time; time.sleep(60)"]),
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
    assert re.fullmatch(r"timed out after [23] s", statuses["takes the rest"])  # what the budget had left
    assert statuses["too late"].startswith("skipped (no time left")
    log = (tmp_path / gpu_check.LOG).read_text()
    assert "failing" in log and "done" in log and "never" not in log
    pid = int(re.search(r"started (\d+)", log)[1])  # written before the time-out, kept
    assert process_gone(pid)  # the hung stage's own child was killed with it
    lines = (tmp_path / gpu_check.JSONL).read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == [s.name for s in stages]
