"""`tpdeploy finetune`: the pooled model learns from the dense one; `torchrun ... -m tpdeploy finetune` for many
processes, GPUs or nodes."""

from __future__ import annotations

import click

from tpdeploy.artifacts.files import check_output
from tpdeploy.cli.accuracy import labels_option, workers_option
from tpdeploy.cli.console import ProgressBar, emit, progress
from tpdeploy.cli.options import POSITIVE, ModelArgs, Number, json_option, model_options
from tpdeploy.tasks import finetune as stage


@click.command()
@model_options
@click.option("--data", help="training images as for `tpdeploy eval` (default: generated images)")
@labels_option
@click.option("--val", help="held-out images: the agreement with the teacher before and after every epoch")
@click.option(
    "--limit", type=POSITIVE, help=f"train on N images (without --data: generate N; default {stage.GENERATED_IMAGES})"
)
@click.option(
    "--teacher",
    default=stage.TEACHER_DENSE,
    show_default=True,
    help="dense: the dense model of the same weights; or a checkpoint of the architecture",
)
@click.option("--epochs", type=POSITIVE, default=stage.DEFAULT_EPOCHS, show_default=True)
@click.option(
    "--batch",
    type=POSITIVE,
    default=stage.DEFAULT_BATCH,
    show_default=True,
    help="images per step, all processes together",
)
@click.option(
    "--lr",
    type=Number(0.0, open_interval=True),
    default=stage.DEFAULT_LR,
    show_default=True,
    help="AdamW's peak learning rate",
)
@click.option(
    "--temperature", type=Number(0.0, open_interval=True), default=stage.DEFAULT_TEMPERATURE, show_default=True
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=stage.DEFAULT_SEED,
    show_default=True,
    help="image order and augmentation",
)
@click.option("--amp", is_flag=True, help="float16 autocast and gradient scaling (CUDA)")
@click.option("--device", type=click.Choice(stage.DEVICES), help="default: cuda where PyTorch sees a GPU")
@workers_option
@click.option(
    "-o", "--output", required=True, help="the fine-tuned checkpoint (.pt); OUTPUT.resume beside it until done"
)
@json_option
def finetune(
    model: ModelArgs,
    data,
    labels,
    val,
    limit,
    teacher,
    epochs,
    batch,
    lr,
    temperature,
    seed,
    amp,
    device,
    workers,
    output,
    json_path,
):
    """Fine-tune a Token-Pooled ViT by distillation from the dense model; an interrupted run resumes."""
    training = stage.Training(epochs=epochs, batch=batch, lr=lr, temperature=temperature, seed=seed, amp=amp)
    job = stage.FinetuneJob(
        model.plan(),
        output,
        model.checkpoint,
        teacher,
        data,
        labels,
        val,
        limit,
        training,
        workers,
        device,
        tuple(model.inputs()),
    )
    if json_path:
        check_output(json_path, inputs=job.all_inputs + [output])
    report = stage.finetune(job, progress, ProgressBar)
    if report.rank == 0:
        emit(report, json_path, job.all_inputs + [output])
