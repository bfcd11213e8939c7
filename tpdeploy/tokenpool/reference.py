"""The TokenPool operator (SPEC section 1): the PyTorch reference implementation.

Every other implementation (the ONNX function in `onnx_function`, the CUDA kernels under `plugins/`)
follows the same arithmetic, so that float32 results agree bit for bit wherever sums are exact and the chosen
tokens agree otherwise (a sum may add its terms in another order):

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
    xf = x.float()
    order_w = torch.where(w > 0, w.float(), 0.0).clamp_(max=FLT_MAX)
    cluster_w = order_w if weighted else torch.ones_like(order_w)
    init = torch.argsort(order_w, dim=1, descending=True, stable=True)[:, :num_clusters]  # [B, K]
    if mode == "kmedoids" or iterations == 0:
        with torch.no_grad():
            medoids = _kmedoids(xf, cluster_w, init, iterations)
        return _rows(x, medoids)
    return _kmeans(xf, cluster_w, init, iterations).to(x.dtype)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, k]] for x [B, N, C] and index [B, K] (differentiable in x)."""
    b, n, c = x.shape
    flat = index + torch.arange(b, device=x.device)[:, None] * n
    return x.reshape(b * n, c).index_select(0, flat.view(-1)).view(b, index.shape[1], c)


def _kmedoids(x, w, medoids, iterations):
    if iterations == 0:
        return medoids  # top-K by significance: no distances needed
    b, n, _ = x.shape
    k = medoids.shape[1]
    token = torch.arange(n, device=x.device)
    gram = x @ x.transpose(1, 2)  # [B, N, N]
    sq = gram.diagonal(dim1=1, dim2=2)
    dist = _clamp_finite_((sq[:, :, None] + sq[:, None, :]).add_(gram, alpha=-2.0))  # [B, N, N]
    for _ in range(iterations):
        assign = dist.gather(2, medoids[:, None, :].expand(b, n, k)).argmin(2)  # [B, N], ties: lowest k
        cost = _cost_within_cluster(dist, w, assign, k)
        # per cluster its member of least cost, ties to the lowest index, in one reduction: a cost is a float >= +0.0,
        # whose bits order as its value does, so (cost bits, index) packed in an int64 orders as the pair
        key = (cost.view(torch.int32).long() << 32) | token
        best = torch.full((b, k), torch.iinfo(torch.int64).max, device=x.device).scatter_reduce_(1, assign, key, "amin")
        heaviest = torch.zeros(b, k, device=x.device).scatter_reduce_(1, assign, w, "amax")
        new = torch.where(heaviest > 0, best & 0xFFFFFFFF, medoids)  # empty or weightless: keep
        if torch.equal(new, medoids):
            break  # a fixed point: the remaining iterations would change nothing
        medoids = new
    return medoids


def _cost_within_cluster(dist, w, assign, k):
    """cost_i = sum over the members j of i's cluster of D_ij w_j, [B, N], clamped to FLT_MAX. Summed over the
    members alone (a cluster holds a few of the N tokens): each token's cluster-mates are gathered from the tokens
    sorted by cluster, padded to the largest cluster with weight 0."""
    b, n = assign.shape
    mates = torch.argsort(assign, dim=1, stable=True)  # each cluster's members, contiguous
    count = torch.zeros(b, k, dtype=torch.int64, device=assign.device).scatter_add_(1, assign, torch.ones_like(assign))
    first = (count.cumsum(1) - count).gather(1, assign)  # where in `mates` each token's cluster starts
    size = count.gather(1, assign)
    slot = torch.arange(int(size.max()), device=assign.device)
    mate = mates.gather(1, (first[:, :, None] + slot).clamp_(max=n - 1).view(b, -1))  # [B, N * S]
    mate_w = torch.where(slot < size[:, :, None], w.gather(1, mate).view(b, n, -1), 0.0)
    return (dist.gather(2, mate.view(b, n, -1)) * mate_w).sum(2).clamp_(max=FLT_MAX)


def _kmeans(x, w, init, iterations):
    """x carries gradients; the assignments are computed on a detached copy (held constant)."""
    b, n, c = x.shape
    k = init.shape[1]
    centres = _rows(x, init)  # [B, K, C]
    xd = x.detach()
    sq_x = (xd * xd).sum(2)  # [B, N]
    weighted_x = (x * w[:, :, None]).view(b * n, c)
    slot_of_cluster = torch.arange(b, device=x.device)[:, None] * k  # clusters numbered b * K + k
    for _ in range(iterations):
        cd = centres.detach()
        sq_c = (cd * cd).sum(2)  # [B, K]
        dist = _clamp_finite_((sq_x[:, :, None] + sq_c[:, None, :]).add_(xd @ cd.transpose(1, 2), alpha=-2.0))
        slot = (dist.argmin(2) + slot_of_cluster).view(-1)  # [B * N], ties: lowest k
        # index_add_ sums each cluster's members in token order, as scatter_add would, on rows rather than elements
        total = torch.zeros(b * k, device=x.device).index_add_(0, slot, w.view(-1)).view(b, k)
        sums = torch.zeros(b * k, c, device=x.device).index_add_(0, slot, weighted_x).view(b, k, c)
        safe_total = torch.where(total > 0, total, 1.0)  # avoids 0/0, whose gradient would be NaN
        new = torch.where(total[:, :, None] > 0, sums / safe_total[:, :, None], centres)
        moved = not torch.equal(new, centres)
        centres = new  # the means' bits even at a fixed point (a -0.0 centre becomes the +0.0 mean), as the
        if not moved:  # ONNX function and the kernels write them
            break
    return centres
