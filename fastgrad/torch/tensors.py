"""What check_function, check_module and Monitor share: the working precision of a check,
tensors to the NumPy θ fastgrad's layout reads (once per check, never per evaluation), and
gradients back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def working_dtype(tensors: Mapping[str, torch.Tensor], dtype) -> tuple[torch.dtype, list[str]]:
    """The dtype a check evaluates in, and what the report should say of it.

    ``dtype`` None: the tensors' own, when all are float64, or all float32 (then steps and
    allowed errors are float32's, u = 2⁻²³); "float32"/"float64": every tensor cast to it.
    Mixed precisions, and bfloat16/float16 (whose u = 2⁻⁸/2⁻¹¹ leaves a finite difference
    no correct digit at fastgrad's steps), need ``dtype``: InputError.
    """
    asked = validate.dtype(dtype)
    found = {name: t.dtype for name, t in tensors.items()}
    if asked is not None:
        chosen = torch.float32 if asked == np.float32 else torch.float64
        cast = sorted({str(d).removeprefix("torch.") for d in found.values() if d != chosen})
        return chosen, ([f"evaluated in {chosen} (dtype={asked.name!r}); the tensors were "
                         f"{', '.join(cast)}"] if cast else [])
    kinds = set(found.values())
    if len(kinds) == 1 and next(iter(kinds)) in OWN_PRECISION:
        chosen = next(iter(kinds))
        return chosen, [] if chosen == torch.float64 else [FLOAT32_NOTE]
    narrow = [name for name, d in found.items() if d not in OWN_PRECISION]
    if narrow:
        raise InputError(f"{narrow[0]} is {found[narrow[0]]}: finite differences need float32 "
                         "or float64 steps (in bfloat16 or float16 a difference keeps no correct "
                         "digit); give dtype='float32' or dtype='float64' to evaluate in it")
    raise InputError(f"the tensors mix precisions ({', '.join(f'{n}: {d}' for n, d in found.items())}); "
                     "give dtype='float32' or dtype='float64' to evaluate all in one")


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


def as_computed(grad: Mapping[str, np.ndarray], dtype: torch.dtype) -> dict[str, np.ndarray]:
    """A gradient held in float64 arrays, in the precision it was computed in (float32 values
    are exact in float64 and back), so that a check allows for that precision's rounding."""
    return {name: np.asarray(g, dtype=np.float32 if dtype == torch.float32 else np.float64)
            for name, g in grad.items()}


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
