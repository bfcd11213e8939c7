"""The TensorRT plugin library (libtpdeploy_plugin.so) builds from TensorRT's headers alone: it links no libnvinfer,
exports only TensorRT's plugin-library entry points, and its C++ compiles warning-free against the headers of
TensorRT 10.7 and 11.1. Nothing here runs TensorRT (it cannot be installed on the development machines)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

PLUGIN = "libtpdeploy_plugin.so"
ENTRY_POINTS = {"getCreators", "setLoggerFinder", "initLibTpdeployPlugins"}
SOURCES = REPO / "plugins" / "tokenpool"


@pytest.fixture(scope="module")
def plugin(plugins_build):
    path = plugins_build / PLUGIN
    if not path.is_file():
        pytest.skip(
            "the session's CMake build found no TensorRT headers (set TENSORRT_ROOT, or TENSORRT_GIT_DIR to a "
            "clone of NVIDIA/TensorRT)"
        )
    return path


def tool(*cmd):
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"needs {cmd[0]} (binutils)")
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def needed(library):
    """The NEEDED entries of a shared library's dynamic section."""
    return [
        line.split("[", 1)[1].rstrip("]")
        for line in tool("readelf", "-d", str(library)).splitlines()
        if "(NEEDED)" in line
    ]


def exported(library):
    return {line.split()[-1] for line in tool("nm", "-D", "--defined-only", str(library)).splitlines()}


def cuda_include_dirs():
    """Where the CUDA toolkit's headers usually are (TensorRT's headers include cuda_runtime_api.h)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    dirs = [Path(home) / "include" for home in homes if home]
    return dirs + [Path(nvcc).resolve().parent.parent / "include"] if nvcc else dirs


def test_plugin_links_no_libnvinfer(plugin):
    libraries = needed(plugin)
    assert not [name for name in libraries if name.startswith("libnvinfer")], libraries
    assert "libtokenpool_kernels.so" in libraries  # found beside it through $ORIGIN
    assert "$ORIGIN" in tool("readelf", "-d", str(plugin))


def test_plugin_exports_only_the_entry_points(plugin):
    assert exported(plugin) == ENTRY_POINTS


@pytest.mark.parametrize("ref", ["v10.7.0", "v11.1"])
def test_shim_compiles_warning_free_and_links_without_libnvinfer(plugins_build, tensorrt_headers, tmp_path, ref):
    """The core, shim and registration against one release's headers (TensorRT's own as system headers), linked
    with --no-undefined against the kernels library only: nothing they call lives in libnvinfer."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    include = tensorrt_headers(ref)
    if include is None:
        pytest.skip(f"needs TensorRT's headers at {ref} (set TENSORRT_GIT_DIR to a clone of NVIDIA/TensorRT)")
    cuda_include = next((d for d in cuda_include_dirs() if (d / "cuda_runtime_api.h").is_file()), None)
    if cuda_include is None:
        pytest.skip("needs the CUDA toolkit's headers (set CUDA_HOME)")
    library = tmp_path / PLUGIN
    cmd = [
        "g++",
        "-std=c++17",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fPIC",
        "-shared",
        "-fvisibility=hidden",
        "-isystem",
        str(include),
        "-isystem",
        str(cuda_include),
        "-I",
        str(SOURCES),
        *(str(SOURCES / name) for name in ("tokenPoolCore.cpp", "tokenPoolPlugin.cpp", "tokenPoolRegistration.cpp")),
        "-L",
        str(plugins_build),
        "-ltokenpool_kernels",
        "-ldl",
        "-Wl,--no-undefined",
        f"-Wl,--version-script={SOURCES / 'exports.map'}",
        "-o",
        str(library),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, f"{' '.join(cmd)}\n{done.stderr[-6000:]}"
    assert not [name for name in needed(library) if name.startswith("libnvinfer")]
    assert exported(library) == ENTRY_POINTS
