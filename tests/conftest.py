import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from harness.plugins_build import DRY_RUN_ARCH, cmake_build


def has_cuda():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


# Tests that use these fixtures export a whole model, build the plugins, a wheel or run the GPU check's dry run
# (minutes here): marked slow, as the tests that do so themselves (@pytest.mark.slow), so that
# `pytest -m "not slow"` is a fast loop; CI runs everything.
SLOW_FIXTURES = {
    "tiny_onnx",
    "tiny_dense_onnx",
    "family_onnx",
    "plugins_build",  # here
    "exported",
    "models",
    "deit_small",
    "colour_model",  # module fixtures that export
    "dry_run",
    "deployment_venv",
}  # the GPU check's dry run; a wheel in a fresh venv


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


requires_gpu = pytest.mark.skipif(not has_cuda(), reason="needs an NVIDIA GPU with a CUDA build of torch")
requires_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")

REPO = Path(__file__).resolve().parent.parent
# NVIDIA/TensorRT's public repository as a git dir, where $TENSORRT_GIT_DIR names one: its include/ folder is all
# the plugin needs to build (without it, and without $TENSORRT_ROOT, the plugin's build tests skip)
TENSORRT_GIT_DIR = os.environ.get("TENSORRT_GIT_DIR")
TENSORRT_HEADERS_REF = "v11.1"  # the headers of the session's plugins build when $TENSORRT_ROOT is not set
PLUGINS_BUILD_ENV = "TPDEPLOY_PLUGINS_BUILD"  # a finished build folder the plugins_build fixture reuses


def load_script(name, path):
    """A script of the repository (benchmarks/) as a module, to test it."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


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
            from tpdeploy.convert.export import export
            from tpdeploy.model.factory import create_model

            model = create_model(arch, preset=f"{arch}_058")
            path = str(workdir / f"{arch}_058.onnx")
            cache[arch] = (model, path, export(model, path))
        return cache[arch]

    return get


def _export_once(path, **model_args):
    from tpdeploy.convert.export import export
    from tpdeploy.model.factory import create_model

    if not path.exists():
        export(create_model("deit_tiny", **model_args), str(path))
    return str(path)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def files_in(path):
    return sorted(os.listdir(path))


@pytest.fixture(scope="session")
def tensorrt_headers(tmp_path_factory):
    """ref -> TensorRT's include folder at that git ref of TENSORRT_GIT_DIR, exported into a temporary folder once
    per ref, or None without the repository or the ref."""
    exported = {}

    def include_dir(ref):
        if ref not in exported and TENSORRT_GIT_DIR is None:
            exported[ref] = None
        if ref not in exported:
            archive = ["git", "--git-dir", TENSORRT_GIT_DIR, "archive", "--format=tar", ref, "include"]
            done = subprocess.run(archive, capture_output=True)
            exported[ref] = None
            if done.returncode == 0:
                folder = tmp_path_factory.mktemp(f"tensorrt-{ref}")
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
                tarfile.open(fileobj=io.BytesIO(done.stdout)).extractall(folder, **safe)
                exported[ref] = folder / "include"
        return exported[ref]

    return include_dir


@pytest.fixture(scope="session")
def plugins_build(tmp_path_factory, tensorrt_headers):
    """plugins/ built once per session by the GPU check's CMake build (harness/plugins_build.py `cmake_build`: one
    GPU architecture, this machine's GPU, else the sm_90 of the H200 the project is checked on; ptxas -v) into a
    fresh folder, with -Werror on the C++ (-Wall -Wextra come from the CMake files). The TensorRT plugin is built
    against $TENSORRT_ROOT's headers, else those of TENSORRT_HEADERS_REF from TENSORRT_GIT_DIR, else not at all.
    Where $TPDEPLOY_PLUGINS_BUILD names a folder (the GPU check's build stage made it), that folder as it is.
    Returns the build folder."""
    if os.environ.get(PLUGINS_BUILD_ENV):
        build = Path(os.environ[PLUGINS_BUILD_ENV])
        assert (build / "libtokenpool_kernels.so").is_file(), (
            f"{PLUGINS_BUILD_ENV}={build} holds no libtokenpool_kernels.so"
        )
        return build
    if shutil.which("nvcc") is None or shutil.which("cmake") is None:
        pytest.skip("needs nvcc and cmake")
    arch = DRY_RUN_ARCH
    if has_cuda():
        import torch

        arch = "{}{}".format(*torch.cuda.get_device_capability())
    build = tmp_path_factory.mktemp("plugins")
    extra = ["-DCMAKE_CXX_FLAGS=-Werror"]
    include = None if os.environ.get("TENSORRT_ROOT") else tensorrt_headers(TENSORRT_HEADERS_REF)
    if include is not None:
        extra.append(f"-DTENSORRT_INCLUDE_DIR={include}")
    failed, output = cmake_build(build, arch, build / "build.log", extra)
    assert failed is None, f"{failed}:\n" + "\n".join(output[-80:])
    return build
