"""`tpdeploy sweep`: the paper's cost-accuracy figure, redrawn on your data and your hardware.

For the dense model and every (method, FLOPs ratio): tokens per block, GMACs, latency measured interleaved
with the dense model (as `bench --baseline`), and top-1 on the data (or, without labels, top-1 agreement with
the dense model). Writes OUT_DIR/results.csv, results.json and sweep.png (top-1 against GMACs and against
latency relative to dense, one line per method). Each finished point is saved at once, so an interrupted
sweep picks up where it stopped; a sweep of another configuration in the same folder is refused.

With --precisions fp32,int8 every point is also quantized (`tpdeploy quantize`: int8 for onnxruntime,
calibrated on --calib or the built-in structured images) and measured the same way, against dense fp32.

With --finetuned CK (a checkpoint of `tpdeploy finetune`, or a folder of them) each fine-tuned model is a point
too, at the FLOPs of the schedule it was fine-tuned for: the accuracy that pooling costs, and what training
recovers of it, on one figure. Its teacher must be the sweep's dense model (the same --checkpoint).

Without --data the images are generated (`tpdeploy.data.samples.sample_rgb_images`, GENERATED_IMAGES of them
unless --limit says otherwise, saved as PNG files in OUT_DIR/images) and the accuracy is the agreement with
dense.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from tpdeploy import runtime
from tpdeploy.artifacts.files import atomic_output, check_output_folder, make_folder, write_text
from tpdeploy.convert.quantize import quantize
from tpdeploy.data import datasets
from tpdeploy.data.samples import sample_images, sample_rgb_images
from tpdeploy.errors import InvalidArgumentError, UserError, check_choice, check_int, check_number
from tpdeploy.model import schedule as sched
from tpdeploy.model.registry import get_config
from tpdeploy.optional import lazy_import
from tpdeploy.tasks import bench, evaluate

BACKENDS = ("ort", "torch")
DENSE = "none"
FP32 = "fp32"
PRECISIONS = (FP32, "int8")
GENERATED = "generated"
RESULTS_JSON, RESULTS_CSV, FIGURE, DENSE_PREDICTIONS = "results.json", "results.csv", "sweep.png", "dense_top1.npy"
FIGURE_INCHES, FIGURE_DPI = (11.0, 4.2), 100
RESULTS_VERSION = 1
GENERATED_IMAGES = 200
MIN_TIMING_ROUNDS = 10  # a median over fewer is one slow run away from another value
DEFAULT_METHODS = ("wkmedoids", "kmedoids", "topk", "grid")
DEFAULT_RATIOS = (0.45, 0.58, 0.75)
DEFAULT_BATCH = 8
DEFAULT_DURATION_S = 3.0
DEFAULT_WARMUP_MS = 300.0


@dataclass
class Point:
    method: str  # "none": the dense model
    ratio: float | None  # the FLOPs ratio asked for; None for dense
    tokens: list[int]  # patch tokens entering each block
    gmacs: float
    flops_ratio: float  # GMACs / dense GMACs, as built
    latency_ms: float  # median per batch
    dense_latency_ms: float  # the dense model's median in the same interleaved run
    latency_samples: int
    images: int  # images the accuracy is over
    top1: float | None  # None without labels
    top1_se: float | None
    agreement: float  # top-1 agreement with the dense model
    agreement_se: float
    precision: str = FP32  # "int8": the file `tpdeploy quantize` makes of this point (results before it: fp32)
    finetuned: str | None = None  # the SHA-256 of the `tpdeploy finetune` checkpoint; None: the sweep's weights

    @property
    def key(self) -> tuple:
        return point_key(self.method, self.ratio, self.precision, self.finetuned)

    @property
    def label(self) -> str:
        return point_label(self.method, self.ratio, self.precision, self.finetuned)

    @property
    def relative_latency(self) -> float:
        return self.latency_ms / self.dense_latency_ms

    @property
    def accuracy(self) -> tuple[float, float]:
        """What the figure plots: top-1 when there are labels, else the agreement with dense."""
        return (self.top1, self.top1_se) if self.top1 is not None else (self.agreement, self.agreement_se)


def point_key(method: str, ratio: float | None, precision: str = FP32, finetuned: str | None = None) -> tuple:
    """(method, ratio), then the precision for a quantized point and the checkpoint's SHA-256 for a fine-tuned
    one: fp32 keys of the sweep's own weights are those of every sweep before --precisions and --finetuned."""
    return (method, ratio) + (() if precision == FP32 else (precision,)) + (() if finetuned is None else (finetuned,))


def point_label(method: str, ratio: float | None, precision: str = FP32, finetuned: str | None = None) -> str:
    name = "dense" if method == DENSE else f"{method} {ratio:g}x"
    name += "" if finetuned is None else f" tuned {finetuned[:8]}"
    return name if precision == FP32 else f"{name} {precision}"


@dataclass(frozen=True)
class PointSpec:
    """What a point measures: a model (method and ratio; a fine-tuned checkpoint's) at a precision."""

    method: str
    ratio: float | None
    precision: str = FP32
    checkpoint: str | None = None  # a fine-tuned checkpoint (path)
    finetuned: str | None = None  # its SHA-256

    @property
    def key(self) -> tuple:
        return point_key(self.method, self.ratio, self.precision, self.finetuned)

    @property
    def model_key(self) -> tuple:
        return point_key(self.method, self.ratio, FP32, self.finetuned)


CSV_COLUMNS = (
    "method",
    "ratio",
    "precision",
    "flops_ratio",
    "gmacs",
    "latency_ms",
    "dense_latency_ms",
    "relative_latency",
    "latency_samples",
    "images",
    "top1",
    "top1_se",
    "agreement",
    "agreement_se",
    "tokens",
    "finetuned",
)


def parse_list(name: str, text: str, convert) -> list:
    try:
        values = [convert(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"--{name} must be a comma-separated list, got {text!r}") from None
    if not values:
        raise UserError(f"--{name} is empty")
    return list(dict.fromkeys(values))


@dataclass
class SweepPlan:
    arch: str
    checkpoint: str | None
    methods: list[str]
    ratios: list[float]
    out_dir: str
    data: str | None = None
    labels: str | None = None
    limit: int | None = None
    backend: str = BACKENDS[0]
    batch: int = DEFAULT_BATCH
    workers: int = datasets.DEFAULT_WORKERS
    threads: int | None = None
    duration_s: float = DEFAULT_DURATION_S
    warmup_ms: float = DEFAULT_WARMUP_MS
    precisions: tuple[str, ...] = (FP32,)
    calib: str | None = None  # calibration images of the int8 points (None: the built-in ones)
    finetuned: tuple[str, ...] = ()  # `tpdeploy finetune` checkpoints, or folders of them

    def __post_init__(self):
        for what in ("methods", "ratios"):
            if isinstance(getattr(self, what), (str, bytes)) or not isinstance(getattr(self, what), (list, tuple)):
                raise InvalidArgumentError(f"{what} must be a list, got {getattr(self, what)!r}")
        for m in self.methods:
            check_choice("method", m, [m for m in sched.METHODS if m != DENSE])
        for r in self.ratios:
            if not 0 < check_number("ratio", r, minimum=0.0, exclusive=True) <= 1:
                raise InvalidArgumentError(f"a FLOPs ratio must be in (0, 1], got {r:g}")
        check_choice("backend", self.backend, BACKENDS)
        check_int("batch", self.batch, minimum=1)
        check_int("workers", self.workers, minimum=1)
        check_number("duration_s", self.duration_s, minimum=0.0, exclusive=True)
        check_number("warmup_ms", self.warmup_ms, minimum=0.0)
        if self.limit is not None:
            check_int("limit", self.limit, minimum=1)
        if self.labels and not self.data:
            raise UserError("--labels needs --data")
        for p in self.precisions:
            check_choice("precision", p, PRECISIONS)
        if isinstance(self.finetuned, (str, bytes)) or not all(isinstance(f, str) for f in self.finetuned):
            raise InvalidArgumentError(f"finetuned must be a list of paths, got {self.finetuned!r}")
        if self.precisions != (FP32,) and self.backend != "ort":
            raise UserError("--precisions other than fp32 need --backend ort (quantized files run on onnxruntime)")

    def points(self) -> list[PointSpec]:
        """The points of the sweep's own weights (fine-tuned ones are known once their checkpoints are read)."""
        models = [(DENSE, None)] + [(m, r) for m in self.methods for r in self.ratios]
        return [PointSpec(m, r, p) for m, r in models for p in self.precisions]  # a model's fp32 point first


def finetuned_checkpoints(paths: tuple[str, ...]) -> list[str]:
    """The files --finetuned names: each file, and the .pt/.pth files of each folder (sorted)."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.endswith((".pt", ".pth")) and not n.startswith("."))
            if not names:
                raise UserError(f"--finetuned {path}: no .pt or .pth checkpoints in this folder")
            found += [os.path.join(path, n) for n in names]
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise UserError(f"--finetuned {path}: no such file or folder")
    return list(dict.fromkeys(found))


def _configuration(plan: SweepPlan, dense_model) -> dict:
    """What the points of one sweep share; a folder holding another configuration is not resumed."""
    return {
        "arch": dense_model.cfg.name,
        "weights": dense_model.recipe().weights,
        "data": os.path.abspath(plan.data) if plan.data else GENERATED,
        "labels": os.path.abspath(plan.labels) if plan.labels else None,
        "images": plan.limit if plan.data else plan.limit or GENERATED_IMAGES,
        "backend": plan.backend,
        "batch": plan.batch,
        "threads": plan.threads,
        "calib": os.path.abspath(plan.calib) if plan.calib else None,  # of the int8 points
    }


def _load_results(out_dir: str, config: dict) -> list[Point]:
    path = os.path.join(out_dir, RESULTS_JSON)
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        points = [Point(**p) for p in saved["points"]]
        saved_config = saved["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a sweep's results ({e}): use another -o folder") from None
    differs = [k for k in config if saved_config.get(k) != config[k]]
    if differs:
        raise UserError(
            f"{out_dir} holds a sweep of another configuration (it differs in "
            f"{', '.join(differs)}): use another -o folder"
        )
    return points


def _save_results(out_dir: str, config: dict, points: list[Point]) -> None:
    """results.json and results.csv, each written whole (an interruption leaves the previous version)."""
    results = {
        "version": RESULTS_VERSION,
        "config": config,
        "machine": bench.machine(),
        "points": [asdict(p) for p in points],
    }
    write_text(os.path.join(out_dir, RESULTS_JSON), json.dumps(results, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for p in points:
        writer.writerow(
            {
                **asdict(p),
                "relative_latency": p.relative_latency,
                "tokens": " ".join(map(str, p.tokens)),
                "ratio": "" if p.ratio is None else p.ratio,
            }
        )
    write_text(os.path.join(out_dir, RESULTS_CSV), buf.getvalue())


def _generated_dataset(out_dir: str, count: int) -> datasets.Dataset:
    """`count` structured images as PNG files in OUT_DIR/images (made once; the same on every resume)."""
    Image = lazy_import("PIL.Image", "generating the sweep's images")
    folder = os.path.join(out_dir, "images")
    make_folder(folder)
    for i in range(count):
        path = os.path.join(folder, f"{i:05d}.png")
        if not os.path.exists(path):
            with atomic_output(path) as tmp:
                Image.fromarray(sample_rgb_images(1, seed=i)[0]).save(tmp, format="PNG")
    return datasets.open_dataset(folder)


class Sweep:
    """One sweep's folder: the points measured so far, and the ones the plan still asks for."""

    def __init__(self, plan: SweepPlan, progress=lambda msg: None):
        inputs = [plan.checkpoint, *datasets.data_inputs(plan.data, plan.labels), *datasets.data_inputs(plan.calib)]
        check_output_folder(plan.out_dir, [*inputs, *plan.finetuned], what="-o folder")
        self.plan, self.progress = plan, progress
        # the data before anything is built or written: a folder that cannot be evaluated leaves nothing behind
        self.data = plan.data and datasets.open_dataset(plan.data, plan.labels, get_config(plan.arch).num_classes)
        self.exported = None  # the (method, ratio) whose fp32 file is in the export folder, for its int8 point
        self.dense_model = self._model(DENSE, None)
        for method, ratio in ((m, r) for m in plan.methods for r in plan.ratios):  # solved before the long work
            try:
                sched.solve(ratio, self.dense_model.cfg.dims, method, sched.DEFAULT_ITERATIONS)
            except UserError as e:
                raise UserError(f"{method} at {ratio:g}x: {e}") from None
        self.specs = plan.points() + self._finetuned_points()
        self.config = _configuration(plan, self.dense_model)
        self.points = _load_results(plan.out_dir, self.config)

    def _finetuned_points(self) -> list[PointSpec]:
        """A point per fine-tuned checkpoint and precision; each checkpoint's teacher must be the dense model."""
        checkpoint = lazy_import("tpdeploy.model.checkpoint", "sweep")
        dense = self.dense_model.origin.reference()
        specs = []
        for path in finetuned_checkpoints(self.plan.finetuned):
            tuned = checkpoint.Checkpoint.read(path)
            if tuned.plan is None:
                raise UserError(f"--finetuned {path}: not a checkpoint of `tpdeploy finetune` (it records no plan)")
            if tuned.plan.cfg.name != self.dense_model.cfg.name:
                raise UserError(f"--finetuned {path} is of {tuned.plan.cfg.name}, the sweep's --arch {self.plan.arch}")
            if tuned.record.get("teacher") != dense:
                raise UserError(
                    f"--finetuned {path} learnt from {tuned.record.get('teacher')}, not from the sweep's dense model "
                    f"({dense}): give the sweep the --checkpoint it was fine-tuned from"
                )
            ratio = round(tuned.plan.flops_ratio, 2)
            specs += [PointSpec(tuned.plan.method, ratio, p, path, tuned.sha256) for p in self.plan.precisions]
        return specs

    def _model(self, method: str, ratio: float | None, finetuned: str | None = None):
        create_model = lazy_import("tpdeploy.model.factory", "sweep").create_model  # PyTorch: imported on use
        if finetuned:  # the checkpoint brings its plan
            return create_model(self.plan.arch, checkpoint=finetuned)
        return create_model(
            self.plan.arch,
            checkpoint=self.plan.checkpoint,
            method=method,
            flops_ratio=None if method == DENSE else ratio,
        )

    @property
    def todo(self) -> list[PointSpec]:
        done = {p.key for p in self.points}
        return [s for s in self.specs if s.key not in done]

    def _runner(self, model, folder: str, key: tuple = (DENSE, None), precision: str = FP32):
        """The model on the sweep's backend: for onnxruntime an export (kept for the model's int8 point, which is
        quantized from it), loaded with spinning off (it takes turns with the dense model)."""
        if self.plan.backend == "torch":
            return lazy_import("tpdeploy.runtime.pytorch", "the torch backend").TorchRunner(model)
        path = os.path.join(folder, "model.onnx")
        if self.exported != key:
            lazy_import("tpdeploy.convert.export", "sweep").export(
                model, path, progress=lambda msg: self.progress(f"    {msg}")
            )
            self.exported = key
        if precision != FP32:
            quantized = os.path.join(folder, f"model_{precision}.onnx")
            report = quantize(path, quantized, calib=self.plan.calib, precision=precision)
            self.progress(f"    quantized: {report.quantization.describe()}")
            path = quantized
        runner = runtime.load(path, backend="ort", threads=self.plan.threads, spinning=False)
        if precision != FP32:
            os.unlink(path)
        return runner

    def _dataset(self) -> datasets.Dataset:
        plan = self.plan
        if self.data:
            dataset = self.data
        else:
            dataset = _generated_dataset(plan.out_dir, plan.limit or GENERATED_IMAGES)
        return dataset.subset(plan.limit) if plan.limit else dataset

    def run(self, progress_bar=lambda label: lambda done, total, unreadable: None):
        """Measure the points not measured yet, saving the results after each; yields each new Point."""
        plan, todo = self.plan, self.todo
        self.progress(f"{len(self.specs) - len(todo)} of {len(self.specs)} points already in {plan.out_dir}")
        if not todo:
            return
        make_folder(plan.out_dir)
        if plan.threads and plan.backend == "torch":
            lazy_import("torch", "the torch backend").set_num_threads(plan.threads)
        dataset = self._dataset()
        timing_images = sample_images(
            plan.batch, self.dense_model.cfg.img_size, config=self.dense_model.cfg.data_config
        )
        dense_path = os.path.join(plan.out_dir, DENSE_PREDICTIONS)
        dense_todo = PointSpec(DENSE, None) in todo
        if not dense_todo and not os.path.isfile(dense_path):
            raise UserError(
                f"{dense_path} is missing (the dense model's predictions, for the agreement): remove "
                f"{RESULTS_JSON} too to start again"
            )
        dense_top1 = None if dense_todo else np.load(dense_path)
        with tempfile.TemporaryDirectory(prefix=".export-", dir=plan.out_dir) as folder:
            self.progress(f"dense {self.dense_model.cfg.name} on {plan.backend}")
            dense = self._runner(self.dense_model, folder)
            for n, spec in enumerate(todo, start=1):
                method, ratio, precision = spec.method, spec.ratio, spec.precision
                model = self.dense_model if method == DENSE else self._model(method, ratio, spec.checkpoint)
                name = point_label(method, ratio, precision, spec.finetuned)
                self.progress(f"point {n}/{len(todo)}: {name} ({model.macs / 1e9:.2f} GMACs)")
                fp32_dense = spec == PointSpec(DENSE, None)
                runner = dense if fp32_dense else self._runner(model, folder, spec.model_key, precision)
                result = evaluate.evaluate(
                    [runner], dataset, plan.batch, plan.workers, progress=progress_bar(f"  {name}")
                ).models[0]
                if fp32_dense:
                    dense_top1 = result.predictions
                    with atomic_output(dense_path) as tmp, open(tmp, "wb") as f:
                        np.save(f, dense_top1)
                if len(dense_top1) != len(result.predictions):
                    raise UserError(
                        f"{dense_path} does not belong to this sweep's images: remove it and "
                        f"{RESULTS_JSON} to start again"
                    )
                agreement = evaluate.Proportion(int((result.predictions == dense_top1).sum()), len(dense_top1))
                calls = [lambda r=r: r.infer(timing_images) for r in ([dense] if fp32_dense else [runner, dense])]
                self.progress(
                    f"  timing {'alone' if fp32_dense else 'interleaved with dense'} for "
                    f"{plan.duration_s:g} s and {MIN_TIMING_ROUNDS} rounds at least, batch {plan.batch}"
                )
                stats = [
                    bench.LatencyStats.of(t, plan.batch)
                    for t in bench.measure(
                        calls, plan.warmup_ms, duration_s=plan.duration_s, min_rounds=MIN_TIMING_ROUNDS
                    )
                ]
                top1 = result.top1
                point = Point(
                    method,
                    ratio,
                    list(model.tokens),
                    model.macs / 1e9,
                    model.macs / self.dense_model.macs,
                    stats[0].median,
                    stats[-1].median,
                    stats[0].samples,
                    len(result.predictions),
                    top1 and top1.value,
                    top1 and top1.stderr,
                    agreement.value,
                    agreement.stderr,
                    precision,
                    spec.finetuned,
                )
                self.points.append(point)
                _save_results(plan.out_dir, self.config, self.points)
                if runner is not dense:
                    runner.close()
                yield point

    def draw(self) -> str:
        return draw(self.plan.out_dir, self.points, _title(self.config, self.points))

    def run_all(self, progress_bar=lambda label: lambda done, total, unreadable: None) -> SweepReport:
        """Measure every point the folder lacks, then draw the figure."""
        for point in self.run(progress_bar):
            acc, se = point.accuracy
            self.progress(
                f"  {point.label}: {point.gmacs:.2f} GMACs, {point.relative_latency:.2f}x dense latency, "
                f"{'top-1' if point.top1 is not None else 'agreement'} {acc:.1%} ± {se:.1%}"
            )
        figure = self.draw()
        out = self.plan.out_dir
        return SweepReport(self.points, [os.path.join(out, RESULTS_CSV), os.path.join(out, RESULTS_JSON), figure])


@dataclass
class SweepReport:
    points: list[Point]
    files: list[str]  # results.csv, results.json, sweep.png

    def format(self) -> str:
        return format_points(self.points) + f"\nwrote {', '.join(self.files[:-1])} and {self.files[-1]}"

    def to_json(self) -> dict:
        return {"points": [asdict(p) for p in self.points], "files": self.files}


def draw(out_dir: str, points: list[Point], title: str) -> str:
    """sweep.png: accuracy against GMACs (left) and against latency relative to dense (right), a line per method."""
    Figure = lazy_import("matplotlib.figure", "drawing the sweep figure").Figure
    if not points:
        raise UserError("no measured points to draw")
    fig = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    labelled = all(p.top1 is not None for p in points)
    dense = [p for p in points if p.method == DENSE]

    def line_of(p: Point) -> tuple:
        return p.method, p.precision, p.finetuned is not None

    for method, precision, tuned in dict.fromkeys(line_of(p) for p in points if p.method != DENSE):
        line = sorted((p for p in points if line_of(p) == (method, precision, tuned)), key=lambda p: p.gmacs)
        name = f"{method} fine-tuned" if tuned else method
        for ax, x in zip(axes, ([p.gmacs for p in line], [p.relative_latency for p in line])):
            ax.errorbar(
                x,
                [100 * p.accuracy[0] for p in line],
                yerr=[100 * p.accuracy[1] for p in line],
                marker="s" if tuned else "o",
                linestyle="-" if precision == FP32 else "--",  # quantized points: dashed
                capsize=3,
                label=name if precision == FP32 else f"{name} {precision}",
            )
    for p in dense:
        for ax, x in zip(axes, (p.gmacs, p.relative_latency)):
            ax.errorbar(
                [x],
                [100 * p.accuracy[0]],
                yerr=[100 * p.accuracy[1]],
                marker="*" if p.precision == FP32 else "P",
                markersize=14 if p.precision == FP32 else 10,
                color="black",
                linestyle="none",
                capsize=3,
                label=f"{p.label} ({p.gmacs:.2f} GMACs, {p.latency_ms:.1f} ms per batch)",
            )
    axes[0].set_xlabel("GMACs per image")
    axes[1].set_xlabel("latency / dense latency (medians, timed interleaved)")
    axes[0].set_ylabel("top-1 accuracy (%)" if labelled else "top-1 agreement with dense (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    path = os.path.join(out_dir, FIGURE)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _title(config: dict, points: list[Point]) -> str:
    images = max((p.images for p in points), default=0)
    data = "generated images" if config["data"] == GENERATED else os.path.basename(config["data"].rstrip("/"))
    return (
        f"{config['arch']}, {config['weights']}: {images} {data}, {config['backend']} batch {config['batch']}, "
        f"{bench.machine()['cpu']}"
    )


def format_points(points: list[Point]) -> str:
    labelled = all(p.top1 is not None for p in points)
    head = (
        f"{'point':<22}{'GMACs':>7}{'FLOPs':>7}{'latency ms':>12}{'vs dense':>10}{'samples':>9}"
        f"{'top-1 %' if labelled else 'agree %':>10}{'± s.e.':>8}{'images':>8}"
    )
    lines = [head, "-" * len(head)]
    for p in points:
        acc, se = p.accuracy
        lines.append(
            f"{p.label:<22}{p.gmacs:>7.2f}{p.flops_ratio:>7.2f}{p.latency_ms:>12.2f}"
            f"{p.relative_latency:>10.2f}{p.latency_samples:>9}{100 * acc:>10.2f}{100 * se:>8.2f}"
            f"{p.images:>8}"
        )
    return "\n".join(lines)
