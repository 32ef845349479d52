"""Engines: evaluate the loss at perturbed copies of θ, fast and safely.

:func:`make_engine` chooses the evaluator (compiled for a Numba dispatcher,
Python otherwise); :class:`Engine` validates single evaluations, runs batches
of perturbations on the thread executor, counts evaluations, and turns a loss
failure into a :class:`~fastgrad.errors.LossError` that names the coordinate and
the step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
from numba.core.errors import NumbaError

from ..errors import GradientCheckError, InputError, LossError, describe
from ..parameters import ParameterLayout
from .base import Evaluator, Workspace, WrongReturn, as_scalar
from .compiled import CompiledEvaluator, available_cores, is_compiled
from .python import PythonEvaluator
from .threads import InputModified, ProgressFailed, chunk_size, run_chunks

__all__ = ["ENGINES", "Engine", "Evaluator", "Workspace", "available_cores", "make_engine"]

ENGINES = ("auto", "numba", "python")
#: A batch expected to take less than this runs in the calling thread: starting the
#: workers and limiting BLAS costs about a millisecond.
SERIAL_BELOW_SECONDS = 0.01


def make_engine(loss, theta: np.ndarray, args: tuple, layout: ParameterLayout,
                engine: str = "auto", workers: int | None = None) -> Engine:
    """The engine for ``loss``: compiled for a Numba dispatcher, Python otherwise."""
    if not callable(loss):
        raise InputError(f"loss must be callable, got {type(loss).__name__}")
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "numba" and not is_compiled(loss):
        raise InputError("engine='numba' needs a Numba-compiled loss (an @njit function)")
    if engine in ("auto", "numba") and is_compiled(loss):
        evaluator: Evaluator = CompiledEvaluator(loss, theta, args, layout)
    else:
        evaluator = PythonEvaluator(loss, theta, args, layout, receives_flat=is_compiled(loss))
    if workers is None:
        workers = evaluator.default_workers
    elif isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    return Engine(evaluator, layout, int(workers))


class Engine:
    """Runs an evaluator; counts evaluations and times them."""

    def __init__(self, evaluator: Evaluator, layout: ParameterLayout, workers: int):
        self.evaluator = evaluator
        self.layout = layout
        self.workers = workers
        self.evaluations = 0
        self.seconds_per_evaluation = 1e-3  # refined by every call to at()
        self.progress: Callable[[int, int], None] | None = None
        self._single: Workspace | None = None  # for at_changed, made on first use

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
        workers = max(1, min(self.workers, rows))
        if rows * points * self.seconds_per_evaluation < SERIAL_BELOW_SECONDS:
            workers = 1  # starting threads and limiting BLAS would cost more than they save
        size = chunk_size(rows, points, workers, self.seconds_per_evaluation)
        started = time.perf_counter()
        try:
            out, failure = run_chunks(self.evaluator, coords, values, workers=workers,
                                      rows_per_chunk=size, progress=self.progress)
        except NumbaError as error:
            raise InputError(compile_failure(error, self.layout)) from error
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
