"""What check_function, check_module and Monitor share: the working precision of a check,
tensors to the NumPy θ fastgrad's layout reads (once per check, never per evaluation), and
gradients back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from .. import _validation as validate
from ..errors import InputError
from ..products.common import ProductReport
from ..report import Report

#: Options of a check that the torch checks pass on: the engine, executor and workers are
#: theirs (the calling thread, the tensors' device).
CHECK_OPTIONS = ("method", "eps", "sample", "detect", "directions", "progress")
#: Dtypes checked in their own precision.
OWN_PRECISION = (torch.float32, torch.float64)
#: Dtypes whose derivatives are judged against float64 differences (see working_dtype).
NARROW = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Precision:
    """How a check treats its tensors' precision.

    ``gradient``: the dtype autograd computes the checked derivatives in; ``evaluate``: the
    dtype the function is evaluated in for the differences (θ's NumPy dtype); ``notes``: what
    the report says of it.
    """

    gradient: torch.dtype
    evaluate: torch.dtype
    notes: tuple[str, ...] = ()

    @property
    def gradient_eps(self) -> float | None:
        """The gradient's machine epsilon, where it is coarser than the evaluations' (a
        bfloat16 gradient judged against float64 differences), else None."""
        return float(torch.finfo(self.gradient).eps) if self.gradient != self.evaluate else None


def working_dtype(tensors: Mapping[str, torch.Tensor], dtype) -> Precision:
    """The precision of a check of ``tensors``.

    ``dtype`` "float32"/"float64": every tensor cast to it, for the derivatives and the
    differences alike.  None: the tensors' own, when all are float64, or all float32 (then
    steps and allowed errors are float32's, u = 2⁻²³; see :func:`confirmed`), or all bfloat16
    (or all float16): their derivatives computed in it, and judged against float64
    differences of the function, allowing for the gradient's rounding in its precision
    (u = 2⁻⁷, 2⁻¹⁰): a central difference in bfloat16 itself keeps no correct digit (its
    rounding, u·|f|/h, is 1e-3 relative at best, at h = u^(1/3) = 0.2).  Mixed precisions
    need ``dtype``: InputError.
    """
    asked = validate.dtype(dtype)
    found = {name: t.dtype for name, t in tensors.items()}
    if asked is not None:
        chosen = torch.float32 if asked == np.float32 else torch.float64
        cast = sorted({str(d).removeprefix("torch.") for d in found.values() if d != chosen})
        return Precision(chosen, chosen,
                         (f"evaluated in {chosen} (dtype={asked.name!r}); the tensors were "
                          f"{', '.join(cast)}",) if cast else ())
    kinds = set(found.values())
    if len(kinds) == 1 and next(iter(kinds)) in OWN_PRECISION:
        chosen = next(iter(kinds))
        return Precision(chosen, chosen, () if chosen == torch.float64 else (FLOAT32_NOTE,))
    if len(kinds) == 1 and next(iter(kinds)) in NARROW:
        narrow = next(iter(kinds))
        name = str(narrow).removeprefix("torch.")
        eps = float(torch.finfo(narrow).eps)
        return Precision(narrow, torch.float64, (
            f"{name} tensors: the derivatives autograd computes in {name} are judged against "
            f"float64 differences of the function (evaluated in float64), allowing for their "
            f"rounding in {name} (u = {eps:.1e} times their magnitude and the largest's): an "
            f"error below an entry's allowed error (listed) cannot be told from {name} rounding",))
    listed = ", ".join(f"{n}: {str(d).removeprefix('torch.')}" for n, d in found.items())
    raise InputError(f"the tensors mix precisions ({listed}); give dtype='float32' or "
                     "dtype='float64' to evaluate all in one")


#: The float32 report's note: what a float32 check can and cannot see.
FLOAT32_NOTE = ("float32 tensors: evaluated and judged in float32 (its steps and allowed errors, "
                "u = 1.2e-07): an error below an entry's allowed error (listed) cannot be told from "
                "rounding, which in float32 can be 1e-3 of the entry; dtype='float64' sees errors "
                "some 1e5 times smaller")


def to_numpy(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A NumPy copy of ``tensor`` in ``dtype`` (float32/float64), wherever it lives."""
    return tensor.detach().to("cpu", dtype, copy=True).numpy()


def gradients(grads, leaves: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """torch.autograd.grad's results as float64 arrays named like ``leaves`` (None, an
    input the output does not depend on: zeros)."""
    return {name: np.zeros(tuple(leaf.shape)) if grad is None
            else to_numpy(grad, torch.float64)
            for (name, leaf), grad in zip(leaves.items(), grads, strict=True)}


def one_device(tensors: Mapping[str, torch.Tensor]) -> torch.device:
    """The device every checked tensor is on; InputError if they are on several."""
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        raise InputError(f"the checked tensors are on several devices ({sorted(map(str, devices))}); "
                         "move them to one")
    return next(iter(devices))


Checked = TypeVar("Checked", Report, ProductReport)


def noted(report: Checked, notes: list[str]) -> Checked:
    """``report`` with ``notes`` first among its notes."""
    report.notes[:0] = notes
    return report


def confirmed(report: Report, working: torch.dtype, recheck: Callable[[], Report]) -> Report:
    """A float32 check that did not pass, judged again with float64 differences against the
    same float32 gradient: the report of ``recheck()``, which evaluates the function (or
    module) cast to float64, with a note on the float32 pass; any other report as it is.

    Why: a float32 central difference at its step h = u^(1/3) ≈ 5e-3 (relative) crosses the
    kinks of a ReLU or max-pooling network that a float64 step (6e-6) does not, and errs by
    the slope jumps it straddles, which float32's rounding hides from the smoothness test
    (measured on a LeNet-style CNN, a first-layer weight: D(h) off by 10 % of the derivative,
    K within its rounding).  The float64 differences judge the gradient the float32 backward
    computed, allowing for its float32 rounding (u = 1.2e-07 times its magnitude), so a
    wrong gradient still fails and a float32 difference's error no longer does.
    """
    if working != torch.float32 or report.verdict == "pass":
        return report
    wide = recheck()
    if report.verdict == "warn":
        what = "could not conclude"
    elif report.failed:
        what = f"failed: {report.failed} coordinate(s) disagreed, worst {report.worst_label}"
    else:
        what = f"failed: {sum(d.failed for d in report.directions)} random direction(s) disagreed"
    return noted(wide, [f"judged with float64 differences (the function evaluated in float64) "
                        f"against the float32 gradient, because the float32 check {what}: "
                        f"{wide.verdict}"])


def batched_mode(value) -> bool | str:
    """``batched``: "auto" (vmap where it works and is faster per point), True (vmap where it
    works) or False (one call per point)."""
    if value is True or value is False or value == "auto":
        return value
    raise InputError(f"batched must be 'auto', True or False, got {value!r}")


def require_options(options: Mapping, owner: str) -> None:
    """InputError for an option the torch checks do not take (and for method='complex')."""
    validate.known_options(options, CHECK_OPTIONS, owner)
    if validate.method(options.get("method", "central")).complex:
        raise InputError("method='complex' is not available for torch functions (their inputs "
                         "are real tensors); use method='central' or 'central4'")
