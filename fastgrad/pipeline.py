"""A check, stage by stage: what :func:`fastgrad.check` runs, top to bottom.

1. :func:`prepare`: the options (already validated), theta's layout and flat copy, the
   analytic gradient, the sample and the seed, the plan of coordinates; no evaluation.
2. :func:`measure_noise`: f(θ), its noise σ by ECnoise (at θ, and one step away where θ
   sits near a zero of f or σ is more than rounding can do), and the complex-step engine
   for ``method="complex"``: the :class:`~fastgrad.derivatives.Context` of every difference.
3. :func:`~fastgrad.derivatives.coordinate_derivatives`: each planned coordinate's
   derivative by the method, with its allowed error.
4. :func:`directional_tests`: random directions, and group testing when one fails.
5. :func:`~fastgrad.verdict.judge`: pass, warn or fail, with the reasons.
6. :func:`~fastgrad.report.build_report`: the report.

Each stage takes explicit inputs and returns a new object; nothing is patched after it is
built.  :class:`Continuation` carries what a caller that checks again and again (a
:class:`~fastgrad.Monitor`) keeps from one check to the next.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from . import _validation as validate
from . import analysis
from .derivatives import Context, complex_step, coordinate_derivatives, stencil
from .directions import DirectionalChecks, DirectionalTester, Localiser, run_directions
from .engine import Engine, make_engine, make_evaluator, with_default_executor
from .engine.compiled import is_compiled
from .errors import InputError, LossError, describe
from .methods import CENTRAL, COMPLEX, Method
from .noise import NoiseEstimate, estimate_noise, estimate_noise_on, random_direction
from .parameters import ParameterLayout
from .plan import Plan, directional_relative_step, require_representable_steps
from .progress import ProgressBar
from .report import Report, build_report
from .sampling import DIRECTIONS_STREAM, SAMPLE_STREAM, Coverage, check_entropy, sample_coordinates, stream
from .verdict import judge

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


@dataclass(frozen=True)
class Continuation:
    """What a caller that checks again and again carries from check to check: theta's
    layout at an earlier check (see :meth:`ParameterLayout.flatten_theta`), the sample it
    drew and vouches for (instead of ``sample``/``detect``), its own generator of directions
    (seeded once for all its checks; the report's seed is then None), and the directional
    step its previous check settled on (which saves the tests at the default step)."""

    layout: ParameterLayout | None = None
    coverage: Coverage | None = None
    directions_rng: np.random.Generator | None = None
    directional_step: float | None = None


@dataclass(frozen=True)
class Prepared:
    """Stage 1: everything a check needs before its first evaluation."""

    loss: Callable
    args: tuple
    options: validate.CheckOptions
    layout: ParameterLayout
    theta: np.ndarray  # flat working copy
    analytic: np.ndarray  # flat float64
    analytic_eps: float
    coverage: Coverage | None
    entropy: int | None  # seeds the sample and the directions (None: the caller's generator)
    plan: Plan  # the coordinates checked one by one
    sparse_noise: bool  # measure the noise along the sampled coordinates only

    @property
    def method(self) -> Method:
        return self.options.method


def run_check(loss: Callable, grad, theta, options: validate.CheckOptions,
              continuation: Continuation | None = None) -> Report:
    """The stages of a check (module docstring), for validated ``options``."""
    started = time.perf_counter()
    continuation = continuation or Continuation()
    prepared = prepare(loss, grad, theta, options, continuation)
    bar = ProgressBar(len(prepared.plan)) if options.progress is True else None
    try:
        run = make_engine(prepared.loss, prepared.theta, prepared.args, prepared.layout,
                          options.engine, options.workers,
                          bar if bar is not None
                          else options.progress if callable(options.progress) else None,
                          options.executor)
        f0 = run.at(prepared.theta)
        run = with_default_executor(run, options.executor, options.workers,
                                    len(prepared.plan) * len(prepared.method.offsets))
        clock = [time.perf_counter()]

        def lap() -> float:
            clock.append(time.perf_counter())
            return clock[-1] - clock[-2]

        context, noise = measure_noise(prepared, run, f0)
        timings = {"noise": lap()}
        coordinates = coordinate_derivatives(context, prepared.plan, prepared.method)
        timings["coordinates"] = lap()
        directional = directional_tests(context, prepared, continuation) \
            if options.directions else None
        timings["directions"] = lap()
        require_same(f0, run.at(prepared.theta), prepared.layout.dtype,
                     "at the start and at the end of the check")
        judged_noise = context.judged_noise(noise)
        judged = judge(prepared.layout, prepared.plan, coordinates, prepared.analytic,
                       judged_noise, directional, context.noise_notes())
        evaluations = run.evaluations + (context.complex_run.evaluations
                                         if context.complex_run else 0)
        timings["batches"] = run.batch_seconds
        report = build_report(judged, prepared.layout, prepared.plan, coordinates, judged_noise,
                              run, directional, prepared.coverage, method=prepared.method.name,
                              seed=prepared.entropy, evaluations=evaluations,
                              seconds=time.perf_counter() - started, timings=timings)
        if run.blas is not None:  # what the BLAS timing chose (engine.with_blas_timed)
            report.notes.append(run.blas.note())
        report.notes.extend(run.evaluator.notes())
        return report
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------- 1. prepare
def prepare(loss: Callable, grad, theta, options: validate.CheckOptions,
            continuation: Continuation) -> Prepared:
    """Stage 1: theta, grad, the sample and the plan, checked before any evaluation."""
    loss, grad, args = validate.bind_keywords(loss, grad, options.args, options.kwargs,
                                              is_compiled(loss))
    earlier = continuation.layout
    layout, theta_flat = (ParameterLayout.from_theta(theta, options.dtype) if earlier is None
                          else earlier.flatten_theta(theta, options.dtype))
    coverage = continuation.coverage
    if coverage is not None and earlier is not None and layout is not earlier:
        raise InputError("theta's names, shapes or dtypes changed since its sample was drawn "
                         "(a Monitor's theta must keep its structure from step to step)")
    sample, detect, directions = options.sample, options.detect, options.directions
    sampled = sample is not None or detect is not None
    if sampled and coverage is not None:
        raise InputError("give sample=/detect= or a coverage, not both")
    drawn = sampled and not isinstance(sample, (np.ndarray, list, tuple))  # not given
    own_directions = directions and continuation.directions_rng is None
    entropy = check_entropy(options.seed) if drawn or own_directions else None
    if sampled:
        coverage = sample_coordinates(layout, sample=sample, detect=detect,
                                      seed=stream(entropy, SAMPLE_STREAM)
                                      if entropy is not None and drawn else None)
    method = options.method
    relative_step = method.default_step(layout.dtype) if options.eps is None else options.eps
    require_representable_steps(theta_flat, max(relative_step, directional_relative_step(
        layout.dtype)) if directions else relative_step, layout.label)
    analytic, analytic_eps = analytic_gradient(grad, theta_flat, layout, args)
    if options.gradient_eps is not None:  # computed coarser than its arrays hold it
        analytic_eps = max(analytic_eps, options.gradient_eps)
    if coverage is not None:
        coords = coverage.coords
    elif directions:
        coords = np.empty(0, dtype=np.int64)
    else:
        coords = np.arange(layout.size, dtype=np.int64)
    # Directions move every coordinate: their differences need a dense direction's noise.
    sparse = not directions and coverage is not None \
        and coverage.coords.size + NOISE_OTHERS < theta_flat.size // 4
    return Prepared(loss, args, options, layout, theta_flat, analytic, analytic_eps, coverage,
                    entropy, Plan.for_coords(theta_flat, coords, relative_step), sparse)


def analytic_gradient(grad, theta_flat: np.ndarray, layout: ParameterLayout,
                      args: tuple) -> tuple[np.ndarray, float]:
    """The analytic gradient as a flat float64 vector, validated against theta, and the
    machine epsilon of the coarsest precision it was given in (float64 for integers).
    A callable grad is called as ``grad(theta, *args)`` on a copy of theta; if it raises,
    an InputError says so, with the user's exception as the cause."""
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


# ---------------------------------------------------------------------- 2. noise
def measure_noise(prepared: Prepared, run: Engine, f0: float) -> tuple[Context, NoiseEstimate]:
    """Stage 2: the noise σ at θ (and one step away where it matters), and the context of
    every difference; also the complex-step engine, for ``method="complex"``."""
    theta = prepared.theta
    sampled = prepared.coverage.coords if prepared.coverage is not None \
        and prepared.sparse_noise else None
    noise = _noise_at_theta(run, theta, sampled)
    require_same(f0, noise.f0, prepared.layout.dtype, "twice in a row")
    displaced = None
    if not prepared.method.complex and not prepared.sparse_noise:  # a dense probe costs O(n)
        displaced = _displaced_noise(run, theta, noise, prepared.method.probe_step(
            prepared.plan.relative_step, theta.dtype))
    complex_run = None
    if prepared.method.complex:
        complex_run = complex_engine(run, prepared.loss, theta, prepared.args, prepared.layout,
                                     noise.f0, noise.sigma)
    context = Context(run, theta, prepared.analytic, noise.sigma, noise.f0,
                      prepared.layout.dtype, prepared.analytic_eps,
                      float(np.abs(prepared.analytic).max()), complex_run=complex_run,
                      values_dtype=noise.values_dtype, displaced=displaced)
    return context, noise


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


def _noise_at_theta(run: Engine, theta: np.ndarray, coords: np.ndarray | None) -> NoiseEstimate:
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


def _displaced_noise(run: Engine, theta: np.ndarray, noise: NoiseEstimate,
                     relative_step: float) -> NoiseEstimate | None:
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
    return estimate_noise(lambda q: run.at(q, where, fresh=True), point, rng=NOISE_SEED + 2)


@contextlib.contextmanager
def _quiet_complex_casts():
    """No ComplexWarning from the probe at a complex point: a loss that casts its input to
    real (float()) is told so by the InputError that follows, in one message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", getattr(np, "exceptions", np).ComplexWarning)
        yield


def complex_engine(run: Engine, loss, theta: np.ndarray, args: tuple, layout: ParameterLayout,
                   f0: float, sigma: float) -> Engine:
    """An engine over complex θ (on ``run``'s executor, with its progress), once the loss
    has shown it carries the imaginary part.

    Along a random direction v, the complex step Im f(θ + i·h·v)/h must equal the real
    central difference (f(θ+hv) − f(θ−hv))/2h to within the latter's error: a loss
    that raises on complex input, or drops the imaginary part of some term (abs,
    real parts, comparisons, float()), cannot be checked by the complex step.
    """
    advice = "use method='central' (or 'central4') for this loss"
    complex_run = run.with_evaluator(make_evaluator(loss, theta.astype(np.complex128), args,
                                                    layout, run.name))
    direction = np.random.default_rng(NOISE_SEED).standard_normal(theta.size)
    tiny = COMPLEX.default_step(theta.dtype)
    try:
        with _quiet_complex_casts():
            value = complex_run.at(theta + 1j * tiny * direction, "at a complex point",
                                   complex_ok=True)
    except (InputError, LossError) as error:
        raise InputError(f"method='complex' needs a loss that accepts complex input, and this "
                         f"one does not ({error}); {advice}") from error
    # Re f(θ + ih·v) = f(θ) − h²·vᵀ∇²f·v/2: the same value, up to the rounding of
    # complex arithmetic, which is of the order of the loss's noise σ.
    z = analysis.noise_multiplier(1)
    if abs(value.real - f0) > z * sigma + math.sqrt(np.finfo(np.float64).eps) * abs(f0):
        raise InputError(f"method='complex': Re f(theta + ih) = {value.real!r} differs from "
                         f"f(theta) = {f0!r} by more than the loss's noise allows; {advice}")
    step = CENTRAL.default_step(theta.dtype)
    differences = []
    for multiple in (1.0, 2.0):
        with _quiet_complex_casts():
            plus = complex_run.at(theta + multiple * step * direction, complex_ok=True).real
            minus = complex_run.at(theta - multiple * step * direction, complex_ok=True).real
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
    return complex_run


# ---------------------------------------------------------------------- 4. directions
def directional_tests(context: Context, prepared: Prepared,
                      continuation: Continuation) -> DirectionalChecks:
    """Stage 4: Gaussian directional tests; if one fails (or agrees only with a kink
    allowance), localisation by group testing."""
    theta, run, layout = context.theta, context.run, prepared.layout
    count = prepared.options.directions
    rng = continuation.directions_rng
    if rng is None:
        assert prepared.entropy is not None  # drawn by prepare() for its own directions
        rng = stream(prepared.entropy, DIRECTIONS_STREAM)
    eps = prepared.options.eps if continuation.directional_step is None \
        else continuation.directional_step
    step = directional_relative_step(theta.dtype) if eps is None else eps
    tester = DirectionalTester(run, theta, context.analytic, context.noise_references, step,
                               context.values_dtype, analysis.noise_multiplier(count), context.f0,
                               context.analytic_eps, context.analytic_scale)
    results = run_directions(tester, count, rng)
    sensitivity = tester.sensitivity(results)
    # A test that agreed only once the slope jumps of kinks along it were allowed for
    # (directions.kink_allowance) cannot vouch for errors below them: localisation looks for
    # a part of θ whose own test fails, as for a failed test.
    if not any(result.failed or result.kinks for result in results):
        return DirectionalChecks(results, sensitivity)
    coordinate_step = CENTRAL.default_step(theta.dtype) if prepared.options.eps is None \
        else prepared.options.eps
    confirmed: dict[int, tuple[float, float]] = {}

    def confirm(coordinate: int) -> tuple[bool, int]:
        single = Plan.for_coords(theta, [coordinate], coordinate_step)
        before = run.evaluations
        found = coordinate_derivatives(context, single, CENTRAL)
        confirmed[coordinate] = (float(found.numerical[0]), float(found.error[0]))
        disagrees = abs(found.numerical[0] - context.analytic[coordinate]) > found.error[0]
        return bool(disagrees), run.evaluations - before

    budget = LOCALISATION_PER_HALVING * math.ceil(math.log2(max(layout.size, 2))) \
        + LOCALISATION_EXTRA
    localisation = Localiser(tester, layout, confirm, rng, budget, results).run()
    return DirectionalChecks(results, sensitivity, localisation, confirmed)


def numerical_derivatives(run: Engine, plan: Plan, theta: np.ndarray, method: Method,
                          loss, args: tuple, layout: ParameterLayout, f0: float) -> np.ndarray:
    """D_i at the plan's coordinates by ``method``, without error estimates (the classic
    recipe, and :func:`fastgrad.numerical_gradient`)."""
    if method.complex:
        sigma = float(np.finfo(layout.dtype).eps) * abs(f0)  # rounding of f at best
        return complex_step(complex_engine(run, loss, theta, args, layout, f0, sigma), plan,
                            theta)
    losses, taken = stencil(run, plan, theta, method.offsets, f0)
    return method.value(losses, taken)
