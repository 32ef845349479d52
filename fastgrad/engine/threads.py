"""The thread executor: chunks of rows handed to one workspace per worker.

Each worker owns a copy of θ (extra memory: workers · n values, however many
chunks there are) and takes the next chunk from a shared counter, so uneven
chunks balance themselves.  Between chunks a worker reports progress and looks
at a stop flag: an error in one worker, or Ctrl-C in the caller, stops the others
after their current chunk.  With one worker everything runs in the calling
thread.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .base import Evaluator
from .blas import limit_blas_threads

#: A chunk should take about this long: short enough for progress and Ctrl-C,
#: long enough that dispatching it (~10 µs) is noise.
CHUNK_SECONDS = 0.05


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


def chunk_size(rows: int, points: int, workers: int, seconds_per_evaluation: float) -> int:
    """Rows per chunk: about CHUNK_SECONDS of work, and at least 4 chunks per worker when
    there are several to balance (one worker takes the rows in as few chunks as that)."""
    by_time = int(CHUNK_SECONDS / max(points * seconds_per_evaluation, 1e-9))
    by_balance = -(-rows // (4 * workers)) if workers > 1 else rows
    return max(1, min(by_time, by_balance))


def run_chunks(evaluator: Evaluator, coords: np.ndarray, values: np.ndarray, *, workers: int,
               rows_per_chunk: int, progress: Callable[[int, int], None] | None = None
               ) -> tuple[np.ndarray, ChunkFailure | None]:
    """Evaluate every row; return ``out`` (float64, values' shape) and the first failure.

    On a failure the other workers stop after their current chunk, and the rows
    not reached are left NaN.  KeyboardInterrupt in the caller propagates once every
    worker has stopped.
    """
    rows = coords.shape[0]
    out = np.full(values.shape, np.nan, dtype=np.result_type(values.dtype, np.float64))
    starts = range(0, rows, rows_per_chunk)
    next_chunk = itertools.count()
    stop = threading.Event()
    failures: list[ChunkFailure] = []
    report_lock = threading.Lock()

    def record(failure: ChunkFailure) -> None:
        with report_lock:
            failures.append(failure)
        stop.set()

    def evaluate_chunks() -> None:
        workspace = evaluator.workspace()
        while not stop.is_set():
            index = next(next_chunk)
            if index >= len(starts):
                break
            start = starts[index]
            end = min(start + rows_per_chunk, rows)
            try:
                evaluator.evaluate_chunk(workspace, coords, values, out, start, end)
            except BaseException as error:  # handed to the caller, with its coordinate
                failure = ChunkFailure(int(workspace.cursor[0]), int(workspace.cursor[1]), error)
                if not isinstance(error, Exception) and workers <= 1:
                    raise  # Ctrl-C in the calling thread: nothing to hand over
            else:
                failure = _first_non_finite(out, start, end)
            if failure is not None:
                record(failure)
                return
            if progress is not None:
                try:
                    with report_lock:
                        progress(end - start, (end - start) * values.shape[1])
                except Exception as error:
                    record(ChunkFailure(-1, 0, ProgressFailed(error)))
                    return
                except BaseException as error:  # Ctrl-C in the callback: reaches the caller as is
                    if workers <= 1:
                        raise
                    record(ChunkFailure(-1, 0, error))
                    return
        changed = np.flatnonzero(workspace.flat != evaluator.theta)
        if changed.size:
            record(ChunkFailure(-1, 0, InputModified(int(changed[0]))))

    def work() -> None:
        """Any failure in a worker, the evaluator's or fastgrad's own, stops the run and is
        handed to the caller: no verdict is ever made over rows left unevaluated."""
        try:
            evaluate_chunks()
        except BaseException as error:
            if workers <= 1 and not isinstance(error, Exception):
                raise
            record(ChunkFailure(-1, 0, error))

    if workers <= 1:
        work()
    else:
        threads = [threading.Thread(target=work, name=f"fastgrad-{k}", daemon=True)
                   for k in range(min(workers, len(starts)))]
        # One BLAS thread per worker: the workers already fill the cores.
        with limit_blas_threads(1):
            try:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    while thread.is_alive():
                        thread.join(0.05)  # short waits keep Ctrl-C responsive
            except BaseException:
                stop.set()
                with contextlib.suppress(BaseException):
                    for thread in threads:
                        thread.join()
                raise
    interrupts = [f.error for f in failures if not isinstance(f.error, (Exception, type(None)))]
    if interrupts:
        raise interrupts[0]  # e.g. KeyboardInterrupt raised by a Python loss in a worker
    first = min(failures, key=lambda failure: failure.row) if failures else None
    return out, first


def _first_non_finite(out: np.ndarray, start: int, end: int) -> ChunkFailure | None:
    finite = np.isfinite(out[start:end])
    if finite.all():
        return None
    row, point = np.argwhere(~finite)[0]
    return ChunkFailure(start + int(row), int(point), None)
