r"""L2-regularised logistic regression on sparse binary features (a 10^7-parameter model).

Each of m samples has a few nonzero features out of n (10^7 by default), stored as CSR
arrays: row i's features are ``indices[indptr[i]:indptr[i + 1]]`` with values
``values[indptr[i]:indptr[i + 1]]`` (all 1.0 for binary features), and its label
``y[i]`` is -1 or +1.  Model and loss::

    z_i = sum_k values[k] * theta[indices[k]]        (k over row i)
    L   = (1/m) * sum_i log(1 + exp(-y_i * z_i))  +  (lam/2) * sum_{j in active} theta_j**2

The L2 term runs over the *active* features only (those that occur in some row,
``active = np.unique(indices)``), the "lazy" regularisation of sparse learners: it
keeps the loss O(nnz) per evaluation instead of O(n), so that the 2k evaluations of a
sampled check of k coordinates never sweep the 80 MB of theta.  The loss does not
depend on an inactive coordinate at all (its derivative is exactly 0).  A full
``0.5 * lam * ||theta||**2`` would cost about n reads (several ms at n = 10^7) per
evaluation.

Functions
---------
make_data, problem
    A random sparse data set (labels from a planted model) and a bundle with theta.
loss
    ``@numba.njit(cache=True, nogil=True)`` loss of a flat ``theta``: O(nnz + |active|).
loss_numpy
    The same loss in plain NumPy.
grad
    The analytic gradient in NumPy (a new length-n vector).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

__all__ = ["LogisticProblem", "grad", "loss", "loss_numpy", "make_data", "problem"]

#: Default size: 10^7 parameters.
N_FEATURES = 10_000_000


@numba.njit(cache=True, nogil=True)
def _log1pexp(t):
    """log(1 + exp(t)) without overflow."""
    if t > 0.0:
        return t + math.log1p(math.exp(-t))
    return math.log1p(math.exp(t))


@numba.njit(cache=True, nogil=True)
def loss(theta, indptr, indices, values, y, active, lam):
    r"""Mean logistic loss plus (lam/2)·Σ_{j in active} θ_j², compiled (``nogil``, cached).

    Parameters
    ----------
    theta : ndarray, float64, shape (n,)
    indptr : int64 array, shape (m + 1,); indices : int64 array, shape (nnz,);
    values : float64 array, shape (nnz,)
        The CSR rows of the data.
    y : float64 array, shape (m,)
        Labels in {-1, +1}.
    active : int64 array
        Sorted indices of the features that occur in the data (the L2 term's support).
    lam : float
        L2 strength.

    Returns
    -------
    float
        Costs O(nnz + len(active)); reads its inputs only.
    """
    m = y.shape[0]
    total = 0.0
    for i in range(m):
        z = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            z += values[k] * theta[indices[k]]
        total += _log1pexp(-y[i] * z)
    penalty = 0.0
    for j in active:
        penalty += theta[j] * theta[j]
    return total / m + 0.5 * lam * penalty


def _margins(theta, indptr, indices, values):
    """z = X @ theta for the CSR rows (plain NumPy)."""
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    return np.bincount(rows, weights=values * theta[indices], minlength=indptr.size - 1)


def loss_numpy(theta, indptr, indices, values, y, active, lam) -> float:
    """The same loss as :func:`loss`, in plain NumPy."""
    t = -y * _margins(theta, indptr, indices, values)
    return float(np.mean(np.logaddexp(0.0, t)) + 0.5 * lam * np.sum(theta[active] ** 2))


def grad(theta, indptr, indices, values, y, active, lam) -> np.ndarray:
    r"""The analytic gradient: (1/m)·Xᵀ(-y·σ(-y·z)) + lam·θ on the active features.

    Returns a new float64 vector of theta's size (O(n) to allocate, O(nnz) to fill).
    """
    theta = np.asarray(theta, dtype=np.float64)
    t = -y * _margins(theta, indptr, indices, values)
    residual = -y * np.exp(-np.logaddexp(0.0, -t)) / y.size  # -y·σ(t)/m, σ(t) = 1/(1+e^-t)
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    g = np.bincount(indices, weights=values * residual[rows], minlength=theta.size)
    g[active] += lam * theta[active]
    return g


def make_data(m: int, n: int = N_FEATURES, per_row: int = 10, seed: int = 0):
    """A random sparse binary data set with labels from a planted model.

    Each row has ``per_row`` distinct features drawn uniformly from ``range(n)``, sorted;
    labels are ±1 with P(+1) = σ(z*) for a planted θ* ~ N(0, 1) on the features used.

    Returns
    -------
    indptr, indices, values, y, active
        CSR arrays (int64, int64, float64), labels (float64) and the sorted active features.
    """
    if min(m, n, per_row) < 1 or per_row > n:
        raise ValueError(f"need m, n, per_row >= 1 and per_row <= n, got {(m, n, per_row)}")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, size=(m, per_row), dtype=np.int64)
    indices.sort(axis=1)
    duplicate = np.zeros_like(indices, dtype=bool)
    duplicate[:, 1:] = indices[:, 1:] == indices[:, :-1]
    indices = indices[~duplicate]  # drop the rare repeats within a row
    counts = per_row - duplicate.sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    values = np.ones(indices.size)
    active = np.unique(indices)
    planted = rng.standard_normal(active.size)  # θ* on the active features (no n-sized array)
    z = _margins(planted, indptr, np.searchsorted(active, indices), values)
    y = np.where(rng.random(m) < 1.0 / (1.0 + np.exp(-z)), 1.0, -1.0)
    return indptr, indices, values, y, active


@dataclass(frozen=True, eq=False)
class LogisticProblem:
    """theta (n,), and args = (indptr, indices, values, y, active, lam) for loss and grad."""

    theta: np.ndarray
    args: tuple
    n: int
    m: int
    nnz: int


def problem(m: int = 5000, n: int = N_FEATURES, per_row: int = 10, lam: float = 1e-3,
            seed: int = 0) -> LogisticProblem:
    """A ready-made problem: data from :func:`make_data` and θ ~ N(0, 0.01²) over all n."""
    indptr, indices, values, y, active = make_data(m, n, per_row, seed)
    theta = np.random.default_rng(seed + 1).normal(0.0, 0.01, n)
    return LogisticProblem(theta=theta, args=(indptr, indices, values, y, active, float(lam)),
                           n=n, m=m, nnz=int(indices.size))
