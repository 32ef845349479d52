r"""A from-scratch two-layer MLP: tanh hidden layer, softmax output, mean cross-entropy.

Model, for inputs :math:`X \in \mathbb{R}^{m \times d}` and targets
:math:`Y \in \mathbb{R}^{m \times c}` (one-hot rows, or any rows of probabilities)::

    A1 = tanh(X @ W1 + b1)                    # (m, h)
    Z  = A1 @ W2 + b2                         # (m, c) logits
    L  = -(1/m) * sum_ij Y_ij * log_softmax(Z)_ij

Parameters are the dict ``{"W1": (d, h), "b1": (h,), "W2": (h, c), "b2": (c,)}`` (in that
order). The flat vector ``theta`` is the C-order concatenation of the four arrays in that
order, so ``n = d*h + h + h*c + c``.

Functions
---------
layout, init_params, make_data, problem
    Shapes, a Glorot-scaled initialisation, a random classification data set, and a bundle.
loss
    ``@numba.njit`` loss of a flat ``theta`` (the fast path fastgrad is built for).
loss_numpy, loss_params
    The same loss in plain NumPy, of a flat ``theta`` or of the parameter dict.
grad, grad_buggy
    Hand-written backprop (dict in, dict out); ``grad_buggy`` has one planted bug.
flatten, unflatten
    Conversions between the dict and the flat vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

__all__ = [
    "KEYS",
    "MLPProblem",
    "flatten",
    "grad",
    "grad_buggy",
    "init_params",
    "layout",
    "loss",
    "loss_numpy",
    "loss_params",
    "make_data",
    "problem",
    "unflatten",
]

#: Parameter names, in flattening order.
KEYS: tuple[str, ...] = ("W1", "b1", "W2", "b2")


# ----------------------------------------------------------------------------- layout


def layout(d: int, h: int, c: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameters, in flattening order.

    Returns
    -------
    dict
        ``{"W1": (d, h), "b1": (h,), "W2": (h, c), "b2": (c,)}``.
    """
    d, h, c = int(d), int(h), int(c)
    if min(d, h, c) < 1:
        raise ValueError(f"d, h, c must be >= 1, got {(d, h, c)}")
    return {"W1": (d, h), "b1": (h,), "W2": (h, c), "b2": (c,)}


def _size(d: int, h: int, c: int) -> int:
    """``n = d*h + h + h*c + c``."""
    return d * h + h + h * c + c


def flatten(params: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate ``W1, b1, W2, b2`` (each C-order ravelled) into a new float64 vector.

    Always returns a fresh, contiguous 1-D array (never a view of ``params``).
    """
    missing = [k for k in KEYS if k not in params]
    if missing:
        raise KeyError(f"params lacks {missing}")
    return np.concatenate([np.asarray(params[k], dtype=np.float64).ravel() for k in KEYS])


def unflatten(theta: np.ndarray, d: int, h: int, c: int) -> dict[str, np.ndarray]:
    """Split a flat vector into the parameter dict (inverse of :func:`flatten`).

    The arrays are views of ``theta`` when it is a contiguous float64 vector (writing to
    them writes to ``theta``); pass ``theta.copy()`` for independent arrays.
    """
    theta = np.ascontiguousarray(theta, dtype=np.float64)
    shapes = layout(d, h, c)
    if theta.ndim != 1 or theta.size != _size(d, h, c):
        raise ValueError(
            f"theta must be 1-D of size d*h + h + h*c + c = {_size(d, h, c)}, "
            f"got shape {theta.shape}"
        )
    out: dict[str, np.ndarray] = {}
    start = 0
    for k in KEYS:
        size = int(np.prod(shapes[k]))
        out[k] = theta[start : start + size].reshape(shapes[k])
        start += size
    return out


# ----------------------------------------------------------------------------- data


def init_params(d: int, h: int, c: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float64 parameters.

    Weights are Glorot-normal, ``W ~ N(0, 2 / (fan_in + fan_out))``, so that the tanh
    layer is not saturated; biases are ``N(0, 0.1**2)`` -- small but nonzero, so that a
    bias bug changes the loss visibly.
    """
    shapes = layout(d, h, c)
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(0.0, np.sqrt(2.0 / (d + h)), shapes["W1"]),
        "b1": rng.normal(0.0, 0.1, shapes["b1"]),
        "W2": rng.normal(0.0, np.sqrt(2.0 / (h + c)), shapes["W2"]),
        "b2": rng.normal(0.0, 0.1, shapes["b2"]),
    }


def make_data(m: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random classification data set.

    Returns
    -------
    X : ndarray, float64, shape (m, d)
        Standard normal, C-contiguous.
    Y : ndarray, float64, shape (m, c)
        One-hot rows of uniformly random labels in ``range(c)``.
    """
    if min(m, d, c) < 1:
        raise ValueError(f"m, d, c must be >= 1, got {(m, d, c)}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, d))
    labels = rng.integers(0, c, size=m)
    Y = np.zeros((m, c))
    Y[np.arange(m), labels] = 1.0
    return X, Y


# ----------------------------------------------------------------------------- loss


@numba.njit(cache=True, nogil=True)
def _affine(A, W, b):
    """A @ W + b by loops (i, k, j order: the inner loop runs along rows of W).

    Plain loops keep the compiled loss free of BLAS, which Numba reaches only
    through SciPy, so the demo runs with numpy and numba alone.
    """
    m, d = A.shape
    out = np.empty((m, W.shape[1]), dtype=W.dtype)  # W's dtype: float32, float64 or complex
    for i in range(m):
        out[i, :] = b
        for k in range(d):
            a = A[i, k]
            for j in range(W.shape[1]):
                out[i, j] += a * W[k, j]
    return out


@numba.njit(cache=True, nogil=True)
def loss(theta, X, Y):
    r"""Mean softmax cross-entropy of the MLP, compiled with numba (``nogil``, cached).

    .. math::
        L(\theta) = -\frac{1}{m} \sum_{i,j} Y_{ij}
            \left(Z_{ij} - \max_k Z_{ik} - \log \sum_k e^{Z_{ik} - \max_k Z_{ik}}\right),
        \quad Z = \tanh(X W_1 + b_1) W_2 + b_2.

    Parameters
    ----------
    theta : ndarray, float64, shape (n,), C-contiguous
        Flat parameters (see :func:`flatten`); ``W1, b1, W2, b2`` are views of it.
    X : ndarray, float64, shape (m, d)
    Y : ndarray, float64, shape (m, c)

    Returns
    -------
    float
        Sizes are taken from the shapes: ``d = X.shape[1]``, ``c = Y.shape[1]``,
        ``h = (n - c) // (d + 1 + c)``. Reads its inputs only; deterministic for a
        fixed BLAS thread count.
    """
    m = X.shape[0]
    d = X.shape[1]
    c = Y.shape[1]
    n = theta.size
    h = (n - c) // (d + 1 + c)
    if h < 1 or h * (d + 1 + c) + c != n:
        raise ValueError("theta.size is not d*h + h + h*c + c for any h >= 1")
    if Y.shape[0] != m:
        raise ValueError("X and Y have different numbers of rows")
    o1 = d * h
    o2 = o1 + h
    o3 = o2 + h * c
    W1 = theta[:o1].reshape((d, h))
    b1 = theta[o1:o2]
    W2 = theta[o2:o3].reshape((h, c))
    b2 = theta[o3:]

    A1 = np.tanh(_affine(X, W1, b1))
    Z = _affine(A1, W2, b2)

    # Written generically: the same code runs on float32, float64 and complex theta
    # (complex for the complex-step derivative), so no literal float accumulators and no
    # comparisons of complex values: the shift is the entry with the largest real part,
    # and log-sum-exp is exact for any shift.
    total = Z[0, 0] * 0
    for i in range(m):
        top = 0
        for j in range(1, c):
            if Z[i, j].real > Z[i, top].real:
                top = j
        zmax = Z[i, top]
        s = Z[i, top] * 0
        for j in range(c):
            s += np.exp(Z[i, j] - zmax)
        lse = zmax + np.log(s)
        for j in range(c):
            total -= Y[i, j] * (Z[i, j] - lse)
    return total / m


def _log_softmax(Z: np.ndarray) -> np.ndarray:
    """Row-wise ``Z - max - log(sum(exp(Z - max)))`` (numerically stable)."""
    S = Z - Z.max(axis=1, keepdims=True)
    return S - np.log(np.exp(S).sum(axis=1, keepdims=True))


def _loss_arrays(W1, b1, W2, b2, X, Y) -> float:
    """Mean cross-entropy from the four parameter arrays (plain NumPy)."""
    Z = np.tanh(X @ W1 + b1) @ W2 + b2
    return float(-(Y * _log_softmax(Z)).sum() / X.shape[0])


def loss_numpy(theta: np.ndarray, X: np.ndarray, Y: np.ndarray) -> float:
    """The same loss as :func:`loss`, in plain (uncompiled) NumPy, of a flat ``theta``.

    What a from-scratch user would write; the parameter arrays are views of ``theta``.
    """
    d, c = X.shape[1], Y.shape[1]
    h = (theta.size - c) // (d + 1 + c)
    p = unflatten(theta, d, h, c)
    return _loss_arrays(p["W1"], p["b1"], p["W2"], p["b2"], X, Y)


def loss_params(params: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray) -> float:
    """The same loss as :func:`loss`, of the parameter dict (plain NumPy, no flattening)."""
    return _loss_arrays(params["W1"], params["b1"], params["W2"], params["b2"], X, Y)


# ----------------------------------------------------------------------------- gradients


def _backprop(params, X, Y, *, buggy: bool) -> dict[str, np.ndarray]:
    r"""Backprop of the mean cross-entropy; ``buggy`` plants the tanh-derivative bug.

    With ``P = softmax(Z)`` and ``r_i = sum_j Y_ij`` (1 for one-hot rows)::

        dZ  = (P * r - Y) / m
        dW2 = A1.T @ dZ,   db2 = sum_i dZ
        dH  = (dZ @ W2.T) * (1 - A1**2)        # buggy: (1 - A1)
        dW1 = X.T @ dH,    db1 = sum_i dH
    """
    W1, b1, W2, b2 = (params[k] for k in KEYS)
    m = X.shape[0]
    A1 = np.tanh(X @ W1 + b1)
    Z = A1 @ W2 + b2
    P = np.exp(_log_softmax(Z))
    dZ = (P * Y.sum(axis=1, keepdims=True) - Y) / m
    dA1 = dZ @ W2.T
    dH = dA1 * ((1.0 - A1) if buggy else (1.0 - A1 * A1))
    return {
        "W1": X.T @ dH,
        "b1": dH.sum(axis=0),
        "W2": A1.T @ dZ,
        "b2": dZ.sum(axis=0),
    }


def grad(params: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
    r"""Exact gradient of the loss by hand-written backprop.

    ``dL/dZ = (softmax(Z) - Y) / m``, then the chain rule through ``Z = A1 W2 + b2`` and
    ``A1 = tanh(X W1 + b1)`` with ``tanh' = 1 - A1**2``.

    Returns
    -------
    dict
        New float64 arrays with the keys and shapes of ``params``.
    """
    return _backprop(params, X, Y, buggy=False)


def grad_buggy(
    params: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray
) -> dict[str, np.ndarray]:
    """:func:`grad` with one realistic planted bug: ``tanh'`` written as ``1 - A1``.

    ``W2`` and ``b2`` are still exact; ``W1`` and ``b1`` are wrong.
    """
    return _backprop(params, X, Y, buggy=True)


# ----------------------------------------------------------------------------- bundle


@dataclass(frozen=True, eq=False)
class MLPProblem:
    """A ready-made problem: parameters, data and sizes.

    Attributes
    ----------
    params : dict
        ``{"W1", "b1", "W2", "b2"}`` float64 arrays (see :func:`init_params`).
    X, Y : ndarray
        Data (see :func:`make_data`).
    d, h, c, m : int
        Input, hidden, class and sample counts.
    n : int
        Number of parameters, ``d*h + h + h*c + c``.
    """

    params: dict[str, np.ndarray]
    X: np.ndarray
    Y: np.ndarray
    d: int
    h: int
    c: int
    m: int
    n: int

    @property
    def theta(self) -> np.ndarray:
        """A fresh flat copy of ``params`` (see :func:`flatten`)."""
        return flatten(self.params)


def problem(d: int = 64, h: int = 128, c: int = 10, m: int = 256, seed: int = 0) -> MLPProblem:
    """Build an :class:`MLPProblem`: ``init_params(d, h, c, seed)`` and
    ``make_data(m, d, c, seed + 1)``."""
    params = init_params(d, h, c, seed)
    X, Y = make_data(m, d, c, seed + 1)
    return MLPProblem(params=params, X=X, Y=Y, d=d, h=h, c=c, m=m, n=_size(d, h, c))
