"""The public entry points: check, assert_gradient, numerical_gradient.

A check is a pipeline: parameters (:mod:`.parameters`) → plan (:mod:`.plan`) →
engine (:mod:`.engine`) → analysis (:mod:`.analysis`, :mod:`.noise`) → report
(:mod:`.report`).  This module only wires the stages together.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from . import analysis
from .engine import Engine, make_engine
from .errors import InputError
from .noise import estimate_noise
from .parameters import ParameterLayout
from .plan import CENTRAL, CENTRAL_DOUBLE, Plan
from .report import Report, group_results, worst_coordinates

#: Fixed seed of the direction along which the loss's noise is measured: checks are reproducible.
NOISE_SEED = 20261128


def check(loss: Callable, grad, theta, args=(), *, eps: float | None = None,
          workers: int | None = None, engine: str = "auto",
          progress: Callable[[int], None] | None = None) -> Report:
    """Compare an analytic gradient with central differences of the loss, coordinate by coordinate.

    Parameters
    ----------
    loss : callable
        ``loss(theta, *args) -> float``.  A Numba ``@njit`` loss runs in compiled
        chunk kernels on ``workers`` threads and receives theta's array (the flat
        float64 vector when theta is a dict); any other callable receives theta's
        structure (a dict of views for a dict theta).
    grad : array, dict of arrays, or callable
        The analytic gradient in theta's structure, or ``grad(theta, *args)``.
    theta : float array of any shape, or dict of named float arrays
        The point of the check.  Never modified.
    args : tuple
        Extra arguments of loss (and of grad when it is callable).
    eps : float, optional
        Relative step h0: h_i = h0·max(1, |θ_i|).  Default ∛u (≈ 6.1e-6 in float64);
        ``eps=1e-7`` reproduces the classic recipe.
    workers : int, optional
        Threads for a compiled loss (default: every core), 1 for a Python loss.
    engine : {"auto", "numba", "python"}
        Force the plain-Python path with "python" (e.g. to compare engines).
    progress : callable, optional
        Called with the number of coordinates just finished, from worker threads.

    Returns
    -------
    Report
        ``report.passed``, ``report.verdict``, ``report.relative_error``; print it.
    """
    started = time.perf_counter()
    args = _as_args(args)
    layout, theta_flat = ParameterLayout.from_theta(theta)
    analytic = _analytic_gradient(grad, theta, theta_flat, layout, args)
    run = make_engine(loss, theta_flat, args, layout, engine, workers)
    run.progress = progress
    noise = estimate_noise(run.at, theta_flat, rng=np.random.default_rng(NOISE_SEED))
    plan = Plan.full(theta_flat, eps)
    numerical, error, refined = _derivatives(run, plan, theta_flat, analytic[plan.coords],
                                             noise.sigma, layout.dtype)
    return _report(layout, plan, numerical, analytic, error, refined, noise, run,
                   time.perf_counter() - started)


def assert_gradient(loss: Callable, grad, theta, args=(), **options) -> Report:
    """Like :func:`check`, but raise AssertionError, with the report as message, on "fail"."""
    report = check(loss, grad, theta, args, **options)
    if not report.passed:
        raise AssertionError("\n" + str(report))
    return report


def numerical_gradient(loss: Callable, theta, args=(), *, eps: float | None = None,
                       workers: int | None = None, engine: str = "auto"):
    """Central differences (f(θ+h·e_i) − f(θ−h·e_i)) / 2h for every coordinate, in theta's structure."""
    args = _as_args(args)
    layout, theta_flat = ParameterLayout.from_theta(theta)
    run = make_engine(loss, theta_flat, args, layout, engine, workers)
    run.at(theta_flat)  # a clear error before the kernels run, if the loss is unusable
    plan = Plan.full(theta_flat, eps)
    numerical, _ = _central(run, plan, theta_flat, CENTRAL)
    return layout.structured(numerical)


# ---------------------------------------------------------------------- stages
def _as_args(args) -> tuple:
    if isinstance(args, tuple):
        return args
    if isinstance(args, list):
        return tuple(args)
    raise InputError(f"args must be a tuple of extra loss arguments, got {type(args).__name__}")


def _analytic_gradient(grad, theta, theta_flat: np.ndarray, layout: ParameterLayout,
                       args: tuple) -> np.ndarray:
    """The analytic gradient as a flat float64 vector, validated against theta."""
    if callable(grad) and not isinstance(grad, (np.ndarray, Mapping)):
        grad = grad(layout.structured(theta_flat.copy()), *args)
        return layout.flatten_like(grad, "grad(theta, *args)")
    return layout.flatten_like(grad, "grad")


def _central(run: Engine, plan: Plan, theta: np.ndarray, offsets):
    """Central differences at ``offsets`` (±h or ±2h); returns D and the offsets taken."""
    values = plan.points(theta, offsets)
    losses = run.perturbed(plan.coords, values)
    taken = plan.taken(theta, values)
    numerical = analysis.central_difference(losses[:, 0], losses[:, 1], taken[:, 0], taken[:, 1])
    return numerical, (losses, taken)


def _rounding(sigma: float, losses: np.ndarray, taken: np.ndarray, dtype) -> np.ndarray:
    noise = analysis.evaluation_noise(sigma, losses[:, 0], losses[:, 1], dtype)
    return analysis.rounding_std(noise, taken[:, 0], taken[:, 1])


def _derivatives(run: Engine, plan: Plan, theta: np.ndarray, analytic: np.ndarray,
                 sigma: float, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numerical derivatives and their allowed errors z·r + t at the plan's coordinates.

    First pass: central differences at h, allowed error z·r (truncation unknown).
    Coordinates that disagree are evaluated again at 2h: the Richardson value
    R = (4·D(h) − D(2h))/3 replaces D, with truncation estimate t = |D(h) − R|,
    so a disagreement caused by the finite difference itself is not a failure.
    """
    multiplier = analysis.noise_multiplier(len(plan))
    numerical, (losses, taken) = _central(run, plan, theta, CENTRAL)
    rounding = _rounding(sigma, losses, taken, dtype)
    error = multiplier * rounding
    refined = np.flatnonzero(np.abs(numerical - analytic) > error)
    if refined.size:
        again = plan.subset(refined)
        doubled, (losses2, taken2) = _central(run, again, theta, CENTRAL_DOUBLE)
        extrapolated = analysis.richardson(numerical[refined], doubled)
        rounding_r = analysis.richardson_rounding_std(rounding[refined],
                                                      _rounding(sigma, losses2, taken2, dtype))
        truncation = np.abs(numerical[refined] - extrapolated)
        numerical[refined] = extrapolated
        error[refined] = multiplier * rounding_r + truncation
    return numerical, error, refined


def _report(layout: ParameterLayout, plan: Plan, numerical, analytic_flat, error, refined, noise,
            run: Engine, seconds: float) -> Report:
    coords = plan.coords
    analytic = analytic_flat[coords]
    score = analysis.disagreement(numerical, analytic, error)
    failed = int((score > 1.0).sum())
    relative = analysis.relative_error(numerical, analytic)
    notes = []
    if not noise.detected:
        notes.append("the loss's rounding noise could not be measured; a bound was used instead")
    if failed:
        verdict = "fail"
    elif relative > analysis.WRONG_ABOVE or not noise.detected:
        verdict = "warn"
        if relative > analysis.WRONG_ABOVE:
            notes.append(
                "the finite differences are too noisy to confirm this gradient: the relative "
                "error is above 1e-3 although no coordinate exceeds its error estimate"
            )
    else:
        verdict = "pass"
    numerical_full = np.full(layout.size, np.nan)
    numerical_full[coords] = numerical
    return Report(
        verdict=verdict, relative_error=relative, size=layout.size, checked=len(plan),
        failed=failed, evaluations=run.evaluations, seconds=seconds, engine=run.name,
        workers=run.workers, dtype=str(layout.dtype), relative_step=plan.relative_step,
        noise=float(noise.sigma), noise_detected=bool(noise.detected), refined=int(refined.size),
        multiplier=analysis.noise_multiplier(len(plan)),
        groups=group_results(layout, coords, numerical, analytic, score),
        worst=worst_coordinates(layout, coords, numerical, analytic, error, score),
        numerical=layout.structured(numerical_full),
        analytic=layout.structured(analytic_flat.copy()),
        notes=notes,
    )
