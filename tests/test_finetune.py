"""`tpdeploy finetune`: distillation raises the pooled model's agreement with the dense one; two torchrun processes
learn what one does; an interrupted run resumes to the uninterrupted result; the checkpoint records its plan."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_cli import assert_user_error, run

from tpdeploy.artifacts.files import sha256
from tpdeploy.artifacts.onnx_file import OnnxFile
from tpdeploy.data.samples import sample_rgb_images
from tpdeploy.errors import UserError
from tpdeploy.model.factory import create_model
from tpdeploy.model.plan import resolve_plan
from tpdeploy.tasks import finetune, sweep

Image = pytest.importorskip("PIL.Image", reason="needs Pillow")

TRAIN = ["--arch", "deit_tiny", "--flops-ratio", "0.45", "--epochs", "2", "--batch", "8"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """deit_tiny 0.45x distilled from its dense model on 64 generated images, 3 short epochs, with the agreement
    on the 128 held-out generated images before and after each."""
    folder = tmp_path_factory.mktemp("tuned")
    training = finetune.Training(epochs=3, batch=8, lr=3e-5)
    job = finetune.FinetuneJob(
        resolve_plan("deit_tiny", flops_ratio=0.45), str(folder / "tuned.pt"), limit=64, training=training
    )
    return job, finetune.finetune(job)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 structured images in a folder: 3 steps of 8 an epoch."""
    folder = tmp_path_factory.mktemp("train")
    for i in range(24):
        Image.fromarray(sample_rgb_images(1, seed=500 + i)[0]).save(folder / f"{i:02d}.png")
    return folder


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_distillation_raises_the_agreement_with_the_teacher_and_lowers_the_loss(tuned):
    _, report = tuned
    before, after = report.before, report.epochs[-1].held_out
    curve = [f"{e.held_out.agreement.value:.1%}" for e in report.epochs]
    message = f"held-out agreement before {before.agreement.value:.1%}, after each epoch {curve}"
    assert before.images == after.images == finetune.VALIDATION_IMAGES
    assert after.agree > before.agree, message
    losses = [e.loss for e in report.epochs]
    assert losses[-1] < losses[0], f"loss per epoch {losses}"
    assert [e.steps for e in report.epochs] == [8, 8, 8] and report.images == 64


@pytest.mark.slow
def test_the_checkpoint_builds_its_own_plan_and_exports_with_its_origin(tuned, tmp_path):
    job, report = tuned
    model = create_model(checkpoint=job.output)  # the plan comes with the weights
    assert model.plan == job.plan and model.origin.checkpoint_sha256 == sha256(job.output) == report.sha256
    assert model.origin.finetuned_from == "seed:0"
    with pytest.raises(UserError, match="was fine-tuned for deit_tiny wkmedoids .* not deit_tiny wkmedoids"):
        create_model("deit_tiny", checkpoint=job.output, flops_ratio=0.58)
    exported = tmp_path / "tuned.onnx"
    result = run("export", "--checkpoint", job.output, "-o", exported)
    assert result.returncode == 0, result.stderr
    recipe = OnnxFile.open(str(exported)).recipe
    assert recipe.checkpoint_sha256 == report.sha256 and recipe.finetuned_from == "seed:0"
    assert list(recipe.tokens) == list(job.plan.tokens) and recipe.method == job.plan.method
    info = run("info", exported)
    assert f"checkpoint sha256 {report.sha256[:16]}..., fine-tuned from seeded-random weights (seed 0)" in info.stdout
    assert_user_error(
        run("export", "--checkpoint", job.output, "--preset", "deit_tiny_058", "-o", tmp_path / "other.onnx"),
        "was fine-tuned for deit_tiny wkmedoids (T=3) at 0.45x FLOPs",
    )
    assert not (tmp_path / "other.onnx").exists()


@pytest.mark.slow
def test_sweep_puts_the_finetuned_point_beside_the_others(tuned, tmp_path):
    job, report = tuned
    plan = sweep.SweepPlan(
        "deit_tiny",
        None,
        ["wkmedoids"],
        [0.45],
        str(tmp_path / "out"),
        limit=4,
        backend="torch",
        batch=2,
        duration_s=0.05,
        warmup_ms=0.0,
        finetuned=(os.path.dirname(job.output),),
    )
    result = sweep.Sweep(plan).run_all()
    labels = [p.label for p in result.points]
    assert labels == ["dense", "wkmedoids 0.45x", f"wkmedoids 0.45x tuned {report.sha256[:8]}"]
    plain, tuned_point = result.points[1:]
    assert tuned_point.tokens == plain.tokens == list(job.plan.tokens) and tuned_point.finetuned == report.sha256
    assert sweep.Sweep(plan).todo == []  # resumed: the fine-tuned point is measured once
    dense_ck = tmp_path / "dense.pth"
    torch.save(create_model("deit_tiny", method="none", seed=1).state_dict(), dense_ck)
    other = sweep.SweepPlan(**{**vars(plan), "checkpoint": str(dense_ck), "out_dir": str(tmp_path / "o2")})
    with pytest.raises(UserError, match="learnt from seed:0, not from the sweep's dense model"):
        sweep.Sweep(other)


@pytest.mark.slow
def test_two_torchrun_processes_learn_what_one_process_learns(images, tmp_path):
    one = run("finetune", *TRAIN, "--data", images, "-o", tmp_path / "one.pt")
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.run(
        [*torchrun, "-m", "tpdeploy", "finetune", *TRAIN, "--data", str(images), "-o", str(tmp_path / "two.pt")],
        capture_output=True,
        text=True,
        timeout=600,
        env=ONE_THREAD,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "over 2 processes" in two.stdout and two.stdout.count("wrote ") == 1  # rank 0 reports and writes
    a, b = weights(tmp_path / "one.pt"), weights(tmp_path / "two.pt")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert a.keys() == b.keys() and worst < 1e-5, f"largest weight difference {worst:.2e}"
    assert sorted(os.listdir(tmp_path)) == ["one.pt", "two.pt"]  # no resume file left


@pytest.mark.slow
def test_sigint_mid_epoch_keeps_the_last_epoch_and_the_rerun_resumes_to_the_same_weights(images, tmp_path):
    out = tmp_path / "tuned.pt"
    args = [sys.executable, "-m", "tpdeploy", "finetune", *TRAIN, "--data", str(images), "-o", str(out)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stderr:
        seen.append(line)
        if line.startswith("epoch 1/2: loss"):  # epoch 1 saved; epoch 2 is under way
            p.send_signal(signal.SIGINT)
            break
    stderr = "".join(seen) + p.stderr.read()
    p.wait(timeout=120)
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    resume = tmp_path / ("tuned.pt" + finetune.RESUME_SUFFIX)
    assert sorted(os.listdir(tmp_path)) == [resume.name]  # no output, no temporary file
    assert torch.load(resume, weights_only=True)["epoch"] == 1

    assert_user_error(
        run("finetune", *TRAIN, "--lr", "1e-4", "--data", images, "-o", out),
        "holds a fine-tuning run of another configuration (it differs in training)",
    )
    resumed = run("finetune", *TRAIN, "--data", images, "-o", out)
    assert resumed.returncode == 0 and "resuming after epoch 1" in resumed.stderr, resumed.stderr
    assert "resumed after epoch 1" in resumed.stdout and sorted(os.listdir(tmp_path)) == ["tuned.pt"]
    uninterrupted = run("finetune", *TRAIN, "--data", images, "-o", tmp_path / "straight.pt")
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    a, b = weights(out), weights(tmp_path / "straight.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run's weights differ from the uninterrupted run's"


def test_the_schedule_warms_up_then_decays_to_one_percent():
    t = finetune.Training(warmup=0.1)
    factors = np.array([t.lr_factor(s, 100) for s in range(100)])
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert np.all(np.diff(factors[10:]) <= 0) and factors[-1] == pytest.approx(0.01, abs=1e-3)


def test_distillation_loss_is_kl_at_temperature_plus_cross_entropy():
    from tpdeploy.tasks.distill import distillation_loss

    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(student / 2, 1), torch.log_softmax(teacher / 2, 1), log_target=True, reduction="none"
    ).sum(1)
    loss, got_kl, ce = distillation_loss(student, teacher, None, 2.0, 0.5)
    assert torch.allclose(got_kl, 4 * kl) and ce is None and torch.equal(loss, got_kl)
    labels = torch.tensor([1, 2, 3, 4])
    loss, _, ce = distillation_loss(student, teacher, labels, 2.0, 0.25)
    assert torch.allclose(
        loss, 0.75 * 4 * kl + 0.25 * torch.nn.functional.cross_entropy(student, labels, reduction="none")
    )
