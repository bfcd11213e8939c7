"""The command line's option groups (Polygraphy's argument groups): each declared once, its defaults taken from the
module that owns them, and given to a command as one object.

    @model_options                  model: ModelArgs: --arch --checkpoint --flops-ratio --preset --schedule --method ...
    @runtime_options()              run: RuntimeArgs: --backend --device --plugin --checkpoint --threads
    @timing_options()               timing: TimingArgs: --warmup-ms --duration --iterations
    @batching_options               batching: BatchingArgs: --max-batch --max-queue-delay-us --instances
    @calibration_options            calibration: CalibrationArgs: --calib --limit --method --workers
    @json_option                    --json PATH
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import click

from tpdeploy.artifacts.recipe import CALIBRATION_METHODS
from tpdeploy.convert import quantize
from tpdeploy.data.datasets import DEFAULT_WORKERS
from tpdeploy.model import schedule as sched
from tpdeploy.model.plan import DEFAULT_ARCH
from tpdeploy.runtime import BACKENDS, DEVICES
from tpdeploy.serving import triton_config
from tpdeploy.tasks import bench


class Number(click.ParamType):
    """A finite float, at least (or, `open`, more than) `minimum`: click's FloatRange lets NaN through."""

    name = "number"

    def __init__(self, minimum: float = 0.0, open_interval: bool = False):
        self.minimum, self.open_interval = minimum, open_interval

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x) or x < self.minimum or (self.open_interval and x == self.minimum):
            self.fail(
                f"{value!r} is not a finite number {'>' if self.open_interval else '>='} {self.minimum:g}", param, ctx
            )
        return x


POSITIVE = click.IntRange(min=1)


def plugin_option(what: str = "for engines"):
    return click.option("--plugin", help=f"TokenPool plugin library {what} (default: found automatically)")


threads_option = click.option("--threads", type=POSITIVE, help="intra-op threads (CPU backends)")


def group(key: str, record, *opts):
    """An option group: the options, applied as one decorator; the command gets their values as one `record`
    (a dataclass whose fields are the options' names), as its keyword argument `key`."""
    names = [f.name for f in record.__dataclass_fields__.values()]

    def decorate(command):
        @functools.wraps(command)
        def wrapper(**kwargs):
            kwargs[key] = record(**{n: kwargs.pop(n) for n in names})
            return command(**kwargs)

        return functools.reduce(lambda acc, opt: opt(acc), reversed(opts), wrapper)

    return decorate


@dataclass
class ModelArgs:
    arch: str | None
    checkpoint: str | None
    flops_ratio: float | None
    preset: str | None
    schedule: str | None
    method: str | None
    iterations: int | None

    def given(self) -> bool:
        return any(v is not None for v in vars(self).values())

    def plan(self):
        from tpdeploy.model.plan import resolve_plan

        return resolve_plan(self.arch, **self._schedule())

    def create_model(self):
        """The model (needs PyTorch): a fine-tuned --checkpoint (`tpdeploy finetune`) brings its own plan."""
        from tpdeploy.optional import lazy_import

        factory = lazy_import("tpdeploy.model.factory", "building a model")
        return factory.create_model(self.arch, self.checkpoint, **self._schedule())

    def _schedule(self) -> dict:
        from tpdeploy.model.plan import parse_schedule

        return dict(
            flops_ratio=self.flops_ratio,
            preset=self.preset,
            schedule=None if self.schedule is None else parse_schedule(self.schedule),
            method=self.method,
            iterations=self.iterations,
        )

    def inputs(self) -> list[str | None]:
        """The files the model options read: the checkpoint, the preset's file (a shipped one too)."""
        return [self.checkpoint, self.preset and sched.load_preset(self.preset).path]


model_options = group(
    "model",
    ModelArgs,
    click.option(
        "--arch",
        help=f"a registered architecture, by its name or timm's (see `tpdeploy archs`; default: the "
        f"preset's, else {DEFAULT_ARCH})",
    ),
    click.option(
        "--checkpoint",
        help="timm/DeiT state dict of that architecture (.pth, .pt, .bin, .safetensors); default: seeded-random",
    ),
    click.option(
        "--flops-ratio",
        type=Number(0.0, open_interval=True),
        help="solve the schedule for this fraction of dense GMACs, e.g. 0.58",
    ),
    click.option("--preset", help="a schedule preset from models/ (see `tpdeploy presets`) or a .toml file"),
    click.option("--schedule", help="patch tokens entering each block (one entry per block), e.g. 196,196,160,..."),
    click.option("--method", type=click.Choice(sched.METHODS), help=f"pooling method (default {sched.DEFAULT_METHOD})"),
    click.option(
        "--iterations", type=click.IntRange(min=0), help=f"clustering iterations T (default {sched.DEFAULT_ITERATIONS})"
    ),
)


@dataclass
class RuntimeArgs:
    backend: str | None
    device: str
    plugin: str | None
    checkpoint: str | None
    threads: int | None

    def inputs(self) -> list[str | None]:
        return [self.plugin, self.checkpoint]

    def model_inputs(self, references: list[str]) -> list[str]:
        """What loading these model references reads (each file, an engine's sidecar, external data), and the
        runtime options' files."""
        from tpdeploy import runtime
        from tpdeploy.artifacts.inputs import model_inputs

        found = [f for r in references for f in model_inputs(runtime.split_reference(r)[1])]
        return found + [f for f in self.inputs() if f]

    def load(self, references: list[str], sharing: str | None = None) -> list:
        """Runners for model references (`path`, or `ort:path`, `trt:path`, `torch:path`). Where they take turns in
        one process, or with other work (`sharing` says which), onnxruntime's idle threads must not spin: they would
        steal the cores of what runs (see `OnnxRuntimeRunner`)."""
        from tpdeploy import runtime
        from tpdeploy.cli.console import note, progress

        if len(references) > 1:
            sharing = "several models take turns on these cores"
        runners = []
        for reference in references:
            prefix, path = runtime.split_reference(reference)
            backend = prefix or self.backend
            progress(f"loading {path} ({backend or runtime.default_backend(path)}, {self.device})")
            runners.append(
                runtime.load(
                    path,
                    backend=backend,
                    device=self.device,
                    plugin=self.plugin,
                    threads=self.threads,
                    checkpoint=self.checkpoint,
                    spinning=not sharing,
                )
            )
        if sharing and any(r.backend == runtime.Backend.ORT for r in runners):
            note(f"{sharing}: onnxruntime's idle-thread spinning is off")
        return runners


def runtime_options(backends=BACKENDS, default_backend: str | None = None):
    return group(
        "run",
        RuntimeArgs,
        click.option(
            "--backend",
            type=click.Choice(backends),
            default=default_backend,
            show_default=default_backend is not None,
            help=None if default_backend else "default: by file type",
        ),
        click.option("--device", type=click.Choice(DEVICES), default=DEVICES[0], show_default=True),
        plugin_option(),
        click.option("--checkpoint", help="torch backend: the checkpoint the ONNX file was exported from"),
        threads_option,
    )


@dataclass
class TimingArgs:
    warmup_ms: float
    duration: float
    iterations: int | None


def timing_options(
    duration_s: float = bench.DEFAULT_DURATION_S,
    warmup_ms: float = bench.DEFAULT_WARMUP_MS,
    rounds_help: str = "timed rounds (default: run for --duration)",
):
    return group(
        "timing",
        TimingArgs,
        click.option("--warmup-ms", type=Number(0.0), default=warmup_ms, show_default=True),
        click.option(
            "--duration",
            type=Number(0.0, open_interval=True),
            default=duration_s,
            show_default=True,
            help="seconds of timed rounds",
        ),
        click.option("--iterations", type=POSITIVE, help=rounds_help),
    )


@dataclass
class BatchingArgs:
    max_batch: int
    max_queue_delay_us: int
    instances: int


batching_options = group(
    "batching",
    BatchingArgs,
    click.option(
        "--max-batch",
        type=POSITIVE,
        default=triton_config.DEFAULT_MAX_BATCH,
        show_default=True,
        help="largest batch the dynamic batcher forms (Triton max_batch_size)",
    ),
    click.option(
        "--max-queue-delay-us",
        type=click.IntRange(min=0),
        default=triton_config.DEFAULT_QUEUE_DELAY_US,
        show_default=True,
        help="how long a request may wait for others to join its batch",
    ),
    click.option(
        "--instances",
        type=POSITIVE,
        default=triton_config.DEFAULT_INSTANCES,
        show_default=True,
        help="model instances: batches executed concurrently",
    ),
)


@dataclass
class CalibrationArgs:
    calib: str | None
    limit: int | None
    method: str
    workers: int


calibration_options = group(
    "calibration",
    CalibrationArgs,
    click.option(
        "--calib",
        help="calibration images: a folder as for `eval --data` (labels are not needed); default: built-in "
        "structured images, which fit no real data",
    ),
    click.option(
        "--limit",
        type=POSITIVE,
        help=f"calibrate on N images, spread evenly over the folder (default {quantize.DEFAULT_CALIBRATION_IMAGES})",
    ),
    click.option(
        "--method",
        type=click.Choice(CALIBRATION_METHODS),
        default=quantize.DEFAULT_METHOD,
        show_default=True,
        help="how activation ranges are chosen from the calibration images",
    ),
    click.option(
        "--workers", type=POSITIVE, default=DEFAULT_WORKERS, show_default=True, help="threads decoding images"
    ),
)

json_option = click.option("--json", "json_path", help="also write the results to this JSON file")
