"""Engines: evaluate the loss at perturbed copies of θ, fast and safely.

An engine is an evaluator (how the loss is evaluated: :mod:`.compiled`, :mod:`.python`)
times an executor (where chunks of evaluations run: :mod:`.executors`).
:func:`make_engine` chooses the evaluator (compiled for a Numba dispatcher, Python
otherwise) and the executor (threads for a compiled loss, the calling thread for a
Python one; for a Python loss whose serial time, measured, exceeds the cost of a pool
of processes, :func:`default_executor` moves it onto :mod:`.processes`' pool);
:class:`Engine` validates single evaluations, runs batches of
perturbations on its executor, counts evaluations, and turns a loss failure into a
:class:`~fastgrad.errors.LossError` that names the coordinate and the step.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import math
import time

import numpy as np
from numba.core.errors import NumbaError

from .. import _validation as validate
from ..errors import GradientCheckError, InputError, LossError, describe
from ..parameters import ParameterLayout
from .base import Evaluator, Workspace, WrongReturn, as_scalar
from .blas import BlasTiming, limit_blas_threads, time_blas_threads
from .compiled import CompiledEvaluator, available_cores, is_compiled
from .executors import (
    SMALLEST_CHUNK_OVERHEADS,
    CallingThread,
    Executor,
    InputModified,
    Progress,
    ProgressFailed,
    ThreadPool,
    chunk_size,
)
from .processes import (
    BATCH_SECONDS,
    POOL_START_SECONDS,
    FuturesExecutor,
    MapExecutor,
    ProcessPool,
    RemoteExecutor,
    WorkerDied,
    parcel,
    picklable,
    workers_skip_main,
)
from .python import PythonEvaluator

__all__ = ["ENGINES", "CallingThread", "Engine", "Evaluator", "Executor", "FuturesExecutor",
           "MapExecutor", "ProcessPool", "ThreadPool", "Workspace", "available_cores",
           "default_executor", "make_engine", "make_evaluator"]

ENGINES = ("auto", "numba", "python")
_CALLING_THREAD = CallingThread()


def make_engine(loss, theta: np.ndarray, args: tuple, layout: ParameterLayout,
                engine: str = "auto", workers: int | None = None,
                progress: Progress | None = None, executor=None) -> Engine:
    """The engine for ``loss``: compiled for a Numba dispatcher, Python otherwise, on the
    ``executor`` asked for (see :func:`executor_for`; default: every core's threads for a
    compiled loss, the calling thread for a Python one until :func:`default_executor` knows
    its time); ``progress(coordinates, evaluations)`` is called after each chunk."""
    evaluator = make_evaluator(loss, theta, args, layout, engine)
    workers = None if workers is None else validate.positive_int("workers", workers)
    return Engine(evaluator, layout, executor_for(executor, evaluator, workers), progress)


def executor_for(requested, evaluator: Evaluator, workers: int | None) -> Executor:
    """The executor named by ``requested`` (validated): "serial", "threads" or "processes"
    on ``workers`` workers (default: every core), an Executor as is, a
    ``concurrent.futures.Executor``, a ``distributed.Client`` or a map-like callable
    wrapped; None: the default for an unknown time (:func:`default_executor`).  One that
    runs in other processes pickles the evaluator here: InputError before any evaluation
    if it cannot."""
    if requested is None:
        return default_executor(evaluator, workers, None)
    count = available_cores() if workers is None else workers
    chosen: Executor
    if requested == "serial":
        chosen = CallingThread()
    elif requested == "threads":
        chosen = ThreadPool(count) if count > 1 else CallingThread()
    elif requested == "processes":
        chosen = ProcessPool(count)
    elif isinstance(requested, Executor):
        chosen = requested
    elif isinstance(requested, futures.Executor):
        chosen = FuturesExecutor(requested)
    elif validate.is_dask_client(requested):
        from .distributed import DaskExecutor  # imports dask: only when given a Client
        chosen = DaskExecutor(requested)
    else:
        chosen = MapExecutor(requested)
    if isinstance(chosen, RemoteExecutor):
        parcel(evaluator, chosen.same_machine)
    return chosen


def default_executor(evaluator: Evaluator, workers: int | None,
                     serial_seconds: float | None) -> Executor:
    """Where a check's batches run when the user did not say: a compiled loss (or a given
    ``workers``) on threads, as many as workers (default: every core); a Python loss on
    :class:`ProcessPool` over every core when :func:`processes_pay` for its estimated
    ``serial_seconds`` (None: unknown), it pickles and new workers would not run the user's
    script again (:func:`~.processes.workers_skip_main`), else in the calling thread.  An
    evaluator with its own threads (:attr:`~.base.Evaluator.own_threads`) runs in the calling
    thread."""
    if evaluator.own_threads:
        return _CALLING_THREAD
    if isinstance(evaluator, CompiledEvaluator) or workers is not None:
        count = evaluator.default_workers if workers is None else workers
        return ThreadPool(count) if count > 1 else CallingThread()
    cores = available_cores()
    if serial_seconds is not None and processes_pay(serial_seconds, cores) \
            and workers_skip_main() and picklable(evaluator):
        return ProcessPool(cores)
    return _CALLING_THREAD


def processes_pay(serial_seconds: float, workers: int) -> bool:
    """Whether ``workers`` processes beat the calling thread on ``serial_seconds`` of work:
    S/P + C < S, with C the pool's start and one batch's overhead.  C counts the start even
    when the pool is warm, so that the choice does not depend on what ran before (a loss
    with side effects, such as counting its calls, sees them in the caller unless its work
    exceeds a cold start).  (Each chunk's own overhead, tens of µs for ~CHUNK_SECONDS of
    work, is under 1%.)"""
    cost = BATCH_SECONDS + POOL_START_SECONDS
    return workers > 1 and serial_seconds * (1.0 - 1.0 / workers) > cost


def with_default_executor(run: Engine, requested, workers: int | None, evaluations: int) -> Engine:
    """``run`` on :func:`default_executor` for ``evaluations`` more evaluations at the time
    of its last one, when the user chose no executor (``requested`` None); else ``run``.
    Either way, on the calling thread, with BLAS's threads as :func:`with_blas_timed` finds."""
    if requested is not None:
        return with_blas_timed(run, evaluations)
    moved = run.on(default_executor(run.evaluator, workers, serial_seconds(run, evaluations)))
    return with_blas_timed(moved, evaluations)


#: Calls of the loss at θ that confirm a first call's time before processes are chosen on it.
CONFIRMING_CALLS = 2


def serial_seconds(run: Engine, evaluations: int) -> float:
    """The time of ``evaluations`` more evaluations on the calling thread: the last one's
    time, times ``evaluations``.  When that would pay for processes, the fastest of it and
    CONFIRMING_CALLS more calls at θ: a first call (cold caches, imports) or a busy moment
    of the machine overstates a loss's time, and the choice should not follow it."""
    seconds = run.seconds_per_evaluation
    if isinstance(run.evaluator, CompiledEvaluator) or run.evaluator.own_threads \
            or not processes_pay(seconds * evaluations, available_cores()):
        return seconds * evaluations
    for _ in range(CONFIRMING_CALLS):
        run.at_changed(_NOWHERE, np.empty(0), "while timing the loss")
        seconds = min(seconds, run.seconds_per_evaluation)
    return seconds * evaluations


_NOWHERE = np.empty(0, dtype=np.int64)  # at_changed with no entry changed: f(θ)


def with_blas_timed(run: Engine, evaluations: int) -> Engine:
    """``run``, keeping for its ``evaluations`` more evaluations the BLAS threads that
    :func:`~.blas.time_blas_threads` finds faster for this loss (timed at θ), when it runs
    on the calling thread; several workers hold BLAS to one thread each."""
    if isinstance(run.executor, CallingThread) and run.blas is None \
            and not run.evaluator.own_threads:
        run.blas = time_blas_threads(
            lambda: run.at_changed(_NOWHERE, np.empty(0), "while timing BLAS's threads"), evaluations)
    return run


def make_evaluator(loss, theta: np.ndarray, args: tuple, layout: ParameterLayout,
                   engine: str = "auto") -> Evaluator:
    """How ``loss`` is evaluated: compiled chunk kernels for a Numba dispatcher (unless
    ``engine="python"``), the loss's own evaluator when it offers one
    (``loss.fastgrad_evaluator(theta, args, layout)``, e.g. a framework's batched calls:
    :mod:`fastgrad.torch`, :mod:`fastgrad.jax`) and ``engine="auto"``, Python calls otherwise."""
    validate.callable_of("loss", loss)
    engine = validate.engine(engine)
    offered = getattr(loss, "fastgrad_evaluator", None)
    if engine == "auto" and offered is not None:
        return offered(theta, args, layout)
    if engine == "numba" and not is_compiled(loss):
        raise InputError("engine='numba' needs a Numba-compiled loss (an @njit function)")
    if engine in ("auto", "numba") and is_compiled(loss):
        return CompiledEvaluator(loss, theta, args, layout)
    return PythonEvaluator(loss, theta, args, layout, receives_flat=is_compiled(loss))


class Engine:
    """Runs an evaluator on an executor; counts evaluations and times them."""

    def __init__(self, evaluator: Evaluator, layout: ParameterLayout, executor: Executor,
                 progress: Progress | None = None):
        self.evaluator = evaluator
        self.layout = layout
        self.executor = executor
        self.progress = progress
        self.evaluations = 0
        self.chunks = 0  # chunks run by the executor (the calling thread's included)
        self.batch_seconds = 0.0  # wall time inside batches (perturbed)
        self.seconds_per_evaluation = 1e-3  # refined by every call to at()
        self._single: Workspace | None = None  # for at_changed, made on first use
        self.blas: BlasTiming | None = None  # BLAS's threads as timed (None: as found)

    @property
    def workers(self) -> int:
        return self.executor.workers

    def with_evaluator(self, evaluator: Evaluator) -> Engine:
        """An engine over another evaluator (a complex θ) on the same executor, progress and
        BLAS threads."""
        other = Engine(evaluator, self.layout, self.executor, self.progress)
        other.blas = self.blas
        return other

    def on(self, executor: Executor) -> Engine:
        """This engine, its counts and its timings, on another executor."""
        moved = Engine(self.evaluator, self.layout, executor, self.progress)
        moved.evaluations, moved.chunks = self.evaluations, self.chunks
        moved.batch_seconds, moved.seconds_per_evaluation = self.batch_seconds, self.seconds_per_evaluation
        return moved

    def blas_held(self) -> contextlib.AbstractContextManager:
        """BLAS on the threads the timing chose, while evaluating (nothing to do if none)."""
        chosen = self.blas
        if chosen is None or chosen.threads == chosen.found:
            return contextlib.nullcontext()
        return limit_blas_threads(chosen.threads)

    @property
    def name(self) -> str:
        return self.evaluator.name

    def at(self, point: np.ndarray, where: str = "at theta", complex_ok: bool = False,
           fresh: bool = False):
        """f(point) as a float (or a complex with ``complex_ok``); the loss must return a
        finite scalar and leave its input alone: it gets a copy, compared afterwards.

        ``fresh=True``: ``point`` is a new array that the caller no longer needs intact
        (a point along a direction); it is handed over as is, neither copied nor compared,
        saving two passes over n (writes by the loss are caught at θ and in the chunks).
        """
        started = time.perf_counter()
        try:
            with self.blas_held():
                value, given = self.evaluator.at(point, copy=not fresh)
        except Exception as error:
            raise _call_error(error, where, self.layout) from error
        self._counted(started)
        if fresh:
            return as_scalar(value, where, complex_ok)
        changed = np.flatnonzero(given != np.asarray(point, dtype=given.dtype))
        if changed.size:
            raise LossError(f"the loss modifies its input: {self.layout.label(int(changed[0]))} "
                            f"changed {where} (copy theta before writing to it)")
        return as_scalar(value, where, complex_ok)

    def at_changed(self, indices: np.ndarray, values: np.ndarray, where: str) -> float:
        """f(θ with θ[indices] = values) as a float, in a private copy of θ kept for such
        calls: O(len(indices)) per call besides the loss, where :meth:`at` is O(n).

        Only the changed entries are checked for writes by the loss (:meth:`at` at θ,
        and the chunk runs, check all of them).
        """
        if self._single is None:
            self._single = self.evaluator.workspace()
        started = time.perf_counter()
        try:
            with self.blas_held():
                value, intact = self.evaluator.at_changed(self._single, indices, values)
        except Exception as error:
            raise _call_error(error, where, self.layout) from error
        self._counted(started)
        if not intact:
            raise LossError(f"the loss modifies its input {where} (copy theta before writing to it)")
        return as_scalar(value, where)

    def _counted(self, started: float) -> None:
        """Count one evaluation begun at ``started`` (perf_counter) and keep its time."""
        self.seconds_per_evaluation = time.perf_counter() - started
        self.evaluations += 1

    def perturbed(self, coords: np.ndarray, values: np.ndarray) -> np.ndarray:
        """out[j, q] = f(θ with θ[coords[j]] = values[j, q]), all finite, as float64; for a
        vector evaluator (:mod:`.vector`), out[j, q, :] holds the output's m values."""
        rows, points = values.shape
        if rows == 0:
            return np.empty(self.evaluator.out_shape(values))
        executor = self.executor
        if rows * points * self.seconds_per_evaluation < executor.start_seconds \
                or min(executor.workers, rows) <= 1:
            executor = _CALLING_THREAD  # starting workers would cost more than they save
        workers = executor.workers
        size = chunk_size(rows, points, workers, self.seconds_per_evaluation)
        smallest = math.ceil(SMALLEST_CHUNK_OVERHEADS * executor.chunk_seconds
                             / max(points * self.seconds_per_evaluation, 1e-9))
        started = time.perf_counter()
        try:
            with self.blas_held():
                batch = executor.run(self.evaluator, coords, values, rows_per_chunk=size,
                                     progress=self.progress, smallest=smallest)
        except NumbaError as error:
            raise InputError(compile_failure(error, self.layout)) from error
        out, failure = batch.out, batch.failure
        self.chunks += batch.chunks
        self.batch_seconds += time.perf_counter() - started
        # an evaluation is done when all its values are (one value for a scalar loss)
        done = int(np.isfinite(out.reshape(rows, points, -1)).all(axis=2).sum())
        self.evaluations += done
        if done:
            self.seconds_per_evaluation = (time.perf_counter() - started) * workers / done
        if failure is not None:
            self._raise(failure, coords, values)
        if done < rows * points:  # every failure is reported above: this would be fastgrad's bug
            raise RuntimeError(f"fastgrad: {rows * points - done} of {rows * points} evaluations "
                               "were not made and no failure was reported")
        return out

    def _raise(self, failure, coords, values) -> None:
        error = failure.error
        if isinstance(error, InputModified):
            raise LossError(f"the loss modifies its input: {self.layout.label(error.index)} "
                            "changed during the check (copy theta before writing to it)")
        if isinstance(error, ProgressFailed):
            raise GradientCheckError(f"the progress callback raised {type(error.error).__name__}: "
                                     f"{describe(error.error)}; the check stopped") from error.error
        if isinstance(error, WorkerDied):
            raise LossError(f"a worker process died while evaluating the loss at coordinates "
                            f"{self.layout.label(int(coords[error.first]))} to "
                            f"{self.layout.label(int(coords[error.last]))} ({error.cause}); the "
                            "check stopped") from error
        if failure.row < 0:
            raise error  # not tied to an evaluation: fastgrad's own failure, as it was
        row = failure.row
        coordinate, step = self.evaluator.row_place(self.layout, int(coords[row]),
                                                    float(values[row, failure.point]))
        where = f"at coordinate {coordinate} with step {step:+.3e}"
        if failure.error is None:
            raise LossError(f"the loss returned a non-finite value {where}",
                            coordinate=coordinate, step=step)
        if isinstance(error, WrongReturn):
            raise WrongReturn(f"{error} {where}", coordinate=coordinate, step=step) from None
        raise LossError(f"the loss raised {type(error).__name__} {where}: {describe(error)}",
                        coordinate=coordinate, step=step) from error


def _call_error(error: Exception, where: str, layout: ParameterLayout) -> Exception:
    """fastgrad's exception for one the loss raised in a single evaluation."""
    if isinstance(error, NumbaError):
        return InputError(compile_failure(error, layout))
    if isinstance(error, ImportError) and "scipy" in str(error).lower():
        return LossError(f"the loss raised ImportError {where}: {describe(error)}: install "
                         "scipy (Numba's @ and np.dot need it)")
    return LossError(f"the loss raised {type(error).__name__} {where}: {describe(error)}")


def compile_failure(error: BaseException, layout: ParameterLayout) -> str:
    """One or two lines on why Numba could not compile the loss (its full text stays the
    exception's cause): the line of Numba's message that names the problem, and what a
    compiled loss receives."""
    lines = [line.strip() for line in describe(error).splitlines() if line.strip()]
    reason = next((line for line in lines[1:] if not line.startswith(("During:", "File "))),
                  lines[0])
    receives = ("one flat float64 vector (theta's groups concatenated in order, each in C "
                "order), not a dict" if layout.is_dict
                else f"theta as one {layout.dtype} array of shape {layout.array_shape}")
    return (f"the compiled loss failed to compile for the arguments it receives: "
            f"{reason[:200]}\n(a compiled loss receives {receives}, then the args; Numba's full "
            "message is this error's cause)")
