"""Image folders for evaluation and training: the layouts, their labels, and decoding in parallel with the model.

    dataset = open_dataset("val/", labels=None, num_classes=1000)      # the layout is recognised (below)
    for batch in decoded_batches(dataset.paths, [runner.data_config], batch=16, workers=2): ...

Layouts of `--data DIR`:
- class folders (torchvision's ImageFolder): one folder per class, classes in sorted name order; their count must
  be the model's. Folders named by ImageNet synsets (n01440764, ...) of a 1000-class model index the standard
  ImageNet order instead (the sorted 1000 synsets, `imagenet_synsets()`), so a subset of the classes works.
- a flat folder with a labels file (`--labels`): a `file,label` CSV (label: a class index or a synset), the
  `ImageId,PredictionString` CSV of the Kaggle ImageNet copies (first synset of each row), or the ILSVRC2012
  devkit's `ILSVRC2012_validation_ground_truth.txt` (line i: the class of ILSVRC2012_val_{i:08d}.JPEG), whose
  class IDs follow the devkit's own order: they are mapped through the devkit's `meta.mat` (beside it, as in
  `ILSVRC2012_devkit_t12/data/`; read with scipy) to the sorted-synset index. `--labels` may also be the devkit
  folder itself.
- a flat folder of plain images and no labels: only the top-1 agreement between two models is measured.

Images are decoded and preprocessed with each model's recorded data config (`runner.data_config`) by a pool of
threads (Pillow and numpy release the GIL) while the models run on earlier batches. An image that cannot be
read or decoded is counted and reported, never fatal.
"""

from __future__ import annotations

import concurrent.futures
import csv
import functools
import os
import re
from collections import deque
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from tpdeploy.artifacts.recipe import DataConfig
from tpdeploy.data.preprocess import decode_image, normalize, resize_center_crop
from tpdeploy.errors import UserError, check_int, one_line
from tpdeploy.optional import lazy_import

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SYNSET = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
DEFAULT_WORKERS = 2  # decoding threads


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ILSVRC2012 synsets in the standard class-index order (sorted; timm's and torchvision's)."""
    text = resources.files("tpdeploy.data").joinpath("imagenet_synsets.txt").read_text()
    return tuple(text.split())


def synset_index(synset: str, where: str) -> int:
    try:
        return _synset_indices()[synset]
    except KeyError:
        raise UserError(f"{where}: {synset} is not one of the 1000 ILSVRC2012 synsets") from None


@functools.cache
def _synset_indices() -> dict[str, int]:
    return {s: i for i, s in enumerate(imagenet_synsets())}


@dataclass
class Dataset:
    root: str
    layout: str  # how the labels were found, for the report
    paths: list[str]  # image files, in evaluation order
    labels: list[int] | None  # class index per image; None: no labels (agreement only)
    notes: list[str] = field(default_factory=list)  # what was left out, and why

    def __len__(self):
        return len(self.paths)

    def subset(self, limit: int) -> Dataset:
        """`limit` images spread evenly over the whole list (every len/limit-th), so that a sorted class-folder
        layout keeps all its classes."""
        limit = check_int("limit", limit, minimum=1)
        if limit >= len(self.paths):
            return self
        keep = [i * len(self.paths) // limit for i in range(limit)]
        return Dataset(
            self.root,
            self.layout,
            [self.paths[i] for i in keep],
            None if self.labels is None else [self.labels[i] for i in keep],
            self.notes + [f"--limit {limit}: every {len(self.paths) / limit:.3g}th of {len(self.paths)} images"],
        )


def data_inputs(root: str | None, labels: str | None = None) -> list[str]:
    """What `--data root --labels labels` makes a command read: the folder, the labels file (or the devkit folder and
    its ground truth), and the devkit's meta.mat beside them; for the one rule on outputs (never over, into or
    around an input)."""
    found = [root, labels]
    if labels and os.path.isdir(labels):
        found += [os.path.join(labels, "data", DEVKIT_GROUND_TRUTH), os.path.join(labels, DEVKIT_GROUND_TRUTH)]
    found += [os.path.join(os.path.dirname(os.path.abspath(f)), DEVKIT_META) for f in found[1:] if f]
    return [f for f in found if f and os.path.exists(f)]


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def open_dataset(
    root: str, labels: str | None = None, num_classes: int | None = None, option: str = "--data"
) -> Dataset:
    """The images under `root` and their labels (see the module's docstring for the layouts). `num_classes` is the
    model's: a layout that does not fit it is refused. `option` names `root` in the messages."""
    if not os.path.isdir(root):
        raise UserError(f"{option} {root}: not a folder")
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    folders = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if labels is not None:
        dataset = _with_labels_file(root, entries, labels)
    elif folders:
        dataset = _class_folders(root, folders, num_classes)
        loose = [e for e in entries if e not in folders]
        if loose:
            dataset.notes.append(f"{len(loose)} files beside the class folders are not evaluated (e.g. {loose[0]})")
    else:
        images = [e for e in entries if is_image_name(e)]
        dataset = Dataset(root, "unlabelled images", [os.path.join(root, e) for e in images], None)
        _note_skipped(dataset, len(entries) - len(images), root)
    if not dataset.paths:
        raise UserError(
            f"{option} {root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files"
            f"{' with a label' if labels else ''})"
        )
    if dataset.labels is not None and num_classes is not None and max(dataset.labels) >= num_classes:
        raise UserError(
            f"{labels or root}: class index {max(dataset.labels)} is out of range for a model with "
            f"{num_classes} classes"
        )
    return dataset


def _note_skipped(dataset: Dataset, count: int, where: str) -> None:
    if count:
        dataset.notes.append(
            f"{count} files in {where} are not images by their extension ({', '.join(IMAGE_EXTENSIONS)}): skipped"
        )


def _class_folders(root: str, folders: list[str], num_classes: int | None) -> Dataset:
    imagenet = num_classes == IMAGENET_CLASSES and all(SYNSET.fullmatch(f) for f in folders)
    if imagenet:
        indices = [synset_index(f, root) for f in folders]
        layout = f"ImageNet synset folders ({len(folders)} of the 1000 classes)"
    else:
        if num_classes is not None and len(folders) != num_classes:
            raise UserError(
                f"--data {root} has {len(folders)} class folders but the model has {num_classes} classes "
                f"(class folders map to class indices in sorted order; give --labels for another mapping)"
            )
        indices = list(range(len(folders)))
        layout = f"class folders ({len(folders)} classes, in sorted order)"
    dataset = Dataset(root, layout, [], [])
    skipped = 0
    for folder, index in zip(folders, indices):
        for dirpath, dirnames, files in os.walk(os.path.join(root, folder)):
            dirnames.sort()
            for name in sorted(files):
                if is_image_name(name):
                    dataset.paths.append(os.path.join(dirpath, name))
                    dataset.labels.append(index)
                else:
                    skipped += 1
    _note_skipped(dataset, skipped, "the class folders")
    return dataset


def _with_labels_file(root: str, entries: list[str], labels: str) -> Dataset:
    """A flat folder whose images are named in a labels file; images without a label and labels without an image
    are left out (and counted)."""
    if os.path.isdir(labels):
        labels = _devkit_ground_truth(labels)
    if not os.path.isfile(labels):
        raise UserError(f"--labels {labels}: file not found")
    try:
        with open(labels, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --labels {labels}: {one_line(e)}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"--labels {labels} is empty")
    if all(line.isdigit() for line in lines):
        layout, by_name = (
            "ILSVRC2012 devkit ground truth (devkit class IDs mapped through meta.mat)",
            _read_devkit(labels, lines),
        )
    else:
        rows = [r for r in csv.reader(lines) if r]
        if [c.strip() for c in rows[0][:2]] == ["ImageId", "PredictionString"]:
            layout, by_name = "ImageId,PredictionString synset CSV", _read_solution_csv(labels, rows[1:])
        else:
            layout, by_name = "file,label CSV", _read_file_label_csv(labels, rows)
    images = [e for e in entries if is_image_name(e)]
    dataset = Dataset(root, layout, [], [])
    unlabelled = 0
    for name in images:
        label = by_name.get(name, by_name.get(os.path.splitext(name)[0]))
        if label is None:
            unlabelled += 1
        else:
            dataset.paths.append(os.path.join(root, name))
            dataset.labels.append(label)
    if unlabelled:
        dataset.notes.append(f"{unlabelled} images in {root} have no label in {labels}: not evaluated")
    if len(by_name) > len(dataset.paths):
        dataset.notes.append(f"{len(by_name) - len(dataset.paths)} labelled files of {labels} are not in {root}")
    _note_skipped(dataset, len([e for e in entries if not is_image_name(e)]), root)
    return dataset


def _label_index(value: str, where: str) -> int:
    value = value.strip()
    if value.isdigit():
        return int(value)
    if SYNSET.fullmatch(value):
        return synset_index(value, where)
    raise UserError(f"{where}: label {value!r} is neither a class index nor an ImageNet synset")


def _read_file_label_csv(path: str, rows: list[list[str]]) -> dict[str, int]:
    """`file,label` rows; a first row whose label is no label is a header."""
    first = rows[0][1].strip() if len(rows[0]) > 1 else "0"
    if not (first.isdigit() or SYNSET.fullmatch(first)):
        rows = rows[1:]
    out, rows_of = {}, {}
    for i, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise UserError(f"{path}: row {i} is not `file,label`: {','.join(row)!r}")
        _label_once(path, row[0].strip(), i, rows_of, "row")
        out[row[0].strip()] = _label_index(row[1], f"{path} row {i}")
    return out


def _label_once(path: str, name: str, where: int, seen: dict[str, int], unit: str) -> None:
    """A labels file that names an image twice contradicts itself (which label is right?): refused."""
    if name in seen:
        raise UserError(f"{path}: {name} is labelled twice ({unit}s {seen[name]} and {where}): which label is right?")
    seen[name] = where


def _read_solution_csv(path: str, rows: list[list[str]]) -> dict[str, int]:
    """Kaggle's LOC_val_solution.csv: ImageId (no extension), then synset and box, repeated per object."""
    out, lines_of = {}, {}
    for i, row in enumerate(rows, start=2):
        words = row[1].split() if len(row) > 1 else []
        if not words:
            raise UserError(f"{path}: line {i} has no PredictionString")
        _label_once(path, row[0].strip(), i, lines_of, "line")
        out[row[0].strip()] = _label_index(words[0], f"{path} line {i}")
    return out


def _devkit_ground_truth(folder: str) -> str:
    for candidate in (os.path.join(folder, "data", DEVKIT_GROUND_TRUTH), os.path.join(folder, DEVKIT_GROUND_TRUTH)):
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"--labels {folder}: a folder, but not the ILSVRC2012 devkit (no data/{DEVKIT_GROUND_TRUTH})")


def _read_devkit(path: str, lines: list[str]) -> dict[str, int]:
    meta = os.path.join(os.path.dirname(os.path.abspath(path)), DEVKIT_META)
    ids = devkit_class_ids(meta)
    out = {}
    for i, line in enumerate(lines, start=1):
        if int(line) not in ids:
            raise UserError(f"{path} line {i}: class ID {line} is not an ILSVRC2012_ID of {meta}")
        out[f"ILSVRC2012_val_{i:08d}"] = ids[int(line)]
    return out


def devkit_class_ids(meta_path: str) -> dict[int, int]:
    """ILSVRC2012_ID (the devkit's 1-based class numbering) -> the standard class index, from the devkit's
    meta.mat (its `synsets` struct array; the 1000 leaf classes are the entries with IDs 1..1000)."""
    if not os.path.isfile(meta_path):
        raise UserError(f"the devkit ground truth needs the devkit's {DEVKIT_META} beside it: {meta_path} not found")
    loadmat = lazy_import("scipy.io", "reading the ILSVRC2012 devkit's meta.mat").loadmat
    try:
        synsets = loadmat(meta_path, squeeze_me=True)["synsets"]
        pairs = [(int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in np.atleast_1d(synsets)]
    except Exception as e:  # scipy raises several types for a foreign or corrupt file
        raise UserError(f"cannot read {meta_path} as the ILSVRC2012 devkit's meta.mat: {one_line(e)}") from None
    return {class_id: synset_index(wnid, meta_path) for class_id, wnid in pairs if 1 <= class_id <= IMAGENET_CLASSES}


# -- decoding, in parallel with inference --


def _prepare(path: str, configs: list[DataConfig]) -> list[np.ndarray]:
    """The image at `path` as each config's model input [3, S, S]; UserError if it cannot be read or decoded."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror}") from None
    img = decode_image(data)
    return [normalize(np.asarray(resize_center_crop(img, c), dtype=np.float32) / 255.0, c) for c in configs]


@dataclass
class Batch:
    indices: list[int]  # positions in the dataset of the images in this batch
    inputs: list[np.ndarray]  # one [B, 3, S, S] array per config
    unreadable: list[tuple[int, str]]  # (position, reason) of the images skipped since the previous batch


def decoded_batches(paths: list[str], configs: list[DataConfig], batch: int, workers: int):
    """Batches of decoded images in dataset order; `workers` threads decode ahead (a few batches at most)."""
    window = max(2 * batch, 4 * workers)
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tpdeploy-decode")
    pending: deque = deque()
    try:
        next_path = 0
        indices, inputs, unreadable = [], [], []
        while pending or next_path < len(paths):
            while next_path < len(paths) and len(pending) < window:
                pending.append((next_path, pool.submit(_prepare, paths[next_path], configs)))
                next_path += 1
            i, future = pending.popleft()
            try:
                arrays = future.result()
            except UserError as e:
                unreadable.append((i, str(e)))
            else:
                indices.append(i)
                inputs.append(arrays)
            if len(indices) == batch or (not pending and next_path == len(paths) and (indices or unreadable)):
                yield Batch(indices, [np.stack(a) for a in zip(*inputs)] if inputs else [], unreadable)
                indices, inputs, unreadable = [], [], []
    finally:  # on an interruption: no more decoding than the images already started
        pool.shutdown(wait=True, cancel_futures=True)
