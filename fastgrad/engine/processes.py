"""Executors whose workers are other processes: fastgrad's own pool (:class:`ProcessPool`),
any ``concurrent.futures.Executor`` (:class:`FuturesExecutor`), or a map-like callable
(:class:`MapExecutor`, ``workers=pool.map`` as in SciPy's ``approx_derivative``).

The protocol is one function, :func:`run_chunk`, and one message, :class:`ChunkTask`: a
check's evaluator (loss, args, θ) is pickled once with cloudpickle (lambdas and closures
travel by value) into a :class:`Parcel` named by a random token; a chunk carries the token,
where the evaluator lies (``source``) and only its rows of ``coords`` and ``values``, and
returns only its rows of ``out`` (:class:`ChunkDone`).  A worker unpickles an evaluator the
first time it sees its token and keeps it, with its own workspace (a copy of θ), for the
next chunks (the last :data:`CACHED_EVALUATORS` tokens, in each thread of each worker).

Where ``source`` is:

- on this machine (fastgrad's pool, concurrent.futures' process and thread pools,
  ``multiprocessing.Pool.map``, the builtin ``map``): the path of a file holding the
  pickled evaluator, written once per check and removed with the evaluator.  A chunk sends
  O(rows) bytes (the rows, the token and the path): large args are neither pickled nor
  sent again per chunk.
- elsewhere (loky, mpi4py, a cluster's executor): the pickled bytes themselves, with every
  chunk: pickled once in this process, unpickled once per worker (a Numba loss compiled
  once per worker), but sent with each chunk, since the executor gives no way to address
  a worker.

A loss that raises, returns a non-finite value or writes into its input gives the same
:class:`~fastgrad.engine.executors.ChunkFailure` as on threads; a worker process that dies
gives :class:`WorkerDied`, naming its exit code or signal (never a hang: concurrent.futures'
process pool notices the death, and a multiprocessing.Pool's workers are watched);
Ctrl-C in the caller cancels the chunks not yet started (the workers ignore SIGINT and
finish their current chunk, about CHUNK_SECONDS).  BLAS runs on one thread in each worker.
"""

from __future__ import annotations

import atexit
import builtins
import concurrent.futures as futures
import contextlib
import itertools
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cloudpickle  # type: ignore[import-untyped]
import numpy as np

from ..errors import InputError, describe
from .base import Evaluator, Workspace
from .blas import limit_blas_threads
from .executors import (
    BatchResult,
    ChunkFailure,
    Executor,
    InputModified,
    Progress,
    ProgressFailed,
    chunk_starts,
    first_non_finite,
)

#: Evaluators a worker keeps (each with its workspace): a check uses one or two (a complex θ).
CACHED_EVALUATORS = 2
#: Handing a batch to a warm pool of 2 processes and getting it back: 1.9 to 2.7 ms for
#: 8 chunks of 8 rows, or 64 of 1 row, of a 1 µs loss, n = 10 to 10⁴ (medians of 30 on
#: this shared 2-core machine, Python 3.11, forkserver); chunks pipeline, each adding tens
#: of µs.  A batch of serial time S takes S/P + C on P workers: worth it when S > C·P/(P−1),
#: at most 2C (RemoteExecutor.start_seconds).
BATCH_SECONDS = 0.0025
#: What a chunk costs a worker beyond its evaluations: 125 to 310 µs of wall time per chunk
#: of one row of a 1 µs loss on 2 processes (see IN_FLIGHT_PER_WORKER).
CHUNK_OVERHEAD_SECONDS = 3e-4
#: Starting the pool (a forkserver that imports numpy, numba and fastgrad, then 2 workers)
#: and its first task: 0.29 to 0.31 s, measured as above; paid once per process.
POOL_START_SECONDS = 0.3
#: Seconds to wait for a dead worker's exit status to be told, before naming it unknown.
DEATH_REPORT_SECONDS = 2.0
#: Seconds to wait for a chunk before looking again (Ctrl-C is seen within this).
POLL_SECONDS = 0.1
#: Chunks in flight per worker: one running and one queued behind it, so that no worker
#: waits for the caller between chunks.  More only make each wait for the next finished
#: chunk look at more futures, and leave more to cancel after a failure: 2000 chunks of one
#: row of a 1 µs loss on 2 processes took 233-244 µs of wall time per chunk this way, 257-272
#: µs submitted all at once (this shared 2-core machine, loaded; 2 runs each).
IN_FLIGHT_PER_WORKER = 2


class WorkerDied(Exception):
    """A worker process died (os._exit, a crash in compiled code, the out-of-memory killer)
    while rows ``first``..``last`` of the batch were in flight; ``cause`` says how (its exit
    code or signal) and what becomes of the pool."""

    def __init__(self, first: int, last: int, cause: str = ""):
        super().__init__(first, last, cause)
        self.first, self.last, self.cause = first, last, cause


def exit_status(processes: Iterable) -> str:
    """How the processes among ``processes`` (multiprocessing.Process objects) that ended on
    their own ended: "process 12 exited with code 1", "process 12 was killed by signal
    SIGSEGV (segmentation fault)"; "" when none did.  SIGTERM is left out: it is how a
    pool stops the workers that survive a death."""
    told = []
    for process in processes:
        code = process.exitcode
        if code is None or code == 0 or code == -signal.SIGTERM:
            continue
        if code > 0:
            told.append(f"process {process.pid} exited with code {code}")
            continue
        try:
            number = signal.Signals(-code)
            name, meaning = number.name, signal.strsignal(number)
        except ValueError:
            name, meaning = str(-code), None
        told.append(f"process {process.pid} was killed by signal {name}"
                    + (f" ({meaning.lower()})" if meaning else ""))
    return "; ".join(told)


def exit_status_after(processes: Iterable, seconds: float) -> str:
    """:func:`exit_status` of ``processes``, waiting up to ``seconds`` for one to be told:
    a forkserver child's exit status reaches this process through the server, which may
    not have sent it yet when the pool reports the death (a busy machine)."""
    processes = list(processes)
    deadline = time.monotonic() + seconds
    while not (told := exit_status(processes)) and processes and time.monotonic() < deadline:
        time.sleep(0.01)
    return told


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (the cause of the one shown)."""

    def __str__(self) -> str:
        return f"\n\n(in the worker)\n{self.args[0]}"


# ----------------------------------------------------------------- the messages
@dataclass(frozen=True)
class Parcel:
    """A check's evaluator, pickled once: its token, and a file path or the bytes."""

    token: str
    source: str | bytes


@dataclass(frozen=True)
class ChunkTask:
    """What a chunk sends: out[j, q] = f(θ with θ[coords[j]] = values[j, q]) for its rows."""

    token: str
    source: str | bytes
    coords: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class ChunkDone:
    """What a chunk returns: its rows of ``out``, and its failure (row within the chunk)
    pickled with cloudpickle (an exception class defined in a test travels by value)."""

    out: np.ndarray
    failure: bytes | None = None


_parcels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # evaluator -> {to_file: Parcel}
_parcels_lock = threading.Lock()


def parcel(evaluator: Evaluator, to_file: bool) -> Parcel:
    """``evaluator`` pickled once (per destination kind) for as long as it lives; the file
    (``to_file``) is removed with it.  InputError if cloudpickle cannot pickle it."""
    with _parcels_lock:
        kinds = _parcels.setdefault(evaluator, {})
        found = kinds.get(to_file)
        if found is None:
            try:
                payload = cloudpickle.dumps(evaluator)
            except Exception as error:
                raise InputError(f"the loss and its args must pickle with cloudpickle to run in "
                                 f"other processes: {type(error).__name__}: {describe(error)}") from error
            source: str | bytes = payload
            if to_file:
                descriptor, source = tempfile.mkstemp(prefix="fastgrad-", suffix=".pickle")
                with os.fdopen(descriptor, "wb") as file:
                    file.write(payload)
                weakref.finalize(evaluator, _remove, source)
            found = kinds[to_file] = Parcel(uuid.uuid4().hex, source)
    return found


def picklable(evaluator: Evaluator) -> bool:
    """Whether ``evaluator`` pickles (its parcel is kept for the check that follows)."""
    try:
        parcel(evaluator, to_file=True)
    except InputError:
        return False
    return True


def workers_skip_main() -> bool:
    """Whether a new worker leaves this program's main module alone: True for an
    interactive session, a notebook, pytest, ``python -m package``; False for ``python
    script.py`` or ``python -m module``, whose module each worker would import again (as
    ``__mp_main__``, running whatever a script does outside ``if __name__ == "__main__":``).
    """
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return name == "__main__" or name.endswith(".__main__")
    return getattr(main, "__file__", None) is None


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# ----------------------------------------------------------------- in the worker
_local = threading.local()  # each worker thread's evaluators: token -> (evaluator, workspace)


def _evaluator_for(token: str, source: str | bytes) -> tuple[Evaluator, Workspace]:
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = OrderedDict()
    found = cache.get(token)
    if found is not None:
        cache.move_to_end(token)
        return found
    if isinstance(source, str):
        with open(source, "rb") as file:
            source = file.read()
    evaluator = cloudpickle.loads(source)
    found = cache[token] = (evaluator, evaluator.workspace())
    while len(cache) > CACHED_EVALUATORS:
        cache.popitem(last=False)
    return found


def run_chunk(task: ChunkTask) -> ChunkDone:
    """Evaluate one chunk in this worker (see the module docstring); the workspace equals θ
    again on return, whatever happened."""
    evaluator, workspace = _evaluator_for(task.token, task.source)
    values = task.values
    out = np.full(evaluator.out_shape(values), np.nan, dtype=np.result_type(values.dtype, np.float64))
    try:
        with limit_blas_threads(1):
            evaluator.evaluate_chunk(workspace, task.coords, values, out, 0, task.coords.shape[0])
    except BaseException as error:  # handed to the caller, with its row and point
        workspace.flat[...] = evaluator.theta
        error.__cause__ = RemoteTraceback(traceback.format_exc())
        cursor = workspace.cursor
        return ChunkDone(out, _portable(ChunkFailure(int(cursor[0]), int(cursor[1]), error)))
    changed = np.flatnonzero(workspace.flat != evaluator.theta)
    if changed.size:
        workspace.flat[...] = evaluator.theta
        return ChunkDone(out, _portable(ChunkFailure(-1, 0, InputModified(int(changed[0])))))
    return ChunkDone(out)


def _portable(failure: ChunkFailure) -> bytes:
    """``failure`` pickled; an exception that will not pickle becomes a RuntimeError with
    its type's name and message."""
    try:
        return cloudpickle.dumps(failure)
    except Exception:
        error = failure.error
        stand_in = RuntimeError(f"{type(error).__name__}: {describe(error)}" if error else "")
        return cloudpickle.dumps(ChunkFailure(failure.row, failure.point, stand_in))


def _start_worker() -> None:
    """A worker of fastgrad's pool ignores Ctrl-C: the caller cancels what is not started."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------- in the caller
class _Gathered:
    """A batch's rows as chunks come back: ``out``, the failures, progress (in the caller)."""

    def __init__(self, values: np.ndarray, progress: Progress | None, shape: tuple[int, ...] | None = None):
        self.out = np.full(values.shape if shape is None else shape, np.nan,
                           dtype=np.result_type(values.dtype, np.float64))
        self.progress = progress
        self.failures: list[ChunkFailure] = []
        self.chunks = 0

    def take(self, start: int, done: ChunkDone) -> bool:
        """Place a chunk's rows; False when the batch must stop (a failure)."""
        rows = done.out.shape[0]
        self.out[start:start + rows] = done.out
        self.chunks += 1
        if done.failure is not None:
            failure = cloudpickle.loads(done.failure)
            row = failure.row + start if failure.row >= 0 else -1
            return self.fail(ChunkFailure(row, failure.point, failure.error))
        failure = first_non_finite(self.out, start, start + rows)
        if failure is not None:
            return self.fail(failure)
        if self.progress is not None:
            try:
                self.progress(rows, rows * done.out.shape[1])
            except Exception as error:
                return self.fail(ChunkFailure(-1, 0, ProgressFailed(error)))
        return True

    def fail(self, failure: ChunkFailure) -> bool:
        self.failures.append(failure)
        return False

    def result(self) -> BatchResult:
        interrupts = [f.error for f in self.failures if not isinstance(f.error, (Exception, type(None)))]
        if interrupts:
            raise interrupts[0]  # a KeyboardInterrupt or SystemExit raised by the loss
        first = min(self.failures, key=lambda failure: failure.row) if self.failures else None
        return BatchResult(self.out, first, self.chunks)


class RemoteExecutor(Executor):
    """Runs the chunks of a batch as :class:`ChunkTask` messages through :func:`run_chunk`."""

    start_seconds = 2 * BATCH_SECONDS  # see BATCH_SECONDS
    chunk_seconds = CHUNK_OVERHEAD_SECONDS

    def run(self, evaluator, coords, values, *, rows_per_chunk, progress=None,
            smallest=None) -> BatchResult:
        source = parcel(evaluator, self.same_machine)
        bounds = chunk_starts(coords.shape[0], rows_per_chunk, self.workers, smallest).tolist()
        starts = bounds[:-1]
        tasks = [ChunkTask(source.token, source.source, coords[start:end], values[start:end])
                 for start, end in itertools.pairwise(bounds)]
        gathered = _Gathered(values, progress, evaluator.out_shape(values))
        try:
            self.dispatch(tasks, starts, gathered)
        except futures.BrokenExecutor as error:
            gathered.fail(ChunkFailure(-1, 0, self.died(error, gathered)))
        return gathered.result()

    def processes(self) -> list:
        """The worker processes (multiprocessing.Process) this executor knows of, [] if none."""
        return []

    #: Whether the workers read this machine's files (then the evaluator goes by file).
    same_machine = True

    def dispatch(self, tasks: list[ChunkTask], starts: list[int], gathered: _Gathered) -> None:
        """Run ``tasks`` (the chunks at ``starts``), handing each result to ``gathered``."""
        raise NotImplementedError

    def died(self, error: BaseException, gathered: _Gathered) -> WorkerDied:
        """The WorkerDied for ``error``: the rows not back are those that were in flight; the
        cause is the dead process's exit status when known, else ``error``."""
        out = gathered.out
        missing = np.flatnonzero(np.isnan(out.reshape(out.shape[0], -1)).all(axis=1))
        first, last = (int(missing[0]), int(missing[-1])) if missing.size else (0, 0)
        how = exit_status_after(self.processes(), DEATH_REPORT_SECONDS) or (
            f"{type(error).__name__}: {describe(error)}: os._exit, a crash in compiled code, "
            "the out-of-memory killer?")
        return WorkerDied(first, last, f"{how}; {self.after_death}")

    #: What becomes of the executor once a worker died (the end of WorkerDied's cause).
    after_death = "the executor may not be able to run anything again"


class FuturesExecutor(RemoteExecutor):
    """Chunks submitted to a ``concurrent.futures.Executor`` (a ProcessPoolExecutor the user
    made, loky's, mpi4py's), IN_FLIGHT_PER_WORKER per worker at a time, in order, a new one
    as each finishes, gathered as they finish.  The first failure cancels
    the chunks not started and waits for those running; Ctrl-C cancels them and returns."""

    after_death = ("concurrent.futures marks such a pool broken: it cannot run anything again, "
                   "give the next check a new one")

    def __init__(self, executor: futures.Executor):
        self.executor = executor
        super().__init__(_workers_of(executor))
        self.name = type(executor).__name__
        self.same_machine = isinstance(executor, (futures.ProcessPoolExecutor, futures.ThreadPoolExecutor))
        #: the pool's processes as last seen while dispatching: a broken pool's manager thread
        #: may clear its own list before the death is reported (seen once in CI)
        self.seen: list = []

    def pool(self) -> futures.Executor:
        return self.executor

    def processes(self) -> list:
        return _processes_of(self.pool()) or self.seen

    def dispatch(self, tasks, starts, gathered) -> None:
        pool = self.pool()
        waiting = iter(zip(tasks, starts, strict=True))
        pending: dict[futures.Future, int] = {}

        def submit(count: int) -> None:
            for task, start in itertools.islice(waiting, count):
                pending[pool.submit(run_chunk, task)] = start
            self.seen = _processes_of(pool) or self.seen

        with _usable(self.name, started=lambda: bool(pending)):
            submit(IN_FLIGHT_PER_WORKER * self.workers)
        try:
            while pending:
                finished, _ = futures.wait(pending, timeout=POLL_SECONDS,
                                           return_when=futures.FIRST_COMPLETED)
                for future in sorted(finished, key=pending.__getitem__):
                    start = pending.pop(future)
                    if not gathered.take(start, future.result()):
                        _cancel(pending)
                        for rest in futures.as_completed(pending):  # running: let them finish
                            with contextlib.suppress(Exception):
                                gathered.take(pending[rest], rest.result())
                        return
                submit(len(finished))
        except BaseException:
            _cancel(pending)
            raise


class ProcessPool(FuturesExecutor):
    """fastgrad's own pool of ``workers`` processes (forkserver on Linux, spawn elsewhere),
    started on first use and kept for the life of this process (one per worker count; see
    :func:`shared_pool`); a pool whose worker died is replaced at the next batch."""

    name = "processes"
    after_death = "fastgrad replaces its pool at the next check"

    def __init__(self, workers: int):
        Executor.__init__(self, workers)
        self.seen = []  # as FuturesExecutor's

    def pool(self) -> futures.Executor:
        return shared_pool(self.workers)

    def processes(self) -> list:  # the pool that ran, broken or not
        return _processes_of(_pools.get(self.workers)) or self.seen

    def died(self, error, gathered) -> WorkerDied:
        found = super().died(error, gathered)
        discard_pool(self.workers)
        return found


class MapExecutor(RemoteExecutor):
    """Chunks mapped through ``mapper(run_chunk, tasks)``, a map-like callable (``pool.map``
    of a multiprocessing or concurrent.futures pool, or any callable with map's signature)
    returning the results in order; progress is reported as they are read.  A worker's death
    is the mapper's to report (concurrent.futures' raises), except a multiprocessing.Pool's,
    which would wait forever: its chunks go through its ``imap`` while its workers are
    watched (:meth:`watch_pool`)."""

    def __init__(self, mapper: Callable[[Callable, Iterable], Iterable]):
        self.mapper = mapper
        owner = getattr(mapper, "__self__", None)
        super().__init__(_workers_of(owner) if owner is not None else _default_workers())
        self.name = getattr(mapper, "__qualname__", "map")
        self.same_machine = mapper is builtins.map or isinstance(
            owner, (futures.ProcessPoolExecutor, futures.ThreadPoolExecutor, multiprocessing.pool.Pool))
        self.watched: list = []  # the multiprocessing.Pool workers watch_pool watched, for died()
        if isinstance(owner, multiprocessing.pool.Pool):
            self.after_death = "multiprocessing.Pool has started another process in its place"
        elif isinstance(owner, futures.ProcessPoolExecutor):
            self.after_death = FuturesExecutor.after_death

    def dispatch(self, tasks, starts, gathered) -> None:
        owner = getattr(self.mapper, "__self__", None)
        if isinstance(owner, multiprocessing.pool.Pool):
            self.watch_pool(owner, tasks, starts, gathered)
            return
        with _usable(self.name, started=lambda: False):
            results = iter(self.mapper(run_chunk, tasks))  # concurrent.futures submits here
        try:
            for start in starts:
                if not gathered.take(start, next(results)):
                    return
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()

    def watch_pool(self, pool: multiprocessing.pool.Pool, tasks, starts, gathered) -> None:
        """The chunks through ``pool.imap`` (the same pool, in order, each result as it comes),
        watching its workers: multiprocessing.Pool replaces a worker that dies and waits
        forever for the chunk it held, so a death of one of the workers running at the start
        raises BrokenExecutor within POLL_SECONDS instead."""
        workers = [process for process in getattr(pool, "_pool", []) if process.exitcode is None]
        self.watched = workers
        results = pool.imap(run_chunk, tasks)
        for start in starts:
            while True:
                try:
                    done = results.next(timeout=POLL_SECONDS)
                    break
                except multiprocessing.TimeoutError:
                    if exit_status(workers):
                        raise futures.BrokenExecutor("a worker process of the pool died") from None
            if not gathered.take(start, done):
                return

    def processes(self) -> list:
        owner = getattr(self.mapper, "__self__", None)
        return self.watched if isinstance(owner, multiprocessing.pool.Pool) else _processes_of(owner)


def _workers_of(executor) -> int:
    """The worker count of a pool (concurrent.futures', loky's, multiprocessing's), else
    the cores of this machine."""
    for attribute in ("_max_workers", "_processes", "num_workers"):
        count = getattr(executor, attribute, None)
        if isinstance(count, int) and count > 0:
            return count
    return _default_workers()


def _processes_of(pool) -> list:
    """The worker processes of a concurrent.futures process pool (its private ``_processes``,
    which keeps the dead ones until the pool is collected); [] for any other pool."""
    found = getattr(pool, "_processes", None)
    return list(found.values()) if isinstance(found, dict) else []


@contextlib.contextmanager
def _usable(name: str, started: Callable[[], bool]):
    """Turn "this pool is broken / shut down", raised before any chunk was handed over
    (``started()`` False), into an InputError; afterwards it is a death, for run()."""
    try:
        yield
    except (futures.BrokenExecutor, RuntimeError) as error:
        if started() or not (isinstance(error, futures.BrokenExecutor) or "shutdown" in str(error)):
            raise
        raise InputError(f"the executor {name} is broken or shut down ({describe(error)}): give a "
                         "running one (a concurrent.futures pool whose worker died is broken for good)"
                         ) from error


def _default_workers() -> int:
    from .compiled import available_cores
    return available_cores()


def _cancel(pending: dict) -> None:
    for future in list(pending):
        if future.cancel():
            del pending[future]


# ----------------------------------------------------------------- the shared pools
_pools: dict[int, futures.ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()


def shared_pool(workers: int) -> futures.ProcessPoolExecutor:
    """This process's pool of ``workers`` processes, started on first use."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is not None and getattr(pool, "_broken", False):  # a worker died between checks
            pool.shutdown(wait=False, cancel_futures=True)
            pool = None
        if pool is None:
            pool = _pools[workers] = futures.ProcessPoolExecutor(
                workers, mp_context=_context(), initializer=_start_worker)
    return pool


def discard_pool(workers: int) -> None:
    """Shut down the pool of ``workers`` processes (the next use starts a new one)."""
    with _pools_lock:
        pool = _pools.pop(workers, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def shutdown_pools() -> None:
    """Shut down every pool this process started (at exit, or to free the cores)."""
    for workers in list(_pools):
        discard_pool(workers)


atexit.register(shutdown_pools)


def _context():
    """forkserver where there is one (a fork of this process, with its threads, would not be
    safe), its server preloading fastgrad so that each worker starts in milliseconds."""
    if sys.platform.startswith("linux"):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")
