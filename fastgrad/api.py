"""The public entry points: check, assert_gradient, numerical_gradient.

Thin front ends: each validates its options (:mod:`._validation`) and runs the stages of
:mod:`.pipeline`, where a check reads top to bottom.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
from numpy.typing import DTypeLike

from . import _validation as validate
from .engine import make_engine, with_default_executor
from .engine.compiled import is_compiled
from .errors import GradientMismatch, InputError
from .parameters import Gradient, ParameterLayout, Sample, Theta
from .pipeline import numerical_derivatives, run_check
from .plan import Plan, jittered_theta, require_representable_steps
from .report import CheckReport, Report, with_jittered


def check(loss: Callable, grad: Gradient, theta: Theta, args: tuple | list = (), *,
          kwargs: Mapping | None = None, method: str = "central", eps: float | None = None,
          dtype: DTypeLike | None = None, workers: int | Callable | None = None,
          engine: str = "auto", executor: Any = None, sample: Sample | None = None,
          detect: tuple[float, float] | None = None,
          directions: int | None = None, seed: int | None = None,
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
    workers : int or map-like callable, optional
        Threads for a compiled loss (default: every core), 1 for a Python loss; processes
        with ``executor="processes"``.  A map-like callable (``workers=pool.map``, as in
        SciPy's ``approx_derivative``) runs the chunks of evaluations through it.
    engine : {"auto", "numba", "python"}
        Force the plain-Python path with "python" (e.g. to compare engines).
    executor : {None, "threads", "processes", "serial"} or Executor, optional
        Where the evaluations run: threads, a pool of worker processes kept for the life of
        this process (any loss: lambdas and closures travel with cloudpickle), the calling
        thread, or a ``concurrent.futures.Executor`` (a ProcessPoolExecutor, loky's,
        mpi4py's).  Default: threads for a compiled loss; for a Python loss, processes when
        its measured serial time exceeds the pool's cost (and it pickles), else the calling
        thread.
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
    options = validate.check_options(loss, args=args, kwargs=kwargs, method=method, eps=eps,
                                     dtype=dtype, workers=workers, engine=engine, sample=sample,
                                     detect=detect, directions=directions, seed=seed,
                                     progress=progress, executor=executor)
    if jitter is None:
        return run_check(loss, grad, theta, options)
    nearby = jittered_theta(theta, jitter, dtype)  # InputError before any evaluation
    if not callable(grad) or isinstance(grad, (np.ndarray, Mapping)):
        raise InputError("jitter= needs grad as a callable grad(theta, *args): the gradient is "
                         "evaluated again at the nearby point")
    report = run_check(loss, grad, theta, options)
    return with_jittered(report, run_check(loss, grad, nearby, options), jitter)


def assert_gradient(loss: Callable, grad: Gradient, theta: Theta, args: tuple | list = (), *,
                    strict: bool = False, **options: Any) -> Report:
    """Check like :func:`check`, and raise if the gradient is wrong.

    Raises :class:`fastgrad.GradientMismatch` (an AssertionError carrying ``.report``, with
    the report as message) on "fail", and on "warn" too with ``strict=True``.  Returns the
    report otherwise.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not fastgrad's frames
    strict = validate.flag("strict", strict)
    return require_verdict(check(loss, grad, theta, args, **options), strict)


R = TypeVar("R", bound=CheckReport)


def require_verdict(report: R, strict: bool = False) -> R:
    """Hold a report of any kind to its verdict, as every assert helper does.

    Returns ``report``; raises :class:`fastgrad.GradientMismatch` with it on "fail", and on
    "warn" too with ``strict``.
    """
    __tracebackhide__ = True
    if not report.passed or (strict and report.verdict != "pass"):
        raise GradientMismatch(report)
    return report


def numerical_gradient(loss: Callable, theta: Theta, args: tuple | list = (), *,
                       kwargs: Mapping | None = None, method: str = "central",
                       eps: float | None = None, dtype: DTypeLike | None = None,
                       workers: int | Callable | None = None, engine: str = "auto",
                       executor: Any = None) -> np.ndarray | dict[str, np.ndarray]:
    """The numerical gradient in theta's structure, by ``method`` (see :func:`check`).

    "central" is (f(θ+h·e_i) − f(θ−h·e_i)) / 2h for every coordinate, as in the
    classic recipe; no error estimate or second step is involved.  ``args`` and ``kwargs``
    reach the loss as in :func:`check`, and so do ``workers`` and ``executor``.
    """
    options = validate.check_options(loss, args=args, kwargs=kwargs, method=method, eps=eps,
                                     dtype=dtype, workers=workers, engine=engine,
                                     executor=executor)
    loss, _, bound = validate.bind_keywords(loss, None, options.args, options.kwargs,
                                            is_compiled(loss))
    layout, theta_flat = ParameterLayout.from_theta(theta, options.dtype)
    chosen = options.method
    relative_step = chosen.default_step(layout.dtype) if options.eps is None else options.eps
    require_representable_steps(theta_flat, relative_step, layout.label)
    run = make_engine(loss, theta_flat, bound, layout, engine, options.workers,
                      executor=options.executor)
    f0 = run.at(theta_flat)  # a clear error before the kernels run, if the loss is unusable
    run = with_default_executor(run, options.executor, options.workers,
                                layout.size * len(chosen.offsets))
    plan = Plan.for_coords(theta_flat, np.arange(layout.size, dtype=np.int64), relative_step)
    return layout.structured(numerical_derivatives(run, plan, theta_flat, chosen, loss, bound,
                                                   layout, f0))
