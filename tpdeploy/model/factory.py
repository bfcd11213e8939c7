"""`create_model`: a Token-Pooled ViT in three steps, timm's way: resolve the plan (`tpdeploy.model.plan`, no
PyTorch), read the weights and know their origin (`tpdeploy.model.checkpoint`), build the modules and load them
strictly (`tpdeploy.model.vit`)."""

from __future__ import annotations

import os

from tpdeploy.artifacts.recipe import Recipe, WeightsOrigin
from tpdeploy.errors import UserError, check_int
from tpdeploy.model.checkpoint import Checkpoint, load_state
from tpdeploy.model.plan import ModelPlan, resolve_plan
from tpdeploy.model.registry import get_config
from tpdeploy.model.vit import TokenPooledViT, init_random


def build_model(
    plan: ModelPlan, checkpoint: str | os.PathLike | Checkpoint | None = None, seed: int = 0
) -> TokenPooledViT:
    """The plan's model in eval mode, with the checkpoint's weights (filtered, then loaded strictly) or, without
    one, seeded-random weights. A fine-tuned checkpoint builds only the plan it was fine-tuned for."""
    seed = check_int("seed", seed, minimum=0)
    if checkpoint is None:
        model = TokenPooledViT(plan, WeightsOrigin(seed=seed))
        init_random(model, seed)
        return model.eval()
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint.read(checkpoint)
    checkpoint.check_plan(plan)
    model = TokenPooledViT(plan, checkpoint.origin)
    load_state(model, checkpoint.state(plan.cfg), checkpoint.path)
    return model.eval()


def create_model(
    arch: str | None = None,
    checkpoint: str | None = None,
    flops_ratio: float | None = None,
    preset: str | None = None,
    schedule=None,
    method: str | None = None,
    iterations: int | None = None,
    seed: int = 0,
) -> TokenPooledViT:
    """A Token-Pooled ViT in eval mode. At most one of flops_ratio, preset, schedule; none means dense tokens (all
    patch tokens in every block). A preset brings its own architecture, method and iterations unless these are
    given. Without a checkpoint the weights are seeded-random (`model.origin.seed`); a checkpoint goes through
    `checkpoint_filter`, then loads strictly (`model.origin.checkpoint_sha256`). A checkpoint written by
    `tpdeploy finetune` records its plan: given none of flops_ratio, preset, schedule, method and iterations, that
    plan is built (arch, if given, must be its); any other plan is refused."""
    seed = check_int("seed", seed, minimum=0)
    loaded = None if checkpoint is None else Checkpoint.read(checkpoint)
    asked = (flops_ratio, preset, schedule, method, iterations)
    if loaded is not None and loaded.plan is not None and all(a is None for a in asked):
        if arch is not None and get_config(arch).name != loaded.plan.cfg.name:
            raise UserError(f"checkpoint {checkpoint} was fine-tuned for {loaded.plan.cfg.name}, not {arch}")
        return build_model(loaded.plan, loaded, seed)
    plan = resolve_plan(
        arch, flops_ratio=flops_ratio, preset=preset, schedule=schedule, method=method, iterations=iterations
    )
    return build_model(plan, loaded, seed)


def model_from_recipe(recipe: Recipe, checkpoint: str | None = None) -> TokenPooledViT:
    """The PyTorch model an exported file came from, rebuilt from its recipe (in float32). A model exported from a
    checkpoint needs that checkpoint again, checked against the SHA-256 the recipe records."""
    if recipe.checkpoint_sha256 and checkpoint is None:
        raise UserError(
            f"exported from a checkpoint (sha256 {recipe.checkpoint_sha256[:16]}...): pass it "
            f"(--checkpoint) to rebuild the model in PyTorch"
        )
    if not recipe.checkpoint_sha256 and checkpoint is not None:
        raise UserError(
            f"the file has seeded-random weights (seed {recipe.seed}); it was not exported from {checkpoint}"
        )
    model = build_model(ModelPlan.from_recipe(recipe), checkpoint, recipe.seed or 0)
    if model.origin.checkpoint_sha256 != recipe.checkpoint_sha256:
        raise UserError(f"{checkpoint} is not the checkpoint the file was exported from (SHA-256 differs)")
    return model
