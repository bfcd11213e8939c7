"""`tpdeploy eval`: top-1/top-5 accuracy of model files on a folder of images, on the backend that will run them.

    dataset = open_dataset("val/", labels=None, num_classes=1000)      # tpdeploy.data.datasets: the layouts
    report = evaluate([runtime.load("tp.onnx"), runtime.load("dense.onnx")], dataset, batch=16, workers=2)
    print(report.format())

Each model sees the images preprocessed with its own recorded data config. Accuracies carry their binomial
standard error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from tpdeploy.data.datasets import DEFAULT_WORKERS, Dataset, decoded_batches, open_dataset
from tpdeploy.errors import InvalidArgumentError, UserError, check_int

TOP_K = 5

# -- accuracy --


@dataclass
class Proportion:
    count: int
    total: int

    @property
    def value(self) -> float:
        return self.count / self.total if self.total else math.nan

    @property
    def stderr(self) -> float:
        """Binomial standard error sqrt(p (1 - p) / n)."""
        p = self.value
        return math.sqrt(p * (1 - p) / self.total) if self.total else math.nan

    def describe(self) -> str:
        return f"{self.value:.2%} ± {self.stderr:.2%} ({self.count}/{self.total})"

    def to_json(self) -> dict:
        return {"value": self.value, "stderr": self.stderr, "count": self.count, "total": self.total}


@dataclass
class ModelResult:
    name: str
    backend: str
    top1: Proportion | None  # None without labels
    top5: Proportion | None
    inference_s: float  # time in runner.infer, summed over batches
    predictions: np.ndarray  # top-1 class per evaluated image


@dataclass
class EvalReport:
    data: str
    layout: str
    batch: int
    workers: int
    images: int  # evaluated (readable) images
    unreadable: list[tuple[str, str]]  # (path, reason)
    notes: list[str]
    seconds: float  # wall time of decoding and inference together
    models: list[ModelResult]
    agreement: Proportion | None  # top-1 agreement of the first model with the second (the baseline)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan

    def to_json(self) -> dict:
        def model(m: ModelResult) -> dict:
            return {
                "model": m.name,
                "backend": m.backend,
                "top1": m.top1 and m.top1.to_json(),
                "top5": m.top5 and m.top5.to_json(),
                "inference_images_per_s": self.images / m.inference_s if m.inference_s > 0 else None,
            }

        return {
            "data": self.data,
            "layout": self.layout,
            "images": self.images,
            "batch": self.batch,
            "workers": self.workers,
            "unreadable": len(self.unreadable),
            "unreadable_files": [{"path": p, "reason": r} for p, r in self.unreadable],
            "notes": self.notes,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "models": [model(m) for m in self.models],
            "top1_agreement": self.agreement and self.agreement.to_json(),
        }

    def format(self) -> str:
        lines = [
            f"{self.images} images of {self.data} ({self.layout}), batch {self.batch}, {self.workers} decode "
            f"workers; ± is the standard error"
        ]
        for m in self.models:
            accuracy = f"top-1 {m.top1.describe()}   top-5 {m.top5.describe()}" if m.top1 else "no labels"
            lines.append(f"  {m.name} ({m.backend}): {accuracy}")
        if self.agreement:
            lines.append(
                f"  top-1 agreement {self.models[0].name} vs {self.models[1].name}: {self.agreement.describe()}"
            )
        inference = ", ".join(f"{m.name} {self.images / m.inference_s:.1f}" for m in self.models if m.inference_s > 0)
        lines.append(
            f"  {self.images_per_s:.1f} images/s end to end (decoding in parallel); inference alone: "
            f"{inference} images/s"
        )
        lines.append(f"  unreadable images: {len(self.unreadable)} (not counted)")
        lines += [f"    {path}: {reason}" for path, reason in self.unreadable[:10]]
        if len(self.unreadable) > 10:
            lines.append(f"    ... and {len(self.unreadable) - 10} more (all in --json)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


DEFAULT_BATCH = 16


def open_eval_data(
    runners, names: list[str], data: str, labels: str | None = None, limit: int | None = None
) -> Dataset:
    """The images of `data` for these models: refused where the models' classes differ, or where there are no
    labels and only one model (nothing to measure)."""
    if len({r.num_classes for r in runners}) > 1:
        raise UserError(f"{' and '.join(names)} have different numbers of classes: not comparable")
    dataset = open_dataset(data, labels, runners[0].num_classes)
    if limit:
        dataset = dataset.subset(limit)
    if dataset.labels is None and len(runners) < 2:
        raise UserError(
            f"--data {data} has no labels (no class folders, no --labels): give --baseline MODEL to "
            f"measure the top-1 agreement of two models"
        )
    return dataset


def default_batch(runners) -> int:
    """DEFAULT_BATCH, or less where a model takes less (a fixed-batch file)."""
    return min([DEFAULT_BATCH] + [r.max_batch for r in runners if r.max_batch])


def check_batch(runners, batch: int) -> int:
    batch = check_int("batch", batch, minimum=1)
    for r in runners:
        if r.max_batch is not None and batch > r.max_batch:
            raise UserError(f"--batch {batch} is larger than {r.describe()} accepts (at most {r.max_batch})")
    return batch


def evaluate(
    runners,
    dataset: Dataset,
    batch: int,
    workers: int = DEFAULT_WORKERS,
    names=None,
    progress=lambda done, total, unreadable: None,
) -> EvalReport:
    """Top-1/top-5 of each runner on the same images (and the first one's top-1 agreement with the second)."""
    if not runners:
        raise UserError("no model to evaluate")
    batch, workers = check_batch(runners, batch), check_int("workers", workers, minimum=1)
    names = names or [r.describe() for r in runners]
    classes = min(r.num_classes for r in runners)
    if dataset.labels is not None and not all(0 <= label < classes for label in dataset.labels):
        wrong = next(label for label in dataset.labels if not 0 <= label < classes)
        raise InvalidArgumentError(f"label {wrong} of {dataset.root} is not a class of a model with {classes} classes")
    configs = list(dict.fromkeys(r.data_config for r in runners))  # decode once, preprocess once per config
    which = [configs.index(r.data_config) for r in runners]
    predictions = [[] for _ in runners]
    top5_hits = [0] * len(runners)
    inference_s = [0.0] * len(runners)
    evaluated, unreadable = [], []
    labels = None if dataset.labels is None else np.asarray(dataset.labels)
    start = time.perf_counter()
    for b in decoded_batches(dataset.paths, configs, batch, workers):
        unreadable += [(dataset.paths[i], reason) for i, reason in b.unreadable]
        if b.indices:
            for m, runner in enumerate(runners):
                t0 = time.perf_counter()
                logits = runner.run_any(b.inputs[which[m]])
                inference_s[m] += time.perf_counter() - t0
                k = min(TOP_K, logits.shape[1])
                top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
                predictions[m].append(logits.argmax(1))
                if labels is not None:
                    top5_hits[m] += int((top == labels[b.indices][:, None]).any(1).sum())
            evaluated += b.indices
        progress(len(evaluated) + len(unreadable), len(dataset), len(unreadable))
    seconds = time.perf_counter() - start
    if not evaluated:
        raise UserError(
            f"none of the {len(dataset)} images of {dataset.root} could be read; e.g. "
            f"{unreadable[0][0]}: {unreadable[0][1]}"
        )
    truth = None if labels is None else labels[evaluated]
    results = []
    for m, runner in enumerate(runners):
        top1 = np.concatenate(predictions[m])
        results.append(
            ModelResult(
                names[m],
                runner.label,
                None if truth is None else Proportion(int((top1 == truth).sum()), len(evaluated)),
                None if truth is None else Proportion(top5_hits[m], len(evaluated)),
                inference_s[m],
                top1,
            )
        )
    agreement = (
        Proportion(int((results[0].predictions == results[1].predictions).sum()), len(evaluated))
        if len(results) > 1
        else None
    )
    return EvalReport(
        dataset.root,
        dataset.layout,
        batch,
        workers,
        len(evaluated),
        unreadable,
        dataset.notes,
        seconds,
        results,
        agreement,
    )
