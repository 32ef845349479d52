"""The verdict: the rule that turns what a check measured into pass, warn or fail.

* **fail**: some checked coordinate disagrees, |D_i − g_i| > z·r_i + t_i + a_i (score > 1),
  or a directional test disagreed and a localising test reproduced it;
* **warn**: nothing disagrees, but the check cannot vouch for the gradient: the relative
  error exceeds 1e-3 while nothing exceeds its error (the differences are too inaccurate,
  unless θ is a stationary point), the noise could not be measured, a coordinate agrees
  only with a one-sided derivative at an unresolved kink or at a spike narrower than the
  step, or a failing direction was reproduced by no localising test;
* **pass** otherwise.

:func:`judge` applies the rule and returns a :class:`Verdict` with the reasons as notes;
:mod:`.report` presents it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import analysis
from .noise import STEP_TOO_SMALL, NoiseEstimate
from .parameters import ParameterLayout

#: Verdicts from best to worst.
VERDICT_ORDER = ("pass", "warn", "fail")


def worse(first: str, second: str) -> str:
    """The worse of two verdicts."""
    return max(first, second, key=VERDICT_ORDER.index)


@dataclass(frozen=True)
class Verdict:
    """A judged check: the verdict, its figures, the rows judged (the plan's coordinates and
    those a localisation confirmed), and the notes that explain it."""

    verdict: str
    relative_error: float
    failed: int
    coords: np.ndarray
    numerical: np.ndarray
    analytic: np.ndarray  # at coords
    error: np.ndarray
    score: np.ndarray
    kink: np.ndarray
    unresolved: np.ndarray
    analytic_flat: np.ndarray
    notes: tuple[str, ...]


def locally_constant(noise: NoiseEstimate, numerical, analytic) -> bool:
    """Every difference the check took is exactly 0 and so is the gradient: the noise
    estimate ended with ECnoise's code 2 (its values equal at every step tried, √u up to
    100³·√u ≈ 1.5e-2 relative) and every D_i = g_i = 0.  Nothing here is rounding: the loss
    is constant near θ."""
    return (not noise.detected and noise.code == STEP_TOO_SMALL and numerical.size > 0
            and not np.any(numerical) and not np.any(analytic))


def zero_within_error(analytic, error) -> bool:
    """|g_i| ≤ z·r_i + t_i for every checked coordinate: the gradient is 0 within the error of
    each difference, θ is a stationary point as far as the check can tell, and the relative
    error ‖D − g‖/(‖D‖ + ‖g‖), a ratio of two rounding errors there, says nothing."""
    return analytic.size > 0 and bool(np.all(np.abs(analytic) <= error))


def judge(layout: ParameterLayout, plan, coordinates, analytic_flat: np.ndarray,
          noise: NoiseEstimate, directional, notes=()) -> Verdict:
    """Apply the rule (module docstring) to the coordinate checks, the directional checks
    (or None) and the noise they were judged with; ``notes``: the analysis's own, first."""
    coords = plan.coords
    numerical, error, kink = coordinates.numerical, coordinates.error, coordinates.kink
    unresolved = coordinates.unresolved
    if directional is not None and directional.confirmed:  # coordinates named by localisation
        extra = np.array([c for c in directional.confirmed if c not in set(coords.tolist())],
                         dtype=np.int64)
        coords = np.concatenate([coords, extra])
        numerical = np.concatenate([numerical, [directional.confirmed[c][0] for c in extra]])
        error = np.concatenate([error, [directional.confirmed[c][1] for c in extra]])
        kink = np.concatenate([kink, np.zeros(extra.size, dtype=bool)])
        unresolved = np.concatenate([unresolved, np.zeros(extra.size, dtype=bool)])
    analytic = analytic_flat[coords]
    score = analysis.disagreement(numerical, analytic, error)
    failed = int((score > 1.0).sum())
    directions = [] if directional is None else directional.results
    if coords.size:
        relative = analysis.relative_error(numerical, analytic)
    else:
        relative = analysis.relative_error(np.array([d.numerical for d in directions]),
                                           np.array([d.analytic for d in directions]))
    notes = list(notes)
    flat = locally_constant(noise, numerical, analytic)
    stationary = zero_within_error(analytic, error) and not flat
    if flat:
        notes.append("the loss is flat here: every finite difference, and every difference of the "
                     "noise estimate at steps up to 1.5e-2, is exactly 0, as is the gradient; a gradient "
                     "that is 0 here by mistake cannot be told from the right one: check at a "
                     "point where the loss varies too")
    elif not noise.detected:
        notes.append("the loss's rounding noise could not be measured; a bound was used instead")
    if stationary and relative > analysis.WRONG_ABOVE:
        notes.append("theta is a stationary point: the gradient is 0 within each coordinate's error "
                     "bound (so the relative error means nothing); there, a gradient wrong by a "
                     "factor or a sign cannot be told from the right one: check at a nearby point "
                     "too (jitter=)")
    rough = coordinates.rough
    if rough is not None and rough.any():
        names = ", ".join(layout.label(int(c)) for c in plan.coords[rough][:3])
        notes.append(f"the loss is not smooth at the step scale near {names}"
                     f"{' and others' if rough.sum() > 3 else ''}: its differences do not "
                     "converge as the step changes (a spike narrower than the step, or many "
                     "kinks within it: ReLU, max pooling), so finite differences cannot "
                     "confirm any derivative there; look closer (dtype float64, a smaller "
                     "eps, or a point away from the kinks)")
    moved = coordinates.steps
    if moved is not None and moved.any():
        rows = np.flatnonzero(moved)
        steps = ", ".join(f"{layout.label(int(plan.coords[j]))} at h = {moved[j]:.2e}"
                          for j in rows[:6])
        notes.append(f"the loss's noise ({noise.sigma:.2e}) is far above rounding (sqrt(u)|f| = "
                     f"{np.sqrt(np.finfo(layout.dtype).eps) * abs(noise.f0):.2e}): {rows.size} "
                     f"coordinate(s) unresolved at the default step were judged at the step that "
                     f"balances noise and truncation (Richardson value): {steps}"
                     f"{', ...' if rows.size > 6 else ''}")
    inconclusive = relative > analysis.WRONG_ABOVE and not stationary
    unconfirmed = directional is not None and directional.unconfirmed
    if failed or (directional is not None and directional.failed and not unconfirmed):
        verdict = "fail"
    elif inconclusive or not (noise.detected or flat) or unresolved.any() or unconfirmed:
        verdict = "warn"
        if unconfirmed:
            notes.append(
                "a directional test disagreed, but no localising test (on part of theta) did "
                "again and nothing was named: a kink crossed by the directional step, or its "
                "truncation estimate out of range; look closer with a coordinate check "
                "(sample= or a full check)"
            )
        one_sided = unresolved.copy()
        if rough is not None:
            one_sided[:rough.size] &= ~rough
        if one_sided.any():
            notes.append(
                f"{int(one_sided.sum())} coordinate(s) disagree with the central difference but "
                "agree with a one-sided derivative, and no kink could be resolved: a small kink "
                "(ReLU, abs) or a gradient error at the level of the noise; look closer"
            )
        if inconclusive:
            notes.append(
                "the finite differences are too inaccurate here (rounding noise, or truncation "
                "at this step) to confirm this gradient: the relative error is above 1e-3 "
                "although nothing exceeds its error estimate"
            )
    else:
        verdict = "pass"
    return Verdict(verdict, relative, failed, coords, numerical, analytic, error, score, kink,
                   unresolved, analytic_flat, tuple(notes))
