"""limit_blas_threads: limits every loaded OpenBLAS inside, restores it outside.

Each test runs with threadpoolctl and with the ctypes fallback forced.  The
thread counts are read back through threadpoolctl when it is installed (an
oracle independent of the fallback), else through the fallback itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np  # loads numpy's OpenBLAS
import pytest
from test_executor_faults import watched

import fastgrad as fg
from fastgrad.engine import blas, executors, processes

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None
try:
    import scipy.linalg.cython_blas  # noqa: F401  (loads scipy's OpenBLAS, the one Numba uses)
except ImportError:
    pass

BASELINE = 3  # not 1, and not what OPENBLAS_NUM_THREADS or the core count would give


def observed() -> dict[str, int]:
    """{library path: threads} for every loaded OpenBLAS."""
    if threadpoolctl is not None:
        return {os.path.realpath(i["filepath"]): i["num_threads"]
                for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"}
    return {os.path.realpath(path): get() for path, (get, _) in blas._loaded_openblas()}


def set_all(threads: int) -> None:
    if threadpoolctl is not None:
        threadpoolctl.ThreadpoolController().select(internal_api="openblas").limit(limits=threads)
    else:
        for _, (_, set_) in blas._loaded_openblas():
            set_(threads)


@pytest.fixture(params=["threadpoolctl", "ctypes"])
def implementation(request, monkeypatch):
    if request.param == "threadpoolctl" and threadpoolctl is None:
        pytest.skip("threadpoolctl is not installed")
    monkeypatch.setattr(blas, "USE_THREADPOOLCTL", request.param == "threadpoolctl")
    before = observed()
    if not before:
        pytest.skip("no OpenBLAS loaded in this process")
    set_all(BASELINE)
    assert set(observed().values()) == {BASELINE}
    yield request.param
    for threads in set(before.values()):
        set_all(threads)  # in practice all libraries start alike


def test_limits_inside_and_restores_after(implementation):
    with blas.limit_blas_threads(1):
        assert set(observed().values()) == {1}
    assert set(observed().values()) == {BASELINE}


def test_restores_when_the_body_raises(implementation):
    with pytest.raises(KeyError, match="boom"), blas.limit_blas_threads(1):
        assert set(observed().values()) == {1}
        raise KeyError("boom")
    assert set(observed().values()) == {BASELINE}


def test_nests(implementation):
    with blas.limit_blas_threads(1):
        with blas.limit_blas_threads(2):
            assert set(observed().values()) == {2}
        assert set(observed().values()) == {1}
    assert set(observed().values()) == {BASELINE}


def test_info_reports_the_current_threads(implementation):
    info = blas.blas_thread_info()
    assert {os.path.realpath(i["filepath"]) for i in info} == set(observed())
    assert {i["num_threads"] for i in info} == {BASELINE}
    assert {i["via"] for i in info} == {implementation}
    assert all(i["name"] == os.path.basename(i["filepath"]) for i in info)
    with blas.limit_blas_threads(1):
        assert {i["num_threads"] for i in blas.blas_thread_info()} == {1}


@pytest.mark.skipif(threadpoolctl is None, reason="threadpoolctl is not installed")
def test_fallback_finds_every_openblas_threadpoolctl_finds(monkeypatch):
    monkeypatch.setattr(blas, "USE_THREADPOOLCTL", False)
    found = {os.path.realpath(i["filepath"]) for i in blas.blas_thread_info()}
    assert found == set(observed())


def test_fallback_without_proc_maps_does_nothing(monkeypatch):
    """Off Linux there is no /proc/self/maps: no libraries, and the limiter is a no-op."""
    def no_maps(*args, **kwargs):
        raise FileNotFoundError("/proc/self/maps")

    monkeypatch.setattr(blas, "USE_THREADPOOLCTL", False)
    monkeypatch.setattr(blas, "_found", {})  # forget what an earlier scan found
    monkeypatch.setattr(blas, "open", no_maps, raising=False)
    before = observed()
    assert blas.blas_thread_info() == []
    with blas.limit_blas_threads(1):
        assert observed() == before


def test_fallback_sees_a_library_loaded_after_first_use():
    """No stale cache: scipy's OpenBLAS, loaded after a first use, is limited too."""
    pytest.importorskip("scipy.linalg")
    script = textwrap.dedent("""
        import numpy
        from fastgrad.engine import blas
        blas.USE_THREADPOOLCTL = False
        with blas.limit_blas_threads(1):
            pass
        first = {i["name"] for i in blas.blas_thread_info()}
        import scipy.linalg.cython_blas
        with blas.limit_blas_threads(1):
            inside = {i["name"]: i["num_threads"] for i in blas.blas_thread_info()}
        print(sorted(first), sorted(inside.items()))
        assert any("openblas" in n and n not in first for n in inside), (first, inside)
        assert set(inside.values()) == {1}, inside
    """)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_overlapping_limits_in_two_threads_restore_the_original(monkeypatch):
    """Two checks in two threads, the first leaving while the second still runs: BLAS stays
    limited until the second leaves, then returns to what it was before either began.

    Two fake libraries stand in for OpenBLAS: a real OpenBLAS ignores limits set from
    other threads once the main thread has set one, which would hide the logic under test.
    """
    import threading

    threads_of = {"a": 2, "b": 2}
    fakes = [(name, (lambda n=name: threads_of[n], lambda k, n=name: threads_of.__setitem__(n, k)))
             for name in threads_of]
    monkeypatch.setattr(blas, "USE_THREADPOOLCTL", False)
    monkeypatch.setattr(blas, "_loaded_openblas", lambda: fakes)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with blas.limit_blas_threads(1):
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with blas.limit_blas_threads(1):
            second_in.set()
            first_out.wait(10)
            seen["after first left"] = dict(threads_of)

    workers = [threading.Thread(target=first), threading.Thread(target=second)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(20)
    assert seen["after first left"] == {"a": 1, "b": 1}
    assert threads_of == {"a": 2, "b": 2}


# ------------------------------------------------------------------ issue 13: who holds BLAS where
def _blas_now():
    """A function giving the most threads any loaded OpenBLAS may use now, read through
    threadpoolctl when installed (independently of fastgrad's limiter), in microseconds."""
    if threadpoolctl is None:
        return lambda: max(get() for _, (get, _) in blas._loaded_openblas())
    libraries = threadpoolctl.ThreadpoolController().select(internal_api="openblas").lib_controllers
    return lambda: max(library.get_num_threads() for library in libraries)


@pytest.fixture
def baseline_threads():
    """Every OpenBLAS on BASELINE threads during the test (what a machine's default would be)."""
    before = observed()
    if not before:
        pytest.skip("no OpenBLAS loaded in this process")
    set_all(BASELINE)
    yield BASELINE
    for threads in set(before.values()):
        set_all(threads)


def _costly_loss(seconds_with_threads: float, seconds_with_one: float, seen: list,
                 clock: list | None = None):
    """Σθ², taking (sleeping) a time that depends on the BLAS threads it finds; with
    ``clock``, advancing that fake clock by the time instead (no noise from a busy machine)."""
    threads_now = _blas_now()

    def loss(theta):
        threads = threads_now()
        seen.append(threads)
        seconds = seconds_with_threads if threads > 1 else seconds_with_one
        if clock is None:
            time.sleep(seconds)
        else:
            clock[0] += seconds
        return float(np.sum(theta ** 2))
    return loss


@pytest.mark.parametrize("with_threads, with_one, kept", [(2e-3, 2e-4, 1), (2e-4, 2e-3, BASELINE)],
                         ids=["threads-slower", "threads-faster"])
def test_one_worker_keeps_the_blas_threads_measured_faster(baseline_threads, with_threads, with_one, kept,
                                                           monkeypatch):
    """The decision follows the loss's cost (on the timing's clock, which the loss advances),
    and every evaluation after the timing runs with the setting kept; the report says so."""
    seen: list[int] = []
    clock = [0.0]
    monkeypatch.setattr(blas, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    theta = np.linspace(-1.0, 1.0, 300)  # 600 evaluations: a 2% budget of 6 pairs
    report = fg.check(_costly_loss(with_threads, with_one, seen, clock), 2 * theta, theta,
                      executor="serial")
    assert report.passed
    note = next(note for note in report.notes if note.startswith("BLAS on"))
    assert f"BLAS on {kept} thread" in note and "measured faster" in note, note
    assert f"note: {note}" in str(report) and note in json.loads(json.dumps(report.to_dict()))["notes"]
    pairs = int(re.search(r"over (\d+) interleaved pairs", note).group(1))
    assert blas.PILOT_PAIRS <= pairs <= int(blas.MEASURE_SHARE * 2 * theta.size / 2)
    timed = seen[1:1 + 2 * pairs]  # after f(θ): one evaluation of each setting per pair
    assert sorted(set(timed)) == [1, BASELINE] and timed.count(1) == pairs
    assert set(seen[1 + 2 * pairs:]) == {kept}
    assert set(observed().values()) == {BASELINE}  # restored after the check


def test_a_difference_the_budget_cannot_resolve_keeps_blas_own_threads(monkeypatch):
    """A tie (differences ±50 µs around 0 on a 1 ms evaluation, on a fake clock) keeps the
    threads BLAS had, the setting of the loss outside fastgrad; a clear one picks the faster."""
    monkeypatch.setattr(blas, "blas_threads", lambda: BASELINE)
    monkeypatch.setattr(blas, "limit_blas_threads", lambda limit: contextlib.nullcontext())

    def timing(differences):
        clock, steps = [0.0], iter([1e-3 + d / 2 * sign for d in differences for sign in (1, -1)])
        monkeypatch.setattr(blas, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

        def evaluate():
            clock[0] += next(steps)
        return blas.time_blas_threads(evaluate, 600)  # a budget of 6 pairs

    # pair k measures (threads, one) when k is even, (one, threads) when odd
    tie = timing([5e-5, -5e-5, -5e-5, 5e-5, 5e-5, -5e-5])
    assert (tie.threads, tie.decided, tie.pairs) == (BASELINE, False, 5)
    slower = timing([5e-4, -5e-4] * 3)  # the threads' evaluation 0.5 ms slower, every pair
    assert (slower.threads, slower.decided) == (1, True)


def test_nothing_is_timed_when_blas_has_one_thread_or_the_check_is_short(baseline_threads):
    seen: list[int] = []
    theta = np.linspace(-1.0, 1.0, 300)
    short = fg.check(_costly_loss(1e-4, 1e-5, seen), 2 * theta[:100], theta[:100], executor="serial")
    set_all(1)
    single = fg.check(_costly_loss(1e-4, 1e-5, seen), 2 * theta, theta, executor="serial")
    assert not [note for note in short.notes + single.notes if note.startswith("BLAS")]
    assert short.evaluations + single.evaluations == len(seen)  # no evaluation beyond the check's


def _set_baseline_threads():
    """A pool initializer: this worker's OpenBLAS on BASELINE threads."""
    set_all(BASELINE)


def _threads_in_worker() -> int:
    return _blas_now()()


WORKERS_THETA = np.linspace(-1.0, 1.0, 40)


def _one_thread_or_raise(theta):
    """Σθ²; raises if BLAS has more than one thread at a perturbed θ (f(θ) itself is
    evaluated in the calling thread, before any worker runs)."""
    threads = _blas_now()()
    if threads != 1 and not np.array_equal(theta, WORKERS_THETA):
        raise RuntimeError(f"BLAS had {threads} threads in a worker")
    return float(np.sum(theta ** 2))


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_several_workers_hold_blas_to_one_thread_each(baseline_threads, kind, monkeypatch):
    """Threads share this process's BLAS; each worker process (here a user's pool whose
    workers start on BASELINE threads) limits its own."""
    for small_batches_too in (executors.ThreadPool, processes.RemoteExecutor):
        monkeypatch.setattr(small_batches_too, "start_seconds", 0.0)
    theta = WORKERS_THETA.copy()
    if kind == "threads":
        gradient = watched(fg.numerical_gradient, _one_thread_or_raise, theta, executor="threads", workers=2)
    else:
        with concurrent.futures.ProcessPoolExecutor(
                2, mp_context=multiprocessing.get_context("forkserver"),
                initializer=_set_baseline_threads) as pool:
            assert watched(pool.submit(_threads_in_worker).result) == BASELINE  # the test can fail
            gradient = watched(fg.numerical_gradient, _one_thread_or_raise, theta, executor=pool)
    np.testing.assert_allclose(gradient, 2 * theta, rtol=1e-7)
