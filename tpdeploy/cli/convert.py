"""`tpdeploy export`, `quantize` and `build-engine`: a model to ONNX, ONNX to int8/FP8 ONNX, ONNX to a TensorRT
engine."""

from __future__ import annotations

import click

from tpdeploy.artifacts.files import check_output
from tpdeploy.artifacts.recipe import QUANT_PRECISIONS, QUANT_TARGETS
from tpdeploy.cli.console import ProgressBar, emit, note, progress
from tpdeploy.cli.options import (
    POSITIVE,
    CalibrationArgs,
    ModelArgs,
    calibration_options,
    json_option,
    model_options,
    plugin_option,
)
from tpdeploy.convert import quantize as quantizing
from tpdeploy.data.datasets import data_inputs
from tpdeploy.optional import lazy_import


def build_model(model: ModelArgs):
    """The model the options describe (needs PyTorch), saying so when its weights are seeded-random."""
    built = model.create_model()
    if model.checkpoint is None:
        note(f"no --checkpoint given: {built.cfg.name} has seeded-random weights (seed {built.origin.seed})")
    return built


@click.command()
@model_options
@click.option("-o", "--output", required=True, help="the ONNX file to write")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--batch", type=POSITIVE, help="fix the batch size (default: dynamic)")
@click.option("--opset", type=click.IntRange(min=1), default=None, help="ai.onnx opset (default 20; at least 18)")
@json_option
def export(model: ModelArgs, output, dtype, batch, opset, json_path):
    """Export a Token-Pooled ViT to ONNX with tpdeploy::TokenPool nodes, then validate it against PyTorch."""
    inputs = model.inputs()
    check_output(output, inputs=inputs)  # before the slow work
    if json_path:
        check_output(json_path, inputs=inputs + [output])
    stage = lazy_import("tpdeploy.convert.export", "export")
    report = stage.export(
        build_model(model),
        output,
        dtype=dtype,
        batch=batch,
        opset=opset or stage.DEFAULT_OPSET,
        inputs=inputs,
        progress=progress,
    )
    emit(report, json_path, inputs=inputs + [output])


@click.command()
@click.argument("onnx_file")
@click.option("-o", "--output", required=True, help="the quantized ONNX file to write")
@calibration_options
@click.option(
    "--precision", type=click.Choice(QUANT_PRECISIONS), default=quantizing.DEFAULT_PRECISION, show_default=True
)
@click.option("--target", type=click.Choice(QUANT_TARGETS), help="ort (the default for int8) or tensorrt (for fp8)")
@json_option
def quantize(onnx_file, output, calibration: CalibrationArgs, precision, target, json_path):
    """Quantize an exported float32 ONNX file: static Q/DQ, per-channel weights, calibrated on images preprocessed as
    the file records; the significance, TokenPool and the head stay float32."""
    inputs = [onnx_file, *data_inputs(calibration.calib)]
    check_output(output, inputs=inputs)
    if json_path:
        check_output(json_path, inputs=inputs + [output])
    report = quantizing.quantize(
        onnx_file,
        output,
        **vars(calibration),
        precision=precision,
        target=target,
        progress=progress,
        note=note,
        progress_bar=ProgressBar("calibration"),
    )
    emit(report, json_path, inputs=inputs + [output])


@click.command("build-engine")
@click.argument("onnx_file")
@click.option("-o", "--output", required=True, help="the engine (.plan) to write; a .json sidecar goes beside it")
@click.option("--fp16", is_flag=True, help="float16 engine (the graph is converted; significance stays float32)")
@click.option("--min-batch", type=POSITIVE, help="profile minimum batch (default 1)")
@click.option("--opt-batch", type=POSITIVE, help="profile batch to tune for (default 8)")
@click.option("--max-batch", type=POSITIVE, help="profile maximum batch (default 32)")
@click.option("--workspace", type=POSITIVE, help="workspace limit in MiB (default: TensorRT's)")
@click.option("--timing-cache", help="read and update this timing cache file (faster rebuilds)")
@plugin_option("to build with")
@click.option("--no-plugin", is_flag=True, help="inline the TokenPool ONNX function instead of using the plugin")
def build_engine(onnx_file, output, fp16, min_batch, opt_batch, max_batch, workspace, timing_cache, plugin, no_plugin):
    """Build a TensorRT engine from an exported ONNX file, with the TokenPool plugin."""
    from tpdeploy.convert import engine
    from tpdeploy.runtime.tensorrt import import_tensorrt

    plan = engine.plan_build(
        onnx_file, output, fp16, min_batch, opt_batch, max_batch, workspace, timing_cache, plugin, no_plugin
    )
    import_tensorrt()  # after the plan: a mistake in the arguments is reported first
    emit(engine.build(plan, progress))
