"""``step_scan``: the error of a finite difference against its step, for a few coordinates.

The error of a central difference is about σ/h + h²·|f'''|/6: rounding falls as
the step grows, truncation rises, and on a log-log plot the two make a V whose
bottom is the best step.  ``step_scan`` measures the V so that a user can see
why a default step was chosen, and where it sits for their loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from . import _validation as validate
from .derivatives import complex_step, stencil
from .engine import make_engine
from .errors import InputError
from .methods import CENTRAL4, COMPLEX, Method
from .parameters import Gradient, ParameterLayout, Theta
from .pipeline import analytic_gradient, complex_engine
from .plan import Plan, require_representable_steps


def default_steps(dtype) -> np.ndarray:
    """Relative steps scanned by default: four per decade, up to 10^-1.

    From 10^-14 or the first quarter-decade at or above 2u (u the unit roundoff of
    ``dtype``: a smaller step would not change θ_i).
    """
    lowest = max(-14.0, math.ceil(4.0 * math.log10(2.0 * float(np.finfo(dtype).eps))) / 4.0)
    return np.logspace(lowest, -1.0, round(4 * (-1.0 - lowest)) + 1)


#: The float64 default: 10^-14 to 10^-1.
DEFAULT_STEPS = default_steps(np.float64)


@dataclass(frozen=True)
class StepScan:
    """errors[j, s] = |D_j(steps[s]) − reference[j]| for coordinate labels[j]."""

    labels: list[str]
    steps: np.ndarray  # relative steps h0 (h = h0·max(1, |θ_i|))
    numerical: np.ndarray  # (coordinates, steps)
    reference: np.ndarray  # the analytic gradient, or the complex step / central4
    reference_name: str
    errors: np.ndarray
    default_step: float
    method: str

    @property
    def best_steps(self) -> np.ndarray:
        """Per coordinate, the scanned step with the smallest error."""
        return self.steps[np.argmin(self.errors, axis=1)]

    def plot(self):
        """Draw the errors against the step, log-log (the V), the default step marked.

        Returns the matplotlib figure (needs ``fastgrad[plot]``).
        """
        from .plotting import plot_step_scan

        return plot_step_scan(self)

    def _repr_html_(self) -> str:
        """The scan in a notebook: the table of errors, the best and default steps marked."""
        from .notebook import step_scan_html

        return step_scan_html(self)

    def __str__(self) -> str:
        default_row = int(np.argmin(np.abs(np.log(self.steps / self.default_step))))
        best = np.argmin(self.errors, axis=1)
        header = ["h0", *self.labels]
        rows = []
        for s, step in enumerate(self.steps):
            cells = [f"{step:.1e}"]
            for j in range(len(self.labels)):
                mark = "*" if best[j] == s else " "
                cells.append(f"{self.errors[j, s]:.2e}{mark}")
            rows.append(cells + (["<- default"] if s == default_row else [""]))
        widths = [max(len(r[i]) for r in [[*header, ""], *rows]) for i in range(len(header) + 1)]
        lines = [f"|{self.method} difference - {self.reference_name}| against the relative "
                 f"step h0 (* smallest per coordinate)"]
        for cells in [[*header, ""], *rows]:
            lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        return "\n".join(lines)


def step_scan(loss: Callable, theta: Theta, coords: Sequence, args: tuple | list = (), *,
              grad: Gradient | None = None, steps: ArrayLike | None = None,
              method: str = "central", engine: str = "auto", workers: int | None = None
              ) -> StepScan:
    """Scan the relative step for a few coordinates (flat indices or labels like "W1[0, 3]").

    The reference is ``grad`` when given, else the complex step when the loss
    accepts complex input, else "central4" at its default step.  Costs
    len(steps)·len(coords)·(2, 4, or 1 for "forward") loss evaluations.  Every input, ``grad`` included, is
    checked before the first evaluation.
    """
    args = validate.args(args)
    chosen = validate.method(method, finite_difference=True)  # step_scan differences
    layout, theta_flat = ParameterLayout.from_theta(theta)
    indices = np.array([validate.coordinate(layout, c) for c in validate.sequence("coords", coords)],
                       dtype=np.int64)
    steps = default_steps(layout.dtype) if steps is None else validate.relative_steps(steps)
    require_representable_steps(theta_flat, float(steps.max()), layout.label)
    for step in steps:  # InputError now for a step too small to move a coordinate
        Plan.for_coords(theta_flat, indices, float(step)).points(
            theta_flat, [offset for offset in chosen.offsets if offset])  # 0: θ itself
    analytic = None if grad is None else analytic_gradient(grad, theta_flat, layout, args)[0]
    run = make_engine(loss, theta_flat, args, layout, engine, workers)
    f0 = run.at(theta_flat)
    numerical = np.column_stack([
        _derivative(run, theta_flat, indices, step, chosen, f0) for step in steps])
    if analytic is not None:
        reference, name = analytic[indices], "analytic"
    else:
        reference, name = _reference(loss, theta_flat, args, layout, f0, indices, run)
    return StepScan([layout.label(int(i)) for i in indices], steps, numerical, reference, name,
                    np.abs(numerical - reference[:, None]), chosen.default_step(layout.dtype),
                    chosen.name)


def _derivative(run, theta, indices, step: float, method: Method, f0: float) -> np.ndarray:
    plan = Plan.for_coords(theta, indices, step)
    losses, taken = stencil(run, plan, theta, method.offsets, f0)
    return method.value(losses, taken)


def _reference(loss, theta, args, layout, f0, indices, run):
    """The complex step where the loss carries complex input, else central4."""
    try:
        sigma = float(np.finfo(theta.dtype).eps) * abs(f0)  # rounding of f at best
        complex_run = complex_engine(run, loss, theta, args, layout, f0, sigma)
    except InputError:
        step = CENTRAL4.default_step(theta.dtype)
        return _derivative(run, theta, indices, step, CENTRAL4, f0), "central4"
    plan = Plan.for_coords(theta, indices, COMPLEX.default_step(theta.dtype))
    return complex_step(complex_run, plan, theta), "complex step"
