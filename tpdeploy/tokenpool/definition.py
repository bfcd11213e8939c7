"""`tpdeploy::TokenPool` version 1: the op's identity, attributes and the limits of its CUDA kernels.

The PyTorch reference (`tpdeploy.tokenpool.reference`), the ONNX node and function
(`tpdeploy.tokenpool.onnx_function`), the kernels and the TensorRT plugin (`plugins/tokenpool/`) all follow this
definition (README, "The operator").
"""

from __future__ import annotations

from tpdeploy.errors import InvalidArgumentError, check_choice, check_int

DOMAIN = "tpdeploy"  # the ONNX node's domain and the plugin's namespace
OP_TYPE = "TokenPool"  # the ONNX op type and the plugin's name
VERSION = 1  # the op's version (ONNX opset of the domain, plugin version)
MODES = ("kmedoids", "kmeans")
# on the ONNX node: the op's attributes, then onnx-tensorrt's plugin_version/plugin_namespace convention
ATTRIBUTES = ("num_clusters", "iterations", "mode", "weighted", "plugin_version", "plugin_namespace")
# what the plugin creator reads, with the ONNX attribute type each comes from (onnx-tensorrt passes INT as
# kINT32 and STRING as kCHAR)
PLUGIN_FIELDS = {"num_clusters": "INT", "iterations": "INT", "mode": "STRING", "weighted": "INT"}
FLT_MAX = 3.4028234663852886e38
INT32_MAX = 2**31 - 1  # the kernels' and the plugin's fields are 32-bit

# The model's pooling methods: the clustering ones and top-K are TokenPool nodes (mode, weighted; top-K is 0
# iterations), grid is a fixed average over the patch grid, none the dense model.
METHODS = ("wkmedoids", "kmedoids", "wkmeans", "kmeans", "topk", "grid", "none")
_METHOD_OPS = {
    "wkmedoids": ("kmedoids", True),
    "kmedoids": ("kmedoids", False),
    "wkmeans": ("kmeans", True),
    "kmeans": ("kmeans", False),
    "topk": ("kmedoids", True),
}


def method_op(method: str) -> tuple[str, bool] | None:
    """(TokenPool mode, weighted) of a pooling method; None for the methods without a TokenPool node (grid, none)."""
    return _METHOD_OPS.get(method)


# the CUDA kernels' limits (plugins/tokenpool/tokenPoolKernel.h); beyond them PyTorch uses the reference
KERNEL_MAX_TOKENS = 1024  # N: one token per thread of the per-image kernels
KERNEL_MAX_CHANNELS = 65536  # C
KERNEL_MAX_BATCH = 65535  # B: the grid's y dimension


def check_attributes(num_clusters, iterations, mode, weighted) -> tuple[int, int, str, bool]:
    """The attributes, validated (K >= 1 here; K <= N is checked against the input)."""
    k = check_int("num_clusters", num_clusters, minimum=1, maximum=INT32_MAX)
    t = check_int("iterations", iterations, minimum=0, maximum=INT32_MAX)
    check_choice("mode", mode, MODES)
    if not isinstance(weighted, (bool, int)) or weighted not in (0, 1):
        raise InvalidArgumentError(f"weighted must be True or False, got {weighted!r}")
    return k, t, mode, bool(weighted)


def check_shapes(x_shape, w_shape, num_clusters: int) -> None:
    """X [B, N, C], W [B, N], 1 <= K <= N."""
    x_shape, w_shape = list(x_shape), list(w_shape)
    if len(x_shape) != 3:
        raise InvalidArgumentError(f"TokenPool: X must be [B, N, C], got shape {x_shape}")
    b, n, _ = x_shape
    if w_shape != [b, n]:
        raise InvalidArgumentError(f"TokenPool: W must be [B, N] = {[b, n]}, got shape {w_shape}")
    if not 1 <= num_clusters <= n:
        raise InvalidArgumentError(f"TokenPool: num_clusters must be in [1, N={n}], got {num_clusters}")


def kernels_support(batch: int, tokens: int, channels: int) -> bool:
    """Whether the CUDA kernels run this size (else the reference does)."""
    return batch <= KERNEL_MAX_BATCH and tokens <= KERNEL_MAX_TOKENS and channels <= KERNEL_MAX_CHANNELS
