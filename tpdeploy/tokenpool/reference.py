"""The TokenPool operator (SPEC section 1): the PyTorch reference implementation.

Every other implementation (the ONNX function in `onnx_function`, the CUDA kernels under `plugins/`)
follows the same arithmetic, step for step, so that float32 results agree exactly:

- initial centres: the K tokens with the largest W, in descending order (stable: ties to the lowest index);
- kmedoids distances: D = g_ii + g_jj - 2 g_ij with g = X Xᵀ in float32 (so D_ii is exactly 0 and
  identical tokens are at distance exactly 0);
- kmeans distances: |x|² + |c|² - 2 x·c in float32;
- distances clamped to [0, FLT_MAX] (NaN and Inf count as FLT_MAX), weights to [0, FLT_MAX] (NaN counts
  as 0), so no NaN ever reaches an argmin and non-finite inputs give a defined result instead of a crash.
"""

from __future__ import annotations

import torch

from tpdeploy.errors import InvalidArgumentError
from tpdeploy.tokenpool import definition as tokenpool

FLT_MAX = torch.finfo(torch.float32).max
_DTYPES = (torch.float32, torch.float16)


def check_args(x, w, num_clusters, iterations, mode, weighted) -> tuple[int, int, str, bool]:
    """Validate the tensors and attributes; raises InvalidArgumentError (a ValueError) with one clear sentence."""
    for name, t in (("X", x), ("W", w)):
        if not isinstance(t, torch.Tensor):
            raise InvalidArgumentError(f"TokenPool: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise InvalidArgumentError(f"TokenPool: {name} must be float32 or float16, got {t.dtype}")
    k, t, mode, weighted = tokenpool.check_attributes(num_clusters, iterations, mode, weighted)
    tokenpool.check_shapes(x.shape, w.shape, k)
    return k, t, mode, weighted


def token_pool(
    x: torch.Tensor,
    w: torch.Tensor,
    num_clusters: int,
    iterations: int = 3,
    mode: str = "kmedoids",
    weighted: bool = True,
) -> torch.Tensor:
    """Pool tokens X [B, N, C] with significance W [B, N] into K = num_clusters tokens [B, K, C].

    Differentiable with respect to X with the cluster assignments held constant. Under
    `torch.onnx.export` it becomes one `tpdeploy::TokenPool` node. CUDA tensors without gradients run on the
    CUDA kernels (`tpdeploy.tokenpool.cuda_kernels`) where they are built and the size is within their limits.
    """
    num_clusters, iterations, mode, weighted = check_args(x, w, num_clusters, iterations, mode, weighted)
    if torch.onnx.is_in_onnx_export():
        attrs = {
            "num_clusters": num_clusters,
            "iterations": iterations,
            "mode": mode,
            "weighted": int(weighted),
            "plugin_version": str(tokenpool.VERSION),
            "plugin_namespace": tokenpool.DOMAIN,
        }
        return torch.onnx.ops.symbolic(
            f"{tokenpool.DOMAIN}::{tokenpool.OP_TYPE}",
            (x, w),
            attrs,
            dtype=x.dtype,
            shape=(x.shape[0], num_clusters, x.shape[2]),
            version=tokenpool.VERSION,
        )
    if x.is_cuda and not (torch.is_grad_enabled() and x.requires_grad) and tokenpool.kernels_support(*x.shape):
        from tpdeploy.tokenpool import cuda_kernels  # the CUDA kernels are for inference; training uses the reference

        if cuda_kernels.available():
            return cuda_kernels.token_pool(x, w, num_clusters, iterations, mode, weighted)
    return reference_token_pool(x, w, num_clusters, iterations, mode, weighted)


def _clamp_finite_(t: torch.Tensor) -> torch.Tensor:
    """In place: NaN and +Inf -> FLT_MAX, negatives and -Inf -> 0."""
    return t.nan_to_num_(FLT_MAX, FLT_MAX, 0.0).clamp_(min=0.0)


def reference_token_pool(x, w, num_clusters, iterations=3, mode="kmedoids", weighted=True):
    """Batched PyTorch implementation of SPEC section 1 (no loops over the batch or the tokens)."""
    b, _, c = x.shape
    xf = x.float()
    order_w = torch.where(w > 0, w.float(), 0.0).clamp_(max=FLT_MAX)
    cluster_w = order_w if weighted else torch.ones_like(order_w)
    init = torch.argsort(order_w, dim=1, descending=True, stable=True)[:, :num_clusters]  # [B, K]
    if mode == "kmedoids" or iterations == 0:
        with torch.no_grad():
            medoids = _kmedoids(xf, cluster_w, init, iterations)
        return x.gather(1, medoids[:, :, None].expand(b, num_clusters, c))
    return _kmeans(xf, cluster_w, init, iterations).to(x.dtype)


def _kmedoids(x, w, medoids, iterations):
    if iterations == 0:
        return medoids  # top-K by significance: no distances needed
    b, n, _ = x.shape
    k = medoids.shape[1]
    token = torch.arange(n, device=x.device).expand(b, n)
    gram = x @ x.transpose(1, 2)  # [B, N, N]
    sq = gram.diagonal(dim1=1, dim2=2)
    dist = _clamp_finite_((sq[:, :, None] + sq[:, None, :]).add_(gram, alpha=-2.0))  # [B, N, N]
    for _ in range(iterations):
        assign = dist.gather(2, medoids[:, None, :].expand(b, n, k)).argmin(2)  # [B, N], ties: lowest k
        same = assign[:, :, None] == assign[:, None, :]  # [B, N, N]
        cost = (torch.where(same, dist, 0.0) @ w[:, :, None])[:, :, 0].clamp_(max=FLT_MAX)  # [B, N]
        # per cluster: its smallest member cost, then the lowest member index with that cost
        best_cost = torch.full((b, k), torch.inf, device=x.device).scatter_reduce_(1, assign, cost, "amin")
        is_best = cost == best_cost.gather(1, assign)
        candidate = torch.full((b, k), n, device=x.device).scatter_reduce_(
            1, assign, torch.where(is_best, token, n), "amin"
        )
        heaviest = torch.zeros(b, k, device=x.device).scatter_reduce_(1, assign, w, "amax")
        new = torch.where(heaviest > 0, candidate, medoids)  # empty or weightless: keep
        if torch.equal(new, medoids):
            break  # a fixed point: the remaining iterations would change nothing
        medoids = new
    return medoids


def _kmeans(x, w, init, iterations):
    """x carries gradients; the assignments are computed on a detached copy (held constant)."""
    b, n, c = x.shape
    k = init.shape[1]
    centres = x.gather(1, init[:, :, None].expand(b, k, c))  # [B, K, C]
    xd = x.detach()
    sq_x = (xd * xd).sum(2)  # [B, N]
    weighted_x = x * w[:, :, None]
    for _ in range(iterations):
        cd = centres.detach()
        sq_c = (cd * cd).sum(2)  # [B, K]
        dist = _clamp_finite_((sq_x[:, :, None] + sq_c[:, None, :]).add_(xd @ cd.transpose(1, 2), alpha=-2.0))
        assign = dist.argmin(2)  # [B, N], ties: lowest k
        total = torch.zeros(b, k, device=x.device).scatter_add_(1, assign, w)  # [B, K]
        sums = torch.zeros(b, k, c, device=x.device).scatter_add_(1, assign[:, :, None].expand(b, n, c), weighted_x)
        safe_total = torch.where(total > 0, total, 1.0)  # avoids 0/0, whose gradient would be NaN
        new = torch.where(total[:, :, None] > 0, sums / safe_total[:, :, None], centres)
        moved = not torch.equal(new, centres)
        centres = new  # the means' bits even at a fixed point (a -0.0 centre becomes the +0.0 mean), as the
        if not moved:  # ONNX function and the kernels write them
            break
    return centres
