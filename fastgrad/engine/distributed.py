"""Chunks as tasks on a dask.distributed cluster (:class:`DaskExecutor`, ``executor=client``).

The evaluator (loss, args, θ), pickled once per check by :func:`~.processes.parcel`, is
scattered once to every worker (``client.scatter(..., broadcast=True)``); each task sends
only its chunk's rows and a reference to the scattered evaluator, and runs
:func:`~.processes.run_chunk` there (the worker unpickles the evaluator once and keeps it).
Results are placed by their rows as tasks finish (``as_completed``), so that the gradient is
bit-identical to the calling thread's for a deterministic loss; the progress callback is
called once per finished task.

A worker that dies (killed, out of memory) loses its tasks and dask runs them again on
the others (the evaluator is still on them): the check completes with the same numbers.
Past ``distributed.scheduler.allowed-failures`` deaths of one task, dask gives up
(``KilledWorker``) and the check stops with "a worker process died".  A failure of the
loss, or Ctrl-C in the caller, cancels the tasks not finished; the client and its cluster
stay usable.

This module imports dask: fastgrad imports it only when it is given a ``Client``.
"""

from __future__ import annotations

import dataclasses
import weakref

from distributed import Client, Future, KilledWorker, as_completed

from .processes import ChunkDone, ChunkFailure, ChunkTask, RemoteExecutor, parcel, run_chunk

#: Seconds of the cluster's time that one task costs beyond its work: P·T/N − w for N
#: tasks of w seconds on P workers, a LocalCluster of 2 worker processes of 1 thread
#: (TCP on localhost, dask 2026.8, Python 3.11), on the shared 2-core machine where the
#: scheduler and the client compete with the workers for the cores: 2.8 to 8.6 ms
#: (w = 0 to 50 ms; ``python benchmarks/dask_overhead.py``).  The upper end is taken.
TASK_OVERHEAD_SECONDS = 0.008
#: The share of a task's time spent on its work: T_work / (T_work + overhead) ≥ this.
#: 0.95 leaves the rest of a 0.75 efficiency target to the tail of the last tasks and
#: the check's serial parts.
TASK_EFFICIENCY = 0.95
#: Work per task: w ≥ overhead · η/(1 − η) makes w/(w + overhead) ≥ η.
TASK_SECONDS = TASK_OVERHEAD_SECONDS * TASK_EFFICIENCY / (1.0 - TASK_EFFICIENCY)
#: One task's round trip on a warm cluster (submit, run nothing, result back): 10.7 ms
#: median, measured as above.
ROUND_TRIP_SECONDS = 0.011


def _run_scattered(source: bytes, task: ChunkTask) -> ChunkDone:
    """:func:`run_chunk` on a worker, the evaluator's bytes being the scattered copy there."""
    return run_chunk(dataclasses.replace(task, source=source))


class DaskExecutor(RemoteExecutor):
    """The chunks of a batch as tasks of a ``distributed.Client``'s cluster (see the module
    docstring); ``workers`` is the cluster's thread count when the executor is made."""

    name = "dask"
    same_machine = False
    #: A batch of serial time S takes S/P + C on P workers (C a round trip): it pays when
    #: S > C·P/(P − 1), at most 2C.
    start_seconds = 2 * ROUND_TRIP_SECONDS
    #: Seconds of work per task, at least (the engine makes chunks of at least this much).
    task_seconds = TASK_SECONDS

    def __init__(self, client: Client):
        self.client = client
        super().__init__(sum(client.nthreads().values()))
        self._scattered: dict[str, Future] = {}  # parcel token -> the evaluator on the workers

    def run(self, evaluator, coords, values, *, rows_per_chunk, progress=None):
        token = parcel(evaluator, to_file=False).token
        if token not in self._scattered:
            self._scattered[token] = self.client.scatter(
                parcel(evaluator, to_file=False).source, broadcast=True, hash=False)
            weakref.finalize(evaluator, self._scattered.pop, token, None)  # released with it
        return super().run(evaluator, coords, values, rows_per_chunk=rows_per_chunk, progress=progress)

    def dispatch(self, tasks, starts, gathered) -> None:
        model = self._scattered[tasks[0].token]
        pending: dict[Future, int] = {
            self.client.submit(_run_scattered, model, dataclasses.replace(task, source=b""),
                               pure=False): start
            for task, start in zip(tasks, starts, strict=True)}
        try:
            for future in as_completed(list(pending)):
                start = pending.pop(future)
                try:
                    done = future.result()
                except KilledWorker as error:
                    gathered.fail(ChunkFailure(-1, 0, self.died(error, gathered)))
                    return
                if not gathered.take(start, done):
                    return
        finally:
            if pending:  # a failure, Ctrl-C: the tasks not finished are not needed
                self.client.cancel(list(pending))

