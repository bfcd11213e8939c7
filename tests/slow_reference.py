"""A slow, obviously-correct TokenPool (SPEC section 1): plain loops over images, tokens and clusters, float64.

Every tie is broken by sorting on (value, index), which is the SPEC's "ties go to the lowest index".
"""

import numpy as np


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
