"""Compare model outputs: a comparator that knows nothing of runtimes.

Given two dicts of arrays (name -> logits), :func:`compare_outputs` says per output how far the
actual values are from the reference, relative to the *output scale* (the largest absolute
reference value), and whether the top-1 class agrees. Who produced the arrays (PyTorch, ONNX
Runtime, TensorRT) is the caller's business, as in Polygraphy's comparator.

A :class:`Tolerance` passes an output when

* ``max |actual - reference| <= rel * scale``, and
* top-1 agrees on every sample whose reference top-1/top-2 margin exceeds ``tie * scale``
  (closer calls are near-ties that any rounding may flip; they are counted, not failed).

For fp32 the first rule implies the second; for reduced precision (fp16, TF32) the error bound is
looser and the top-1 rule is what guarantees the graph still predicts the same classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """How far an output may be from its reference and still pass (see the module docstring)."""

    name: str
    rel: float          # max abs error allowed, as a fraction of the output scale
    tie: float          # reference margins below tie * scale are near-ties: top-1 may differ there

    def to_json(self) -> dict:
        return asdict(self)


FP32 = Tolerance("fp32", rel=1e-4, tie=2e-4)
# fp16 weights and compute against the fp32 PyTorch model: rounding drifts logits by ~1e-3 of
# their scale in the families we test; 5e-2 catches broken conversions (overflow, wrong casts)
# while the top-1 rule holds every sample that is not a near-tie within 1% of the scale.
FP16 = Tolerance("fp16", rel=5e-2, tie=1e-2)
# TensorRT fp32 engines may use TF32 tensor cores (TensorRT's default): 10 mantissa bits, as fp16.
TF32 = Tolerance("tf32", rel=5e-2, tie=1e-2)


@dataclass
class OutputComparison:
    output: str
    passed: bool
    max_abs: float
    max_rel: float
    scale: float
    top1_agreement: float
    near_ties: int
    samples: int
    tolerance: str
    reason: str | None = None

    def to_json(self) -> dict:
        return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _failed(name: str, tol: Tolerance, reason: str, samples: int = 0) -> OutputComparison:
    nan = float("nan")
    return OutputComparison(name, False, nan, nan, nan, 0.0, 0, samples, tol.name, reason)


def compare_array(name: str, reference: np.ndarray, actual: np.ndarray, tol: Tolerance) -> OutputComparison:
    """Compare one output ([batch, classes] logits, or any shape: top-1 is over the last axis)."""
    ref = np.asarray(reference, dtype=np.float64)
    act = np.asarray(actual, dtype=np.float64)
    samples = int(ref.shape[0]) if ref.ndim else 1
    if ref.shape != act.shape:
        return _failed(name, tol, f"shape {tuple(act.shape)} != reference {tuple(ref.shape)}", samples)
    if not np.isfinite(act).all():
        return _failed(name, tol, f"{int((~np.isfinite(act)).sum())} non-finite values", samples)
    if ref.size == 0:
        return OutputComparison(name, True, 0.0, 0.0, 0.0, 1.0, 0, samples, tol.name)
    err = np.abs(act - ref)
    max_abs = float(err.max())
    scale = float(np.abs(ref).max()) or 1.0
    max_rel = max_abs / scale
    flat_ref = ref.reshape(-1, ref.shape[-1]) if ref.ndim > 1 else ref.reshape(1, -1)
    flat_act = act.reshape(flat_ref.shape)
    agree = flat_ref.argmax(-1) == flat_act.argmax(-1)
    if flat_ref.shape[-1] > 1:
        top2 = np.sort(flat_ref, axis=-1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) > tol.tie * scale
    else:
        decisive = np.zeros(len(flat_ref), dtype=bool)
    flips = int((~agree & decisive).sum())
    reasons = []
    if max_rel > tol.rel:
        reasons.append(f"max error {max_abs:.3g} is {max_rel:.2g} of the output scale {scale:.3g} "
                       f"(allowed {tol.rel:g})")
    if flips:
        reasons.append(f"top-1 differs on {flips} of {len(agree)} samples that are not near-ties")
    return OutputComparison(name, not reasons, max_abs, max_rel, scale, float(agree.mean()),
                            int((~decisive).sum()), samples, tol.name, "; ".join(reasons) or None)


def compare_outputs(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray],
                    tol: Tolerance = FP32) -> list[OutputComparison]:
    """One comparison per reference output, in the reference's order; a missing output fails."""
    results = []
    for name, ref in reference.items():
        if name not in actual:
            results.append(_failed(name, tol, f"output missing (outputs: {', '.join(actual) or 'none'})",
                                   int(np.shape(ref)[0]) if np.ndim(ref) else 1))
        else:
            results.append(compare_array(name, ref, actual[name], tol))
    return results
