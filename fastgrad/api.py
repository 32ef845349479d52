"""The public entry points: check, assert_gradient, numerical_gradient.

A check is a pipeline: parameters (:mod:`.parameters`) → plan (:mod:`.plan`) →
engine (:mod:`.engine`) → analysis (:mod:`.analysis`, :mod:`.noise`) → report
(:mod:`.report`).  This module only wires the stages together.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from . import analysis
from .engine import Engine, make_engine
from .errors import InputError
from .directions import DirectionalChecks, DirectionalTester, Localiser, run_directions
from .noise import estimate_noise
from .parameters import ParameterLayout
from .plan import CENTRAL, CENTRAL_DOUBLE, Plan, directional_relative_step
from .report import Report, build_report
from .sampling import sample_coordinates

#: Fixed seed of the direction along which the loss's noise is measured: checks are reproducible.
NOISE_SEED = 20261128
#: Localisation budget: this many evaluations per halving of n, plus the extra (see directions.py).
LOCALISATION_PER_HALVING = 10
LOCALISATION_EXTRA = 100


def check(loss: Callable, grad, theta, args=(), *, eps: float | None = None,
          workers: int | None = None, engine: str = "auto", sample=None,
          detect: tuple[float, float] | None = None, directions: int | None = None,
          seed=None, progress: Callable[[int], None] | None = None) -> Report:
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
    sample : int or float, optional
        Check k coordinates (or a fraction of n) drawn without replacement,
        stratified over the groups; the report states what the sample could miss.
    detect : (p, alpha), optional
        Instead of ``sample``: per group, the smallest sample that catches a bug
        touching a fraction p of the group with probability >= 1 - alpha.
    directions : int, optional
        Test this many random Gaussian directions over all coordinates at once; if
        one fails, localise the error by group testing.  Alone, no coordinate is
        checked one by one; with ``sample``/``detect``, both are done.
    seed : int, optional
        Seed of the sample and the directions (None: fresh; the report gives it).
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
    seeds = np.random.SeedSequence(seed)
    sampled_rng, directions_rng = (np.random.default_rng(s) for s in seeds.spawn(2))
    coverage = None
    if sample is not None or detect is not None:
        if sample is not None and detect is not None:
            raise InputError("give sample= or detect=, not both")
        coverage = sample_coordinates(layout, sample=sample, detect=detect, seed=sampled_rng)
    directions = _check_directions(directions)
    analytic = _analytic_gradient(grad, theta, theta_flat, layout, args)
    run = make_engine(loss, theta_flat, args, layout, engine, workers)
    run.progress = progress
    noise = estimate_noise(run.at, theta_flat, rng=np.random.default_rng(NOISE_SEED))
    if coverage is not None:
        plan = Plan.for_coords(theta_flat, coverage.coords, eps)
    elif directions:
        plan = Plan.for_coords(theta_flat, np.empty(0, dtype=np.int64), eps)
    else:
        plan = Plan.full(theta_flat, eps)
    coordinates = _derivatives(run, plan, theta_flat, analytic[plan.coords], noise.sigma,
                               layout.dtype)
    directional = None
    if directions:
        directional = _directional(run, layout, plan, theta_flat, analytic, noise.sigma,
                                   directions, directions_rng, eps)
    return build_report(layout, plan, coordinates, analytic, noise, run, directional, coverage,
                        seed=seeds.entropy, seconds=time.perf_counter() - started)


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


@dataclass
class CoordinateChecks:
    """Numerical derivatives at a plan's coordinates and their allowed errors z·r + t."""

    numerical: np.ndarray
    error: np.ndarray
    refined: np.ndarray  # rows re-evaluated at 2h


def _derivatives(run: Engine, plan: Plan, theta: np.ndarray, analytic: np.ndarray,
                 sigma: float, dtype) -> CoordinateChecks:
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
    return CoordinateChecks(numerical, error, refined)


def _check_directions(directions) -> int:
    if directions is None:
        return 0
    if isinstance(directions, bool) or not isinstance(directions, (int, np.integer)) \
            or directions < 1:
        raise InputError(f"directions must be a positive integer, got {directions!r}")
    return int(directions)


def _directional(run: Engine, layout: ParameterLayout, plan: Plan, theta: np.ndarray,
                 analytic: np.ndarray, sigma: float, count: int, rng: np.random.Generator,
                 eps: float | None) -> DirectionalChecks:
    """Gaussian directional tests; if one fails, localise by group testing."""
    step = directional_relative_step(theta.dtype) if eps is None else plan.relative_step
    tester = DirectionalTester(run, theta, analytic, sigma, step, analysis.noise_multiplier(count))
    results = run_directions(tester, count, rng)
    checks = DirectionalChecks(results, tester.sensitivity(results))
    if any(result.failed for result in results):
        def confirm(coordinate: int) -> tuple[bool, int]:
            single = Plan.for_coords(theta, [coordinate], eps)
            before = run.evaluations
            found = _derivatives(run, single, theta, analytic[single.coords], sigma, layout.dtype)
            checks.confirmed[coordinate] = (float(found.numerical[0]), float(found.error[0]))
            disagrees = abs(found.numerical[0] - analytic[coordinate]) > found.error[0]
            return bool(disagrees), run.evaluations - before

        budget = LOCALISATION_PER_HALVING * math.ceil(math.log2(max(layout.size, 2))) \
            + LOCALISATION_EXTRA
        reference = max(results, key=lambda result: result.score)
        checks.localisation = Localiser(tester, layout, confirm, rng, budget, reference).run()
    return checks
