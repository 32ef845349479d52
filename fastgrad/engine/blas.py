"""Keep BLAS single-threaded while fastgrad's own worker threads run.

One worker per core already fills the machine.  A loss doing matrix products (``@``,
``np.dot`` in ``@njit`` code call SciPy's OpenBLAS) would also fan each one out to
all cores from every worker, and the check would get slower, not faster.  Uses
threadpoolctl if installed, else ctypes for the OpenBLAS builds loaded on Linux
(numpy's and scipy's wheels bundle them), else nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading
from collections.abc import Iterator

#: Use threadpoolctl when importable.  Set to False to force the fallback (tests do).
USE_THREADPOOLCTL = True

# Exported names are {prefix}openblas_{get,set}_num_threads{suffix}: plain builds
# have no affixes; scipy-openblas wheels add "scipy_" and, with 64-bit ints, "64_".
_AFFIXES = [(prefix, suffix) for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]
# path -> (get, set) or None: safe to keep, a loaded library keeps its symbols.
_controls: dict[str, tuple | None] = {}
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


def _controller(tpc):
    """threadpoolctl's controller of the loaded libraries."""
    return _while_modules_unchanged("threadpoolctl", tpc.ThreadpoolController)


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
        if path not in _controls and "openblas" in os.path.basename(path):
            _controls[path] = _symbols(path)
    return [(path, _controls[path]) for path in paths if _controls.get(path)]


def _symbols(path: str) -> tuple | None:
    try:  # RTLD_NOLOAD: the copy already loaded, or nothing
        library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
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
_restore_original = None
_active_lock = threading.Lock()


def _apply(limit: int):
    """Set every loaded BLAS pool to ``limit`` threads; return a function restoring what
    they had before."""
    tpc = _threadpoolctl() if USE_THREADPOOLCTL else None
    if tpc is not None:
        return _controller(tpc).limit(limits=limit, user_api="blas").restore_original_limits
    previous = [(set_, get()) for _, (get, set_) in _loaded_openblas()]
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
