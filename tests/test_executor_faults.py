"""Issue 13, item 5: faults on every local executor.  The calling thread, threads, fastgrad's
process pool, a user's ProcessPoolExecutor, its ``map``, and a multiprocessing.Pool's ``map``
must all leave θ, grad and args bit-identical (after a return, an error, an interrupt), report a
failing loss with the same LossError, report a dead worker process (never hang) and compute
bit-identical gradients.  Every call runs under a watchdog: a hang fails the test."""

from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import threading
import time

import numba
import numpy as np
import pytest

import fastgrad as fg
from fastgrad.engine import executors as executors_module
from fastgrad.engine import processes as processes_module
from fastgrad.models import mlp

#: Seconds a call may take before the test calls it a hang (a warm pool answers in under one).
TIMEOUT = 60
LOCAL = ["serial", "threads", "processes", "user pool", "pool.map", "multiprocessing map"]
IN_OTHER_PROCESSES = LOCAL[2:]


def _context():
    """forkserver: a fork of this multi-threaded process could deadlock."""
    return multiprocessing.get_context("forkserver")


def _pool_for(kind: str):
    """A new pool of 2 processes behind the executor ``kind`` (None: no pool)."""
    if kind in ("user pool", "pool.map"):
        return concurrent.futures.ProcessPoolExecutor(2, mp_context=_context())
    if kind == "multiprocessing map":
        return _context().Pool(2)
    return None


def _options(kind: str, pool) -> dict:
    """The keywords of fg.check / fg.numerical_gradient that run on ``kind``."""
    return {"serial": dict(executor="serial"),
            "threads": dict(executor="threads", workers=2),
            "processes": dict(executor="processes", workers=2),
            "user pool": dict(executor=pool),
            "pool.map": dict(workers=pool.map if pool is not None else None),
            "multiprocessing map": dict(workers=pool.map if pool is not None else None)}[kind]


def _close(pool) -> None:
    if isinstance(pool, concurrent.futures.Executor):
        pool.shutdown(wait=False, cancel_futures=True)
    elif pool is not None:
        pool.terminate()


@pytest.fixture(scope="module")
def pools():
    """One pool per kind for the tests whose workers live (a dying worker gets a new one)."""
    made = {kind: _pool_for(kind) for kind in LOCAL}
    yield made
    for pool in made.values():
        _close(pool)
    processes_module.shutdown_pools()


@pytest.fixture(autouse=True)
def _every_batch_on_the_workers(monkeypatch):
    """A small batch would run in the calling thread (start_seconds): here it goes to the workers."""
    monkeypatch.setattr(processes_module.RemoteExecutor, "start_seconds", 0.0)
    monkeypatch.setattr(executors_module.ThreadPool, "start_seconds", 0.0)


def watched(function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a daemon thread: its value, or what it raised; the test
    fails if it is still running after TIMEOUT seconds (the thread is abandoned)."""
    box: dict = {}

    def target():
        try:
            box["value"] = function(*args, **kwargs)
        except BaseException as error:  # KeyboardInterrupt included: re-raised below
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    if thread.is_alive():
        pytest.fail(f"still running after {TIMEOUT} s: a hang")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _snapshot(*arrays):
    return [(a.dtype.str, a.shape, a.strides, a.flags.writeable, a.tobytes()) for a in arrays]


# --------------------------------------------------------------------- the losses
def quadratic(theta, A, b):
    """0.5·θᵀAθ − bᵀθ: its gradient Aθ − b."""
    return float(0.5 * theta @ (A @ theta) - b @ theta)


def raises_at_5(theta, A, b):
    if theta[5] > 1.0:
        raise ValueError("planted")
    return quadratic(theta, A, b)


def nan_at_5(theta, A, b):
    return float("nan") if theta[5] > 1.0 else quadratic(theta, A, b)


def exits_at_5(theta, A, b):
    if theta[5] > 1.0:
        os._exit(1)
    return quadratic(theta, A, b)


def segfaults_at_5(theta, A, b):
    if theta[5] > 1.0:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return quadratic(theta, A, b)


@numba.njit(cache=False)
def quadratic_numba(theta, A, b):
    return 0.5 * theta @ (A @ theta) - b @ theta


@pytest.fixture
def problem():
    """θ = 1 (so that θ[5] + h > 1), a symmetric A, b, and the analytic gradient; n = 24."""
    rng = np.random.default_rng(13)
    n = 24
    M = rng.standard_normal((n, n))
    A, b, theta = (M + M.T) / n, rng.standard_normal(n), np.ones(n)
    return theta, (A, b), A @ theta - b


# --------------------------------------------------------------------- the user's arrays
def _interrupt(coordinates, evaluations):
    raise KeyboardInterrupt


@pytest.mark.parametrize("kind", LOCAL)
@pytest.mark.parametrize("outcome", ["return", "error", "interrupt"])
def test_theta_grad_and_args_bit_identical_after(outcome, kind, pools, problem):
    theta, args, grad = problem
    theta.flags.writeable = False if outcome == "return" else True  # a read-only θ too
    before = _snapshot(theta, grad, *args)
    options = _options(kind, pools[kind])
    if outcome == "return":
        report = watched(fg.check, quadratic, grad, theta, args, **options)
        assert report.passed, str(report)
    elif outcome == "error":
        with pytest.raises(fg.LossError, match="raised ValueError"):
            watched(fg.check, raises_at_5, grad, theta, args, **options)
    else:
        with pytest.raises(KeyboardInterrupt):
            watched(fg.check, quadratic, grad, theta, args, progress=_interrupt, **options)
    assert _snapshot(theta, grad, *args) == before
    # the executor is usable at once, and gives the serial numbers
    again = watched(fg.numerical_gradient, quadratic, theta, args, **options)
    np.testing.assert_array_equal(again, fg.numerical_gradient(quadratic, theta, args, executor="serial"))


# --------------------------------------------------------------------- the same LossError
@pytest.mark.parametrize("loss, match", [(raises_at_5, r"raised ValueError at coordinate theta\[5\] "
                                                       r"with step \+"),
                                         (nan_at_5, r"non-finite value at coordinate theta\[5\] "
                                                    r"with step \+")], ids=["raises", "nan"])
def test_a_failing_loss_gives_the_same_loss_error_everywhere(loss, match, pools, problem):
    theta, args, _ = problem
    outcomes = {}
    for kind in LOCAL:
        with pytest.raises(fg.LossError, match=match) as caught:
            watched(fg.numerical_gradient, loss, theta, args, **_options(kind, pools[kind]))
        outcomes[kind] = (str(caught.value), caught.value.coordinate, caught.value.step)
    assert all(outcome == outcomes["threads"] for outcome in outcomes.values()), outcomes


# --------------------------------------------------------------------- a worker that dies
@pytest.mark.parametrize("kind", IN_OTHER_PROCESSES)
# A segfault is the signal, or an exit code when the worker inherited a fault handler that
# catches it (pytest's faulthandler, in a pool started by fork): either way it is named.
@pytest.mark.parametrize("loss, how", [(exits_at_5, ("exited with code 1",)),
                                       (segfaults_at_5, ("killed by signal SIGSEGV", "exited with code"))],
                         ids=["os._exit", "segfault"])
def test_a_dying_worker_is_named_and_nothing_hangs(kind, loss, how, problem):
    theta, args, _ = problem
    pool = _pool_for(kind)
    options = _options(kind, pool)
    before = _snapshot(theta, *args)
    try:
        with pytest.raises(fg.LossError, match="a worker process died") as caught:
            watched(fg.numerical_gradient, loss, theta, args, **options)
        assert any(text in str(caught.value) for text in how) and "theta[" in str(caught.value)
        assert _snapshot(theta, *args) == before
        if kind in ("user pool", "pool.map"):  # concurrent.futures keeps a broken pool broken
            assert "cannot run anything again" in str(caught.value)
            with pytest.raises(fg.InputError, match="broken"):
                watched(fg.numerical_gradient, quadratic, theta, args, **options)
        else:  # fastgrad replaces its pool; multiprocessing.Pool replaces the process
            again = watched(fg.numerical_gradient, quadratic, theta, args, **options)
            np.testing.assert_array_equal(again, fg.numerical_gradient(quadratic, theta, args,
                                                                       executor="serial"))
    finally:
        _close(pool)


def test_fastgrads_pool_broken_between_checks_is_replaced(problem):
    """A worker of fastgrad's pool killed while idle (the out-of-memory killer, say): the next
    check gets a new pool, not the broken one."""
    theta, args, _ = problem
    reference = fg.numerical_gradient(quadratic, theta, args, executor="serial")
    watched(fg.numerical_gradient, quadratic, theta, args, executor="processes", workers=2)
    pool = processes_module.shared_pool(2)
    victim = next(iter(pool._processes.values()))
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while not pool._broken and time.monotonic() < deadline:  # concurrent.futures notices
        time.sleep(0.01)
    assert pool._broken
    again = watched(fg.numerical_gradient, quadratic, theta, args, executor="processes", workers=2)
    np.testing.assert_array_equal(again, reference)
    assert processes_module.shared_pool(2) is not pool


# --------------------------------------------------------------------- the same numbers
@pytest.mark.parametrize("loss", [quadratic, quadratic_numba, mlp.loss_numpy],
                         ids=["numpy", "numba", "numpy-mlp"])
def test_the_gradient_is_bit_identical_on_every_executor(loss, pools):
    if loss is mlp.loss_numpy:
        p = mlp.problem(3, 5, 2, m=12)
        theta, args = p.theta, (p.X, p.Y)
    else:
        rng = np.random.default_rng(5)
        M = rng.standard_normal((16, 16))
        theta, args = rng.standard_normal(16), ((M + M.T) / 16, rng.standard_normal(16))
    gradients = {kind: watched(fg.numerical_gradient, loss, theta, args, **_options(kind, pools[kind]))
                 for kind in LOCAL}
    for kind, gradient in gradients.items():
        np.testing.assert_array_equal(gradient, gradients["serial"], err_msg=kind)
