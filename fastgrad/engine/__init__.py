"""Engines: evaluate the loss at perturbed copies of θ, fast and safely.

An engine is an evaluator (how the loss is evaluated: :mod:`.compiled`, :mod:`.python`)
times an executor (where chunks of evaluations run: :mod:`.executors`).
:func:`make_engine` chooses the evaluator (compiled for a Numba dispatcher, Python
otherwise) and the executor (threads for a compiled loss, the calling thread for a
Python one); :class:`Engine` validates single evaluations, runs batches of
perturbations on its executor, counts evaluations, and turns a loss failure into a
:class:`~fastgrad.errors.LossError` that names the coordinate and the step.
"""

from __future__ import annotations

import time

import numpy as np
from numba.core.errors import NumbaError

from .. import _validation as validate
from ..errors import GradientCheckError, InputError, LossError, describe
from ..parameters import ParameterLayout
from .base import Evaluator, Workspace, WrongReturn, as_scalar
from .compiled import CompiledEvaluator, available_cores, is_compiled
from .executors import (
    CallingThread,
    Executor,
    InputModified,
    Progress,
    ProgressFailed,
    ThreadPool,
    chunk_size,
)
from .python import PythonEvaluator

__all__ = ["ENGINES", "CallingThread", "Engine", "Evaluator", "Executor", "ThreadPool",
           "Workspace", "available_cores", "make_engine", "make_evaluator"]

ENGINES = ("auto", "numba", "python")
#: A batch expected to take less than this runs in the calling thread: starting the
#: workers and limiting BLAS costs about a millisecond.
SERIAL_BELOW_SECONDS = 0.01
_CALLING_THREAD = CallingThread()


def make_engine(loss, theta: np.ndarray, args: tuple, layout: ParameterLayout,
                engine: str = "auto", workers: int | None = None,
                progress: Progress | None = None) -> Engine:
    """The engine for ``loss``: compiled for a Numba dispatcher, Python otherwise, on
    ``workers`` threads (default: every core for a compiled loss, the calling thread for
    a Python one); ``progress(coordinates, evaluations)`` is called after each chunk."""
    evaluator = make_evaluator(loss, theta, args, layout, engine)
    workers = evaluator.default_workers if workers is None \
        else validate.positive_int("workers", workers)
    executor: Executor = ThreadPool(workers) if workers > 1 else CallingThread()
    return Engine(evaluator, layout, executor, progress)


def make_evaluator(loss, theta: np.ndarray, args: tuple, layout: ParameterLayout,
                   engine: str = "auto") -> Evaluator:
    """How ``loss`` is evaluated: compiled chunk kernels for a Numba dispatcher (unless
    ``engine="python"``), Python calls otherwise."""
    validate.callable_of("loss", loss)
    engine = validate.engine(engine)
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

    @property
    def workers(self) -> int:
        return self.executor.workers

    def with_evaluator(self, evaluator: Evaluator) -> Engine:
        """An engine over another evaluator (a complex θ) on the same executor and progress."""
        return Engine(evaluator, self.layout, self.executor, self.progress)

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
        """out[j, q] = f(θ with θ[coords[j]] = values[j, q]), all finite, as float64."""
        rows, points = values.shape
        if rows == 0:
            return np.empty(values.shape)
        executor = self.executor
        if rows * points * self.seconds_per_evaluation < SERIAL_BELOW_SECONDS \
                or min(executor.workers, rows) <= 1:
            executor = _CALLING_THREAD  # starting workers would cost more than they save
        workers = executor.workers
        size = chunk_size(rows, points, workers, self.seconds_per_evaluation)
        started = time.perf_counter()
        try:
            batch = executor.run(self.evaluator, coords, values, rows_per_chunk=size,
                                 progress=self.progress)
        except NumbaError as error:
            raise InputError(compile_failure(error, self.layout)) from error
        out, failure = batch.out, batch.failure
        self.chunks += batch.chunks
        self.batch_seconds += time.perf_counter() - started
        done = int(np.isfinite(out).sum())
        self.evaluations += done
        if done:
            self.seconds_per_evaluation = (time.perf_counter() - started) * workers / done
        if failure is not None:
            self._raise(failure, coords, values)
        if done < out.size:  # every failure is reported above: this would be fastgrad's bug
            raise RuntimeError(f"fastgrad: {out.size - done} of {out.size} evaluations were not "
                               "made and no failure was reported")
        return out

    def _raise(self, failure, coords, values) -> None:
        error = failure.error
        if isinstance(error, InputModified):
            raise LossError(f"the loss modifies its input: {self.layout.label(error.index)} "
                            "changed during the check (copy theta before writing to it)")
        if isinstance(error, ProgressFailed):
            raise GradientCheckError(f"the progress callback raised {type(error.error).__name__}: "
                                     f"{describe(error.error)}; the check stopped") from error.error
        if failure.row < 0:
            raise error  # not tied to an evaluation: fastgrad's own failure, as it was
        row = failure.row
        coordinate = self.layout.label(int(coords[row]))
        point = failure.point
        step = float(values[row, point]) - float(self.evaluator.theta[coords[row]])
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
