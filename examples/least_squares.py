"""A model file for ``fastgrad check``: a least-squares loss summed over 10^4 samples.

    fastgrad check examples/least_squares.py
    fastgrad check examples/least_squares.py --sample 200 --seed 0 --json

fastgrad loads this file and reads ``loss``, ``grad``, ``theta`` and ``args``.
"""

import numba
import numpy as np


@numba.njit(nogil=True)
def loss(theta, X, y):
    """0.5·Σ_i (x_i·θ − y_i)², by loops (compiled; no SciPy needed)."""
    total = 0.0
    for i in range(X.shape[0]):
        r = -y[i]
        for j in range(X.shape[1]):
            r += X[i, j] * theta[j]
        total += 0.5 * r * r
    return total


def grad(theta, X, y):
    """Xᵀ(Xθ − y)."""
    return X.T @ (X @ theta - y)


rng = np.random.default_rng(0)
X = rng.standard_normal((10_000, 200))
y = rng.standard_normal(10_000)
theta = rng.standard_normal(200)
args = (X, y)
