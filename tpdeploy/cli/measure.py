"""`tpdeploy bench` and `tpdeploy compare`: latency like trtexec, outputs like Polygraphy."""

from __future__ import annotations

import sys

import click

from tpdeploy import runtime
from tpdeploy.artifacts.files import check_output
from tpdeploy.cli.console import emit, progress
from tpdeploy.cli.options import POSITIVE, Number, RuntimeArgs, TimingArgs, json_option, runtime_options, timing_options
from tpdeploy.tasks import compare as comparison


@click.command()
@click.argument("model_file")
@runtime_options()
@timing_options()
@click.option("--batch", type=POSITIVE, default=1, show_default=True)
@click.option("--baseline", help="a second model (e.g. the dense model) timed interleaved in the same run")
@click.option("--no-cuda-graph", is_flag=True, help="TensorRT: enqueue directly instead of replaying a CUDA graph")
@click.option("--include-transfers", is_flag=True, help="TensorRT: time host-device copies too (trtexec 11 does not)")
@json_option
def bench(
    model_file, run: RuntimeArgs, timing: TimingArgs, batch, baseline, no_cuda_graph, include_transfers, json_path
):
    """Latency and throughput like trtexec (min/mean/median/p90/p95/p99/max)."""
    from tpdeploy.data.samples import sample_images
    from tpdeploy.tasks import bench as stage

    models = [model_file] + ([baseline] if baseline else [])
    inputs = run.model_inputs(models)
    if json_path:
        check_output(json_path, inputs=inputs)
    runners = run.load(models)
    images = sample_images(batch, runners[0].image_size, config=runners[0].data_config)
    report = stage.bench(
        runners,
        models,
        images,
        timing.warmup_ms,
        timing.iterations,
        timing.duration,
        not no_cuda_graph,
        include_transfers,
        progress,
    )
    emit(report, json_path, inputs)


@click.command()
@click.argument("model_a")
@click.argument("model_b", required=False)
@click.option("--batch", type=POSITIVE, default=comparison.DEFAULT_BATCH, show_default=True)
@click.option("--atol", type=Number(0.0), default=comparison.DEFAULT_ATOL, show_default=True)
@click.option("--rtol", type=Number(0.0), default=comparison.DEFAULT_RTOL, show_default=True)
@runtime_options()
@json_option
def compare(model_a, model_b, batch, atol, rtol, run: RuntimeArgs, json_path):
    """Run MODEL_A and MODEL_B (default: the PyTorch model MODEL_A was exported from) on the same images.

    Each is a path, optionally prefixed by a backend: ort:x.onnx, trt:x.plan, torch:x.onnx. Exits 1 when any
    logit is out of tolerance (|a - b| > atol + rtol * |b|)."""
    model_b = model_b or f"torch:{runtime.split_reference(model_a)[1]}"
    inputs = run.model_inputs([model_a, model_b])
    if json_path:
        check_output(json_path, inputs=inputs)
    a, b = (run.load([m])[0] for m in (model_a, model_b))
    result = comparison.compare(a, b, (model_a, model_b), batch, atol, rtol)
    emit(result, json_path, inputs)
    if not result.passed:
        sys.exit(1)
