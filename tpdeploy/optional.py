"""Optional dependencies, imported where they are needed, with one install hint (Polygraphy's `lazy_import`).

`pip install tpdeploy` is the deployment core (numpy, onnx, click); each job adds an extra:

    tpdeploy[cpu]       onnxruntime           run, bench, compare, serve and quantize ONNX files on the CPU
    tpdeploy[gpu]       onnxruntime-gpu       the same on CUDA (never together with [cpu]: both are `onnxruntime`)
    tpdeploy[export]    torch, onnxscript     create models, export them, the torch backend
    tpdeploy[serve]     PyTriton, tritonclient, Pillow
    tpdeploy[tensorrt]  tensorrt, cuda-bindings
    tpdeploy[eval]      Pillow, matplotlib, scipy   eval and sweep (scipy: the ILSVRC2012 devkit's meta.mat)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tpdeploy.errors import UserError

# top-level module -> (what is missing, how to install it)
_PROVIDERS = {
    "torch": ("PyTorch", "pip install 'tpdeploy[export]'"),
    "onnxscript": ("onnxscript", "pip install 'tpdeploy[export]'"),
    "safetensors": ("safetensors", "pip install 'tpdeploy[export]'"),
    "onnxruntime": ("onnxruntime", "pip install 'tpdeploy[cpu]' (or 'tpdeploy[gpu]' for onnxruntime-gpu)"),
    "PIL": ("Pillow", "pip install 'tpdeploy[eval]' (or 'tpdeploy[serve]')"),
    "pytriton": ("PyTriton (nvidia-pytriton, which ships Triton Inference Server)", "pip install 'tpdeploy[serve]'"),
    "tritonclient": ("tritonclient", "pip install 'tpdeploy[serve]'"),
    "google": ("protobuf (with tritonclient)", "pip install 'tpdeploy[serve]'"),
    "tensorrt": ("TensorRT >= 10.7", "pip install 'tpdeploy[tensorrt]' on a machine with an NVIDIA GPU and driver"),
    "cuda": ("cuda-bindings", "pip install 'tpdeploy[tensorrt]' (and an NVIDIA driver)"),
    "matplotlib": ("matplotlib", "pip install 'tpdeploy[eval]'"),
    "scipy": ("scipy", "pip install 'tpdeploy[eval]'"),
}


def lazy_import(module: str, purpose: str) -> ModuleType:
    """Import `module` (a dependency, or a tpdeploy module that needs one); if an optional dependency is
    missing, a UserError says what `purpose` needs and which extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = (e.name or module).split(".")[0]
        if top not in _PROVIDERS:
            raise
        package, install = _PROVIDERS[top]
        raise UserError(f"{purpose} needs {package}: {install}") from None
