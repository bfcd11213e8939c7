"""`tpdeploy info`, `presets`, `archs`: what a file, a model, the presets and the architectures are."""

from __future__ import annotations

import json

import click

from tpdeploy.artifacts.recipe import WeightsOrigin
from tpdeploy.cli.console import note
from tpdeploy.cli.options import ModelArgs, model_options
from tpdeploy.errors import UserError
from tpdeploy.model.plan import PlanSummary
from tpdeploy.tasks import info as stage

json_flag = click.option("--json", "as_json", is_flag=True, help="print JSON instead")


def _show(report, as_json: bool) -> None:
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.format())


@click.command()
@click.argument("model_file", required=False)
@model_options
@json_flag
def info(model_file, model: ModelArgs, as_json):
    """What a model is: from the model options, or from an exported .onnx / built engine file."""
    if model_file and model.given():
        raise UserError("give either a model file or model options, not both")
    if model_file:
        return _show(stage.describe_file(model_file), as_json)
    if model.checkpoint is None:
        plan, origin = model.plan(), WeightsOrigin()
        note(f"no --checkpoint given: {plan.cfg.name} has seeded-random weights (seed {origin.seed})")
    else:  # the checkpoint must fit the architecture (and a fine-tuned one brings its plan): that takes loading it
        built = model.create_model()
        plan, origin = built.plan, built.origin
    _show(PlanSummary(plan, origin), as_json)


@click.command()
@json_flag
def presets(as_json):
    """List the schedule presets shipped under models/."""
    _show(stage.list_presets(), as_json)


@click.command()
@json_flag
def archs(as_json):
    """List the registered architectures: the timm weights each data config is for, size, params, dense GMACs,
    preprocessing and the shipped presets."""
    _show(stage.list_archs(), as_json)
