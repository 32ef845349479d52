"""limit_blas_threads: limits every loaded OpenBLAS inside, restores it outside.

Each test runs with threadpoolctl and with the ctypes fallback forced.  The
thread counts are read back through threadpoolctl when it is installed (an
oracle independent of the fallback), else through the fallback itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np  # noqa: F401  (loads numpy's OpenBLAS)
import pytest

from fastgrad.engine import blas

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
