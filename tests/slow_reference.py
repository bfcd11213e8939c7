"""Straightforward TokenPools (SPEC section 1) that tpdeploy's implementations are tested against.

`slow_token_pool`: plain loops over images, tokens and clusters in float64; every tie is broken by sorting on
(value, index), which is the SPEC's "ties go to the lowest index". `plain_token_pool`: the SPEC's float32
arithmetic batched in the plainest way, clamps included, for bit-for-bit comparisons.
"""

import numpy as np
import torch


def _sqdist(a, b):
    return float(((a - b) ** 2).sum())


def slow_token_pool(x, w, k, iterations, mode, weighted):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    out = []
    for xb, wb in zip(x, w):
        n = len(xb)
        cw = wb if weighted else np.ones(n)
        init = sorted(range(n), key=lambda i: (-wb[i], i))[:k]
        centres = [xb[i].copy() for i in init]
        medoids = list(init)
        for _ in range(iterations):
            assign = [min(range(k), key=lambda j: (_sqdist(xb[i], centres[j]), j)) for i in range(n)]
            for j in range(k):
                members = [i for i in range(n) if assign[i] == j]
                if not members or sum(cw[i] for i in members) == 0:
                    continue  # empty or weightless: keep the previous centre
                if mode == "kmedoids":
                    medoids[j] = min(members, key=lambda i: (sum(cw[m] * _sqdist(xb[i], xb[m]) for m in members), i))
                    centres[j] = xb[medoids[j]].copy()
                else:
                    centres[j] = sum(cw[i] * xb[i] for i in members) / sum(cw[i] for i in members)
        out.append(np.stack(centres))
    return np.stack(out)


def plain_token_pool(x, w, k, iterations, mode, weighted):
    """The SPEC in float32, batched and plain (tpdeploy's reference before issue 19 made it fast): every distance
    clamped, every cost a masked [N, N] product, every tie rule its own reduction. On inputs where float32 sums are
    exact, tpdeploy's implementations must give these bits; elsewhere they may round sums differently."""
    flt_max = torch.finfo(torch.float32).max
    b, n, c = x.shape
    xf = x.float()
    order_w = torch.where(w > 0, w.float(), 0.0).clamp_(max=flt_max)
    cw = order_w if weighted else torch.ones_like(order_w)
    init = torch.argsort(order_w, dim=1, descending=True, stable=True)[:, :k]

    def clamp(d):
        return d.nan_to_num_(flt_max, flt_max, 0.0).clamp_(min=0.0)

    if mode == "kmedoids" or iterations == 0:
        medoids, token = init, torch.arange(n).expand(b, n)
        gram = xf @ xf.transpose(1, 2)
        sq = gram.diagonal(dim1=1, dim2=2)
        dist = clamp((sq[:, :, None] + sq[:, None, :]).add_(gram, alpha=-2.0))
        for _ in range(iterations):
            assign = dist.gather(2, medoids[:, None, :].expand(b, n, k)).argmin(2)
            same = assign[:, :, None] == assign[:, None, :]
            cost = (torch.where(same, dist, 0.0) @ cw[:, :, None])[:, :, 0].clamp_(max=flt_max)
            best_cost = torch.full((b, k), torch.inf).scatter_reduce_(1, assign, cost, "amin")
            is_best = cost == best_cost.gather(1, assign)
            candidate = torch.full((b, k), n).scatter_reduce_(1, assign, torch.where(is_best, token, n), "amin")
            heaviest = torch.zeros(b, k).scatter_reduce_(1, assign, cw, "amax")
            medoids = torch.where(heaviest > 0, candidate, medoids)
        return x.gather(1, medoids[:, :, None].expand(b, k, c))
    centres = xf.gather(1, init[:, :, None].expand(b, k, c))
    sq_x = (xf * xf).sum(2)
    weighted_x = xf * cw[:, :, None]
    for _ in range(iterations):
        sq_c = (centres * centres).sum(2)
        dist = clamp((sq_x[:, :, None] + sq_c[:, None, :]).add_(xf @ centres.transpose(1, 2), alpha=-2.0))
        assign = dist.argmin(2)
        total = torch.zeros(b, k).scatter_add_(1, assign, cw)
        sums = torch.zeros(b, k, c).scatter_add_(1, assign[:, :, None].expand(b, n, c), weighted_x)
        centres = torch.where(total[:, :, None] > 0, sums / torch.where(total > 0, total, 1.0)[:, :, None], centres)
    return centres.to(x.dtype)
