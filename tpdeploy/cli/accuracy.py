"""`tpdeploy eval` and `tpdeploy sweep`: accuracy of the files you ship, and what each pooling ratio costs in it."""

from __future__ import annotations

import os

import click

from tpdeploy import runtime
from tpdeploy.artifacts.files import check_output
from tpdeploy.cli.console import ProgressBar, emit, note, progress
from tpdeploy.cli.options import POSITIVE, Number, RuntimeArgs, json_option, runtime_options, threads_option
from tpdeploy.data import datasets
from tpdeploy.model.plan import DEFAULT_ARCH
from tpdeploy.tasks import sweep as sweeping

data_option = click.option(
    "--data", required=True, help="class folders (ImageNet synset folders too), or a flat folder of images"
)
labels_option = click.option(
    "--labels",
    help="for a flat --data folder: a file,label CSV, an ImageId,PredictionString "
    "CSV, or the ILSVRC2012 devkit's validation ground truth (with meta.mat beside it) or "
    "devkit folder",
)
workers_option = click.option(
    "--workers", type=POSITIVE, default=datasets.DEFAULT_WORKERS, show_default=True, help="threads decoding images"
)


@click.command("eval")
@click.argument("model_file")
@data_option
@labels_option
@runtime_options()
@click.option("--batch", type=POSITIVE, help="images per inference call (default 16, or the file's fixed batch)")
@workers_option
@click.option("--limit", type=POSITIVE, help="evaluate N images, spread evenly over the folder")
@click.option(
    "--baseline",
    help="a second model (e.g. dense DeiT) on the same images: its accuracy and the two models' top-1 agreement",
)
@json_option
def eval_command(model_file, data, labels, run: RuntimeArgs, batch, workers, limit, baseline, json_path):
    """Top-1 and top-5 accuracy (with standard errors) of MODEL_FILE on --data, preprocessed as recorded in the
    file; with --baseline, both models on the same images and their top-1 agreement."""
    from tpdeploy.tasks import evaluate
    from tpdeploy.tasks.bench import machine

    models = [model_file] + ([baseline] if baseline else [])
    paths = [runtime.split_reference(m)[1] for m in models]
    inputs = run.model_inputs(models) + datasets.data_inputs(data, labels)
    if json_path:
        check_output(json_path, inputs=inputs)
    runners = run.load(models, sharing="the decoding threads share these cores")
    names = [os.path.basename(p) for p in paths]
    dataset = evaluate.open_eval_data(runners, names, data, labels, limit)
    progress(f"evaluating {len(dataset)} images of {data} ({dataset.layout})")
    report = evaluate.evaluate(
        runners, dataset, batch or evaluate.default_batch(runners), workers, names=names, progress=ProgressBar("eval")
    )
    emit(report, json_path, inputs, extra={"model": model_file, "baseline": baseline, "machine": machine()})


@click.command()
@click.option("--arch", default=DEFAULT_ARCH, show_default=True, help="the architecture to sweep")
@click.option("--checkpoint", help="timm/DeiT state dict (default: seeded-random weights)")
@click.option(
    "--methods", default=",".join(sweeping.DEFAULT_METHODS), show_default=True, help="pooling methods, comma-separated"
)
@click.option(
    "--ratios",
    default=",".join(map(str, sweeping.DEFAULT_RATIOS)),
    show_default=True,
    help="FLOPs ratios, comma-separated",
)
@click.option(
    "--precisions",
    default=sweeping.FP32,
    show_default=True,
    help=f"comma-separated, of {', '.join(sweeping.PRECISIONS)}: int8 adds each point quantized (`tpdeploy quantize`)",
)
@click.option("--calib", help="calibration images of the int8 points, as `quantize --calib` (default: built-in ones)")
@click.option(
    "--finetuned",
    multiple=True,
    help="a checkpoint of `tpdeploy finetune` (fine-tuned from --checkpoint), or a folder of them: a point each; "
    "repeatable",
)
@click.option("--data", help="images as for `tpdeploy eval` (default: generated images, agreement with dense)")
@labels_option
@click.option(
    "--limit",
    type=POSITIVE,
    help=f"evaluate N images, spread evenly (without --data: generate N; default {sweeping.GENERATED_IMAGES})",
)
@click.option("--backend", type=click.Choice(sweeping.BACKENDS), default=sweeping.BACKENDS[0], show_default=True)
@click.option(
    "--batch", type=POSITIVE, default=sweeping.DEFAULT_BATCH, show_default=True, help="batch for evaluation and timing"
)
@workers_option
@threads_option
@click.option(
    "--duration",
    type=Number(0.0, open_interval=True),
    default=sweeping.DEFAULT_DURATION_S,
    show_default=True,
    help=f"seconds of interleaved timing per point (and {sweeping.MIN_TIMING_ROUNDS} rounds at least)",
)
@click.option("--warmup-ms", type=Number(0.0), default=sweeping.DEFAULT_WARMUP_MS, show_default=True)
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    help="folder for results.csv, results.json, sweep.png (an interrupted sweep resumes there)",
)
def sweep(
    arch,
    checkpoint,
    methods,
    ratios,
    precisions,
    calib,
    finetuned,
    data,
    labels,
    limit,
    backend,
    batch,
    workers,
    threads,
    duration,
    warmup_ms,
    out_dir,
):
    """Accuracy against GMACs and measured latency for every pooling method and FLOPs ratio, and dense: the
    paper's comparison on your data and hardware."""
    plan = sweeping.SweepPlan(
        arch,
        checkpoint,
        sweeping.parse_list("methods", methods, str),
        sweeping.parse_list("ratios", ratios, float),
        out_dir,
        data=data,
        labels=labels,
        limit=limit,
        backend=backend,
        batch=batch,
        workers=workers,
        threads=threads,
        duration_s=duration,
        warmup_ms=warmup_ms,
        precisions=tuple(sweeping.parse_list("precisions", precisions, str)),
        calib=calib,
        finetuned=finetuned,
    )
    job = sweeping.Sweep(plan, progress)
    if job.dense_model.origin.checkpoint_path is None:
        note(
            f"no --checkpoint given: {job.dense_model.cfg.name} has seeded-random weights (seed "
            f"{job.dense_model.origin.seed})"
        )
    emit(job.run_all(progress_bar=ProgressBar))
