"""Tests of the reference MLP in fastgrad.models.mlp (fast: small problem)."""

from __future__ import annotations

import numpy as np
import pytest

from fastgrad.models import mlp

D, H, C, M = 5, 7, 3, 11
#: The Python function behind the compiled loss (with NUMBA_DISABLE_JIT=1, the loss itself).
LOSS_PY_FUNC = getattr(mlp.loss, "py_func", mlp.loss)


@pytest.fixture(scope="module")
def small():
    return mlp.problem(D, H, C, M, seed=3)


def _rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)


def _loss_complex(theta, X, Y):
    """Complex-step-capable copy of the loss (independent of the module's code)."""
    d, c = X.shape[1], Y.shape[1]
    h = (theta.size - c) // (d + 1 + c)
    W1 = theta[: d * h].reshape(d, h)
    b1 = theta[d * h : d * h + h]
    W2 = theta[d * h + h : d * h + h + h * c].reshape(h, c)
    b2 = theta[d * h + h + h * c :]
    Z = np.tanh(X @ W1 + b1) @ W2 + b2
    Z = Z - Z.real.max(axis=1, keepdims=True)  # a real shift keeps it analytic
    logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    return -(Y * logp).sum() / X.shape[0]


def _complex_step_grad(theta, X, Y, step=1e-30):
    g = np.empty(theta.size)
    tc = theta.astype(np.complex128)
    for i in range(theta.size):
        tc[i] += 1j * step
        g[i] = _loss_complex(tc, X, Y).imag / step
        tc[i] = theta[i]
    return g


def test_layout_and_flatten_roundtrip(small):
    shapes = mlp.layout(D, H, C)
    assert list(shapes) == ["W1", "b1", "W2", "b2"]
    assert {k: v.shape for k, v in small.params.items()} == shapes
    assert small.n == D * H + H + H * C + C == small.theta.size
    theta = small.theta
    back = mlp.unflatten(theta, D, H, C)
    for k in shapes:
        assert np.array_equal(back[k], small.params[k])
        assert np.shares_memory(back[k], theta)
    assert np.array_equal(mlp.flatten(back), theta)
    assert all(np.any(small.params[k] != 0) for k in ("b1", "b2"))
    with pytest.raises(ValueError):
        mlp.unflatten(theta[:-1], D, H, C)


def test_make_data():
    X, Y = mlp.make_data(M, D, C, seed=1)
    assert X.shape == (M, D) and Y.shape == (M, C)
    assert X.dtype == Y.dtype == np.float64
    assert np.array_equal(Y.sum(axis=1), np.ones(M))
    assert set(np.unique(Y)) <= {0.0, 1.0}


def test_loss_implementations_agree(small):
    theta, X, Y = small.theta, small.X, small.Y
    ref = mlp.loss_numpy(theta, X, Y)
    values = [
        mlp.loss(theta, X, Y),
        LOSS_PY_FUNC(theta, X, Y),
        mlp.loss_params(small.params, X, Y),
        _loss_complex(theta.astype(complex), X, Y).real,
    ]
    assert np.isfinite(ref) and ref > 0
    for v in values:
        assert isinstance(float(v), float)
        assert abs(v - ref) <= 1e-12 * abs(ref)


def test_loss_deterministic_and_rejects_bad_size(small):
    theta, X, Y = small.theta, small.X, small.Y
    first = mlp.loss(theta, X, Y)
    assert all(mlp.loss(theta, X, Y) == first for _ in range(5))
    with pytest.raises(ValueError):
        mlp.loss(theta[:-1].copy(), X, Y)


def test_grad_matches_complex_step(small):
    theta, X, Y = small.theta, small.X, small.Y
    g = mlp.grad(small.params, X, Y)
    assert list(g) == list(small.params)
    for k, v in g.items():
        assert v.shape == small.params[k].shape and v.dtype == np.float64
    assert _rel(mlp.flatten(g), _complex_step_grad(theta, X, Y)) < 1e-10


def test_grad_with_soft_labels(small):
    """Rows of Y need not be one-hot (nor sum to one)."""
    rng = np.random.default_rng(0)
    Y = rng.random((M, C))
    g = mlp.flatten(mlp.grad(small.params, small.X, Y))
    assert _rel(g, _complex_step_grad(small.theta, small.X, Y)) < 1e-10


def test_grad_buggy_differs_only_in_first_layer(small):
    good = mlp.grad(small.params, small.X, small.Y)
    bad = mlp.grad_buggy(small.params, small.X, small.Y)
    assert list(bad) == list(good)
    for k in ("W1", "b1"):
        assert bad[k].shape == good[k].shape
        assert _rel(bad[k], good[k]) > 1e-3
    for k in ("W2", "b2"):
        assert np.array_equal(bad[k], good[k])


def test_inputs_not_modified(small):
    params = {k: v.copy() for k, v in small.params.items()}
    theta, X, Y = small.theta, small.X.copy(), small.Y.copy()
    saved = (theta.copy(), X.copy(), Y.copy(), {k: v.copy() for k, v in params.items()})
    mlp.loss(theta, X, Y)
    LOSS_PY_FUNC(theta, X, Y)
    mlp.loss_numpy(theta, X, Y)
    mlp.loss_params(params, X, Y)
    mlp.grad(params, X, Y)
    mlp.grad_buggy(params, X, Y)
    for a, b in zip((theta, X, Y), saved[:3], strict=True):
        assert a.tobytes() == b.tobytes()
    for k in params:
        assert params[k].tobytes() == saved[3][k].tobytes()
