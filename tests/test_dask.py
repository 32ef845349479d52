"""Issue 13 item 4: a check's chunks as tasks on a dask.distributed cluster.  One LocalCluster of
2 worker processes (1 thread each) over TCP on localhost for the module; skipped without the
``dask`` extra.  The same numbers and verdicts as the calling thread, the model sent once, a
killed worker's tasks run again, the same errors, Ctrl-C cancels and leaves the cluster usable."""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import fastgrad as fg  # noqa: E402
from fastgrad.engine import distributed as distributed_module  # noqa: E402
from fastgrad.engine import make_engine  # noqa: E402
from fastgrad.engine.distributed import DaskExecutor  # noqa: E402
from fastgrad.models import mlp  # noqa: E402
from fastgrad.parameters import ParameterLayout  # noqa: E402

TIMEOUT = 120  # seconds: a hang fails the test instead of the suite


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as made:
        yield made


@pytest.fixture(autouse=True)
def _every_batch_in_tasks(monkeypatch, client):
    """Both workers up (a test may have killed one); every batch on the cluster, one chunk
    a task (TASK_SECONDS would join these small batches into a task or two), so that there
    are several tasks to count, kill and cancel."""
    client.wait_for_workers(2, timeout=TIMEOUT)
    monkeypatch.setattr(DaskExecutor, "start_seconds", 0.0)
    monkeypatch.setattr(distributed_module, "TASK_SECONDS", 0.0)


@pytest.fixture(scope="module")
def problem():
    p = mlp.problem(4, 6, 3, m=16)
    return p, p.theta, (p.X, p.Y), mlp.flatten(mlp.grad(p.params, p.X, p.Y))


def _snapshot(*arrays):
    return [(a.dtype.str, a.shape, a.tobytes()) for a in arrays]


def _in_time(function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a thread, failing the test if it takes TIMEOUT."""
    with concurrent.futures.ThreadPoolExecutor(1) as waiter:
        return waiter.submit(function, *args, **kwargs).result(timeout=TIMEOUT)


def _mlp_batch(theta, args):
    """A Python MLP evaluator and the batch of every coordinate at ±1e-3."""
    layout, flat = ParameterLayout.from_theta(theta)
    run = make_engine(mlp.loss_numpy, flat, args, layout, executor="serial")
    coords = np.arange(flat.size, dtype=np.int64)
    return run.evaluator, coords, flat[:, None] + np.array([[1e-3, -1e-3]])


# ------------------------------------------------------------------- the same numbers
def test_gradient_bit_identical_to_serial_and_the_report_says_dask(client, problem):
    _, theta, args, grad = problem
    serial = fg.numerical_gradient(mlp.loss_numpy, theta, args, executor="serial")
    on_cluster = _in_time(fg.numerical_gradient, mlp.loss_numpy, theta, args, executor=client)
    np.testing.assert_array_equal(on_cluster, serial)
    report = _in_time(fg.check, mlp.loss_numpy, grad, theta, args, executor=client)
    assert (report.executor, report.workers) == ("dask", 2) and report.passed and report.chunks > 2


def test_the_verdict_is_the_serial_one_on_a_right_and_a_wrong_gradient(client, problem):
    p, theta, args, grad = problem
    wrong = mlp.flatten(mlp.grad_buggy(p.params, p.X, p.Y))
    before = _snapshot(theta, *args, grad, wrong)
    for given, passes in [(grad, True), (wrong, False)]:
        serial = fg.check(mlp.loss_numpy, given, theta, args, executor="serial")
        on_cluster = _in_time(fg.check, mlp.loss_numpy, given, theta, args, executor=client)
        assert serial.passed is on_cluster.passed is passes
        assert (on_cluster.verdict, on_cluster.failed) == (serial.verdict, serial.failed)
        np.testing.assert_array_equal(on_cluster.details.coords, serial.details.coords)
        np.testing.assert_array_equal(on_cluster.details.numerical, serial.details.numerical)
    assert _snapshot(theta, *args, grad, wrong) == before


def test_the_model_is_sent_once_per_worker_and_a_task_carries_only_its_rows(client, monkeypatch, tmp_path):
    """The evaluator is scattered once (to both workers) for the whole check and unpickled
    once per worker; every task is a few hundred bytes although θ and args are 80 kB."""
    unpickled = tmp_path / "unpickled"

    class Recorder:  # defined here: cloudpickle sends it by value
        def __init__(self, path):
            self.path = path

        def __setstate__(self, state):
            self.__dict__.update(state)
            with open(self.path, "a") as file:
                file.write(f"{os.getpid()}\n")

    scattered, submitted = [], []
    scatter, submit = client.scatter, client.submit

    def counting_scatter(data, **options):
        scattered.append((len(data), options))
        return scatter(data, **options)

    def measuring_submit(function, *args, **options):
        submitted.append(len(pickle.dumps(args[1:])))  # the task; args[0] is the scattered future
        return submit(function, *args, **options)

    monkeypatch.setattr(client, "scatter", counting_scatter)
    monkeypatch.setattr(client, "submit", measuring_submit)
    n = 5_000
    theta, data = np.linspace(0.0, 1.0, n), np.ones(n)

    def loss(t, data, recorder):
        return float(np.sum(np.sin(t)) + t @ data * 1e-3)

    report = _in_time(fg.check, loss, np.cos(theta) + 1e-3 * data, theta, (data, Recorder(str(unpickled))),
                      executor=client, sample=64, seed=0)
    assert report.passed and report.chunks > 4
    assert len(scattered) == 1 and scattered[0][0] > 16 * n and scattered[0][1]["broadcast"]
    assert len(submitted) == report.chunks and max(submitted) < 1000
    pids = unpickled.read_text().split()
    assert len(pids) == len(set(pids)) <= 2  # once per worker process


def test_chunks_are_joined_into_tasks_of_task_seconds_measured_in_the_workers(client, monkeypatch):
    """A loss that sleeps 1 ms takes at least 2 ms a row (2 points): with TASK_SECONDS = 50 ms
    a task holds at most 25 rows, and 1-row chunks are joined (fewer tasks than rows)."""
    monkeypatch.setattr(distributed_module, "TASK_SECONDS", 0.05)

    def loss(theta):
        time.sleep(0.001)
        return float(np.sum(np.sin(theta)))

    layout, flat = ParameterLayout.from_theta(np.linspace(0.0, 1.0, 100))
    evaluator = make_engine(loss, flat, (), layout, executor="serial").evaluator
    coords = np.arange(flat.size, dtype=np.int64)
    values = flat[:, None] + np.array([[1e-3, -1e-3]])
    told = []
    batch = _in_time(DaskExecutor(client).run, evaluator, coords, values, rows_per_chunk=1,
                     progress=lambda c, e: told.append(c))
    assert sum(told) == coords.size and max(told) <= 25 and len(told) < coords.size // 2
    assert batch.chunks == len(told) and batch.failure is None
    np.testing.assert_array_equal(batch.out, fg.engine.CallingThread().run(evaluator, coords, values,
                                                                           rows_per_chunk=1).out)


# ------------------------------------------------------------------- faults
def test_a_killed_worker_has_its_tasks_run_again_and_the_check_completes(client, tmp_path):
    marker = tmp_path / "killed"

    def loss(theta):
        if theta[20] > 1.0:  # the first worker to evaluate coordinate 20 dies, once
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os._exit(3)
        return float(np.sum(np.sin(theta)) + np.prod(theta[:3]))

    theta = np.ones(40)
    marker.touch()  # no death in this process
    serial = fg.numerical_gradient(loss, theta, executor="serial")
    marker.unlink()
    before = set(client.scheduler_info()["workers"])  # addresses: a new worker has a new port
    on_cluster = _in_time(fg.numerical_gradient, loss, theta, executor=client)
    assert marker.exists()  # a worker did die
    np.testing.assert_array_equal(on_cluster, serial)
    client.wait_for_workers(2, timeout=TIMEOUT)  # the nanny started a new one
    after = set(client.scheduler_info()["workers"])
    assert before != after


def test_a_task_that_kills_every_worker_stops_the_check(client, monkeypatch):
    """dask gives up on a task after allowed-failures deaths (0 here): "a worker process died"."""
    monkeypatch.setattr(client.cluster.scheduler, "allowed_failures", 0)

    def dies(theta):
        if theta[3] > 1.0:
            os._exit(3)
        return float(np.sum(theta ** 2))

    theta = np.ones(30)
    with pytest.raises(fg.LossError, match="a worker process died"):
        _in_time(fg.numerical_gradient, dies, theta, executor=client)
    client.wait_for_workers(2, timeout=TIMEOUT)
    np.testing.assert_allclose(_in_time(fg.numerical_gradient, lambda t: float(np.sum(t ** 2)), theta,
                                        executor=client), 2.0 * theta, rtol=1e-8)


def _planted(theta_at: int, bad: float):
    def loss(theta, data):
        if theta[theta_at] > 1.0:
            if np.isnan(bad):
                return float("nan")
            raise ValueError("planted")
        return float(np.sum(np.sin(theta)) + data[0])
    return loss


@pytest.mark.parametrize("bad, match", [(0.0, "raised ValueError at coordinate theta\\[5\\] with step \\+"),
                                        (float("nan"), "non-finite value at coordinate theta\\[5\\]")])
def test_a_failure_on_a_worker_names_coordinate_and_step_as_serial(client, bad, match):
    theta, data = np.ones(40), np.arange(3.0)
    before = _snapshot(theta, data)
    outcomes = []
    for executor in ("serial", client):
        with pytest.raises(fg.LossError, match=match) as caught:
            _in_time(fg.numerical_gradient, _planted(5, bad), theta, (data,), executor=executor)
        outcomes.append((str(caught.value), caught.value.coordinate, caught.value.step))
    assert outcomes[0] == outcomes[1]
    assert _snapshot(theta, data) == before


def test_ctrl_c_cancels_the_tasks_and_the_client_stays_usable(client, monkeypatch, problem):
    """Tasks of 0.2 s (a sleeping loss): at the first one back, the others are running or
    queued on the workers, and are cancelled; the next batch on the client runs."""
    layout, flat = ParameterLayout.from_theta(np.ones(20))
    slow = make_engine(lambda t: time.sleep(0.1) or float(np.sum(t)), flat, (), layout,
                       executor="serial").evaluator
    coords = np.arange(flat.size, dtype=np.int64)
    values = flat[:, None] + np.array([[1e-3, -1e-3]])
    before = _snapshot(flat)
    submitted = []
    submit = client.submit

    def keeping_submit(*args, **options):
        submitted.append(submit(*args, **options))
        return submitted[-1]

    def interrupt(coordinates, evaluations):
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "submit", keeping_submit)
    with pytest.raises(KeyboardInterrupt):
        _in_time(DaskExecutor(client).run, slow, coords, values, rows_per_chunk=1, progress=interrupt)
    statuses = [future.status for future in submitted]
    assert len(statuses) == 4 and statuses.count("cancelled") >= 2, statuses  # 2 per worker in flight
    assert set(statuses) <= {"cancelled", "finished"} and _snapshot(flat) == before
    _, theta, args, _ = problem
    evaluator, coords, values = _mlp_batch(theta, args)
    batch = _in_time(DaskExecutor(client).run, evaluator, coords, values, rows_per_chunk=5)
    here = fg.engine.CallingThread().run(evaluator, coords, values, rows_per_chunk=5).out
    assert batch.failure is None
    np.testing.assert_array_equal(batch.out, here)


def test_progress_counts_finished_tasks_in_the_caller(client, problem):
    _, theta, args, _ = problem
    evaluator, coords, values = _mlp_batch(theta, args)
    told = []
    batch = _in_time(DaskExecutor(client).run, evaluator, coords, values, rows_per_chunk=7,
                     progress=lambda c, e: told.append((c, e, os.getpid())))
    assert batch.failure is None and batch.chunks == len(told) == -(-coords.size // 7)
    assert sum(c for c, _, _ in told) == coords.size and sum(e for _, e, _ in told) == values.size
    assert {pid for _, _, pid in told} == {os.getpid()}


# ------------------------------------------------------------------- the option
def test_a_client_is_an_executor_without_workers(client):
    with pytest.raises(fg.InputError, match="its own"):
        fg.check(lambda t: float(np.sum(t)), np.ones(3), np.ones(3), executor=client, workers=2)


def test_import_fastgrad_does_not_import_dask():
    code = "import sys, fastgrad; print([m for m in ('dask', 'distributed') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _tanh_rows(x, matrix):
    return np.tanh(matrix @ x)


def test_a_jacobian_and_a_vjp_on_the_cluster_as_in_the_calling_thread(client):
    """The vector engine's chunks (group rows of fun's m outputs) and a VJP's scalar loss run as
    tasks: the same verdicts and, for the Jacobian, the same worst entries as serially."""
    rng = np.random.default_rng(3)
    matrix, x = rng.standard_normal((5, 4)), rng.standard_normal(4)
    jac = (1.0 - np.tanh(matrix @ x) ** 2)[:, None] * matrix
    wrong = jac.copy()
    wrong[1, 2] *= 1.001
    for given, verdict in ((jac, "pass"), (wrong, "fail")):
        serial = fg.check_jacobian(_tanh_rows, given, x, args=(matrix,), seed=0, executor="serial")
        remote = _in_time(fg.check_jacobian, _tanh_rows, given, x, args=(matrix,), seed=0,
                          executor=client)
        assert serial.verdict == remote.verdict == verdict
        assert [e.label for e in remote.worst] == [e.label for e in serial.worst]
        assert [e.difference for e in remote.worst] == [e.difference for e in serial.worst]
    report = _in_time(fg.check_vjp, _tanh_rows, lambda x, u, a: wrong.T @ u, x, args=(matrix,),
                      seed=0, executor=client)
    assert report.verdict == "fail" and report.reports[0].executor.startswith("dask")


def test_a_task_the_scheduler_cancels_is_run_again(client, monkeypatch):
    """A worker that dies at the wrong moment can make the scheduler drop a task ("cancelled
    for reason: already forgotten", seen once in CI): it is run again, and the check completes
    with the serial values; past LOST_TASKS_RUN_AGAIN such losses it stops as a worker death."""
    from fastgrad.engine import distributed as executor_module

    submit = client.submit
    cancelled = []

    def cancel_the_first(*args, **kwargs):
        future = submit(*args, **kwargs)
        if not cancelled:
            cancelled.append(future.key)
            client.cancel([future])
        return future

    monkeypatch.setattr(client, "submit", cancel_the_first)
    theta = np.linspace(0.5, 1.5, 30)

    def loss(t):
        return float(np.sum(np.sin(t)))

    on_cluster = _in_time(fg.numerical_gradient, loss, theta, executor=client)
    assert cancelled
    np.testing.assert_array_equal(on_cluster, fg.numerical_gradient(loss, theta, executor="serial"))

    def cancel_every(*args, **kwargs):
        future = submit(*args, **kwargs)
        client.cancel([future])
        return future

    monkeypatch.setattr(client, "submit", cancel_every)
    monkeypatch.setattr(executor_module, "LOST_TASKS_RUN_AGAIN", 2)
    with pytest.raises(fg.LossError, match="worker"):
        _in_time(fg.numerical_gradient, loss, theta, executor=client)
