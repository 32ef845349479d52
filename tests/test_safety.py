"""Nothing lost: the user's theta, grad and args are bit-identical after a check returns,
after it raises, and after a KeyboardInterrupt; a loss or grad that writes to its input
cannot reach the user's arrays."""

from __future__ import annotations

import _thread
import threading
import time

import numba
import numpy as np
import pytest

import fastgrad as fg
from fastgrad.models import mlp


def _snapshot(*objects):
    """Bytes, dtype and shape of every array in objects (arrays, dicts, tuples)."""
    out = []
    for obj in objects:
        if isinstance(obj, dict):
            out.append({k: _snapshot(v) for k, v in obj.items()})
        elif isinstance(obj, (tuple, list)):
            out.append([_snapshot(v) for v in obj])
        elif isinstance(obj, np.ndarray):
            out.append((obj.dtype.str, obj.shape, obj.tobytes(), obj.flags.writeable))
        else:
            out.append(repr(obj))
    return out


def _differs_in_one(point, reference):
    return np.count_nonzero(np.ravel(point) != np.ravel(reference)) == 1


# ----------------------------------------------------------------- after it returns
def test_arrays_intact_after_a_check_returns(mlp_problem):
    problem, args, grad = mlp_problem
    params = {k: v.copy() for k, v in problem.params.items()}
    wrong = {k: v.copy() for k, v in grad.items()}
    wrong["b2"][1] = -wrong["b2"][1]
    before = _snapshot(params, grad, wrong, args)
    for loss, g in [(mlp.loss, grad), (mlp.loss_params, grad), (mlp.loss, wrong),
                    (mlp.loss_params, mlp.grad)]:
        fg.check(loss, g, params, args)
        fg.numerical_gradient(loss, params, args)
        assert _snapshot(params, grad, wrong, args) == before
    flat = problem.theta
    flat_grad = mlp.flatten(grad)
    before = _snapshot(flat, flat_grad)
    fg.check(mlp.loss, flat_grad, flat, args, workers=2)
    fg.check(mlp.loss, flat_grad, flat, args, engine="python")
    assert _snapshot(flat, flat_grad) == before


# ----------------------------------------------------------------- after it raises
def test_arrays_intact_after_a_python_loss_raises_on_its_50th_call():
    theta = np.linspace(-2.0, 2.0, 60).reshape(3, 4, 5)
    grad = 3 * theta ** 2
    before = _snapshot(theta, grad)
    calls, where = [0], []

    def loss(x):
        calls[0] += 1
        if calls[0] == 50:
            assert _differs_in_one(x, theta)  # midway through the coordinate loop
            i = int(np.flatnonzero(x.ravel() != theta.ravel())[0])
            where.append((np.unravel_index(i, theta.shape), float(x.ravel()[i] - theta.ravel()[i])))
            raise ZeroDivisionError("planted failure")
        return float(np.sum(x ** 3))

    with pytest.raises(fg.LossError) as caught:
        fg.check(loss, grad, theta)
    (index, step), = where
    label = f"theta[{', '.join(map(str, index))}]"
    message = str(caught.value)
    assert "ZeroDivisionError" in message and "planted failure" in message
    assert label in message and f"{step:+.3e}" in message
    assert caught.value.coordinate == label and caught.value.step == step
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert _snapshot(theta, grad) == before


K_RAISE = 23


@numba.njit(nogil=True)
def raise_above(x, threshold):
    if x[K_RAISE] > threshold:
        raise ValueError("theta[23] above the threshold")
    total = 0.0
    for i in range(x.size):
        total += np.sin(x[i]) * x[i]
    return total


def test_arrays_intact_after_a_compiled_loss_raises_midway():
    x = np.linspace(0.5, 2.0, 40)
    grad = np.sin(x) + x * np.cos(x)
    threshold = np.array(x[K_RAISE] + 1e-6)  # crossed by the step at theta[23] only
    before = _snapshot(x, grad, threshold)
    with pytest.raises(fg.LossError) as caught:
        fg.check(raise_above, grad, x, (threshold,), workers=2)
    message = str(caught.value)
    assert f"theta[{K_RAISE}]" in message and "ValueError" in message
    h = fg.check(raise_above, grad, x, (np.array(10.0),)).relative_step * max(1.0, x[K_RAISE])
    assert f"{(x[K_RAISE] + h) - x[K_RAISE]:+.3e}" in message
    assert caught.value.coordinate == f"theta[{K_RAISE}]"
    assert _snapshot(x, grad, threshold) == before


# ----------------------------------------------------------------- after KeyboardInterrupt
def _interrupting_loss(theta, on_call):
    calls = [0]

    def loss(x):
        if _differs_in_one(x, theta):
            calls[0] += 1
            if calls[0] == on_call:
                raise KeyboardInterrupt
        time.sleep(1e-4)
        return float(np.sum(x ** 3))

    return loss, calls


def test_keyboard_interrupt_from_a_python_loss_propagates():
    theta = np.linspace(-2.0, 2.0, 60).reshape(3, 4, 5)
    grad = 3 * theta ** 2
    before = _snapshot(theta, grad)
    loss, calls = _interrupting_loss(theta, 25)
    with pytest.raises(KeyboardInterrupt):
        fg.check(loss, grad, theta)
    assert calls[0] == 25
    assert _snapshot(theta, grad) == before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_keyboard_interrupt_from_a_python_loss_propagates_with_workers():
    theta = np.linspace(-2.0, 2.0, 60).reshape(3, 4, 5)
    grad = 3 * theta ** 2
    before = _snapshot(theta, grad)
    loss, _ = _interrupting_loss(theta, 25)
    try:
        with pytest.raises(KeyboardInterrupt):
            report = fg.check(loss, grad, theta, workers=2)
            print(report)  # shown on failure: NaN numerical values, verdict warn
    finally:
        assert _snapshot(theta, grad) == before


@numba.njit(nogil=True)
def slow_loss(x, repeats):
    """sum(sin(x)), computed `repeats` times over (~10 ms a call at n = 400, repeats = 3000)."""
    total = 0.0
    for r in range(repeats):
        s = 0.0
        for i in range(x.size):
            s += np.sin(x[i] + r * 0.0)
        total += s
    return total / repeats


def test_interrupt_main_stops_a_multi_worker_compiled_check():
    repeats = np.int64(3000)
    x = np.linspace(0.1, 1.0, 400)
    grad = np.cos(x)
    fg.check(slow_loss, grad[:4], x[:4], (repeats,), workers=2)  # compile outside the clock
    started = time.perf_counter()
    slow_loss(x, repeats)
    per_call = time.perf_counter() - started
    full = 2 * x.size * per_call / 2  # the coordinate loop alone, on 2 workers
    before = _snapshot(x, grad)
    timers = []

    def progress(coordinates, evaluations):  # from a worker thread, once a chunk is done
        if not timers:
            timer = threading.Timer(0.05, _thread.interrupt_main)
            timers.append(timer)
            timer.start()

    started = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            fg.check(slow_loss, grad, x, (repeats,), workers=2, progress=progress)
    finally:
        for timer in timers:
            timer.cancel()
            timer.join()
    elapsed = time.perf_counter() - started
    assert timers, "the check never reached the coordinate loop"
    print(f"interrupted after {elapsed:.2f} s of a {full:.2f} s coordinate loop")
    assert elapsed < 0.7 * full, (elapsed, full)  # it stopped early
    assert _snapshot(x, grad) == before
    assert not [t for t in threading.enumerate()
                if t.name.startswith("fastgrad-") and t.is_alive()]  # every worker stopped


# ----------------------------------------------------------------- writing callables
def test_a_loss_writing_to_its_input_cannot_change_theta():
    rng = np.random.default_rng(3)
    theta = {"A": rng.standard_normal((3, 3)), "b": rng.standard_normal(3)}
    grad = {"A": 2 * theta["A"], "b": 2 * theta["b"]}
    before = _snapshot(theta, grad)

    def loss(p):
        value = float(np.sum(p["A"] ** 2) + np.sum(p["b"] ** 2))
        p["A"][0, 0] += 1.0
        p["b"][:] = 0.0
        return value

    with pytest.raises(fg.LossError, match="modifies its input"):
        fg.check(loss, grad, theta)
    assert _snapshot(theta, grad) == before


@numba.njit(nogil=True)
def writing_loss(x):
    value = np.sum(x * x)
    x[0] = 99.0
    return value


def test_a_compiled_loss_writing_to_its_input_cannot_change_theta():
    x = np.linspace(-1.0, 1.0, 8)
    before = _snapshot(x)
    with pytest.raises(fg.LossError, match=r"modifies its input: theta\[0\]"):
        fg.check(writing_loss, 2 * x, x)
    assert _snapshot(x) == before


def test_a_grad_writing_to_its_input_cannot_change_theta():
    x = np.linspace(-1.0, 1.0, 8).reshape(2, 4)
    before = _snapshot(x)

    def grad(t):
        g = 2 * t.copy()
        t *= 100.0
        return g

    report = fg.check(lambda t: float(np.sum(t * t)), grad, x)
    assert report.passed
    assert _snapshot(x) == before
