"""Chunks as tasks on a dask.distributed cluster (:class:`DaskExecutor`, ``executor=client``).

The evaluator (loss, args, θ), pickled once per check by :func:`~.processes.parcel`, is
scattered once to every worker (``client.scatter(..., broadcast=True)``); each task sends
only its rows and a reference to the scattered evaluator, and runs
:func:`~.processes.run_chunk` there (the worker unpickles the evaluator once and keeps it).

A task costs the cluster about :data:`TASK_OVERHEAD_SECONDS` beyond its work, so a task
holds at least :data:`TASK_SECONDS` of work: consecutive chunks of the batch are joined
into one task, their number set from the seconds per row measured in the workers (the
engine's estimate, from one call in the caller, may be a cold call hundreds of times too
long).  Each worker thread has :data:`TASKS_PER_WORKER` tasks in flight, so that it never
waits for the next; results are placed by their rows as tasks finish (``as_completed``),
so that the gradient is bit-identical to the calling thread's for a deterministic loss;
the progress callback is called once per finished task.

A worker that dies (killed, out of memory) loses its tasks and dask runs them again on
the others (the evaluator is still on them): the check completes with the same numbers.
Past ``distributed.scheduler.allowed-failures`` deaths of one task, dask gives up
(``KilledWorker``) and the check stops with "a worker process died".  A failure of the
loss, or Ctrl-C in the caller, cancels the tasks in flight and submits no more; the
client and its cluster stay usable.

This module imports dask: fastgrad imports it only when it is given a ``Client``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref
from collections import deque
from concurrent.futures import CancelledError

import numpy as np
from distributed import Client, Future, KilledWorker, as_completed

from .processes import ChunkDone, ChunkFailure, ChunkTask, RemoteExecutor, parcel, run_chunk

#: Seconds of the cluster's time that one task costs beyond its work: P·T/N − w for N
#: tasks of w seconds on P workers, a LocalCluster of 2 worker processes of 1 thread
#: (TCP on localhost, dask 2026.8, Python 3.11), on the shared 2-core machine where the
#: scheduler and the client compete with the workers for the cores: 2.8 to 10.8 ms
#: (medians of 3, w = 0 to 50 ms, two runs at load 2 to 6; ``python
#: benchmarks/dask_efficiency.py``).  The upper end is taken: a task too long for its
#: overhead costs only the tail of a batch, one too short costs every task.
TASK_OVERHEAD_SECONDS = 0.011
#: The share of a task's time spent on its work: T_work / (T_work + overhead) ≥ this.
#: 0.95 leaves the rest of a 0.75 efficiency target to the tail of the last tasks and
#: the check's serial parts.
TASK_EFFICIENCY = 0.95
#: Work per task: w ≥ overhead · η/(1 − η) makes w/(w + overhead) ≥ η.
TASK_SECONDS = TASK_OVERHEAD_SECONDS * TASK_EFFICIENCY / (1.0 - TASK_EFFICIENCY)
#: One task's round trip on a warm cluster (submit, run nothing, result back): 10.7 and
#: 11.6 ms (medians of 20), measured as above.
ROUND_TRIP_SECONDS = 0.011
#: Tasks in flight per worker thread: the one it runs and the next, ready when it ends.
TASKS_PER_WORKER = 2
#: Tasks the scheduler may cancel (lost with a dying worker) and have run again, per batch,
#: before the batch fails as a worker death: dask's own allowed-failures (3) plus one.
LOST_TASKS_RUN_AGAIN = 4


def _run_timed(source: bytes, task: ChunkTask) -> tuple[ChunkDone, float]:
    """:func:`run_chunk` on a worker, the evaluator's bytes being the scattered copy there;
    with its seconds there."""
    started = time.perf_counter()
    done = run_chunk(dataclasses.replace(task, source=source))
    return done, time.perf_counter() - started


class _Pace:
    """Seconds per row of the loss in the workers, and the rows a task needs for TASK_SECONDS.

    A task's time is its work plus delays (a cold start: unpickling the evaluator, compiling
    a Numba loss; other processes on the cores), never less than its work: the least
    seconds per row seen is the closest to the work alone."""

    def __init__(self):
        self.seconds_per_row = math.inf

    def add(self, seconds: float, rows: int) -> None:
        if rows and seconds > 0.0:
            self.seconds_per_row = min(self.seconds_per_row, seconds / rows)

    def rows_per_task(self) -> int:
        """⌈TASK_SECONDS / seconds per row⌉; 1 (one chunk a task) before any measurement."""
        return max(1, math.ceil(TASK_SECONDS / self.seconds_per_row))


class DaskExecutor(RemoteExecutor):
    """The chunks of a batch as tasks of a ``distributed.Client``'s cluster (see the module
    docstring); ``workers`` is the cluster's thread count when the executor is made."""

    name = "dask"
    same_machine = False
    #: A batch of serial time S takes S/P + C on P workers (C a round trip): it pays when
    #: S > C·P/(P − 1), at most 2C.
    start_seconds = 2 * ROUND_TRIP_SECONDS
    chunk_seconds = TASK_OVERHEAD_SECONDS

    def __init__(self, client: Client):
        self.client = client
        super().__init__(sum(client.nthreads().values()))
        self._scattered: dict[str, Future] = {}  # parcel token -> the evaluator on the workers
        self._sources: dict[str, str | bytes] = {}  # parcel token -> its source, to scatter again

    def run(self, evaluator, coords, values, *, rows_per_chunk, progress=None, smallest=None):
        found = parcel(evaluator, to_file=False)
        if found.token not in self._scattered:
            self._scattered[found.token] = self.client.scatter(found.source, broadcast=True, hash=False)
            self._sources[found.token] = found.source
            weakref.finalize(evaluator, self._scattered.pop, found.token, None)  # released with it
            weakref.finalize(evaluator, self._sources.pop, found.token, None)
        return super().run(evaluator, coords, values, rows_per_chunk=rows_per_chunk, progress=progress,
                           smallest=smallest)

    def dispatch(self, tasks, starts, gathered) -> None:
        token = tasks[0].token
        waiting = deque(zip(starts, tasks, strict=True))
        pace = _Pace()
        running: dict[Future, tuple[int, ChunkTask]] = {}  # future -> (start, task)
        finished = as_completed()
        lost = 0  # tasks the cluster cancelled, run again

        def submit(start: int, task: ChunkTask) -> None:
            future = self.client.submit(_run_timed, self._scattered[token], task, pure=False)
            running[future] = (start, task)
            finished.add(future)

        def submit_more() -> None:
            while waiting and len(running) < TASKS_PER_WORKER * self.workers:
                submit(*_joined(waiting, pace.rows_per_task()))

        try:
            submit_more()
            for future in finished:
                start, task = running.pop(future)
                try:
                    done, seconds = future.result()
                except KilledWorker as error:
                    gathered.fail(ChunkFailure(-1, 0, self.died(error, gathered)))
                    return
                except CancelledError as error:
                    # Not cancelled by us (that happens only on the way out, below): the
                    # scheduler dropped it when a worker died at the wrong moment ("already
                    # forgotten"), with its inputs or the evaluator's copy.  Run it again, with
                    # the evaluator scattered again, a bounded number of times.
                    lost += 1
                    if lost > LOST_TASKS_RUN_AGAIN:
                        gathered.fail(ChunkFailure(-1, 0, self.died(error, gathered)))
                        return
                    self._scattered[token] = self.client.scatter(self._sources[token],
                                                                 broadcast=True, hash=False)
                    submit(start, task)
                    continue
                pace.add(seconds, task.coords.shape[0])
                if not gathered.take(start, done):
                    return
                submit_more()
        finally:
            if running:  # a failure, Ctrl-C: the tasks in flight are not needed
                self.client.cancel(list(running))


def _joined(waiting: deque, rows: int) -> tuple[int, ChunkTask]:
    """The next chunks of ``waiting`` (consecutive), taken until they hold ``rows`` rows, as
    one task without the evaluator's bytes; and its first row."""
    start, first = waiting.popleft()
    group = [first]
    held = first.coords.shape[0]
    while waiting and held < rows:
        group.append(waiting.popleft()[1])
        held += group[-1].coords.shape[0]
    if len(group) == 1:
        return start, dataclasses.replace(first, source=b"")
    return start, ChunkTask(first.token, b"", np.concatenate([task.coords for task in group]),
                            np.concatenate([task.values for task in group]))
