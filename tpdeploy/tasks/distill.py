"""The PyTorch part of `tpdeploy finetune` (`tpdeploy.tasks.finetune` describes the jobs and their reports):
processes from torchrun's environment, the distillation loss, AdamW and its schedule, the loop, checkpoints.

Processes: torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) starts
N of them; with WORLD_SIZE > 1 they join one process group through torch.distributed's env:// rendezvous (NCCL
on GPUs, gloo on CPUs; several nodes alike) and the student is wrapped in DistributedDataParallel, which averages
the gradients. A DistributedSampler seeded with the job's seed orders each epoch's images; step s takes
positions [s B, (s + 1) B) of that order, and process r the positions r, r + N, ... of them: the same images in
every step for any N. Each process's loss is its images' sum over B / N, so the averaged gradient is what one
process computes on the whole batch. Rank 0 logs and writes the files.

Checkpoints: after every epoch rank 0 writes OUTPUT.resume (whole or not at all): weights, optimizer, schedule,
the curve so far and the job's configuration. The same command finds it and goes on after that epoch: the
images of an epoch depend only on (seed, epoch, index) and the rest of the state is in the file, so the result
is the one an uninterrupted run gives. A file of another configuration is refused (the number of processes may
differ). After the last epoch the output is written and the resume file removed.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from tpdeploy import __version__
from tpdeploy.artifacts.files import atomic_output, sha256
from tpdeploy.artifacts.recipe import WeightsOrigin
from tpdeploy.data import augment
from tpdeploy.errors import UserError, one_line
from tpdeploy.model import schedule as sched
from tpdeploy.model.checkpoint import Checkpoint, finetuned_checkpoint
from tpdeploy.model.factory import build_model
from tpdeploy.model.plan import ModelPlan, PlanSummary
from tpdeploy.tasks.finetune import (
    GENERATED_FIRST_SEED,
    GENERATED_IMAGES,
    TEACHER_DENSE,
    VALIDATION_IMAGES,
    EpochStats,
    FinetuneJob,
    FinetuneReport,
    HeldOut,
)

RESUME_FORMAT = 1
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "dist_token")  # timm's no_weight_decay(), besides all 1-D parameters


@dataclass
class Processes:
    """This process among torchrun's (one process without torchrun)."""

    rank: int
    size: int
    device: torch.device

    @classmethod
    def start(cls, device: str | None) -> Processes:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise UserError("--device cuda: PyTorch sees no CUDA GPU here (a CUDA build of torch on a GPU machine)")
            where = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(where)
        else:
            where = torch.device("cpu")
        if size > 1:
            dist.init_process_group("nccl" if kind == "cuda" else "gloo")
        return cls(rank, size, where)

    def stop(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the processes."""
        if self.size == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()


def distillation_loss(student, teacher, labels, temperature: float, label_weight: float):
    """Per image: (loss, KL, cross-entropy or None). KL(teacher || student) of the softmaxes at `temperature`,
    times temperature² (so that its gradients keep their size whatever the temperature); with labels, (1 -
    label_weight) of it plus label_weight x cross-entropy with the labels."""
    log_student = F.log_softmax(student / temperature, dim=1)
    log_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1) * temperature**2
    if labels is None:
        return kl, kl, None
    ce = F.cross_entropy(student, labels, reduction="none")
    return (1 - label_weight) * kl + label_weight * ce, kl, ce


def run(job: FinetuneJob, progress, progress_bar) -> FinetuneReport:
    processes = Processes.start(job.device)
    try:
        lead = processes.rank == 0
        return _Run(job, processes, progress if lead else lambda msg: None, progress_bar if lead else None).run()
    finally:
        processes.stop()


class _Run:
    def __init__(self, job: FinetuneJob, processes: Processes, progress, progress_bar):
        self.job, self.processes, self.progress, self.progress_bar = job, processes, progress, progress_bar
        self.device = processes.device
        t = job.training
        if t.amp and self.device.type != "cuda":
            raise UserError(
                "--amp needs a CUDA GPU (on the CPU autocast computes in bfloat16, which TokenPool does not take)"
            )
        if t.batch % processes.size:
            raise UserError(f"--batch {t.batch} does not split over {processes.size} processes: give a multiple")
        self.local_batch = t.batch // processes.size
        self.cfg = job.plan.cfg
        start = None if job.checkpoint is None else Checkpoint.read(job.checkpoint)
        if start is not None:
            self.progress(f"reading {job.checkpoint}")
        self.student = build_model(job.plan, start).to(self.device)
        self.teacher = self._teacher(start).to(self.device).requires_grad_(False)
        self.images, self.data = self._training_images()
        self.held_out, self.held_out_data = self._held_out_images()
        self.held_out_share = list(range(processes.rank, len(self.held_out or ()), processes.size))  # this process's
        self.steps = len(self.images) // t.batch
        if self.steps == 0:
            raise UserError(f"--batch {t.batch} is more than the {len(self.images)} training images")
        self.unreadable: dict[str, str] = {}
        self.config = {
            "plan": job.plan.describe(),
            "start": self.student.origin.reference(),
            "teacher": self.teacher.origin.reference(),
            "data": os.path.abspath(job.data) if job.data else self.data,
            "labels": os.path.abspath(job.labels) if job.labels else None,
            "images": len(self.images),
            "held_out": os.path.abspath(job.val) if job.val else self.held_out_data,
            "training": asdict(t),
        }

    def _teacher(self, start: Checkpoint | None):
        dense = ModelPlan(self.cfg, sched.dense(self.cfg.dims), "none")
        if self.job.teacher == TEACHER_DENSE:
            if start is not None and start.plan is not None:
                raise UserError(
                    f"--checkpoint {start.path} is itself fine-tuned (for {start.plan.describe()}): the dense "
                    f"model of its weights is no teacher; give the dense checkpoint it came from as --teacher"
                )
            return build_model(dense, start)
        teacher = Checkpoint.read(self.job.teacher)
        if teacher.plan is not None:
            raise UserError(
                f"--teacher {teacher.path} is fine-tuned for {teacher.plan.describe()}: the teacher is a dense "
                f"model (a timm/DeiT checkpoint of {self.cfg.name})"
            )
        return build_model(dense, teacher)

    def _training_images(self) -> tuple[augment.ImageSource, str]:
        job = self.job
        if job.data is None:
            return augment.ImageSource.generated(job.limit or GENERATED_IMAGES, GENERATED_FIRST_SEED), "generated"
        dataset = job.train_set
        if job.limit:
            dataset = dataset.subset(job.limit)
        for note in dataset.notes:
            self.progress(f"note: {note}")
        return augment.ImageSource.from_dataset(dataset), f"{job.data}: {dataset.layout}"

    def _held_out_images(self) -> tuple[augment.ImageSource | None, str | None]:
        job = self.job
        if job.val:
            dataset = job.val_set
            return augment.ImageSource.from_dataset(dataset), f"{job.val}: {dataset.layout}"
        if job.data is None:
            return augment.ImageSource.generated(VALIDATION_IMAGES), "generated"
        return None, None

    def _optimizer(self):
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            (no_decay if p.ndim <= 1 or name in NO_WEIGHT_DECAY else decay).append(p)
        t = self.job.training
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=t.lr)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.job.training.amp)

    def run(self) -> FinetuneReport:
        job, t, processes = self.job, self.job.training, self.processes
        torch.manual_seed(t.seed)  # the model draws nothing random today; whatever draws later is seeded
        optimizer = self._optimizer()
        total_steps = t.epochs * self.steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: t.lr_factor(step, total_steps))
        scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp)
        done, before, history = self._resume(optimizer, schedule, scaler)
        if processes.size > 1 and processes.sum([float(done)])[0] != done * processes.size:
            raise UserError(
                f"the processes found different resume files at {job.resume_path}: -o must be on a filesystem that "
                f"every node sees (as --data)"
            )
        self.progress(
            f"fine-tuning {job.plan.describe()}: {len(self.images)} training images ({self.data}), "
            f"{t.epochs} epochs of {self.steps} steps of {t.batch} images over {processes.size} "
            f"process{'es' if processes.size > 1 else ''} ({self.device.type})"
        )
        if job.checkpoint is None:
            self.progress(f"note: no --checkpoint given: {self.cfg.name} has seeded-random weights (seed 0)")
        if job.data is None:
            self.progress(
                f"note: no --data given: {len(self.images)} generated images (seeds from {GENERATED_FIRST_SEED}), "
                f"held out: the first {len(self.held_out)} images of `tpdeploy sweep` (seeds from 0)"
            )
        if done:
            self.progress(f"resuming after epoch {done} from {job.resume_path}")
        if self.held_out is not None and done < t.epochs:
            self.teacher_top1, self.readable = self._predict(self.teacher)
            if before is None:
                before = self._measure_held_out()
                self.progress(f"held-out images ({self.held_out_data}) before: {before.describe()}")
        model = self.student
        if processes.size > 1:
            model = DistributedDataParallel(
                self.student, device_ids=[self.device] if self.device.type == "cuda" else None
            )
        order = DistributedSampler(
            range(len(self.images)), num_replicas=processes.size, rank=processes.rank, shuffle=True, seed=t.seed
        )
        for epoch in range(done, t.epochs):
            self.progress(f"epoch {epoch + 1}/{t.epochs}")
            stats = self._epoch(epoch, model, order, optimizer, schedule, scaler)
            stats.held_out = self._measure_held_out() if self.held_out is not None else None
            history.append(stats)
            if processes.rank == 0:
                self._write(
                    job.resume_path, self._resume_state(epoch + 1, optimizer, schedule, scaler, before, history)
                )
            held = f", held-out {stats.held_out.describe()}" if stats.held_out else ""
            self.progress(
                f"epoch {epoch + 1}/{t.epochs}: loss {stats.loss:.4f}, train agreement {stats.train_agreement:.1%}"
                f"{held}, {stats.images_per_s:.1f} images/s; saved {job.resume_path}"
            )
        digest = self._write_output() if processes.rank == 0 else None
        return FinetuneReport(
            output=job.output,
            sha256=digest,
            summary=PlanSummary(job.plan, WeightsOrigin(None, digest, finetuned_from=self.student.origin.reference())),
            start=self.student.origin.describe(),
            teacher=f"dense, {self.teacher.origin.describe()}",
            data=self.data,
            images=len(self.images),
            held_out_data=self.held_out_data,
            processes=processes.size,
            device=self.device.type,
            training=t,
            resumed_epochs=done,
            before=before,
            epochs=history,
            unreadable=sorted(self.unreadable.items()),
            rank=processes.rank,
        )

    def _epoch(self, epoch: int, model, order: DistributedSampler, optimizer, schedule, scaler) -> EpochStats:
        t, cfg = self.job.training, self.cfg
        order.set_epoch(epoch)
        mine = list(order)
        batches = [mine[s * self.local_batch : (s + 1) * self.local_batch] for s in range(self.steps)]
        seed, images = t.seed, self.images

        def prepare(index: int) -> np.ndarray:
            rng = augment.example_rng(seed, epoch, index)
            return augment.train_example(images.picture(index), cfg.data_config, rng)

        bar = self.progress_bar(f"epoch {epoch + 1}/{t.epochs}") if self.progress_bar else None
        sums = np.zeros(6)  # loss, KL, cross-entropy, agreeing, images, unreadable
        start = time.perf_counter()
        model.train()
        shape = (3, cfg.img_size, cfg.img_size)
        for step, batch in enumerate(augment.prepared_batches(batches, prepare, shape, self.job.workers)):
            x = torch.from_numpy(batch.inputs).to(self.device)
            readable = torch.ones(len(batch.indices), device=self.device)
            for index, reason in batch.unreadable:
                readable[batch.indices.index(index)] = 0
                self.unreadable[images.where(index)] = reason
            labels = None
            if images.labels is not None:
                labels = torch.tensor([images.labels[i] for i in batch.indices], device=self.device)
            with self._autocast():
                with torch.no_grad():
                    teacher = self.teacher(x)
                student = model(x)
            per_image, kl, ce = distillation_loss(
                student.float(), teacher.float(), labels, t.temperature, t.label_weight
            )
            loss = (per_image * readable).sum() / len(batch.indices)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), t.clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            with torch.no_grad():
                agreeing = (student.argmax(1) == teacher.argmax(1)).float()
                sums += [
                    (per_image * readable).sum().item(),
                    (kl * readable).sum().item(),
                    0.0 if ce is None else (ce * readable).sum().item(),
                    (agreeing * readable).sum().item(),
                    readable.sum().item(),
                    len(batch.unreadable),
                ]
            if bar:
                bar(
                    (step + 1) * t.batch,
                    self.steps * t.batch,
                    int(sums[5]),
                    status=f"loss {sums[0] / max(sums[4], 1):.4f}",
                )
        seconds = time.perf_counter() - start
        loss, kl, ce, agreeing, count, unreadable = self.processes.sum(sums.tolist())
        count = max(count, 1)
        return EpochStats(
            epoch=epoch + 1,
            steps=self.steps,
            images=int(count),
            unreadable=int(unreadable),
            loss=loss / count,
            kl=kl / count,
            cross_entropy=None if images.labels is None else ce / count,
            train_agreement=agreeing / count,
            lr=schedule.get_last_lr()[0],
            seconds=seconds,
            held_out=None,
        )

    def _predict(self, model) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 of `model` on this process's share of the held-out images, and which of them were readable."""
        source, cfg, share = self.held_out, self.cfg, self.held_out_share
        batches = [share[i : i + self.local_batch] for i in range(0, len(share), self.local_batch)]
        top1, readable = [], []
        model.eval()
        with torch.no_grad(), self._autocast():
            for batch in augment.prepared_batches(
                batches,
                lambda i: augment.eval_example(source.picture(i), cfg.data_config),
                (3, cfg.img_size, cfg.img_size),
                self.job.workers,
            ):
                top1.append(model(torch.from_numpy(batch.inputs).to(self.device)).argmax(1).cpu().numpy())
                bad = {i for i, _ in batch.unreadable}
                readable.append(np.array([i not in bad for i in batch.indices]))
        if not top1:  # more processes than held-out images
            return np.zeros(0, np.int64), np.zeros(0, bool)
        return np.concatenate(top1), np.concatenate(readable)

    def _measure_held_out(self) -> HeldOut:
        top1, _ = self._predict(self.student)
        agree = int(((top1 == self.teacher_top1) & self.readable).sum())
        labels = None
        if self.held_out.labels is not None:
            labels = np.array([self.held_out.labels[i] for i in self.held_out_share], np.int64)
        correct = 0 if labels is None else int(((top1 == labels) & self.readable).sum())
        images, agree, correct = self.processes.sum([float(self.readable.sum()), float(agree), float(correct)])
        return HeldOut(int(images), int(agree), None if labels is None else int(correct))

    def _resume(self, optimizer, schedule, scaler) -> tuple[int, HeldOut | None, list[EpochStats]]:
        """(epochs done, held-out before, the curve so far) of an interrupted run of this job; (0, None, [])."""
        path = self.job.resume_path
        if not os.path.exists(path):
            return 0, None, []
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("format") != RESUME_FORMAT:
                raise ValueError(f"format {saved.get('format')!r}, not {RESUME_FORMAT}")
            config = saved["config"]
        except Exception as e:  # corrupt or foreign files raise many different types
            raise UserError(
                f"{path} is no tpdeploy finetune checkpoint ({one_line(e)}): remove it to start again"
            ) from None
        differs = [k for k in self.config if config.get(k) != self.config[k]]
        if differs:
            raise UserError(
                f"{path} holds a fine-tuning run of another configuration (it differs in {', '.join(differs)}): "
                f"remove it to start again, or give another -o"
            )
        self.student.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        before = None if saved["before"] is None else HeldOut(**saved["before"])
        return saved["epoch"], before, [EpochStats.from_json(e) for e in saved["history"]]

    def _resume_state(self, epochs_done, optimizer, schedule, scaler, before, history) -> dict:
        return {
            "format": RESUME_FORMAT,
            "config": self.config,
            "epoch": epochs_done,
            "model": self.student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "before": None if before is None else asdict(before),
            "history": [e.to_json() for e in history],
        }

    def _write(self, path: str, payload: dict) -> str:
        """Write `payload` whole or not at all; its SHA-256."""
        with atomic_output(path, inputs=self.job.all_inputs) as tmp:
            torch.save(payload, tmp)
            return sha256(tmp)

    def _write_output(self) -> str:
        job = self.job
        state = {k: v.detach().cpu() for k, v in self.student.state_dict().items()}
        payload = finetuned_checkpoint(
            state,
            job.plan,
            self.student.origin,
            teacher=self.teacher.origin.reference(),
            epochs=job.training.epochs,
            images=len(self.images),
            data="generated" if job.data is None else os.path.basename(os.path.abspath(job.data)),
            tpdeploy_version=__version__,
        )
        digest = self._write(job.output, payload)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(job.resume_path)
        return digest
