"""BLAS oversubscription: Python threads running a BLAS-using Numba loss.

fastgrad's engine runs one thread per core, each calling a ``@njit(nogil=True)``
chunk kernel that evaluates the loss.  When the loss does matrix products, each
of those threads also drives a multi-threaded BLAS.  This script times the same
work from 1 and from 2 threads with the BLAS thread pools left alone
("unlimited") and limited to 1 thread: by threadpoolctl directly, and by
``fastgrad.engine.blas.limit_blas_threads`` with threadpoolctl and with its
ctypes fallback.

    python benchmarks/blas_oversubscription.py [--coords 2000] [--repeats 3]

Times are the best of ``--repeats`` rounds, configurations interleaved so that
machine noise hits them alike; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import os
import sys
import threading
import time
import timeit
from pathlib import Path

import numpy as np
import threadpoolctl
from numba import njit

# Load blas.py by path: the measurement should not depend on the rest of the package.
_spec = importlib.util.spec_from_file_location(
    "fastgrad_blas", Path(__file__).resolve().parents[1] / "fastgrad" / "engine" / "blas.py")
blas = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(blas)

N_IN, N_HIDDEN, N_OUT, BATCH = 100, 128, 10, 128
N_W1 = N_IN * N_HIDDEN
N_PARAMS = N_W1 + N_HIDDEN * N_OUT


@njit
def loss(theta, X, Y):
    """Two-layer MLP, softmax cross-entropy: two BLAS products (X @ W1, H @ W2)."""
    W1 = theta[:N_W1].reshape(N_IN, N_HIDDEN)
    W2 = theta[N_W1:].reshape(N_HIDDEN, N_OUT)
    Z = np.tanh(X @ W1) @ W2
    total = 0.0
    for r in range(Z.shape[0]):
        m = Z[r].max()
        total += m + np.log(np.exp(Z[r] - m).sum()) - (Z[r] * Y[r]).sum()
    return total / Z.shape[0]


@njit(nogil=True)
def kernel(loss, work, coords, values, out, start, stop, args):
    for j in range(start, stop):
        i = coords[j]
        saved = work[i]
        for q in range(values.shape[1]):
            work[i] = values[j, q]
            out[j, q] = loss(work, *args)
        work[i] = saved


def run(theta, coords, values, args, workers, chunk=25):
    """Evaluate every row from ``workers`` threads pulling chunks off a shared counter."""
    out = np.empty(values.shape)
    starts = list(range(0, len(coords), chunk))
    counter = itertools.count()

    def work():
        w = theta.copy()
        for k in iter(lambda: next(counter), None):
            if k >= len(starts):
                return
            kernel(loss, w, coords, values, out, starts[k], min(starts[k] + chunk, len(coords)),
                   args)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, out


@contextlib.contextmanager
def fastgrad_limiter(use_threadpoolctl):
    blas.USE_THREADPOOLCTL = use_threadpoolctl
    try:
        with blas.limit_blas_threads(1):
            yield
    finally:
        blas.USE_THREADPOOLCTL = True


LIMITERS = {
    "unlimited": contextlib.nullcontext,
    "threadpoolctl": lambda: threadpoolctl.threadpool_limits(limits=1, user_api="blas"),
    "blas.py[threadpoolctl]": lambda: fastgrad_limiter(True),
    "blas.py[ctypes]": lambda: fastgrad_limiter(False),
}


def numba_blas_library():
    """Which OpenBLAS numba's matmul uses: limit one library at a time to 1 thread and
    see whether a large product still uses more than one core (CPU time / wall time)."""
    a = np.random.default_rng(1).standard_normal((1500, 1500))
    matmul = njit(lambda x, y: x @ y)
    matmul(a, a)
    result = {}
    for info in blas.blas_thread_info():
        controller = threadpoolctl.ThreadpoolController().select(filepath=info["filepath"])
        with controller.limit(limits=1):
            matmul(a, a)
            time.sleep(0.5)  # let the pool's threads stop spinning after the last product
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(5):
                matmul(a, a)
            result[info["name"]] = (time.process_time() - cpu) / (time.perf_counter() - wall)
    return result


def enter_cost(number=2000):
    costs = {}
    for name in ("threadpoolctl", "blas.py[threadpoolctl]", "blas.py[ctypes]"):
        def enter_exit(make=LIMITERS[name]):
            with make():
                pass
        costs[name] = min(timeit.repeat(enter_exit, number=number // 10, repeat=5)) / (number // 10)
    costs["read /proc/self/maps"] = min(timeit.repeat(
        lambda: open("/proc/self/maps", "rb").read(), number=number, repeat=5)) / number
    return costs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coords", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()

    rng = np.random.default_rng(0)
    theta = 0.1 * rng.standard_normal(N_PARAMS)
    X = rng.standard_normal((BATCH, N_IN))
    Y = np.eye(N_OUT)[rng.integers(0, N_OUT, BATCH)]
    args = (X, Y)
    coords = rng.choice(N_PARAMS, size=opts.coords, replace=False).astype(np.int64)
    h = 1e-5
    values = np.stack([theta[coords] + h, theta[coords] - h], axis=1)
    _, reference = run(theta, coords[:4], values[:4], args, 1)  # compile

    print(f"cpus: {os.cpu_count()}  OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')!r}"
          f"  OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')!r}")
    print("BLAS libraries seen by threadpoolctl:")
    for info in threadpoolctl.threadpool_info():
        print(f"  {info['user_api']:6} {info['internal_api']:9} num_threads={info['num_threads']}"
              f"  {info.get('threading_layer', '')}  {info.get('version', '')}  {info['filepath']}")
    blas.USE_THREADPOOLCTL = False
    print("the ctypes fallback sees:",
          [(i["name"], i["num_threads"]) for i in blas.blas_thread_info()] or "nothing")
    blas.USE_THREADPOOLCTL = True
    print("numba matmul, CPU/wall with only this library limited to 1 thread "
          "(~1 means numba uses it):")
    for name, ratio in numba_blas_library().items():
        print(f"  {name}: {ratio:.2f}")

    evaluations = 2 * opts.coords
    print(f"\n{opts.coords} coordinates x 2 points = {evaluations} loss evaluations "
          f"({N_PARAMS} parameters), best of {opts.repeats}:")
    times = {}
    for _ in range(opts.repeats):
        for workers in (1, 2):
            for name, make in LIMITERS.items():
                with make():
                    elapsed, out = run(theta, coords, values, args, workers)
                assert np.array_equal(out[:4], reference)
                times[workers, name] = min(times.get((workers, name), np.inf), elapsed)
    base = times[1, "unlimited"]
    print(f"{'BLAS threads':24} {'workers':>7} {'time s':>8} {'us/eval':>8} "
          f"{'vs 1w unlim':>11} {'speedup 1w->2w':>14}")
    for name in LIMITERS:
        for workers in (1, 2):
            t = times[workers, name]
            speedup = f"{times[1, name] / t:.2f}x" if workers == 2 else ""
            print(f"{name:24} {workers:7d} {t:8.3f} {1e6 * t / evaluations:8.1f} "
                  f"{t / base:11.2f} {speedup:>14}")

    print("\nentering + leaving the limiter once (also re-scans loaded libraries):")
    for name, cost in enter_cost().items():
        print(f"  {name:24} {1e6 * cost:8.1f} us")


if __name__ == "__main__":
    sys.exit(main())
