"""Checkpoints: reading a state dict, the one documented adaptation of its layout, strict loading.

timm's way: `checkpoint_filter` (after timm's `checkpoint_filter_fn`) adapts a foreign layout, then `load_state`
loads strictly; a checkpoint of another architecture is refused with what does not fit and what it looks like.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tpdeploy.artifacts.files import sha256
from tpdeploy.artifacts.recipe import WeightsOrigin
from tpdeploy.errors import InvalidArgumentError, UserError, one_line
from tpdeploy.model import schedule as sched
from tpdeploy.model.plan import ModelPlan
from tpdeploy.model.registry import ViTConfig, get_config, list_archs
from tpdeploy.model.vit import TokenPooledViT

FINETUNED_KEY = "tpdeploy"  # a fine-tuned checkpoint's record, beside its state dict under "model"
FINETUNED_FORMAT = 1


@dataclass
class Checkpoint:
    """A checkpoint file, read once: what it holds, its SHA-256, and, for one written by `tpdeploy finetune`, the
    plan it was fine-tuned for (a schedule's weights belong to that schedule: `check_plan` refuses any other)."""

    path: str
    stored: dict
    sha256: str
    record: dict | None  # FINETUNED_KEY's content; None for a timm/DeiT checkpoint

    @classmethod
    def read(cls, path: str | os.PathLike) -> Checkpoint:
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgumentError(f"checkpoint must be a path, got {path!r}")
        path = os.fspath(path)
        stored = read_state_dict(path)
        record = stored.get(FINETUNED_KEY)
        if record is not None and (not isinstance(record, dict) or record.get("format") != FINETUNED_FORMAT):
            raise UserError(
                f"checkpoint {path}: its {FINETUNED_KEY!r} record is not a tpdeploy finetune record of format "
                f"{FINETUNED_FORMAT}"
            )
        return cls(path, stored, sha256(path), record)

    @functools.cached_property
    def plan(self) -> ModelPlan | None:
        """The plan a fine-tuned checkpoint was trained for; None for any other."""
        if self.record is None:
            return None
        try:
            r = self.record
            return ModelPlan(get_config(r["arch"]), tuple(r["tokens"]), r["method"], r["iterations"])
        except (KeyError, TypeError, UserError) as e:
            raise UserError(f"checkpoint {self.path}: its fine-tuning record names no valid plan ({e})") from None

    @property
    def origin(self) -> WeightsOrigin:
        finetuned_from = None if self.record is None else self.record.get("finetuned_from")
        return WeightsOrigin(
            seed=None,
            checkpoint_sha256=self.sha256,
            checkpoint_path=os.path.abspath(self.path),
            finetuned_from=finetuned_from if isinstance(finetuned_from, str) else None,
        )

    def state(self, cfg: ViTConfig) -> dict[str, torch.Tensor]:
        """The state dict adapted to `cfg` (`checkpoint_filter`), for `load_state`."""
        return checkpoint_filter(self.stored, cfg, self.path)

    def check_plan(self, plan: ModelPlan) -> None:
        """A fine-tuned checkpoint builds only the plan it was fine-tuned for."""
        if self.plan is not None and plan != self.plan:
            raise UserError(
                f"checkpoint {self.path} was fine-tuned for {self.plan.describe()}, not {plan.describe()}: "
                f"give no schedule (--preset, --flops-ratio, --schedule, --method, --iterations) to build its own"
            )


def finetuned_checkpoint(state: dict[str, torch.Tensor], plan: ModelPlan, start: WeightsOrigin, **provenance) -> dict:
    """What `tpdeploy finetune` saves: the state dict under "model" (timm's training-checkpoint layout, so that
    `checkpoint_filter` reads it) and the plan it was fine-tuned for, what it started from and how it was trained
    (plain values: `torch.load(weights_only=True)` reads them)."""
    record = {
        "format": FINETUNED_FORMAT,
        "arch": plan.cfg.name,
        "method": plan.method,
        "iterations": plan.iterations,
        "tokens": list(plan.tokens),
        "finetuned_from": start.reference(),
        **provenance,
    }
    return {"model": state, FINETUNED_KEY: record}


def read_state_dict(path: str) -> dict:
    """What a checkpoint file holds (.pth/.pt/.bin through torch.load with weights_only, or .safetensors), as
    stored: `checkpoint_filter` adapts it."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    safetensors = path.endswith(".safetensors")
    if not safetensors and not _looks_like_torch_save(path):
        raise UserError(
            f"{path} is not a checkpoint: neither a torch.save file (a zip archive or a pickle) nor .safetensors"
        )
    try:
        if safetensors:
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch.load's weights_only refusal: the file holds more than tensors
        raise UserError(
            f"checkpoint {path} holds objects other than tensors and containers; tpdeploy reads state dicts without "
            f"running pickled code (weights_only): save the state dict alone, torch.save(model.state_dict(), path)"
        ) from None
    except Exception as e:  # corrupt or foreign files raise many different types
        raise UserError(f"cannot read checkpoint {path}: {one_line(e)}") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds no state dict of tensors")
    return state


def _looks_like_torch_save(path: str) -> bool:
    """torch.save writes a zip archive (PyTorch >= 1.6) or, in the legacy format, a pickle (protocol byte 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def checkpoint_filter(checkpoint: dict, cfg: ViTConfig, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The one adaptation of a checkpoint's layout before strict loading (after timm's
    `vision_transformer.checkpoint_filter_fn`, which timm's deit.py calls with adapt_layer_scale=True):

    1. a training checkpoint's state dict under "model" (the DeiT repository's .pth files), then under
       "state_dict", is taken out; everything must then be a tensor;
    2. a "module." prefix (saved from DataParallel / DistributedDataParallel) is removed;
    3. DeiT III's original names blocks.N.gamma_1 / gamma_2 become timm's blocks.N.ls1.gamma / ls2.gamma;
    4. a pos_embed of the same width for another square grid of patches (e.g. 24x24 of a 384 px checkpoint
       in a 224 px model) is resampled to this architecture's grid like timm's `resample_abs_pos_embed`:
       the prefix entries (CLS, distillation; none for DeiT III) kept, the grid interpolated bicubic with
       antialiasing, in float32.

    Nothing else: everything else must then fit exactly (`load_state` is strict). Unlike timm, pre_logits
    weights are not dropped (they would change what the model computes): such a checkpoint is refused."""
    state = checkpoint
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {source} holds no state dict of tensors")
    state = {
        re.sub(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma", k.removeprefix("module.")): v
        for k, v in state.items()
    }
    pos = state.get("pos_embed")
    prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
    if isinstance(pos, torch.Tensor) and pos.ndim == 3 and pos.shape[0] == 1 and pos.shape[2] == cfg.embed_dim:
        old = math.isqrt(max(pos.shape[1] - prefix, 0))
        if old > 0 and old**2 == pos.shape[1] - prefix and old != cfg.grid_size:
            state["pos_embed"] = _resample_pos_embed(pos, prefix, old, cfg.grid_size)
    return state


def _resample_pos_embed(pos: torch.Tensor, prefix: int, old: int, new: int) -> torch.Tensor:
    grid = pos[:, prefix:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)
    return torch.cat([pos[:, :prefix], grid], dim=1)


def load_state(model: TokenPooledViT, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; a state dict of another architecture is refused with what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        details = []
        if wrong:
            k = wrong[0]
            details.append(f"{k} has shape {list(state[k].shape)}, expected {list(expected[k].shape)}")
        if missing:
            details.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        alike = [name for name in look_alikes(state) if name != model.cfg.name]
        hint = f" (it looks like {' or '.join(alike)})" if alike else ""
        raise UserError(f"checkpoint {source} does not fit {model.cfg.name}: {'; '.join(details)}{hint}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


@functools.cache
def state_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes of an architecture's state dict (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = TokenPooledViT(ModelPlan(cfg, sched.dense(cfg.dims), method="none"))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def look_alikes(state: dict[str, torch.Tensor]) -> list[str]:
    """The registered architectures whose state dict a checkpoint's has, the position embedding's grid aside;
    those whose grid matches too come first (several share a layout: deit_base and vit_base_patch16_224)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    grid_aside = [
        cfg
        for cfg in map(get_config, list_archs())
        if state_shapes(cfg).keys() == shapes.keys()
        and all(shapes[k] == s for k, s in state_shapes(cfg).items() if k != "pos_embed")
    ]
    exact = [cfg.name for cfg in grid_aside if state_shapes(cfg) == shapes]
    return exact or [cfg.name for cfg in grid_aside]
