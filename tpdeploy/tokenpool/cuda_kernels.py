"""The TokenPool CUDA kernels (plugins/tokenpool, built by `make plugins`) called from PyTorch through ctypes.

`tpdeploy.tokenpool.reference.token_pool` uses them for CUDA tensors without gradients when `available()`; the
library's C API is `plugins/tokenpool/tokenPoolKernel.h`. Nothing here needs TensorRT.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from tpdeploy.errors import DeviceError, InvalidArgumentError, UserError
from tpdeploy.tokenpool.definition import MODES
from tpdeploy.tokenpool.libraries import KERNELS_ENV, KERNELS_LIBRARY, find_library

_MODES = {mode: i for i, mode in enumerate(MODES)}  # tpMode of tokenPoolKernel.h
_TP_ERROR_CUDA = 3
_DTYPES = {torch.float32: 0, torch.float16: 1}
_INT_MAX = 2**31 - 1


class Params(ctypes.Structure):
    """tpParams of tokenPoolKernel.h (its enums are C ints)."""

    _fields_ = [
        (name, ctypes.c_int)
        for name in ("batch", "tokens", "channels", "clusters", "iterations", "mode", "weighted", "x_type", "w_type")
    ]


def library_path() -> str | None:
    """The first file of: $TPDEPLOY_KERNELS, <repo>/build/plugins/libtokenpool_kernels.so, one beside the package."""
    return find_library(KERNELS_LIBRARY, KERNELS_ENV)


def load(path: str) -> ctypes.CDLL:
    """Load the kernels library and declare its C signatures (loading needs no GPU)."""
    lib = ctypes.CDLL(path)
    params = ctypes.POINTER(Params)
    lib.tokenPoolWorkspaceSize.argtypes, lib.tokenPoolWorkspaceSize.restype = [params], ctypes.c_size_t
    lib.tokenPoolValidate.argtypes, lib.tokenPoolValidate.restype = [params], ctypes.c_int
    lib.tokenPoolLaunch.argtypes = [params] + [ctypes.c_void_p] * 5
    lib.tokenPoolLaunch.restype = ctypes.c_int
    lib.tokenPoolStatusString.argtypes, lib.tokenPoolStatusString.restype = [ctypes.c_int], ctypes.c_char_p
    return lib


@functools.cache
def _library() -> ctypes.CDLL | None:
    path = library_path()
    if path is None:
        return None
    try:
        return load(path)
    except OSError:
        return None


def available() -> bool:
    """True when there is a CUDA device and the kernels library loads."""
    return torch.cuda.is_available() and _library() is not None


def _lib() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise UserError(
            f"TokenPool CUDA kernels not found: build them with `make plugins` or set {KERNELS_ENV} "
            f"to the path of {KERNELS_LIBRARY}"
        )
    return lib


def _check(lib: ctypes.CDLL, status: int) -> None:
    if status != 0:
        error = DeviceError if status == _TP_ERROR_CUDA else InvalidArgumentError
        raise error(f"TokenPool CUDA kernels: {lib.tokenPoolStatusString(status).decode()}")


def params(x: torch.Tensor, w: torch.Tensor, num_clusters: int, iterations: int, mode: str, weighted: bool) -> Params:
    """The launch parameters for X [B, N, C] and W [B, N]; raises InvalidArgumentError on what the C API cannot
    express."""
    if x.dim() != 3 or tuple(w.shape) != tuple(x.shape[:2]):
        raise InvalidArgumentError(
            f"TokenPool: X must be [B, N, C] and W [B, N], got {list(x.shape)} and {list(w.shape)}"
        )
    if x.dtype not in _DTYPES or w.dtype not in _DTYPES:
        raise InvalidArgumentError(f"TokenPool: X and W must be float32 or float16, got {x.dtype} and {w.dtype}")
    if mode not in _MODES:
        raise InvalidArgumentError(f"TokenPool: mode must be one of {tuple(_MODES)}, got {mode!r}")
    sizes = (*x.shape, num_clusters, iterations)
    if not all(-_INT_MAX <= v <= _INT_MAX for v in sizes):
        raise InvalidArgumentError(f"TokenPool: sizes and attributes must fit in 32 bits, got {list(sizes)}")
    b, n, c = x.shape
    return Params(
        b, n, c, num_clusters, iterations, _MODES[mode], int(bool(weighted)), _DTYPES[x.dtype], _DTYPES[w.dtype]
    )


def workspace_size(p: Params) -> int:
    """Bytes of scratch memory a launch needs; raises InvalidArgumentError for params the kernels refuse."""
    lib = _lib()
    _check(lib, lib.tokenPoolValidate(ctypes.byref(p)))
    return lib.tokenPoolWorkspaceSize(ctypes.byref(p))


def launch(p: Params, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, workspace: torch.Tensor) -> None:
    """Enqueue the op on the current stream of x's device. All tensors contiguous, on that device."""
    lib = _lib()
    for t in (x, w, y, workspace):
        if t.device != x.device or not t.is_contiguous():
            raise InvalidArgumentError("TokenPool: x, w, y and workspace must be contiguous tensors on one CUDA device")
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream().cuda_stream
        _check(
            lib,
            lib.tokenPoolLaunch(
                ctypes.byref(p), x.data_ptr(), w.data_ptr(), y.data_ptr(), workspace.data_ptr(), stream
            ),
        )


def token_pool(
    x: torch.Tensor,
    w: torch.Tensor,
    num_clusters: int,
    iterations: int = 3,
    mode: str = "kmedoids",
    weighted: bool = True,
) -> torch.Tensor:
    """TokenPool on CUDA tensors with the CUDA kernels: Y [B, K, C] in X's dtype (see reference.token_pool)."""
    if not (x.is_cuda and w.is_cuda):
        raise InvalidArgumentError(f"TokenPool kernels need CUDA tensors, got {x.device} and {w.device}")
    p = params(x, w, num_clusters, iterations, mode, weighted)
    x, w = x.contiguous(), w.contiguous()
    # torch's caching allocator provides the scratch memory, ordered on the current stream like the launch
    workspace = torch.empty(workspace_size(p), dtype=torch.uint8, device=x.device)
    y = torch.empty(p.batch, num_clusters, p.channels, dtype=x.dtype, device=x.device)
    launch(p, x, w, y, workspace)
    return y
