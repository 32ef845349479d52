"""Issue 13: process pools for any loss.  The same numbers as threads and the calling
thread, the same errors, a dead worker reported (never a hang), chunks of O(rows) bytes,
and the default chosen from measured times.  One pool of 2 processes, reused."""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import time

import numba
import numpy as np
import pytest
from test_executor_faults import watched as _in_time  # a hang fails the test, not the suite

import fastgrad as fg
from fastgrad.engine import default_executor, make_evaluator, processes_pay
from fastgrad.engine import processes as processes_module
from fastgrad.engine.processes import (
    BATCH_SECONDS,
    POOL_START_SECONDS,
    ChunkTask,
    ProcessPool,
    parcel,
    run_chunk,
    shutdown_pools,
)
from fastgrad.models import mlp
from fastgrad.parameters import ParameterLayout


@pytest.fixture(scope="module", autouse=True)
def _one_pool():
    """The shared pool of 2 processes, shut down after this module: later tests see a cold pool."""
    yield
    shutdown_pools()


@pytest.fixture(autouse=True)
def _every_batch_on_the_workers(monkeypatch):
    """Small batches would run in the calling thread (RemoteExecutor.start_seconds): here
    every batch goes to the workers, where these tests look."""
    monkeypatch.setattr(processes_module.RemoteExecutor, "start_seconds", 0.0)


@pytest.fixture(scope="module")
def problem():
    p = mlp.problem(4, 6, 3, m=16)
    return p.theta, (p.X, p.Y), mlp.flatten(mlp.grad(p.params, p.X, p.Y))


def _snapshot(*arrays):
    return [(a.dtype.str, a.shape, a.tobytes()) for a in arrays]


def _mlp_batch(problem):
    """A Python MLP evaluator and the batch of every coordinate at ±1e-3."""
    theta, args, _ = problem
    layout, flat = ParameterLayout.from_theta(theta)
    coords = np.arange(flat.size, dtype=np.int64)
    values = flat[:, None] + np.array([[1e-3, -1e-3]])
    return make_evaluator(mlp.loss_numpy, flat, args, layout), coords, values


@numba.njit(cache=False)
def _compiled_loss(theta, X, Y):
    return np.sum(np.sin(theta)) + np.sum(X) * theta[0] ** 2 + np.sum(Y) * theta[-1]


# ------------------------------------------------------------------- the same numbers
@pytest.mark.parametrize("loss", [mlp.loss_numpy, _compiled_loss], ids=["numpy", "numba"])
def test_gradient_bit_identical_serial_threads_processes(problem, loss):
    theta, args, _ = problem
    serial = fg.numerical_gradient(loss, theta, args, executor="serial")
    threads = fg.numerical_gradient(loss, theta, args, executor="threads", workers=2)
    processes = _in_time(fg.numerical_gradient, loss, theta, args, executor="processes", workers=2)
    np.testing.assert_array_equal(threads, serial)
    np.testing.assert_array_equal(processes, serial)


def test_processes_run_the_chunks_and_say_so(problem):
    """A batch long enough for the pool (one that is not runs in the calling thread)."""
    theta, args, grad = problem
    evaluator, coords, values = _mlp_batch(problem)
    flat = evaluator.theta
    told = []
    batch = _in_time(ProcessPool(2).run, evaluator, coords, values, rows_per_chunk=7,
                     progress=lambda c, e: told.append((c, e, os.getpid())))
    assert batch.failure is None and batch.chunks == -(-flat.size // 7)
    assert sum(c for c, _, _ in told) == flat.size and sum(e for _, e, _ in told) == values.size
    assert {pid for _, _, pid in told} == {os.getpid()}  # progress in the caller
    here = fg.engine.CallingThread().run(evaluator, coords, values, rows_per_chunk=7).out
    np.testing.assert_array_equal(batch.out, here)
    report = _in_time(fg.check, mlp.loss_numpy, grad, theta, args, executor="processes", workers=2)
    assert (report.executor, report.workers) == ("processes", 2) and report.passed


def test_a_lambda_and_a_closure_over_args_travel_by_value(problem):
    theta, args, _ = problem
    X, Y = args
    reference = fg.numerical_gradient(mlp.loss_numpy, theta, args, executor="serial")
    by_lambda = _in_time(fg.numerical_gradient, lambda t, X, Y: mlp.loss_numpy(t, X, Y), theta,
                         args, executor="processes", workers=2)

    def closure(t):
        return mlp.loss_numpy(t, X, Y)

    by_closure = _in_time(fg.numerical_gradient, closure, theta, executor="processes", workers=2)
    np.testing.assert_array_equal(by_lambda, reference)
    np.testing.assert_array_equal(by_closure, reference)


# ------------------------------------------------------------------- the same errors
def _planted(theta_at: int, bad: float):
    def loss(theta):
        if theta[theta_at] > 1.0:
            if np.isnan(bad):
                return float("nan")
            raise ValueError("planted")
        return float(np.sum(np.sin(theta)))
    return loss


@pytest.mark.parametrize("bad, match", [(0.0, "raised ValueError at coordinate theta\\[5\\] "
                                               "with step \\+"),
                                        (float("nan"), "non-finite value at coordinate theta\\[5\\]")])
def test_a_failure_in_a_worker_names_coordinate_and_step(bad, match):
    theta = np.ones(40)
    args_data = np.arange(3.0)
    before = _snapshot(theta, args_data)
    loss = _planted(5, bad)
    outcomes = []
    for executor in ("serial", "processes"):
        with pytest.raises(fg.LossError, match=match) as caught:
            _in_time(fg.numerical_gradient, loss, theta, executor=executor,
                     **({"workers": 2} if executor == "processes" else {}))
        outcomes.append((str(caught.value), caught.value.coordinate, caught.value.step))
    assert outcomes[0] == outcomes[1]
    assert _snapshot(theta, args_data) == before


def test_a_worker_that_dies_gives_a_clear_error_and_no_hang():
    def dies(theta):
        if theta[3] > 1.0:
            os._exit(3)
        return float(np.sum(theta ** 2))

    theta = np.ones(30)
    before = _snapshot(theta)
    with pytest.raises(fg.LossError, match="a worker process died"):
        _in_time(fg.numerical_gradient, dies, theta, executor="processes", workers=2)
    assert _snapshot(theta) == before
    again = _in_time(fg.numerical_gradient, lambda t: float(np.sum(t ** 2)), theta,
                     executor="processes", workers=2)  # a new pool replaces the broken one
    np.testing.assert_allclose(again, 2.0 * theta, rtol=1e-8)


def test_ctrl_c_in_the_caller_cancels_the_rest_and_the_pool_stays_usable(problem):
    evaluator, coords, values = _mlp_batch(problem)

    def interrupt(coordinates, evaluations):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _in_time(ProcessPool(2).run, evaluator, coords, values, rows_per_chunk=1, progress=interrupt)
    batch = _in_time(ProcessPool(2).run, evaluator, coords, values, rows_per_chunk=5)
    assert batch.failure is None and np.isfinite(batch.out).all()


# ------------------------------------------------------------------- the user's executor
def test_a_users_process_pool_and_its_map(problem):
    theta, args, grad = problem
    reference = fg.numerical_gradient(mlp.loss_numpy, theta, args, executor="serial")
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        submitted = _in_time(fg.numerical_gradient, mlp.loss_numpy, theta, args, executor=pool)
        mapped = _in_time(fg.numerical_gradient, mlp.loss_numpy, theta, args, workers=pool.map)
        report = _in_time(fg.check, mlp.loss_numpy, grad, theta, args, executor=pool)
    np.testing.assert_array_equal(submitted, reference)
    np.testing.assert_array_equal(mapped, reference)
    assert report.passed and (report.executor, report.workers) == ("ProcessPoolExecutor", 2)


def test_the_executor_option_is_validated_before_any_evaluation():
    calls = []

    def loss(theta, *extra):
        calls.append(1)
        return float(np.sum(theta))

    theta = np.ones(3)
    for options, match in [(dict(executor="gpu"), "executor must be"),
                           (dict(executor="serial", workers=2), "one worker"),
                           (dict(executor=concurrent.futures.ThreadPoolExecutor(1), workers=2),
                            "its own"),
                           (dict(executor="threads", workers=map), "not both"),
                           (dict(executor="processes", args=((x for x in ()),)), "pickle")]:
        with pytest.raises(fg.InputError, match=match):
            fg.check(loss, np.ones(3), theta, **options)
    with pytest.raises(fg.InputError, match="executor must be"):
        fg.Monitor(loss, np.ones(3), executor=3)
    assert not calls


# ------------------------------------------------------------------- O(rows) bytes
def test_a_chunk_sends_o_rows_bytes_whatever_n():
    """The evaluator (θ and args: O(n)) travels once, by file; a chunk of 8 rows does not grow with n."""
    sizes = []
    for n in (10, 100_000):
        layout, flat = ParameterLayout.from_theta(np.linspace(0.0, 1.0, n))
        evaluator = make_evaluator(lambda t, X: float(np.sum(t[:8]) + X[0]), flat, (np.ones(n),), layout)
        found = parcel(evaluator, to_file=True)
        coords = np.arange(8, dtype=np.int64)
        values = flat[coords, None] + np.array([[1e-3, -1e-3]])
        task = ChunkTask(found.token, found.source, coords, values)
        sizes.append(len(pickle.dumps(task)))
        here = fg.engine.CallingThread().run(evaluator, coords, values, rows_per_chunk=8).out
        np.testing.assert_array_equal(run_chunk(task).out, here)
        assert len(pickle.dumps(run_chunk(task))) < 1000
    assert sizes[1] == sizes[0] < 1000


# ------------------------------------------------------------------- the default
def test_processes_pay_only_above_the_pools_cost():
    cold = POOL_START_SECONDS + BATCH_SECONDS
    assert processes_pay(3.0 * cold, 2)  # S/2 + C < S
    assert not processes_pay(1.5 * cold, 2)
    assert processes_pay(1.6 * cold, 4) and not processes_pay(1.3 * cold, 4)  # S·3/4 > C
    assert not processes_pay(1e6, 1)


def test_the_default_chooses_processes_for_a_slow_python_loss_only(monkeypatch, problem):
    theta, args, _ = problem
    monkeypatch.setattr(fg.engine, "available_cores", lambda: 2)
    monkeypatch.setattr(fg.engine, "workers_skip_main", lambda: True)
    layout, flat = ParameterLayout.from_theta(theta)
    python = make_evaluator(mlp.loss_numpy, flat, args, layout)
    compiled = make_evaluator(mlp.loss, flat, args, layout)
    slow, fast = 10.0, 1e-4  # estimated serial seconds
    assert default_executor(python, None, slow).name == "processes"
    assert default_executor(python, None, fast).name == "serial"
    assert default_executor(python, None, None).name == "serial"
    assert default_executor(python, 1, slow).name == "serial"  # workers=1 is the user's word
    assert default_executor(compiled, None, slow).name == "threads"
    unpicklable = make_evaluator(lambda t, g: float(t[0]), flat, ((lambda: (yield))(),), layout)
    assert default_executor(unpicklable, None, slow).name == "serial"
    monkeypatch.setattr(fg.engine, "workers_skip_main", lambda: False)  # python script.py
    assert default_executor(python, None, slow).name == "serial"


def test_a_slow_first_call_alone_does_not_choose_processes(monkeypatch):
    """The first call of a loss is slow (imports, cold caches); the next ones are fast: the
    default stays on the calling thread, after CONFIRMING_CALLS more calls at θ."""
    monkeypatch.setattr(fg.engine, "available_cores", lambda: 2)
    monkeypatch.setattr(fg.engine, "workers_skip_main", lambda: True)
    calls = []

    def loss(theta):
        if not calls:
            time.sleep(0.05)  # 0.05 s × 2n = 100 s of estimated serial work
        calls.append(1)
        return float(np.sum(theta ** 2))

    theta = np.ones(1000)
    report = fg.check(loss, 2.0 * theta, theta)
    assert report.executor == "serial" and report.passed
    assert len(calls) == report.evaluations  # the confirming calls are counted


def test_chunks_shrink_at_the_end_of_a_batch_and_cover_it_once():
    from fastgrad.engine.executors import chunk_starts

    for rows, size, workers, smallest in [(9610, 535, 2, 81), (10, 3, 2, 1), (7, 7, 4, 1),
                                          (100_000, 1, 8, 1), (1000, 40, 3, 40), (1000, 40, 3, None)]:
        bounds = chunk_starts(rows, size, workers, smallest)
        sizes = np.diff(bounds)
        assert bounds[0] == 0 and bounds[-1] == rows and (sizes > 0).all() and (sizes <= size).all()
        floor = size if smallest is None else smallest
        assert (sizes[:-1] >= min(floor, size)).all()
        if floor >= size:
            assert (sizes[:-1] == size).all()
    tail = np.diff(chunk_starts(9610, 535, 2, 81))
    assert tail[0] == 535 and tail[-2] == 81 and tail[-1] <= 81
    assert list(tail[tail < 535][:-1]) == sorted(tail[tail < 535][:-1], reverse=True)


def test_workers_skip_main_tells_a_script_from_a_package(monkeypatch):
    import sys
    import types

    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert processes_module.workers_skip_main()  # interactive: no file
    main.__file__ = "/tmp/script.py"
    assert not processes_module.workers_skip_main()
    main.__spec__ = types.SimpleNamespace(name="pytest.__main__")
    assert processes_module.workers_skip_main()
