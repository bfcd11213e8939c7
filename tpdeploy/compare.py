"""`tpdeploy compare`: two backends on the same inputs, judged Polygraphy-style with atol/rtol."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tpdeploy.errors import UserError


@dataclass
class Comparison:
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    top1_agreement: float
    atol: float
    rtol: float
    passed: bool


def compare_outputs(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> Comparison:
    """Element-wise |a - b| <= atol + rtol * |b| (b is the reference), as numpy.isclose and Polygraphy."""
    if a.shape != b.shape:
        raise UserError(f"the models' outputs differ in shape ({list(a.shape)} vs {list(b.shape)}): not comparable")
    a, b = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(a - b)
    rel = diff / np.maximum(np.abs(b), np.finfo(np.float32).tiny)
    finite = np.isfinite(a).all() and np.isfinite(b).all()
    return Comparison(float(diff.max()), float(rel.max()), float(diff.mean()),
                      float((a.argmax(1) == b.argmax(1)).mean()), atol, rtol,
                      bool(finite and np.all(diff <= atol + rtol * np.abs(b))))
