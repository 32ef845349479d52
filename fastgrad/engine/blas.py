"""Keep BLAS single-threaded while fastgrad's own worker threads run; on one worker, keep
whichever of BLAS's own threads or one thread a measurement finds faster for the loss.

One worker per core already fills the machine.  A loss doing matrix products (``@``,
``np.dot`` in ``@njit`` code call SciPy's OpenBLAS) would also fan each one out to
all cores from every worker, and the check would get slower, not faster.  Finds the
libraries with threadpoolctl if installed, else those OpenBLAS builds loaded on Linux
(numpy's and scipy's wheels bundle them) that /proc/self/maps lists; OpenBLAS's own
thread count is set through its symbols (see :func:`_controls`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: Use threadpoolctl when importable.  Set to False to force the fallback (tests do).
USE_THREADPOOLCTL = True

# Exported names are {prefix}openblas_{get,set}_num_threads{suffix}: plain builds
# have no affixes; scipy-openblas wheels add "scipy_" and, with 64-bit ints, "64_".
_AFFIXES = [(prefix, suffix) for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]
# path -> (get, set) or None: safe to keep, a loaded library keeps its symbols.
_controls_by_path: dict[str, tuple | None] = {}
# The list of loaded libraries changes (Numba loads scipy's OpenBLAS when it first
# compiles a matrix product, through an import), and finding them costs 0.5-2 ms
# (/proc/self/maps, or threadpoolctl's scan): too much for every batch of a small
# check.  So the list found is kept while sys.modules keeps its size.
_found: dict[str, tuple] = {}


@functools.cache
def _threadpoolctl():
    try:
        import threadpoolctl  # on first use only: the import takes ~20 ms
        return threadpoolctl
    except ImportError:
        return None


def _while_modules_unchanged(name: str, find):
    """``find()``, reused until a module is imported (or removed): see :data:`_found`."""
    key = len(sys.modules)
    cached = _found.get(name)
    if cached is None or cached[0] != key:
        cached = _found[name] = (key, find())
    return cached[1]


def _controls(tpc) -> list[tuple]:
    """(get, set) of the thread count of each loaded BLAS library.

    OpenBLAS without OpenMP has one process-wide pool, which threadpoolctl (3.6+) lets
    only one "controlling" thread change, others silently doing nothing: a limit set
    by a check in one thread could then never be restored by a check leaving last in
    another.  Its own get/set symbols work from any thread, and are called directly;
    other libraries (MKL, BLIS, FlexiBLAS, OpenMP OpenBLAS) through threadpoolctl.
    """
    def find() -> list[tuple]:
        controls = []
        for library in tpc.ThreadpoolController().select(user_api="blas").lib_controllers:
            symbols = None
            if library.internal_api == "openblas" \
                    and getattr(library, "threading_layer", None) != "openmp":
                if library.filepath not in _controls_by_path:
                    _controls_by_path[library.filepath] = _symbols(library.filepath)
                symbols = _controls_by_path[library.filepath]
            controls.append(symbols or (library.get_num_threads, library.set_num_threads))
        return controls
    return _while_modules_unchanged("threadpoolctl", find)


def _loaded_openblas() -> list[tuple[str, tuple]]:
    """(path, (get, set)) for each OpenBLAS mapped into this process; [] off Linux."""
    return _while_modules_unchanged("openblas", _scan_openblas)


def _scan_openblas() -> list[tuple[str, tuple]]:
    try:
        with open("/proc/self/maps", "rb") as maps:  # "addr perms offset dev inode path"
            fields = [line.split(maxsplit=5) for line in maps.read().splitlines()
                      if b"openblas" in line]
    except OSError:
        return []
    paths = sorted({os.fsdecode(f[5]) for f in fields if len(f) == 6})
    for path in paths:
        if path not in _controls_by_path and "openblas" in os.path.basename(path):
            _controls_by_path[path] = _symbols(path)
    return [(path, controls) for path in paths if (controls := _controls_by_path.get(path))]


def _symbols(path: str) -> tuple | None:
    try:  # RTLD_NOLOAD: the copy already loaded, or nothing
        library = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LAZY", 0))
    except OSError:
        return None
    for prefix, suffix in _AFFIXES:
        get, set_ = (getattr(library, f"{prefix}openblas_{op}_num_threads{suffix}", None)
                     for op in ("get", "set"))
        if get is not None and set_ is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            set_.restype, set_.argtypes = None, [ctypes.c_int]
            return get, set_
    return None


#: The limits in force, one per active limit_blas_threads (in any thread), in order of
#: entry, and how to restore the settings found by the first of them.
_active: list[list[int]] = []
_restore_original: Callable[[], None] | None = None
_active_lock = threading.Lock()


def _apply(limit: int) -> Callable[[], None]:
    """Set every loaded BLAS pool to ``limit`` threads; return a function restoring what
    they had before."""
    tpc = _threadpoolctl() if USE_THREADPOOLCTL else None
    controls = _controls(tpc) if tpc is not None else [c for _, c in _loaded_openblas()]
    previous = [(set_, threads) for get, set_ in controls if (threads := get()) is not None]
    for set_, _ in previous:
        set_(limit)

    def restore() -> None:
        for set_, threads in previous:
            set_(threads)
    return restore


@contextlib.contextmanager
def limit_blas_threads(limit: int = 1) -> Iterator[None]:
    """Limit every loaded BLAS pool to ``limit`` threads; restore them on exit, even on error.

    Nests, and overlaps across threads: the settings found by the first of the active
    limits are restored exactly when the last one leaves (two checks running at once in
    two threads must not leave BLAS at one thread); a limit that leaves before others puts
    back the most recent of those still active."""
    global _restore_original
    token = [limit]  # a new list: told apart from equal limits by identity
    with _active_lock:
        restore = _apply(limit)
        if not _active:
            _restore_original = restore
        _active.append(token)
    try:
        yield
    finally:
        with _active_lock:
            del _active[next(i for i, t in enumerate(_active) if t is token)]
            if _active:
                _apply(_active[-1][0])
            else:
                original, _restore_original = _restore_original, None
                assert original is not None  # set by the first of the active limits
                original()


def blas_thread_info() -> list[dict]:
    """One dict per loaded BLAS library: ``filepath``, ``name``, ``num_threads``, ``via``."""
    tpc = _threadpoolctl() if USE_THREADPOOLCTL else None
    found = ([(i["filepath"], i["num_threads"]) for i in tpc.threadpool_info()
              if i["user_api"] == "blas"] if tpc is not None
             else [(path, get()) for path, (get, _) in _loaded_openblas()])
    via = "threadpoolctl" if tpc is not None else "ctypes"
    return [{"filepath": p, "name": os.path.basename(p), "num_threads": n, "via": via}
            for p, n in found]


def blas_threads() -> int:
    """The most threads any loaded BLAS library may use now (0 when none is loaded)."""
    return max((info["num_threads"] or 0 for info in blas_thread_info()), default=0)


# ----------------------------------------------------------------- one worker: measure
#: Pairs of evaluations in the first look: a spread with 4 degrees of freedom.
PILOT_PAIRS = 5
#: A difference of means is established when it is Z standard errors from 0.
Z = 3.0
#: The measurement may cost at most this share of the check's evaluations: what a loss that
#: BLAS does not touch pays for nothing, about what the noise estimate costs a check of 10⁴
#: coordinates (a loss that BLAS's threads slow down tenfold, as in issue 13, repays it 200-fold).
MEASURE_SHARE = 0.02


@dataclass(frozen=True)
class BlasTiming:
    """What :func:`time_blas_threads` measured: BLAS had ``found`` threads; an evaluation
    took ``seconds[0]`` (mean, s) with them and ``seconds[1]`` with one, over ``pairs``
    interleaved pairs; the check keeps ``threads`` (``found`` or 1)."""

    found: int
    threads: int
    seconds: tuple[float, float]
    pairs: int
    decided: bool  # the difference was established (else: a tie, too small to resolve in the budget)

    def note(self) -> str:
        """One line for the report."""
        with_found, with_one = (f"{1e3 * t:.3g} ms" for t in self.seconds)
        why = "measured faster" if self.decided else "no difference resolved: BLAS's own setting kept"
        return (f"BLAS on {self.threads} thread{'s' if self.threads > 1 else ''} for this check "
                f"({why}; an evaluation took {with_found} with {self.found} threads, {with_one} "
                f"with 1, over {self.pairs} interleaved pairs)")


def time_blas_threads(evaluate: Callable[[], object], evaluations: int) -> BlasTiming | None:
    """Whether BLAS's own threads or one thread evaluate the loss faster, for a check with
    ``evaluations`` evaluations still to make on one worker; None when there is nothing to
    choose (no BLAS loaded, or one thread already) or when the first look alone would cost
    more than MEASURE_SHARE of them.

    ``evaluate()`` is timed in pairs, one evaluation with the threads found and one with a
    single thread (the time to switch them left out), the order alternating from pair to
    pair: a drift of the machine's speed cancels in the differences d_k = t_found − t_one.
    The budget is M = MEASURE_SHARE·evaluations/2 pairs.  After m ≥ PILOT_PAIRS pairs, with
    mean d̄ and standard deviation s of the d_k:

    - |d̄| ≥ Z·s/√m: the faster setting is established (a wrong sign is a 3σ event);
    - else resolving d̄ takes m* = (Z·s/d̄)² pairs: when m* > M (the difference, if any, is
      too small for the budget to resolve), or m reached M, BLAS keeps the threads it had:
      the setting the loss has outside fastgrad (and in the seed's naive loop).  A tie going
      to one thread instead was measured 10 % slower than the naive loop on a quiet machine
      (NumPy MLP, n = 9,610, m = 256: 4.41 s against 3.98 s; 5 pairs had not resolved the
      difference), although one thread is the safer guess when other processes take the
      cores later in the check (each of BLAS's threads then waits for the slowest).
    """
    found = blas_threads()
    budget = int(MEASURE_SHARE * evaluations / 2)
    if found <= 1 or budget < PILOT_PAIRS:
        return None
    times: tuple[list[float], list[float]] = ([], [])
    differences: list[float] = []
    while True:
        order = (0, 1) if len(differences) % 2 == 0 else (1, 0)
        for setting in order:
            with limit_blas_threads(1) if setting else contextlib.nullcontext():
                started = time.perf_counter()
                evaluate()
                times[setting].append(time.perf_counter() - started)
        differences.append(times[0][-1] - times[1][-1])
        pairs = len(differences)
        if pairs < PILOT_PAIRS:
            continue
        mean, spread = statistics.fmean(differences), statistics.stdev(differences)
        seconds = (statistics.fmean(times[0]), statistics.fmean(times[1]))
        if abs(mean) >= Z * spread / math.sqrt(pairs):
            return BlasTiming(found, 1 if mean > 0 else found, seconds, pairs, True)
        if pairs >= budget or (Z * spread) ** 2 > budget * mean ** 2:
            return BlasTiming(found, found, seconds, pairs, False)
