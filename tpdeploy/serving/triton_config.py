"""What a model on Triton is called and how it is batched: the one place `serve` and `triton-repo` take these from.

Triton's model configuration (`config.pbtxt`, `model_config.proto`): `max_batch_size` (the dynamic batcher's
largest batch), `dynamic_batching.max_queue_delay_microseconds` (how long a request may wait for others),
`instance_group.count`; a model name is a folder name of the repository.
"""

from __future__ import annotations

import os
import re

from tpdeploy.errors import UserError

DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 500
DEFAULT_INSTANCES = 1
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}  # numpy name -> Triton's DataType
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def model_name(model_path: str, name: str | None = None) -> str:
    """The Triton model name: the given one, or the file's stem ('build/deit_small_058.onnx' -> 'deit_small_058')."""
    name = name or re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(model_path).split(".")[0] or "model")
    if not _NAME_RE.match(name):
        raise UserError(f"model name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def check_batching(max_batch: int, instances: int, max_queue_delay_us: int) -> None:
    if max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {max_batch}")
    if instances < 1:
        raise UserError(f"--instances must be at least 1, got {instances}")
    if max_queue_delay_us < 0:
        raise UserError(f"--max-queue-delay-us must be >= 0, got {max_queue_delay_us}")
