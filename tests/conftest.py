import os
import shutil

import pytest


def has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


requires_gpu = pytest.mark.skipif(not has_cuda(), reason="needs an NVIDIA GPU with a CUDA build of torch")
requires_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tpdeploy")


@pytest.fixture(scope="session")
def tiny_onnx(workdir):
    """deit_tiny, Token-Pooled (0.58x preset), dynamic batch, fp32: exported once per session."""
    return _export_once(workdir / "deit_tiny_058.onnx", preset="deit_tiny_058")


@pytest.fixture(scope="session")
def tiny_dense_onnx(workdir):
    """Dense deit_tiny, dynamic batch, fp32: exported once per session."""
    return _export_once(workdir / "deit_tiny_dense.onnx", method="none")


# one small architecture per family beyond DeiT: distilled DeiT (two prefix tokens, two heads), DeiT III (layer
# scale, positions of the patches only), ViT at 384 px (576 patch tokens, mean/std 0.5, crop_pct 1)
FAMILIES = ("deit_tiny_distilled_patch16_224", "deit3_small_patch16_224", "vit_small_patch16_384")


@pytest.fixture(scope="session")
def family_onnx(workdir):
    """arch -> (model, path, export report) of its 0.58x preset, dynamic batch, fp32: exported once per session."""
    cache = {}

    def get(arch):
        if arch not in cache:
            from tpdeploy.export import export
            from tpdeploy.model import create_model
            model = create_model(arch, preset=f"{arch}_058")
            path = str(workdir / f"{arch}_058.onnx")
            cache[arch] = (model, path, export(model, path))
        return cache[arch]
    return get


def _export_once(path, **model_args):
    from tpdeploy.export import export
    from tpdeploy.model import create_model
    if not path.exists():
        export(create_model("deit_tiny", **model_args), str(path))
    return str(path)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def files_in(path):
    return sorted(os.listdir(path))
