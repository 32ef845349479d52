"""Engines: compiled for an @njit loss, Python otherwise; bit-for-bit the same numerical
gradient whatever the workers or the engine; no copy of theta per coordinate; BLAS."""

from __future__ import annotations

import time

import numba
import numpy as np
import pytest
from conftest import JIT_DISABLED

import fastgrad as fg
from fastgrad.engine import available_cores
from fastgrad.engine.compiled import is_compiled
from fastgrad.models import mlp


def _root(array):
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


@pytest.fixture(scope="module")
def flat_mlp(mlp_problem):
    problem, args, grad = mlp_problem
    return problem.theta, args, mlp.flatten(grad)


# ----------------------------------------------------------------- engine choice
def test_compiled_loss_uses_numba_on_every_core(flat_mlp):
    theta, args, grad = flat_mlp
    report = fg.check(mlp.loss, grad, theta, args)
    assert report.engine == "numba"
    assert report.workers == available_cores() == len(__import__("os").sched_getaffinity(0))
    assert report.passed
    assert "numba" in str(report)


def test_python_callable_uses_python_with_one_worker(flat_mlp):
    theta, args, grad = flat_mlp
    report = fg.check(mlp.loss_numpy, grad, theta, args)
    assert (report.engine, report.workers) == ("python", 1)
    assert report.passed
    # also a plain function wrapping the compiled loss, and the dispatcher's py_func (with
    # NUMBA_DISABLE_JIT=1 there is no dispatcher: mlp.loss is that function)
    assert fg.check(lambda t, X, Y: mlp.loss(t, X, Y), grad, theta, args).engine == "python"
    if not JIT_DISABLED:
        assert fg.check(mlp.loss.py_func, grad, theta, args).engine == "python"


def test_njit_marks_a_loss_compiled_with_or_without_the_jit():
    def plain(theta):
        return float(np.sum(theta ** 2))

    def twin(theta):
        return np.sum(theta ** 2)

    decorated = numba.njit(twin)
    assert (decorated is twin) == JIT_DISABLED  # no JIT: numba returns the function itself
    assert is_compiled(decorated) and not is_compiled(plain)
    assert not is_compiled(lambda t: 0.0) and not is_compiled(np.sum)
    theta = np.linspace(-1.0, 1.0, 5)
    report = fg.check(decorated, 2 * theta, theta, workers=2)
    assert (report.engine, report.workers, report.passed) == ("numba", 2, True)
    assert fg.check(plain, 2 * theta, theta).engine == "python"


def test_engine_python_forces_the_python_path(flat_mlp):
    theta, args, grad = flat_mlp
    report = fg.check(mlp.loss, grad, theta, args, engine="python", workers=2)
    assert (report.engine, report.workers) == ("python", 2)


def test_engine_numba_needs_a_compiled_loss(flat_mlp):
    theta, args, grad = flat_mlp
    with pytest.raises(fg.InputError, match="Numba-compiled"):
        fg.check(mlp.loss_numpy, grad, theta, args, engine="numba")


# ----------------------------------------------------------------- bit-for-bit
ENGINE_OPTIONS = [dict(workers=1), dict(workers=2), dict(workers=3), dict(engine="python"),
                  dict(engine="python", workers=2), dict()]


def test_numerical_gradient_is_bit_identical_across_workers_and_engines(flat_mlp):
    theta, args, grad = flat_mlp
    reference = fg.numerical_gradient(mlp.loss, theta, args, workers=1)
    assert np.all(np.isfinite(reference))
    for options in ENGINE_OPTIONS:
        numerical = fg.numerical_gradient(mlp.loss, theta, args, **options)
        report = fg.check(mlp.loss, grad, theta, args, **options)
        assert np.array_equal(numerical, reference), options
        assert np.array_equal(report.numerical, reference), options
        assert report.refined == 0 and report.passed
    # and not trivially so: a different step gives a different gradient
    assert not np.array_equal(fg.numerical_gradient(mlp.loss, theta, args, eps=1e-5), reference)


def test_dict_theta_compiled_is_bit_identical_across_workers(mlp_problem):
    problem, args, grad = mlp_problem
    reference = fg.numerical_gradient(mlp.loss, problem.params, args, workers=1)
    for workers in (2, 3):
        numerical = fg.numerical_gradient(mlp.loss, problem.params, args, workers=workers)
        report = fg.check(mlp.loss, grad, problem.params, args, workers=workers)
        for key in mlp.KEYS:
            assert np.array_equal(numerical[key], reference[key])
            assert np.array_equal(report.numerical[key], reference[key])


def test_engine_python_on_a_compiled_loss_over_a_dict(mlp_problem):
    problem, args, _ = mlp_problem
    reference = fg.numerical_gradient(mlp.loss, problem.params, args, workers=1)
    numerical = fg.numerical_gradient(mlp.loss, problem.params, args, engine="python")
    for key in mlp.KEYS:
        assert np.array_equal(numerical[key], reference[key])


# ----------------------------------------------------------------- no copy per coordinate
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("structure", ["dict", "array"])
def test_no_copy_of_theta_per_coordinate(structure, workers):
    """Every single-coordinate evaluation sees one of at most `workers` buffers.

    The loss keeps a reference to everything it receives (so no buffer can be freed and
    its address reused) with a snapshot of its values; the evaluations that differ from
    theta in exactly one coordinate are the coordinate loop's.
    """
    rng = np.random.default_rng(2)
    arrays = {"A": rng.standard_normal((4, 5)), "b": rng.standard_normal(6)}
    theta = arrays if structure == "dict" else arrays["A"]
    flat0 = np.concatenate([np.ravel(v) for v in (arrays.values() if structure == "dict"
                                                   else [theta])])
    received = []

    def parts(p):
        return list(p.values()) if isinstance(p, dict) else [p]

    def loss(p):
        received.append((p, np.concatenate([np.ravel(v) for v in parts(p)])))
        time.sleep(2e-4)  # releases the GIL: every worker thread gets chunks
        return float(sum(np.sum(np.sin(v) * v) for v in parts(p)))

    def grad(p):
        def one(v):
            return np.sin(v) + v * np.cos(v)
        return {k: one(v) for k, v in p.items()} if isinstance(p, dict) else one(p)

    report = fg.check(loss, grad, theta, workers=workers)
    assert report.passed and report.workers == workers
    coordinate_calls = [p for p, values in received if np.count_nonzero(values != flat0) == 1]
    assert len(coordinate_calls) == 2 * flat0.size  # the whole coordinate loop was seen
    buffers = {id(_root(part)) for p in coordinate_calls for part in parts(p)}
    addresses = {_root(part).__array_interface__["data"][0]
                 for p in coordinate_calls for part in parts(p)}
    assert 1 <= len(buffers) <= workers
    assert len(addresses) == len(buffers)
    for p in coordinate_calls:  # never the user's arrays
        assert not any(np.shares_memory(part, a) for part in parts(p) for a in arrays.values())


# ----------------------------------------------------------------- BLAS
@numba.njit(nogil=True)
def matmul_loss(W, X, Y):
    R = X @ W - Y
    return 0.5 * np.sum(R * R) / X.shape[0]


def matmul_grad(W, X, Y):
    return X.T @ (X @ W - Y) / X.shape[0]


def test_blas_loss_is_bit_identical_across_workers_and_passes(record_score):
    pytest.importorskip("scipy")  # Numba's @ on arrays calls SciPy's BLAS
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((200, 30)), rng.standard_normal((200, 4))
    W = 0.3 * rng.standard_normal((30, 4))
    one = fg.check(matmul_loss, matmul_grad, W, (X, Y), workers=1)
    two = fg.check(matmul_loss, matmul_grad, W, (X, Y), workers=2)
    assert one.passed and two.passed and two.workers == 2
    assert one.engine == two.engine == "numba"
    assert np.array_equal(one.numerical, two.numerical)
    assert np.array_equal(fg.numerical_gradient(matmul_loss, W, (X, Y), workers=2), one.numerical)
    assert np.all(np.isfinite(one.numerical))
    record_score("blas X@W workers=2", two, "correct")


# ---------------------------------------------------------------- single evaluations
def test_at_changed_evaluates_in_place_and_restores():
    """f(θ with θ[S] = values) equals f at the full point; the private copy is restored."""
    from fastgrad.engine import make_engine
    from fastgrad.parameters import ParameterLayout

    theta = np.linspace(-1.0, 1.0, 1000)
    layout, flat = ParameterLayout.from_theta(theta, None)
    run = make_engine(lambda t: float(np.sum(np.sin(t) * np.arange(t.size))), flat, (), layout,
                      "auto", 1)
    support, values = np.array([3, 500, 999]), np.array([0.25, -2.0, 7.0])
    point = flat.copy()
    point[support] = values
    assert run.at_changed(support, values, "here") == run.at(point)
    assert run.at_changed(support[:0], values[:0], "here") == run.at(flat)
    assert np.array_equal(run._single.flat, flat)
    assert run.evaluations == 4


def test_at_changed_catches_writes_and_names_the_loss_error():
    from fastgrad.engine import make_engine
    from fastgrad.parameters import ParameterLayout

    layout, flat = ParameterLayout.from_theta(np.ones(50), None)

    def writes(t):
        t[7] = 0.0
        return 1.0

    def raises(t):
        raise ValueError("bad")

    with pytest.raises(fg.LossError, match="modifies its input"):
        make_engine(writes, flat, (), layout, "auto", 1).at_changed(np.array([7]),
                                                                    np.array([2.0]), "here")
    run = make_engine(raises, flat, (), layout, "auto", 1)
    with pytest.raises(fg.LossError, match="raised ValueError here: bad"):
        run.at_changed(np.array([7]), np.array([2.0]), "here")
    assert np.array_equal(run._single.flat, flat)  # restored after the error
