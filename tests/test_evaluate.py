"""`tpdeploy eval`: label layouts, exact accuracy on a model whose predictions are known, bad data, backends."""

import io
import json
import os
import signal
import struct
import subprocess
import time
import zlib

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image", reason="needs Pillow")

from test_cli import TPDEPLOY, assert_user_error, run
from test_model import timm_layout

from tpdeploy.artifacts.recipe import DataConfig
from tpdeploy.data.datasets import imagenet_synsets, open_dataset
from tpdeploy.errors import UserError

SYNSETS = imagenet_synsets()
DEIT = DataConfig()


def save(path, rgb, fmt="PNG", **options):
    """Save an image (an RGB array or a PIL image) or bytes at `path`, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(rgb, bytes):
        path.write_bytes(rgb)
    else:
        img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb, np.uint8))
        img.save(path, format=fmt, **options)


def solid(colour, size=(40, 30)):
    return np.broadcast_to(np.asarray(colour, np.uint8), (size[1], size[0], 3))


def png16(array, colour_type):
    """A 16-bit PNG (colour type 0: grey [H, W], 2: RGB [H, W, 3]); Pillow cannot write 16-bit RGB itself."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def eval_json(folder, *args):
    """`tpdeploy eval ARGS --json` through the command line, the JSON in `folder`: (the JSON, the process)."""
    out = folder / f"eval-{time.monotonic_ns()}.json"
    result = run("eval", *args, "--json", out)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(out.read_text())
    out.unlink()
    return data, result


# -- a model whose predictions are known: the class is the nearest of K colours to the image's colour --

# the colours of classes 0..K-1 (8-bit RGB); chosen so that no two distances to a colour nearly tie
COLOURS = np.array(
    [
        (230, 40, 50),
        (40, 200, 70),
        (60, 80, 220),
        (240, 220, 60),
        (200, 60, 200),
        (50, 210, 210),
        (245, 245, 245),
        (128, 128, 128),
        (90, 50, 20),
    ]
)
K = len(COLOURS)


def normalised(rgb):
    return (np.asarray(rgb, np.float64) / 255 - DEIT.mean) / DEIT.std


def ranking(rgb):
    """Classes by the model's logits for a solid image of colour `rgb`: nearest colour first."""
    d2 = ((normalised(COLOURS) - normalised(rgb)) ** 2).sum(1)
    return np.argsort(d2), np.sort(d2)


def nearest_colour_checkpoint(path):
    """A deit_tiny state dict (timm layout) whose logits rank classes 0..K-1 by the distance of the image's mean
    colour to COLOURS (normalised), for solid-colour images:
    - patch embedding channel j = 2 c_j . x - |c_j|^2 (x: the patch's normalised mean colour), which orders the
      classes like -|x - c_j|^2; the other channels are 0;
    - block 0: q = k = 0 (uniform attention), v and proj the identity, so the CLS token becomes the mean of the
      LayerNormed tokens, i.e. (196/197) LN(patch) for a solid image; every MLP and every later block adds
      nothing (fc2 and proj zero), so pooling never touches what the CLS token holds;
    - LayerNorms with weight 1 and bias 0 keep the order of the channels; the head reads channel j as class j
      and gives every other class -1000.
    """
    d = 192
    state = {k: torch.zeros(s) for k, s in timm_layout("deit_tiny").items()}
    for k in state:
        if k.endswith(("norm1.weight", "norm2.weight")) or k == "norm.weight":
            state[k].fill_(1.0)
    c = torch.tensor(normalised(COLOURS), dtype=torch.float32)
    state["patch_embed.proj.weight"][:K] = (2 * c / 256)[:, :, None, None].expand(K, 3, 16, 16)
    state["patch_embed.proj.bias"][:K] = -(c**2).sum(1)
    state["blocks.0.attn.qkv.weight"][2 * d :] = torch.eye(d)
    state["blocks.0.attn.proj.weight"].copy_(torch.eye(d))
    state["head.weight"][:K, :K] = torch.eye(K)
    state["head.bias"][K:] = -1000.0
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    """(ONNX file, checkpoint): the nearest-colour model, Token-Pooled (0.58x preset)."""
    from tpdeploy import create_model
    from tpdeploy.convert.export import export

    folder = tmp_path_factory.mktemp("colour")
    checkpoint = nearest_colour_checkpoint(folder / "nearest_colour.pth")
    path = str(folder / "nearest_colour.onnx")
    export(create_model("deit_tiny", checkpoint=checkpoint, preset="deit_tiny_058"), path)
    return path, checkpoint


def test_the_design_has_no_near_ties():
    """Each label below is its colour's class ranked 0 (top-1), 2 (top-5 only) or last (neither): the distances
    at the top-1 and top-5 boundaries are far apart, so a level or two of JPEG or resize rounding changes nothing."""
    for colour in COLOURS:
        _, d2 = ranking(colour)
        assert d2[0] == 0 and d2[1] > 1.0 and d2[5] - d2[2] > 0.5 and d2[-1] - d2[4] > 0.5


def colour_folder(root):
    """Synset class folders (classes 0..K-1 are the first K sorted synsets) of solid-colour images, each colour
    labelled once as its own class, once as its third nearest, once as its farthest (a JPEG): the expected
    top-1 count is K, the top-5 count 2K."""
    for i, colour in enumerate(COLOURS):
        order, _ = ranking(colour)
        save(root / SYNSETS[order[0]] / f"c{i}_hit.png", solid(colour))
        save(root / SYNSETS[order[2]] / f"c{i}_top5.png", solid(colour, (300, 200)))
        save(root / SYNSETS[order[-1]] / f"c{i}_miss.jpg", solid(colour, (64, 96)), "JPEG", quality=95)
    return root


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_exact_top1_and_top5_on_a_model_whose_predictions_are_known(colour_model, tmp_path, backend):
    onnx_path, checkpoint = colour_model
    data = colour_folder(tmp_path / "val")
    extra = ["--backend", "torch", "--checkpoint", checkpoint] if backend == "torch" else []
    report, result = eval_json(tmp_path, onnx_path, "--data", data, "--batch", 4, *extra)
    assert report["layout"].startswith("ImageNet synset folders") and report["images"] == 3 * K
    model = report["models"][0]
    assert (model["top1"]["count"], model["top5"]["count"], model["top1"]["total"]) == (K, 2 * K, 3 * K)
    p = 1 / 3
    assert model["top1"]["value"] == pytest.approx(p)
    assert model["top1"]["stderr"] == pytest.approx((p * (1 - p) / (3 * K)) ** 0.5)
    assert report["unreadable"] == 0 and report["top1_agreement"] is None
    assert f"top-1 33.33% ± 9.07% ({K}/{3 * K})" in result.stdout and "eval [" in result.stderr  # the progress bar


def test_bad_files_are_counted_never_fatal(colour_model, tmp_path):
    onnx_path, _ = colour_model
    data = tmp_path / "val"
    grey = 7  # the class of (128, 128, 128)
    save(data / SYNSETS[0] / "hit.png", solid(COLOURS[0]))
    cmyk = Image.fromarray(np.asarray(solid(COLOURS[2]))).convert("CMYK")  # decoded back to the same RGB
    save(data / SYNSETS[2] / "cmyk.jpg", cmyk, "JPEG", quality=95)
    # a 16-bit grey PNG of 129 (high byte): read as 255 it would be class 6 (white), not 7
    save(data / SYNSETS[grey] / "grey16.png", png16(np.full((20, 20), 128 * 257 + 200, np.uint16), 0))
    save(data / SYNSETS[1] / "rgb16.png", png16(np.tile(COLOURS[1] * 257, (20, 20, 1)), 2))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    save(data / SYNSETS[3] / "truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2])
    save(data / SYNSETS[3] / "text.jpg", b"not an image")
    save(data / SYNSETS[3] / "empty.png", b"")
    save(data / SYNSETS[3] / "README.txt", b"not an image by its name")
    report, result = eval_json(tmp_path, onnx_path, "--data", data)
    assert report["images"] == 4 and report["unreadable"] == 3
    assert report["models"][0]["top1"]["count"] == 4  # CMYK and both 16-bit PNGs decoded to their colours
    reasons = {os.path.basename(u["path"]): u["reason"] for u in report["unreadable_files"]}
    assert set(reasons) == {"truncated.jpg", "text.jpg", "empty.png"}
    assert "truncated" in reasons["truncated.jpg"] and "empty image" in reasons["empty.png"]
    assert any("not images by their extension" in n for n in report["notes"])
    assert "unreadable images: 3" in result.stdout


def test_an_interrupted_eval_leaves_no_json(colour_model, tmp_path):
    """The last image is a named pipe: reading it blocks until the eval is interrupted."""
    data = tmp_path / "val"
    for i in range(3):
        save(data / SYNSETS[0] / f"{i}.png", solid(COLOURS[0]))
    fifo = data / SYNSETS[0] / "zz_blocks.png"
    os.mkfifo(fifo)
    out = tmp_path / "out.json"
    proc = subprocess.Popen(
        TPDEPLOY + ["eval", colour_model[0], "--data", str(data), "--batch", "1", "--json", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    while "evaluating" not in proc.stderr.readline():
        assert proc.poll() is None
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    while proc.poll() is None:  # let the reader of the pipe go (it reads nothing: an empty image)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            time.sleep(0.05)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 130 and "error: interrupted" in stderr and "Traceback" not in stderr
    assert sorted(os.listdir(tmp_path)) == ["val"]  # neither out.json nor a temporary file


def test_a_model_agrees_with_itself_and_the_torch_backend_counts_the_same(tiny_onnx, tmp_path):
    from tpdeploy.data.samples import sample_rgb_images

    plain = tmp_path / "plain"
    for i, rgb in enumerate(sample_rgb_images(6, 240, seed=1)):
        save(plain / f"{i}.png", rgb)
    report, _ = eval_json(tmp_path, tiny_onnx, "--data", plain, "--baseline", tiny_onnx)
    assert report["layout"] == "unlabelled images" and report["models"][0]["top1"] is None
    assert report["top1_agreement"]["count"] == report["top1_agreement"]["total"] == 6
    # labelled: the ort and torch backends on the same images give the same top-1 count
    labels = tmp_path / "labels.csv"
    predicted, _ = eval_json(tmp_path, tiny_onnx, "--data", plain, "--baseline", f"torch:{tiny_onnx}")
    assert predicted["top1_agreement"]["count"] == 6
    labels.write_text("file,label\n" + "".join(f"{i}.png,{(i * 37) % 1000}\n" for i in range(6)))
    ort, _ = eval_json(tmp_path, tiny_onnx, "--data", plain, "--labels", labels)
    torch_backend, _ = eval_json(tmp_path, tiny_onnx, "--data", plain, "--labels", labels, "--backend", "torch")
    assert ort["models"][0]["top1"] == torch_backend["models"][0]["top1"]
    assert ort["models"][0]["top5"] == torch_backend["models"][0]["top5"]


def test_data_errors_are_one_line(tiny_onnx, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(run("eval", tiny_onnx, "--data", tmp_path / "empty", "--baseline", tiny_onnx), "no images found")
    assert_user_error(run("eval", tiny_onnx, "--data", tmp_path / "missing"), "not a folder")
    for name in ("cats", "dogs"):
        save(tmp_path / "pets" / name / "a.png", solid((1, 2, 3)))
    assert_user_error(
        run("eval", tiny_onnx, "--data", tmp_path / "pets"), "has 2 class folders but the model has 1000 classes"
    )
    save(tmp_path / "flat" / "a.png", solid((1, 2, 3)))
    assert_user_error(run("eval", tiny_onnx, "--data", tmp_path / "flat"), "give --baseline")
    assert sorted(os.listdir(tmp_path)) == ["empty", "flat", "pets"]


# -- label layouts (no model needed) --


def images(folder, names):
    for name in names:
        save(folder / name, solid((10, 20, 30), (8, 8)))
    return folder


def test_class_folders_in_sorted_order(tmp_path):
    images(tmp_path, ["b/1.png", "b/2.jpg", "a/x.jpeg", "c/deep/y.webp", "c/z.PNG", "c/notes.txt"])
    d = open_dataset(str(tmp_path), num_classes=3)
    assert [os.path.relpath(p, tmp_path) for p in d.paths] == [
        "a/x.jpeg",
        "b/1.png",
        "b/2.jpg",
        "c/z.PNG",
        "c/deep/y.webp",
    ]
    assert d.labels == [0, 1, 1, 2, 2] and d.layout.startswith("class folders")
    assert any("not images" in n for n in d.notes)
    with pytest.raises(UserError, match="has 3 class folders but the model has 5 classes"):
        open_dataset(str(tmp_path), num_classes=5)


def test_synset_folders_index_the_imagenet_order(tmp_path):
    images(tmp_path, ["n15075141/a.png", "n01751748/b.png", "n01440764/c.png"])
    d = open_dataset(str(tmp_path), num_classes=1000)
    assert d.labels == [0, 65, 999]  # tench, sea snake, toilet tissue
    assert d.layout.startswith("ImageNet synset folders (3 of the 1000")
    assert open_dataset(str(tmp_path), num_classes=3).labels == [0, 1, 2]  # a 3-class model: plain class folders
    images(tmp_path, ["n99999999/d.png"])
    with pytest.raises(UserError, match="n99999999 is not one of the 1000 ILSVRC2012 synsets"):
        open_dataset(str(tmp_path), num_classes=1000)


def test_file_label_csv_with_indices_or_synsets(tmp_path):
    images(tmp_path / "val", ["a.jpg", "b.jpg", "c.jpg", "unlabelled.jpg"])
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,class\na.jpg,5\nb.jpg,n01751748\nc.jpg, 999\nmissing.jpg,3\n")
    d = open_dataset(str(tmp_path / "val"), str(labels), num_classes=1000)
    assert [os.path.basename(p) for p in d.paths] == ["a.jpg", "b.jpg", "c.jpg"] and d.labels == [5, 65, 999]
    assert any("1 images" in n and "no label" in n for n in d.notes)
    assert any("1 labelled files" in n for n in d.notes)
    labels.write_text("a.jpg,7\nb.jpg,0\n")  # no header
    assert open_dataset(str(tmp_path / "val"), str(labels), num_classes=10).labels == [7, 0]
    with pytest.raises(UserError, match="class index 7 is out of range for a model with 5 classes"):
        open_dataset(str(tmp_path / "val"), str(labels), num_classes=5)
    labels.write_text("a.jpg,7\nb.jpg,cat\n")
    with pytest.raises(UserError, match="label 'cat' is neither a class index nor an ImageNet synset"):
        open_dataset(str(tmp_path / "val"), str(labels))


def test_imageid_predictionstring_csv(tmp_path):
    names = ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]
    images(tmp_path / "val", names)
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000002,n15075141 1 2 3 4 n15075141 5 6 7 8\n"
        "ILSVRC2012_val_00000001,n01751748 10 20 30 40\n"
    )
    d = open_dataset(str(tmp_path / "val"), str(labels), num_classes=1000)
    assert d.labels == [65, 999] and d.layout.startswith("ImageId,PredictionString")


def devkit(folder, ground_truth):
    """An ILSVRC2012 devkit's data/ folder: meta.mat (its `synsets` struct array) and the validation ground truth.
    As in the real devkit, IDs 1..1000 are the leaf classes in the devkit's own order (ID 1 is n02119789, kit fox,
    class 278 in the sorted order; ID 490 is n01751748, sea snake, class 65); entries above 1000 are inner nodes."""
    savemat = pytest.importorskip("scipy.io", reason="needs scipy").savemat
    rng = np.random.default_rng(0)
    others = [s for s in SYNSETS if s not in ("n02119789", "n01751748")]
    order = list(rng.permutation(others))
    order.insert(0, "n02119789")
    order.insert(489, "n01751748")
    entries = [(i + 1, wnid, "words", 0) for i, wnid in enumerate(order)] + [(1001, "n00001740", "entity", 3)]
    synsets = np.array(entries, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    data = folder / "data"
    data.mkdir(parents=True)
    savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ground_truth))
    return order


def test_devkit_ground_truth_maps_devkit_ids_to_the_sorted_order(tmp_path):
    order = devkit(tmp_path / "ILSVRC2012_devkit_t12", [490, 1, 1000, 77])
    images(tmp_path / "val", [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)])
    expected = [65, 278, SYNSETS.index(order[999])]
    for labels in (
        tmp_path / "ILSVRC2012_devkit_t12",
        tmp_path / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt",
    ):
        d = open_dataset(str(tmp_path / "val"), str(labels), num_classes=1000)
        assert d.labels == expected and d.layout.startswith("ILSVRC2012 devkit")
        assert any("1 labelled files" in n for n in d.notes)  # image 4 is not in the folder
    os.unlink(tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat")
    with pytest.raises(UserError, match="needs the devkit's meta.mat beside it"):
        open_dataset(str(tmp_path / "val"), str(tmp_path / "ILSVRC2012_devkit_t12"))


def test_limit_spreads_over_the_classes(tmp_path):
    images(tmp_path, [f"{c}/{i}.png" for c in "abcd" for i in range(5)])
    d = open_dataset(str(tmp_path), num_classes=4).subset(4)
    assert d.labels == [0, 1, 2, 3] and len(d) == 4
