"""What a model on Triton is called and how it is batched: the one place `serve` and `triton-repo` take these from.

Triton's model configuration (`config.pbtxt`, `model_config.proto`): `max_batch_size` (the dynamic batcher's
largest batch), `dynamic_batching.max_queue_delay_microseconds` (how long a request may wait for others),
`instance_group.count`; a model name is a folder name of the repository.
"""

from __future__ import annotations

import os
import re

from tpdeploy.errors import UserError, check_int

DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 500
DEFAULT_INSTANCES = 1
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}  # numpy name -> Triton's DataType
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def model_name(model_path: str, name: str | None = None) -> str:
    """The Triton model name: the given one, or the file's stem ('build/deit_small_058.onnx' -> 'deit_small_058')."""
    name = name or re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(model_path).split(".")[0] or "model")
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise UserError(f"model name {name!r}: use letters, digits, '.', '_' and '-' only (not . or ..)")
    return name


INT32_MAX = 2**31 - 1  # max_batch_size and instance_group.count are int32 in model_config.proto


def check_batching(max_batch: int, instances: int, max_queue_delay_us: int) -> None:
    check_int("max_batch", max_batch, minimum=1, maximum=INT32_MAX)
    check_int("instances", instances, minimum=1, maximum=INT32_MAX)
    check_int("max_queue_delay_us", max_queue_delay_us, minimum=0, maximum=2**63 - 1)
