"""`tpdeploy serve` and `tpdeploy triton-repo`: a model on Triton Inference Server, now or as a model repository."""

from __future__ import annotations

import click

from tpdeploy.cli.console import emit, progress
from tpdeploy.cli.options import BatchingArgs, RuntimeArgs, batching_options, plugin_option, runtime_options
from tpdeploy.optional import lazy_import
from tpdeploy.serving import settings as defaults


@click.command()
@click.argument("model_file")
@runtime_options()
@click.option(
    "--host",
    default=defaults.DEFAULT_HOST,
    show_default=True,
    help="address the HTTP, gRPC and metrics endpoints listen on (0.0.0.0: every interface)",
)
@click.option("--http-port", type=click.IntRange(1, 65535), default=defaults.DEFAULT_HTTP_PORT, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=defaults.DEFAULT_GRPC_PORT, show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=defaults.DEFAULT_METRICS_PORT,
    show_default=True,
    help="Prometheus metrics at /metrics (0: off)",
)
@batching_options
@click.option("--name", help="Triton model name (default: the file name); the image classifier is NAME_classify")
@click.option("--verbose", is_flag=True, help="show Triton Inference Server's own log")
def serve(
    model_file, run: RuntimeArgs, host, http_port, grpc_port, metrics_port, batching: BatchingArgs, name, verbose
):
    """Serve MODEL_FILE on NVIDIA Triton Inference Server (through PyTriton) until Ctrl+C or SIGTERM.

    Two models: NAME (images FP32 [B, 3, S, S] -> logits, dynamically batched) and NAME_classify (JPEG/PNG
    bytes -> top-5 classes and probabilities, with the model's recorded preprocessing). Health: /v2/health/ready
    (200 once both models are loaded); metrics: :METRICS_PORT/metrics. Bad requests get HTTP 400 in one line.
    SIGINT or SIGTERM, start-up included, stops it within 10 s (exit 0); a backend that breaks stops it (exit 3)."""
    settings = defaults.ServeSettings(
        model_file,
        backend=run.backend,
        device=run.device,
        plugin=run.plugin,
        threads=run.threads,
        checkpoint=run.checkpoint,
        name=name,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port or None,
        verbose=verbose,
        **vars(batching),
    )
    lazy_import("tpdeploy.serving.lifecycle", "serving").serve(settings, progress=progress)


@click.command("triton-repo")
@click.argument("model_file")
@click.option("--repository", required=True, help="the Triton model repository folder (created if missing)")
@click.option("--name", help="model name in the repository (default: the file name)")
@batching_options
@plugin_option("to put beside an engine")
@click.option("--overwrite", is_flag=True, help="replace the model's folder if it exists")
def triton_repo(model_file, repository, name, batching: BatchingArgs, plugin, overwrite):
    """Write a Triton model repository entry for MODEL_FILE: onnxruntime_onnx for an .onnx file, tensorrt_plan
    (with the TokenPool plugin library) for an engine. Prints the tritonserver command line."""
    from tpdeploy.serving.triton_repo import write_repository

    emit(
        write_repository(
            model_file,
            repository,
            name=name,
            plugin=plugin,
            **vars(batching),
            overwrite=overwrite,
            progress=progress,
        )
    )
