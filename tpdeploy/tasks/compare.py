"""`tpdeploy compare`: two backends on the same inputs, judged Polygraphy-style with atol/rtol."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tpdeploy.data.samples import sample_images
from tpdeploy.errors import UserError

DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-3
DEFAULT_BATCH = 4


@dataclass
class Comparison:
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    top1_agreement: float
    atol: float
    rtol: float
    passed: bool
    names: tuple[str, str] = ("a", "b")
    images: int = 0

    def format(self) -> str:
        a, b = self.names
        return (
            f"{a} vs {b} on {self.images} images\n"
            f"  max abs error {self.max_abs_error:.3e}  max rel error {self.max_rel_error:.3e}  "
            f"mean abs error {self.mean_abs_error:.3e}  top-1 agreement {self.top1_agreement:.1%}\n"
            f"{'PASSED' if self.passed else 'FAILED'} (atol {self.atol:g}, rtol {self.rtol:g})"
        )

    def to_json(self) -> dict:
        return {**asdict(self), "names": list(self.names)}


def compare_outputs(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> Comparison:
    """Element-wise |a - b| <= atol + rtol * |b| (b is the reference), as numpy.isclose and Polygraphy."""
    if a.shape != b.shape:
        raise UserError(f"the models' outputs differ in shape ({list(a.shape)} vs {list(b.shape)}): not comparable")
    a, b = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(a - b)
    rel = diff / np.maximum(np.abs(b), np.finfo(np.float32).tiny)
    finite = np.isfinite(a).all() and np.isfinite(b).all()
    return Comparison(
        float(diff.max()),
        float(rel.max()),
        float(diff.mean()),
        float((a.argmax(1) == b.argmax(1)).mean()),
        atol,
        rtol,
        bool(finite and np.all(diff <= atol + rtol * np.abs(b))),
        images=a.shape[0],
    )


def compare(
    a, b, names: tuple[str, str], batch: int = DEFAULT_BATCH, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL
) -> Comparison:
    """Runners `a` and `b` on the same `batch` structured images, preprocessed with a's data config."""
    if a.image_size != b.image_size:
        raise UserError(f"{names[0]} takes {a.image_size} px images, {names[1]} {b.image_size} px: not comparable")
    images = sample_images(batch, a.image_size, config=a.data_config)
    result = compare_outputs(a.run_any(images), b.run_any(images), atol, rtol)
    result.names = tuple(names)
    return result
