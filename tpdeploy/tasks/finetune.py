"""`tpdeploy finetune`: a Token-Pooled ViT learns from the dense model's predictions (knowledge distillation), in
one process or in many (torchrun), and is saved as a checkpoint that records the plan it was fine-tuned for.

    job = FinetuneJob(resolve_plan("deit_tiny", flops_ratio=0.45), "tuned.pt", data="train/")
    report = finetune(job)                # on each torchrun process: rank 0 logs and writes

The student is the pooled model; the teacher is the dense model of the same weights (`teacher="dense"`), or of
another checkpoint of the same architecture (`teacher=PATH`: e.g. the trained weights when the student starts
from a previous fine-tune). A teacher of another architecture is not taken: its preprocessing, heads and classes
need not be the student's, and what the pooled model should reproduce is the dense model it replaces.

Loss per image: KL(teacher || student) of the softmaxes of logits / temperature, times temperature² (Hinton et
al.); where the data has labels, (1 - label_weight) of it plus label_weight x cross-entropy (DeiT's soft
distillation: 0.5). AdamW (no weight decay on biases, norms, tokens and position embeddings, as timm), a linear
warm-up over the first `warmup` fraction of the steps, then a cosine decay to 1% of the learning rate, the
gradient norm clipped. Images: `tpdeploy.data.augment` (timm's standard training augmentation with the
architecture's data config), decoded by threads ahead of the model.

Without --data, training images are generated (`sample_rgb_images`, seeds from GENERATED_FIRST_SEED: never the
sweep's images, which start at seed 0) and the held-out images are the sweep's first VALIDATION_IMAGES.

The torch part (the loop, the loss, DistributedDataParallel, checkpoints) is `tpdeploy.tasks.distill`, imported
when a job runs: this module only describes jobs and their reports, so that the command line needs no PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from tpdeploy.artifacts.files import check_output
from tpdeploy.data import datasets
from tpdeploy.errors import InvalidArgumentError, UserError, check_choice, check_int, check_number
from tpdeploy.model.plan import ModelPlan, PlanSummary
from tpdeploy.optional import lazy_import
from tpdeploy.tasks.evaluate import Proportion

DEFAULT_EPOCHS = 10
DEFAULT_BATCH = 32  # images per optimizer step, over all processes together
DEFAULT_LR = 2e-5
DEFAULT_WEIGHT_DECAY = 0.05
DEFAULT_WARMUP = 0.05  # fraction of the steps
DEFAULT_CLIP = 1.0  # gradient norm
DEFAULT_TEMPERATURE = 1.0
DEFAULT_LABEL_WEIGHT = 0.5
DEFAULT_SEED = 0
GENERATED_IMAGES = 512
GENERATED_FIRST_SEED = 1_000_000
VALIDATION_IMAGES = 128
TEACHER_DENSE = "dense"
DEVICES = ("cpu", "cuda")
RESUME_SUFFIX = ".resume"  # beside the output: the last complete epoch, until the output is written


@dataclass(frozen=True)
class Training:
    """How the student learns. `batch` is global: each of N processes takes batch / N images per step, and the
    result is the same as one process's (to float rounding)."""

    epochs: int = DEFAULT_EPOCHS
    batch: int = DEFAULT_BATCH
    lr: float = DEFAULT_LR
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    warmup: float = DEFAULT_WARMUP
    clip: float = DEFAULT_CLIP
    temperature: float = DEFAULT_TEMPERATURE
    label_weight: float = DEFAULT_LABEL_WEIGHT
    seed: int = DEFAULT_SEED
    amp: bool = False

    def __post_init__(self):
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch", self.batch, minimum=1)
        check_number("lr", self.lr, minimum=0.0, exclusive=True)
        check_number("weight_decay", self.weight_decay, minimum=0.0)
        check_number("clip", self.clip, minimum=0.0, exclusive=True)
        check_number("temperature", self.temperature, minimum=0.0, exclusive=True)
        check_int("seed", self.seed, minimum=0)
        for name in ("warmup", "label_weight"):
            if not 0 <= check_number(name, getattr(self, name), minimum=0.0) <= 1:
                raise InvalidArgumentError(f"{name} must be in [0, 1], got {getattr(self, name):g}")

    def lr_factor(self, step: int, total: int) -> float:
        """The learning rate at `step` of `total`, as a fraction of `lr`: linear warm-up, then cosine to 1%."""
        warmup = round(self.warmup * total)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class FinetuneJob:
    plan: ModelPlan  # the student's: a pooled schedule
    output: str
    checkpoint: str | None = None  # the starting weights (default: seeded-random)
    teacher: str = TEACHER_DENSE  # or a checkpoint of the same architecture
    data: str | None = None  # as `tpdeploy eval` takes it; None: generated images
    labels: str | None = None
    val: str | None = None  # held-out images: the agreement with the teacher before and after every epoch
    limit: int | None = None  # train on this many images (spread evenly; or generate this many)
    training: Training = field(default_factory=Training)
    workers: int = datasets.DEFAULT_WORKERS
    device: str | None = None  # None: cuda where torch sees a GPU, else cpu
    inputs: tuple = ()  # more files no output may overwrite (a preset file)

    def __post_init__(self):
        if not self.plan.pooling_steps:
            raise UserError(
                "nothing to fine-tune: the schedule is dense; give one with --preset, --flops-ratio or --schedule"
            )
        if self.labels and not self.data:
            raise UserError("--labels needs --data")
        if self.limit is not None:
            check_int("limit", self.limit, minimum=1)
        check_int("workers", self.workers, minimum=1)
        if self.device is not None:
            check_choice("device", self.device, DEVICES)
        for path in (self.output, self.resume_path):
            check_output(path, inputs=self.all_inputs)
        # the folders before any model is built: a folder without images is refused at once
        classes = self.plan.cfg.num_classes
        self.train_set = self.data and datasets.open_dataset(self.data, self.labels, classes)
        self.val_set = self.val and datasets.open_dataset(self.val, None, classes, option="--val")

    @property
    def resume_path(self) -> str:
        return self.output + RESUME_SUFFIX

    @property
    def all_inputs(self) -> list[str]:
        teacher = None if self.teacher == TEACHER_DENSE else self.teacher
        folders = [*datasets.data_inputs(self.data, self.labels), *datasets.data_inputs(self.val)]
        return [p for p in (self.checkpoint, teacher, *folders, *self.inputs) if p]


@dataclass
class HeldOut:
    """The student on the held-out images: top-1 agreement with the teacher, and top-1 where there are labels."""

    images: int
    agree: int
    correct: int | None

    @property
    def agreement(self) -> Proportion:
        return Proportion(self.agree, self.images)

    @property
    def top1(self) -> Proportion | None:
        return None if self.correct is None else Proportion(self.correct, self.images)

    def describe(self) -> str:
        top1 = f", top-1 {self.top1.describe()}" if self.top1 else ""
        return f"agreement with the teacher {self.agreement.describe()}{top1}"


@dataclass
class EpochStats:
    epoch: int  # 1-based
    steps: int
    images: int  # trained on, all processes together (unreadable ones left out)
    unreadable: int
    loss: float  # mean per image
    kl: float
    cross_entropy: float | None  # None without labels
    train_agreement: float  # student top-1 == teacher top-1 on the augmented training images
    lr: float  # at the epoch's last step
    seconds: float
    held_out: HeldOut | None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan

    def to_json(self) -> dict:
        return {**asdict(self), "images_per_s": self.images_per_s, "held_out": _held_out_json(self.held_out)}

    @classmethod
    def from_json(cls, d: dict) -> EpochStats:
        d = {k: v for k, v in d.items() if k != "images_per_s"}
        held = d.pop("held_out")
        return cls(**d, held_out=None if held is None else HeldOut(held["images"], held["agree"], held["correct"]))


def _held_out_json(h: HeldOut | None) -> dict | None:
    if h is None:
        return None
    return {
        **asdict(h),
        "agreement": h.agreement.value,
        "agreement_se": h.agreement.stderr,
        "top1": h.top1 and h.top1.value,
    }


@dataclass
class FinetuneReport:
    output: str
    sha256: str | None  # of the output (rank 0, which wrote it)
    summary: PlanSummary  # the fine-tuned model: plan and weights
    start: str  # the weights it started from
    teacher: str
    data: str
    images: int  # training images (an epoch: images // batch steps)
    held_out_data: str | None
    processes: int
    device: str
    training: Training
    resumed_epochs: int  # epochs a previous, interrupted run had completed
    before: HeldOut | None
    epochs: list[EpochStats]
    unreadable: list[tuple[str, str]]  # (image, reason) met by this process
    rank: int

    def to_json(self) -> dict:
        return {
            "output": self.output,
            "sha256": self.sha256,
            "model": self.summary.to_json(),
            "start": self.start,
            "teacher": self.teacher,
            "data": self.data,
            "images": self.images,
            "held_out_data": self.held_out_data,
            "processes": self.processes,
            "device": self.device,
            "training": asdict(self.training),
            "resumed_epochs": self.resumed_epochs,
            "before": _held_out_json(self.before),
            "epochs": [e.to_json() for e in self.epochs],
            "unreadable_files": [{"image": p, "reason": r} for p, r in self.unreadable],
        }

    def format(self) -> str:
        t = self.training
        lines = [
            f"fine-tuned {self.summary.plan.cfg.name} {self.summary.plan.method} at "
            f"{self.summary.plan.flops_ratio:.2f}x FLOPs from {self.start}, teacher {self.teacher}",
            f"{self.images} training images ({self.data}), {t.epochs} epochs, batch {t.batch} over "
            f"{self.processes} process{'es' if self.processes > 1 else ''} ({self.device}), lr {t.lr:g}"
            + (f"; resumed after epoch {self.resumed_epochs}" if self.resumed_epochs else ""),
        ]
        head = f"{'epoch':>5}{'loss':>10}{'KL':>10}{'train agree':>13}{'held-out agree':>16}{'images/s':>10}"
        lines += [head, "-" * len(head)]
        if self.before:
            lines.append(f"{'0':>5}{'':>10}{'':>10}{'':>13}{100 * self.before.agreement.value:>15.1f}%{'':>10}")
        for e in self.epochs:
            held = f"{100 * e.held_out.agreement.value:>15.1f}%" if e.held_out else f"{'-':>16}"
            lines.append(
                f"{e.epoch:>5}{e.loss:>10.4f}{e.kl:>10.4f}{100 * e.train_agreement:>12.1f}%{held}"
                f"{e.images_per_s:>10.1f}"
            )
        if self.before and self.epochs and self.epochs[-1].held_out:
            lines.append(
                f"held-out ({self.held_out_data}): before {self.before.describe()}; after "
                f"{self.epochs[-1].held_out.describe()}"
            )
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} unreadable images left out, e.g. {': '.join(self.unreadable[0])}")
        lines.append(f"wrote {self.output} (sha256 {self.sha256}): {self.summary.origin.describe()}")
        return "\n".join(lines)


def finetune(job: FinetuneJob, progress=lambda msg: None, progress_bar=None) -> FinetuneReport:
    """Run the job in this process (one of torchrun's, where its environment says so). `progress(msg)` and
    `progress_bar(label)(done, total, unreadable, status)` are called on rank 0 only."""
    distill = lazy_import("tpdeploy.tasks.distill", "fine-tuning")  # PyTorch: imported on use
    return distill.run(job, progress, progress_bar)
