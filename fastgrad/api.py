"""The public entry points: check, assert_gradient, numerical_gradient.

A check is a pipeline: parameters (:mod:`.parameters`) → plan (:mod:`.plan`) →
engine (:mod:`.engine`) → analysis (:mod:`.analysis`, :mod:`.noise`) → report
(:mod:`.report`).  This module only wires the stages together.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np

from . import _validation as validate
from . import analysis
from .derivatives import (
    Context,
    analysis_offsets,
    central,
    check_method,
    complex_step,
    coordinate_derivatives,
    default_relative_step,
    stencil,
)
from .directions import DirectionalChecks, DirectionalTester, Localiser, run_directions
from .engine import Engine, make_engine
from .engine.compiled import is_compiled
from .errors import GradientMismatch, InputError, LossError, describe
from .noise import estimate_noise, estimate_noise_on, random_direction
from .parameters import ParameterLayout
from .plan import (
    Plan,
    check_eps,
    directional_relative_step,
    jittered_theta,
    require_representable_steps,
)
from .progress import ProgressBar
from .report import Report, build_report, with_jittered
from .sampling import (
    DIRECTIONS_STREAM,
    SAMPLE_STREAM,
    Coverage,
    check_entropy,
    sample_coordinates,
    stream,
)

#: Fixed seed of the direction along which the loss's noise is measured: checks are reproducible.
NOISE_SEED = 20261128
#: A sampled check of a large θ measures the noise along a direction that moves the sampled
#: coordinates and this many others (a random choice), at O(k) cost per point instead of O(n):
#: its σ bounds the noise of each sampled coordinate's difference (see estimate_noise_on).
NOISE_OTHERS = 4096
#: θ sits near a zero of f, for the noise, when f one step away exceeds this times f(θ).
DISPLACED_GROWTH = 4.0
#: Localisation budget: this many evaluations per halving of n, plus the extra (see directions.py).
LOCALISATION_PER_HALVING = 10
LOCALISATION_EXTRA = 100


def check(loss: Callable, grad, theta, args=(), *, kwargs: Mapping | None = None,
          method: str = "central", eps: float | None = None, dtype=None,
          workers: int | None = None, engine: str = "auto", sample=None,
          detect: tuple[float, float] | None = None, directions: int | None = None, seed=None,
          progress: bool | Callable[[int, int], None] | None = None,
          jitter: float | None = None) -> Report:
    """Compare an analytic gradient with finite differences of the loss, coordinate by coordinate.

    Parameters
    ----------
    loss : callable
        ``loss(theta, *args) -> float``.  A Numba ``@njit`` loss runs in compiled
        chunk kernels on ``workers`` threads and receives theta's array (the flat
        vector when theta is a dict); any other callable receives theta's
        structure (a dict of views for a dict theta).
    grad : array, dict of arrays, or callable
        The analytic gradient in theta's structure, or ``grad(theta, *args)``.
    theta : float array of any shape, or dict of named float arrays
        The point of the check.  Never modified.
    args : tuple
        Extra arguments of loss (and of grad when it is callable); ``args=(X,)`` for one.
    kwargs : dict, optional
        Keyword arguments of loss (and of grad when it is callable): ``loss(theta, *args,
        **kwargs)``.  A compiled loss receives them in their positions of its signature.
    method : {"central", "central4", "complex"}
        Central differences (2 evaluations per coordinate), the fourth-order
        4-point stencil (4), or the complex step (1 complex evaluation; the loss
        must accept complex input).
    eps : float, optional
        Relative step h0: h_i = h0·max(1, |θ_i|).  Default by method and dtype:
        ∛u (≈ 6.1e-6 in float64) for "central"; ``eps=1e-7`` is the classic recipe.
    dtype : {None, "float64"}
        Evaluate in this precision (e.g. a float32 theta in float64); default:
        theta's own (float32 stays float32, with float32 steps and tolerances).
    workers : int, optional
        Threads for a compiled loss (default: every core), 1 for a Python loss.
    engine : {"auto", "numba", "python"}
        Force the plain-Python path with "python" (e.g. to compare engines).
    sample : int, float or array of ints, optional
        Check k coordinates (or a fraction of n, or these flat indices) drawn
        without replacement, stratified over the groups; the report states what
        the sample could miss.
    detect : (p, alpha), optional
        Instead of ``sample``: per group, the smallest sample that catches a bug
        touching a fraction p of the group with probability >= 1 - alpha.
    directions : int, optional
        Test this many random Gaussian directions over all coordinates at once; if
        one fails, localise the error by group testing.  Alone, no coordinate is
        checked one by one; with ``sample``/``detect``, both are done.
    seed : int, optional
        Seed of the sample and the directions, a non-negative integer (None: fresh; the
        report gives it).
    progress : bool or callable, optional
        True: a progress bar on stderr (shown once the check has run a second).  A callable
        is called as ``progress(coordinates, evaluations)`` with the counts just finished,
        from worker threads (see :class:`fastgrad.progress.ProgressBar`); if it raises, the
        check stops with that error.
    jitter : float, optional
        Also check at a fixed nearby point, each θ_i moved by r/2 to r times max(1, |θ_i|)
        (needs a callable grad); the report is the worse of the two, ``report.jittered`` the other.

    Returns
    -------
    Report
        ``report.passed``, ``report.verdict``, ``report.relative_error``; print it.
    """
    options = dict(kwargs=kwargs, method=method, eps=eps, dtype=dtype, workers=workers, engine=engine,
                   sample=sample, detect=detect, directions=directions, seed=seed,
                   progress=progress)
    if jitter is None:
        return run_check(loss, grad, theta, args, **options)
    nearby = jittered_theta(theta, jitter, dtype)  # InputError before any evaluation
    if not callable(grad) or isinstance(grad, (np.ndarray, Mapping)):
        raise InputError("jitter= needs grad as a callable grad(theta, *args): the gradient is "
                         "evaluated again at the nearby point")
    report = run_check(loss, grad, theta, args, **options)
    return with_jittered(report, run_check(loss, grad, nearby, args, **options), jitter)


def run_check(loss: Callable, grad, theta, args=(), *, kwargs: Mapping | None = None,
              method: str = "central", eps: float | None = None, dtype=None,
              workers: int | None = None, engine: str = "auto", sample=None,
              detect: tuple[float, float] | None = None, directions: int | None = None,
              seed=None, progress: bool | Callable[[int, int], None] | None = None,
              directional_step: float | None = None,
              directions_rng: np.random.Generator | None = None,
              layout: ParameterLayout | None = None, coverage: Coverage | None = None
              ) -> Report:
    """:func:`check`, for a caller that checks again and again (:class:`fastgrad.Monitor`):
    ``directional_step`` starts the directional tests at the step its previous check settled
    on, which saves the tests at the default step; ``directions_rng`` draws the directions
    from the caller's own generator (seeded once for all its checks; the report's seed is
    then None) instead of one built from ``seed`` for each check; ``layout`` is theta's
    layout at an earlier check (see :meth:`ParameterLayout.flatten_theta`), and ``coverage``
    the sample, drawn and vouched for by the caller (instead of ``sample``/``detect``)."""
    started = time.perf_counter()
    options = validate.check_options(loss, args=args, kwargs=kwargs, method=method, eps=eps,
                                     dtype=dtype, workers=workers, engine=engine, sample=sample,
                                     detect=detect, directions=directions, seed=seed,
                                     progress=progress)
    loss, grad, args = validate.bind_keywords(loss, grad, options.args, options.kwargs,
                                              is_compiled(loss))
    method, eps, dtype, directions = options.method, options.eps, options.dtype, options.directions
    sample, detect = options.sample, options.detect
    earlier = layout
    layout, theta_flat = (ParameterLayout.from_theta(theta, dtype) if earlier is None
                          else earlier.flatten_theta(theta, dtype))
    if coverage is not None and earlier is not None and layout is not earlier:
        raise InputError("theta's names, shapes or dtypes changed since its sample was drawn "
                         "(a Monitor's theta must keep its structure from step to step)")
    sampled = sample is not None or detect is not None
    drawn = sampled and not isinstance(sample, (np.ndarray, list, tuple))  # not given
    entropy = check_entropy(options.seed) if drawn or (directions and directions_rng is None) \
        else None
    if sampled and coverage is not None:
        raise InputError("give sample=/detect= or a coverage, not both")
    if sampled:
        coverage = sample_coordinates(layout, sample=sample, detect=detect,
                                      seed=stream(entropy, SAMPLE_STREAM) if drawn else None)
    relative_step = default_relative_step(method, layout.dtype) if eps is None else eps
    require_representable_steps(theta_flat, max(relative_step, directional_relative_step(
        layout.dtype)) if directions else relative_step, layout.label)
    analytic, analytic_eps = _analytic_gradient(grad, theta_flat, layout, args)
    run = make_engine(loss, theta_flat, args, layout, engine, workers)
    total = layout.size if coverage is None else coverage.coords.size
    bar = ProgressBar(total) if options.progress is True else None
    progress = bar if bar is not None else options.progress
    run.progress = progress
    try:
        return _checked(run, loss, theta_flat, layout, analytic, analytic_eps, args, method, eps,
                        relative_step, engine, workers, coverage, directions, directions_rng,
                        directional_step, progress, entropy, started)
    finally:
        if bar is not None:
            bar.close()


def _checked(run, loss, theta_flat, layout, analytic, analytic_eps, args, method, eps,
             relative_step, engine, workers, coverage, directions, directions_rng, directional_step, progress, entropy,
             started) -> Report:
    """The stages of :func:`run_check` after its inputs are validated."""
    f0 = run.at(theta_flat)
    # Directions move every coordinate: their differences need a dense direction's noise.
    sparse = not directions and coverage is not None \
        and coverage.coords.size + NOISE_OTHERS < theta_flat.size // 4
    noise = _noise_estimate(run, theta_flat, coverage.coords if sparse else None)
    require_same(f0, noise.f0, layout.dtype, "twice in a row")
    if coverage is not None:
        coords = coverage.coords
    elif directions:
        coords = np.empty(0, dtype=np.int64)
    else:
        coords = np.arange(layout.size, dtype=np.int64)
    plan = Plan.for_coords(theta_flat, coords, relative_step)
    context = _context(run, method, theta_flat, analytic, analytic_eps, noise, layout, args,
                       loss, engine, workers, progress)
    if method != "complex" and not sparse:  # a dense probe would cost O(n) per point
        context.displaced = _displaced_noise(run, theta_flat, noise, relative_step)
    coordinates = coordinate_derivatives(context, plan, method)
    directional = None
    if directions:
        directional = _directional(context, layout, directions,
                                   directions_rng or stream(entropy, DIRECTIONS_STREAM),
                                   eps if directional_step is None else directional_step)
    require_same(f0, run.at(theta_flat), layout.dtype, "at the start and at the end of the check")
    evaluations = run.evaluations + (context.complex_run.evaluations if context.complex_run else 0)
    return build_report(layout, plan, coordinates, analytic, context.judged_noise(noise), run,
                        directional, coverage,
                        method=method, seed=entropy, evaluations=evaluations,
                        seconds=time.perf_counter() - started, notes=context.noise_notes())


def assert_gradient(loss: Callable, grad, theta, args=(), *, strict: bool = False,
                    **options) -> Report:
    """Like :func:`check`, but raise :class:`fastgrad.GradientMismatch` (an AssertionError
    carrying ``.report``, with the report as message) on "fail", and on "warn" too with
    ``strict=True``.  Returns the report otherwise."""
    __tracebackhide__ = True  # pytest shows the caller's line, not fastgrad's frames
    strict = validate.flag("strict", strict)
    report = check(loss, grad, theta, args, **options)
    if not report.passed or (strict and report.verdict != "pass"):
        raise GradientMismatch(report)
    return report


def numerical_gradient(loss: Callable, theta, args=(), *, method: str = "central",
                       eps: float | None = None, dtype=None, workers: int | None = None,
                       engine: str = "auto"):
    """The numerical gradient in theta's structure, by ``method`` (see :func:`check`).

    "central" is (f(θ+h·e_i) − f(θ−h·e_i)) / 2h for every coordinate, as in the
    classic recipe; no error estimate or second step is involved.
    """
    options = validate.check_options(loss, args=args, method=method, eps=eps, dtype=dtype,
                                     workers=workers, engine=engine)
    args, method, eps = options.args, options.method, options.eps
    layout, theta_flat = ParameterLayout.from_theta(theta, options.dtype)
    relative_step = default_relative_step(method, layout.dtype) if eps is None else eps
    require_representable_steps(theta_flat, relative_step, layout.label)
    run = make_engine(loss, theta_flat, args, layout, engine, workers)
    f0 = run.at(theta_flat)  # a clear error before the kernels run, if the loss is unusable
    plan = Plan.for_coords(theta_flat, np.arange(layout.size, dtype=np.int64), relative_step)
    if method == "complex":
        sigma = float(np.finfo(layout.dtype).eps) * abs(f0)  # rounding of f at best
        run = _complex_engine(loss, theta_flat, args, layout, engine, workers, None, f0, sigma)
        numerical = complex_step(run, plan, theta_flat)
    else:
        losses, taken = stencil(run, plan, theta_flat, analysis_offsets(method))
        numerical = central(losses[:, :2], taken[:, :2])
        if method == "central4":
            numerical = analysis.richardson(numerical, central(losses[:, 2:], taken[:, 2:]))
    return layout.structured(numerical)


# ---------------------------------------------------------------------- stages
def _analytic_gradient(grad, theta_flat: np.ndarray, layout: ParameterLayout,
                       args: tuple) -> tuple[np.ndarray, float]:
    """The analytic gradient as a flat float64 vector, validated against theta, and the
    machine epsilon of the coarsest precision it was given in (float64 for integers)."""
    what = "grad"
    if callable(grad) and not isinstance(grad, (np.ndarray, Mapping)):
        try:
            grad = grad(layout.structured(theta_flat.copy()), *args)
        except Exception as error:
            raise InputError(f"grad(theta, *args) raised {type(error).__name__}: "
                             f"{describe(error)}") from error
        what = "grad(theta, *args)"
    flat = layout.flatten_like(grad, what)
    arrays = grad.values() if isinstance(grad, Mapping) else [grad]
    precision = max(float(np.finfo(dtype).eps) if dtype.kind == "f"
                    else float(np.finfo(np.float64).eps)
                    for dtype in (np.asarray(array).dtype for array in arrays))
    return flat, precision


def _check_directions(directions) -> int:
    if directions is None:
        return 0
    if isinstance(directions, bool) or not isinstance(directions, (int, np.integer)) \
            or directions < 1:
        raise InputError(f"directions must be a positive integer, got {directions!r}")
    return int(directions)


def _context(run: Engine, method: str, theta: np.ndarray, analytic: np.ndarray,
             analytic_eps: float, noise, layout: ParameterLayout, args: tuple, loss,
             engine: str, workers, progress) -> Context:
    complex_run = None
    if method == "complex":
        complex_run = _complex_engine(loss, theta, args, layout, engine, workers, progress,
                                      noise.f0, noise.sigma)
    return Context(run, theta, analytic, noise.sigma, noise.f0, layout.dtype, analytic_eps,
                   float(np.abs(analytic).max()), complex_run, values_dtype=noise.values_dtype)


def _complex_engine(loss, theta: np.ndarray, args: tuple, layout: ParameterLayout, engine: str,
                    workers, progress, f0: float, sigma: float) -> Engine:
    """An engine over complex θ, once the loss has shown it carries the imaginary part.

    Along a random direction v, the complex step Im f(θ + i·h·v)/h must equal the real
    central difference (f(θ+hv) − f(θ−hv))/2h to within the latter's error: a loss
    that raises on complex input, or drops the imaginary part of some term (abs,
    real parts, comparisons, float()), cannot be checked by the complex step.
    """
    advice = "use method='central' (or 'central4') for this loss"
    run = make_engine(loss, theta.astype(np.complex128), args, layout, engine, workers)
    run.progress = progress
    direction = np.random.default_rng(NOISE_SEED).standard_normal(theta.size)
    tiny = default_relative_step("complex", theta.dtype)
    try:
        with _quiet_complex_casts():
            value = run.at(theta + 1j * tiny * direction, "at a complex point", complex_ok=True)
    except (InputError, LossError) as error:
        raise InputError(f"method='complex' needs a loss that accepts complex input, and this "
                         f"one does not ({error}); {advice}") from error
    # Re f(θ + ih·v) = f(θ) − h²·vᵀ∇²f·v/2: the same value, up to the rounding of
    # complex arithmetic, which is of the order of the loss's noise σ.
    z = analysis.noise_multiplier(1)
    if abs(value.real - f0) > z * sigma + math.sqrt(np.finfo(np.float64).eps) * abs(f0):
        raise InputError(f"method='complex': Re f(theta + ih) = {value.real!r} differs from "
                         f"f(theta) = {f0!r} by more than the loss's noise allows; {advice}")
    step = default_relative_step("central", theta.dtype)
    differences = []
    for multiple in (1.0, 2.0):
        with _quiet_complex_casts():
            plus = run.at(theta + multiple * step * direction, complex_ok=True).real
            minus = run.at(theta - multiple * step * direction, complex_ok=True).real
        differences.append((plus - minus) / (2.0 * multiple * step))
    real = analysis.richardson(*differences)
    imaginary = value.imag / tiny
    # R errs by its rounding and, within its asymptotic range, by much less than
    # |D(h) − R| (truncation); a dropped imaginary part errs by far more, unless the
    # term dropped is tiny: a relative 1e-6 is allowed besides.
    rounding = analysis.richardson_rounding_std(
        *(math.sqrt(2.0) * sigma / (2.0 * multiple * step) for multiple in (1.0, 2.0)))
    if abs(imaginary - real) > z * rounding + abs(differences[0] - real) \
            + 1e-6 * max(abs(real), abs(imaginary)):
        raise InputError("method='complex': the loss drops the imaginary part of its input in "
                         "some of its terms (through abs, real parts, comparisons or a "
                         f"conversion to float): along a test direction the complex step gives "
                         f"{imaginary:.6g} but the central difference {real:.6g}; {advice}")
    return run


@contextlib.contextmanager
def _quiet_complex_casts():
    """No ComplexWarning from the probe at a complex point: a loss that casts its input to
    real (float()) is told so by the InputError that follows, in one message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", getattr(getattr(np, "exceptions", np), "ComplexWarning"))
        yield


def require_same(first: float, second: float, dtype, when: str) -> None:
    """Two evaluations of f at θ must agree to within rounding (relative √u).

    A deterministic loss repeats itself to the bit, or, with a reduction whose order
    varies, to within a few units of rounding; dropout or an unseeded random generator
    moves it far more.
    """
    tolerance = math.sqrt(float(np.finfo(dtype).eps)) * max(abs(first), abs(second))
    if abs(first - second) > tolerance:
        raise LossError(f"the loss is not deterministic: f(theta) was {first!r} and {second!r} "
                        f"{when} (difference {second - first:.3e}); dropout or an unseeded "
                        "random generator? Fix its seed for the check.")


def _noise_estimate(run, theta: np.ndarray, coords: np.ndarray | None):
    """ECnoise at θ along a random direction (fixed seed): a dense one, or, given the
    sampled coordinates ``coords`` of a large θ (only they are differenced), one that moves
    them and NOISE_OTHERS others, so that the estimate costs O(k), not O(n), per point."""
    where = "near theta (noise estimate)"
    if coords is not None:
        rng = np.random.default_rng(NOISE_SEED)
        others = rng.choice(theta.size, NOISE_OTHERS, replace=False)
        support = np.union1d(coords, others)
        return estimate_noise_on(lambda values: run.at_changed(support, values, where), theta,
                                 support, rng=rng)
    return estimate_noise(lambda point: run.at(point, where, fresh=True), theta, rng=NOISE_SEED)


def _displaced_noise(run, theta: np.ndarray, noise, relative_step: float):
    """The noise estimate one step from θ, when θ sits near a zero of f, or when σ at θ is
    more than rounding can do (a jump at θ inflates it); else None.

    At an exact fit (least squares with no residual) f(θ) ≈ 0, and so is its noise, while
    one step away the residuals, and the rounding they carry, are of the step's size: the
    noise measured at θ says nothing of the stencil's.  One probe f₁ = f(θ + h0·p) (p a
    random direction, ‖p‖ ≈ 1 in units of max(1, |θ_i|)) tells: if f₁ keeps f(θ)'s sign and
    exceeds DISPLACED_GROWTH·|f(θ)|, the noise is measured at θ + h0·p too (ECnoise, 8 more
    evaluations) and both references bound the stencil's noise.
    """
    where = "near theta (noise estimate)"
    move = random_direction(theta, NOISE_SEED + 1)
    move *= relative_step
    point = (move + theta).astype(theta.dtype, copy=False)  # float64 sums, rounded to θ's
    f1 = run.at(point, where, fresh=True)
    f0 = noise.f0
    noisy = noise.sigma > math.sqrt(float(np.finfo(theta.dtype).eps)) * abs(f0)  # not rounding
    if not noisy and (not (f0 == 0.0 or np.sign(f1) == np.sign(f0))
                      or abs(f1) <= DISPLACED_GROWTH * abs(f0)):
        return None
    displaced = estimate_noise(lambda q: run.at(q, where, fresh=True), point, rng=NOISE_SEED + 2)
    return displaced


def _directional(context: Context, layout: ParameterLayout, count: int,
                 rng: np.random.Generator, eps: float | None) -> DirectionalChecks:
    """Gaussian directional tests; if one fails, localise by group testing."""
    theta, run = context.theta, context.run
    step = directional_relative_step(theta.dtype) if eps is None else eps
    tester = DirectionalTester(run, theta, context.analytic, context.noise_references, step,
                               context.values_dtype,
                               analysis.noise_multiplier(count))
    results = run_directions(tester, count, rng)
    checks = DirectionalChecks(results, tester.sensitivity(results))
    if any(result.failed for result in results):
        coordinate_step = default_relative_step("central", theta.dtype) if eps is None else eps

        def confirm(coordinate: int) -> tuple[bool, int]:
            single = Plan.for_coords(theta, [coordinate], coordinate_step)
            before = run.evaluations
            found = coordinate_derivatives(context, single, "central")
            checks.confirmed[coordinate] = (float(found.numerical[0]), float(found.error[0]))
            disagrees = abs(found.numerical[0] - context.analytic[coordinate]) > found.error[0]
            return bool(disagrees), run.evaluations - before

        budget = LOCALISATION_PER_HALVING * math.ceil(math.log2(max(layout.size, 2))) \
            + LOCALISATION_EXTRA
        checks.localisation = Localiser(tester, layout, confirm, rng, budget, results).run()
    return checks
