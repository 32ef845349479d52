"""Executors: where the chunks of a batch run.

A batch is ``coords`` (k) and ``values`` (k × p): out[j, q] = f(θ with θ[coords[j]] =
values[j, q]).  It is cut into chunks of rows; a chunk is self-contained (its rows of
``coords`` and ``values`` in, the same rows of ``out`` back), so that an executor can
run it wherever an :class:`~fastgrad.engine.base.Evaluator` can be rebuilt: in the
calling thread (:class:`CallingThread`), on threads sharing the evaluator
(:class:`ThreadPool`), and, by the same interface, in processes or on a cluster that
receive the evaluator once and then only chunks (:mod:`.processes`).

Every executor keeps the same promises: one workspace (a copy of θ) per worker,
whatever the number of chunks; the first failure, with its row and point, stops the
other workers after their current chunk; the progress callback is called after
each chunk, never concurrently; Ctrl-C reaches the caller once every worker stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .base import Evaluator
from .blas import limit_blas_threads

#: A chunk should take about this long: short enough for progress and Ctrl-C,
#: long enough that dispatching it (~10 µs) is noise.
CHUNK_SECONDS = 0.05
#: The smallest chunk holds this many times its executor's cost per chunk in work (5 %).
SMALLEST_CHUNK_OVERHEADS = 20

Progress = Callable[[int, int], None]


class InputModified(Exception):
    """The loss wrote into its input: the workspace no longer equals θ after a run."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


class ProgressFailed(Exception):
    """The progress callback raised ``error``: the check stops, as for a failing loss."""

    def __init__(self, error: BaseException):
        super().__init__(error)
        self.error = error


@dataclass
class ChunkFailure:
    """What went wrong in a chunk: the row and point being evaluated, and the exception."""

    row: int  # -1 when not tied to a row (InputModified, ProgressFailed, fastgrad's own)
    point: int  # index into the row's values
    error: BaseException | None  # None: the loss returned a non-finite value


@dataclass(frozen=True)
class BatchResult:
    """``out`` (NaN where not evaluated), the first failure (by row) or None, and the number
    of chunks run."""

    out: np.ndarray
    failure: ChunkFailure | None
    chunks: int


def chunk_size(rows: int, points: int, workers: int, seconds_per_evaluation: float) -> int:
    """Rows per chunk: about CHUNK_SECONDS of work, and at least 4 chunks per worker when
    there are several to balance (one worker takes the rows in as few chunks as that)."""
    by_time = int(CHUNK_SECONDS / max(points * seconds_per_evaluation, 1e-9))
    by_balance = -(-rows // (4 * workers)) if workers > 1 else rows
    return max(1, min(by_time, by_balance))


def chunk_starts(rows: int, rows_per_chunk: int, workers: int, smallest: int | None = None) -> np.ndarray:
    """The first row of each chunk of a batch of ``rows`` rows, then ``rows``.

    Chunks of ``rows_per_chunk`` rows; with ``smallest`` below it, the last ones shrink
    (guided self-scheduling, Polychronopoulos & Kuck 1987): once fewer than 2·workers full
    chunks are left, a chunk takes ⌈left / (2·workers)⌉ rows, and never fewer than
    ``smallest``.  Workers that take the next chunk as they finish end within one chunk of
    each other: one smallest chunk instead of one full one, for about
    2·workers·ln(rows_per_chunk / smallest) more chunks.
    """
    smallest = rows_per_chunk if smallest is None else max(1, min(smallest, rows_per_chunk))
    if smallest == rows_per_chunk or workers <= 1:
        return np.append(np.arange(0, rows, rows_per_chunk), rows)
    full = max(0, rows - 2 * workers * rows_per_chunk) // rows_per_chunk
    tail, start = [], full * rows_per_chunk
    while start < rows:
        tail.append(start)
        start += min(rows_per_chunk, max(smallest, -(-(rows - start) // (2 * workers))))
    head = np.arange(0, full * rows_per_chunk, rows_per_chunk)
    return np.concatenate([head, tail, [rows]]).astype(np.int64)


class Executor(ABC):
    """Runs the chunks of a batch on ``workers`` workers."""

    #: Short name shown in the report ("serial", "threads", "processes").
    name: str = ""
    #: Seconds it costs to hand a batch to the workers and get it back: a batch expected
    #: to take less runs in the calling thread instead.
    start_seconds: float = 0.0
    #: What a chunk costs beyond its evaluations (seconds of a worker): the smallest chunk
    #: holds SMALLEST_CHUNK_OVERHEADS times as much work (see :func:`chunk_starts`).
    chunk_seconds: float = 0.0

    def __init__(self, workers: int):
        self.workers = workers

    @abstractmethod
    def run(self, evaluator: Evaluator, coords: np.ndarray, values: np.ndarray, *,
            rows_per_chunk: int, progress: Progress | None = None,
            smallest: int | None = None) -> BatchResult:
        """Evaluate every row of the batch (see the module docstring), in chunks of
        ``rows_per_chunk`` rows, the last shrinking to ``smallest`` (:func:`chunk_starts`)."""


class _Batch:
    """One batch's shared state: the chunks still to take, the stop flag, the failures."""

    def __init__(self, evaluator: Evaluator, coords: np.ndarray, values: np.ndarray,
                 rows_per_chunk: int, progress: Progress | None, workers: int,
                 smallest: int | None = None):
        self.evaluator, self.coords, self.values = evaluator, coords, values
        self.progress, self.workers = progress, workers
        self.out = np.full(evaluator.out_shape(values), np.nan,
                           dtype=np.result_type(values.dtype, np.float64))
        self.bounds = chunk_starts(coords.shape[0], rows_per_chunk, workers, smallest)
        self.next_chunk = itertools.count()
        self.taken = 0
        self.stop = threading.Event()
        self.failures: list[ChunkFailure] = []
        self.lock = threading.Lock()

    def record(self, failure: ChunkFailure) -> None:
        with self.lock:
            self.failures.append(failure)
        self.stop.set()

    def work(self) -> None:
        """One worker's loop.  Any failure in it, the evaluator's or fastgrad's own, stops
        the batch and is handed to the caller: no verdict is ever made over rows left
        unevaluated.  A KeyboardInterrupt in the calling thread propagates as is."""
        try:
            self._take_chunks()
        except BaseException as error:
            if self.workers <= 1 and not isinstance(error, Exception):
                raise
            self.record(ChunkFailure(-1, 0, error))

    def _take_chunks(self) -> None:
        evaluator, values, out = self.evaluator, self.values, self.out
        workspace = evaluator.workspace()
        while not self.stop.is_set():
            index = next(self.next_chunk)
            if index >= len(self.bounds) - 1:
                break
            start, end = int(self.bounds[index]), int(self.bounds[index + 1])
            with self.lock:
                self.taken += 1
            failure: ChunkFailure | None
            try:
                evaluator.evaluate_chunk(workspace, self.coords, values, out, start, end)
            except BaseException as error:  # handed to the caller, with its coordinate
                failure = ChunkFailure(int(workspace.cursor[0]), int(workspace.cursor[1]), error)
                if not isinstance(error, Exception) and self.workers <= 1:
                    raise  # Ctrl-C in the calling thread: nothing to hand over
            else:
                failure = first_non_finite(out, start, end)
            if failure is not None:
                self.record(failure)
                return
            if self.progress is not None and not self._report(end - start, values.shape[1]):
                return
        changed = np.flatnonzero(workspace.flat != evaluator.theta)
        if changed.size:
            self.record(ChunkFailure(-1, 0, InputModified(int(changed[0]))))

    def _report(self, rows: int, points: int) -> bool:
        """Call the progress callback (never two at once); False if it raised."""
        assert self.progress is not None
        try:
            with self.lock:
                self.progress(rows, rows * points)
        except Exception as error:
            self.record(ChunkFailure(-1, 0, ProgressFailed(error)))
            return False
        except BaseException as error:  # Ctrl-C in the callback: reaches the caller as is
            if self.workers <= 1:
                raise
            self.record(ChunkFailure(-1, 0, error))
            return False
        return True

    def result(self) -> BatchResult:
        """The batch's outcome; an interrupt (KeyboardInterrupt in a worker) is raised."""
        interrupts = [f.error for f in self.failures
                      if not isinstance(f.error, (Exception, type(None)))]
        if interrupts:
            raise interrupts[0]  # e.g. KeyboardInterrupt raised by a Python loss in a worker
        first = min(self.failures, key=lambda failure: failure.row) if self.failures else None
        return BatchResult(self.out, first, self.taken)


class CallingThread(Executor):
    """Every chunk in the calling thread, one after the other."""

    name = "serial"

    def __init__(self, workers: int = 1):
        super().__init__(1)

    def run(self, evaluator, coords, values, *, rows_per_chunk, progress=None,
            smallest=None) -> BatchResult:
        batch = _Batch(evaluator, coords, values, rows_per_chunk, progress, 1)
        batch.work()
        return batch.result()


class ThreadPool(Executor):
    """One thread per worker, each with its own workspace, taking the next chunk from a
    shared counter (uneven chunks balance themselves).  BLAS is held to one thread while
    they run: the workers already fill the cores.  Suits a loss that releases the GIL
    (a compiled kernel); a Python loss holds it."""

    name = "threads"
    start_seconds = 0.01  # starting the threads and limiting BLAS: about a millisecond
    chunk_seconds = 1e-5  # taking a chunk from the counter and calling the kernel

    def run(self, evaluator, coords, values, *, rows_per_chunk, progress=None,
            smallest=None) -> BatchResult:
        batch = _Batch(evaluator, coords, values, rows_per_chunk, progress, self.workers, smallest)
        count = min(self.workers, len(batch.bounds) - 1)
        threads = [threading.Thread(target=batch.work, name=f"fastgrad-{k}", daemon=True)
                   for k in range(count)]
        with limit_blas_threads(1):
            try:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    while thread.is_alive():
                        thread.join(0.05)  # short waits keep Ctrl-C responsive
            except BaseException:
                batch.stop.set()
                with contextlib.suppress(BaseException):
                    for thread in threads:
                        thread.join()
                raise
        return batch.result()


def first_non_finite(out: np.ndarray, start: int, end: int) -> ChunkFailure | None:
    """The first (row, point) of ``out[start:end]`` with a non-finite value (any of a vector
    output's values), or None."""
    finite = np.isfinite(out[start:end])
    if finite.all():
        return None
    index = np.argwhere(~finite)[0]
    return ChunkFailure(start + int(index[0]), int(index[1]), None)
