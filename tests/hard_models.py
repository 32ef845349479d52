"""Models at the hard points of issue #11, written here from the math, with planted bugs.

Each :class:`HardModel` is ``loss(theta, *args)``, ``grad(theta, *args)``, ``theta``,
``args``, the verdict the correct gradient must get, and its planted bugs: functions
that take a gradient function and return a wrong one.  Nothing here imports another
library's gradient; SciPy only solves for the optima.

The points:

* ``gp_generic`` — Gaussian-process negative log marginal likelihood (RBF kernel with
  ARD lengthscales, signal and noise variance) with respect to its log hyperparameters,
  at an ordinary point;
* ``gp_optimum`` — the same at its minimum (L-BFGS-B, then Newton steps on a Hessian
  differenced from the analytic gradient: ‖g‖∞ ≈ 1e-12, zero within any finite-difference
  error);
* ``gp_ill`` — the same with a near-singular kernel matrix (lengthscales 30× the data's
  range, noise variance 1e-10): |f| ≈ 1e9 and the loss's rounding noise σ ≫ u·|f|;
* ``logistic_mle`` — logistic-regression negative log-likelihood at its maximum-likelihood
  estimate (non-separable data, Newton's method to ‖g‖∞ ≈ 1e-13);
* ``spike`` — a smooth loss plus a Gaussian dip of width 1e-12 centred exactly at θ₀:
  its true derivative at θ is the smooth part's (the dip's is 0 at its centre), but no
  usable step sees the dip the way θ does, so the correct gradient must get **warn**;
* ``flat`` — a ReLU of inputs that are all ≤ −1: every difference is exactly 0, and so is
  the gradient;
* ``jump`` — a hinge whose branch is chosen by ``s == 1``, an equality that holds exactly at
  θ (and nowhere near it), smooth on either side: the correct gradient is that of the smooth
  branch, the limit from both sides.

The planted bugs are those of the issue: ×2, a sign flip, one hyperparameter's derivative
×0.5, one coordinate off by relative 1e-3, two coordinates swapped, a dropped gradient.
At a stationary point every bug that multiplies or permutes the gradient leaves it at zero,
where no check at that point can see it (issue #11, item 1); there the planted bugs are
slips in one term of the formula, which leave a gradient that is not zero.  On the flat
loss the bugs are backward passes that do not see the ReLU's zero slope.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize

Gradient = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Bug:
    """A planted bug: ``wrap(grad)`` is a wrong gradient function."""

    name: str
    wrap: Callable[[Gradient], Gradient]


@dataclass(frozen=True)
class HardModel:
    name: str
    what: str  # one line: the model and the point
    loss: Callable[..., float]
    grad: Gradient
    theta: np.ndarray
    args: tuple
    expected: str  # the verdict the correct gradient must get: "pass" or "warn"
    bugs: tuple[Bug, ...]

    def buggy(self, bug: Bug) -> Gradient:
        return bug.wrap(self.grad)


# ----------------------------------------------------------------------------- bugs


def _mapped(grad: Gradient, change: Callable[[np.ndarray], np.ndarray]) -> Gradient:
    def wrong(theta, *args):
        return change(np.array(grad(theta, *args), dtype=np.float64, copy=True))
    return wrong


def times(factor: float, name: str) -> Bug:
    """Every coordinate × factor (×2, a sign flip, a dropped gradient at factor 0)."""
    return Bug(name, lambda grad: _mapped(grad, lambda g: factor * g))


def one_times(index: int, factor: float, name: str) -> Bug:
    """Coordinate ``index`` × factor."""
    def change(g):
        g[index] *= factor
        return g
    return Bug(name, lambda grad: _mapped(grad, change))


def swapped(first: int, second: int) -> Bug:
    def change(g):
        g[[first, second]] = g[[second, first]]
        return g
    return Bug(f"coordinates {first} and {second} swapped", lambda grad: _mapped(grad, change))


def issue_bugs(hyper: int, off: int, swap: tuple[int, int], hyper_name: str) -> tuple[Bug, ...]:
    """The issue's bugs for a loss whose gradient is not zero: ×2, a sign flip, coordinate
    ``hyper`` ×0.5, coordinate ``off`` × (1 + 1e-3), the coordinates ``swap`` exchanged."""
    return (times(2.0, "gradient x2"), times(-1.0, "sign flip"),
            one_times(hyper, 0.5, f"{hyper_name} derivative x0.5"),
            one_times(off, 1.0 + 1e-3, f"coordinate {off} off by relative 1e-3"),
            swapped(*swap))


# ----------------------------------------------------------------------------- Gaussian process


def _gp_kernel(theta, X):
    """θ = (log ℓ_1..ℓ_d, log σ_f², log σ_n²): K = K_f + σ_n² I with
    K_f[a, b] = σ_f² exp(−½ Σ_k (x_ak − x_bk)² / ℓ_k²); also D_k/ℓ_k² = (x_ak − x_bk)²/ℓ_k²."""
    d = X.shape[1]
    theta = np.asarray(theta, dtype=np.float64)
    ell, signal, noise = np.exp(theta[:d]), math.exp(theta[d]), math.exp(theta[d + 1])
    scaled = (X[:, None, :] - X[None, :, :]) ** 2 / ell**2  # (n, n, d)
    k_f = signal * np.exp(-0.5 * scaled.sum(axis=2))
    return k_f, k_f + noise * np.eye(X.shape[0]), scaled, noise


def gp_loss(theta, X, y) -> float:
    """Negative log marginal likelihood ½ yᵀK⁻¹y + ½ log|K| + (n/2) log 2π (nats)."""
    _, K, _, _ = _gp_kernel(theta, X)
    factor = cho_factor(K, lower=True)
    alpha = cho_solve(factor, y)
    return float(0.5 * y @ alpha + np.log(np.diag(factor[0])).sum() + 0.5 * y.size * math.log(2 * math.pi))


def gp_terms(theta, X, y) -> tuple[np.ndarray, np.ndarray]:
    """The two terms of ∂f/∂θ_j = −½ αᵀ (∂K/∂θ_j) α + ½ tr(K⁻¹ ∂K/∂θ_j), α = K⁻¹y, with
    ∂K/∂log ℓ_k = K_f ⊙ D_k/ℓ_k², ∂K/∂log σ_f² = K_f, ∂K/∂log σ_n² = σ_n² I: (data fit, trace)."""
    k_f, K, scaled, noise = _gp_kernel(theta, X)
    factor = cho_factor(K, lower=True)
    alpha = cho_solve(factor, y)
    inverse = cho_solve(factor, np.eye(y.size))
    d_kernel = [k_f * scaled[:, :, k] for k in range(X.shape[1])] + [k_f, noise * np.eye(y.size)]
    fit = np.array([-0.5 * alpha @ dk @ alpha for dk in d_kernel])
    trace = np.array([0.5 * np.sum(inverse * dk) for dk in d_kernel])  # K⁻¹, dK symmetric
    return fit, trace


def gp_grad(theta, X, y) -> np.ndarray:
    fit, trace = gp_terms(theta, X, y)
    return fit + trace


def _gp_data(n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 1.0, (n, 2))
    y = np.sin(3.0 * X[:, 0]) + 0.5 * np.cos(2.0 * X[:, 1]) + 0.1 * rng.standard_normal(n)
    return X, y


def _hessian(grad: Gradient, theta: np.ndarray, args: tuple, step: float = 1e-5) -> np.ndarray:
    """Central differences of the analytic gradient, symmetrised (error O(step²))."""
    columns = []
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = step
        columns.append((grad(theta + e, *args) - grad(theta - e, *args)) / (2 * step))
    H = np.array(columns).T
    return 0.5 * (H + H.T)


def _newton(grad: Gradient, theta: np.ndarray, args: tuple, hessian: Callable, steps: int = 8) -> np.ndarray:
    """Newton steps from near a minimum, stopping when the gradient no longer falls."""
    best, best_norm = theta, np.abs(grad(theta, *args)).max()
    for _ in range(steps):
        candidate = best - np.linalg.solve(hessian(best), grad(best, *args))
        norm = np.abs(grad(candidate, *args)).max()
        if not norm < best_norm:
            break
        best, best_norm = candidate, norm
    return best


def gp_optimum(X, y, start: np.ndarray) -> np.ndarray:
    """The minimum of the NLML: L-BFGS-B on the analytic gradient, then Newton."""
    result = minimize(gp_loss, start, args=(X, y), jac=gp_grad, method="L-BFGS-B",
                      options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 2000})
    return _newton(gp_grad, result.x, (X, y), lambda t: _hessian(gp_grad, t, (X, y)))


def _term_bug(name: str, fit_scale, trace_scale) -> Bug:
    """A slip in one term of the GP gradient: fit·fit_scale + trace·trace_scale (per coordinate)."""
    def wrap(_grad):
        def wrong(theta, X, y):
            fit, trace = gp_terms(theta, X, y)
            return fit * np.asarray(fit_scale) + trace * np.asarray(trace_scale)
        return wrong
    return Bug(name, wrap)


GP_NAMES = ("log lengthscale 1", "log lengthscale 2", "log signal variance", "log noise variance")


def _gp_models() -> list[HardModel]:
    X, y = _gp_data()
    generic = np.log([0.8, 1.5, 1.2, 0.05])
    optimum = gp_optimum(X, y, generic)
    ill = np.log([30.0, 30.0, 1.0, 1e-10])
    multiplicative = issue_bugs(hyper=2, off=3, swap=(0, 1), hyper_name="log signal variance")
    at_optimum = (
        _term_bug("trace term x2 (the 1/2 dropped)", 1.0, 2.0),
        _term_bug("data-fit term sign flipped", -1.0, 1.0),
        _term_bug("log signal variance trace term x0.5", 1.0, [1.0, 1.0, 0.5, 1.0]),
        _term_bug("log lengthscale 1 data-fit term x2", [2.0, 1.0, 1.0, 1.0], 1.0),
    )
    common = {"loss": gp_loss, "grad": gp_grad, "args": (X, y), "expected": "pass"}
    return [
        HardModel("gp_generic", "GP NLML (RBF-ARD + noise, n=30) at a generic point",
                  theta=generic, bugs=multiplicative, **common),
        HardModel("gp_optimum", "GP NLML at its optimum (|g| ~ 1e-12)", theta=optimum,
                  bugs=at_optimum, **common),
        HardModel("gp_ill", "GP NLML, near-singular K (lengthscales 30, noise 1e-10)",
                  theta=ill, bugs=multiplicative, **common),
    ]


# ----------------------------------------------------------------------------- logistic regression


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logistic_loss(theta, X, y) -> float:
    """Σ_i log(1 + e^{z_i}) − y_i z_i, z = Xθ, y ∈ {0, 1} (nats)."""
    z = X @ theta
    return float(np.sum(np.logaddexp(0.0, z) - y * z))


def logistic_grad(theta, X, y) -> np.ndarray:
    """Xᵀ(σ(z) − y)."""
    return X.T @ (_sigmoid(X @ theta) - y)


def logistic_hessian(theta, X, y) -> np.ndarray:
    """Xᵀ diag(σ(1 − σ)) X."""
    p = _sigmoid(X @ theta)
    return X.T @ (X * (p * (1.0 - p))[:, None])


def _logistic_model() -> HardModel:
    rng = np.random.default_rng(1)
    n, d = 200, 4
    X = np.column_stack([np.ones(n), rng.standard_normal((n, d))])
    truth = np.array([0.3, 1.0, -0.7, 0.5, 0.0])
    y = (rng.uniform(size=n) < _sigmoid(X @ truth)).astype(np.float64)  # overlapping classes
    mle = _newton(logistic_grad, np.zeros(d + 1), (X, y), lambda t: logistic_hessian(t, X, y), steps=30)

    def link_sign(_grad):
        return lambda theta, X, y: X.T @ (_sigmoid(-(X @ theta)) - y)

    def intercept_without_labels(grad):
        return _mapped_args(grad, lambda g, theta, X, y: _set(g, 0, np.sum(_sigmoid(X @ theta))))

    def decay_in_grad_only(grad):
        return _mapped_args(grad, lambda g, theta, X, y: g + 1e-3 * theta)

    bugs = (Bug("sigmoid of -z in the residual", link_sign),
            Bug("intercept derivative sum(p), labels dropped", intercept_without_labels),
            Bug("weight decay 1e-3 in the gradient only", decay_in_grad_only))
    return HardModel("logistic_mle", "logistic regression NLL (n=200, 5 coefficients) at its MLE",
                     logistic_loss, logistic_grad, mle, (X, y), "pass", bugs)


def _mapped_args(grad: Gradient, change) -> Gradient:
    def wrong(theta, *args):
        return change(np.array(grad(theta, *args), dtype=np.float64, copy=True), theta, *args)
    return wrong


def _set(g: np.ndarray, index: int, value: float) -> np.ndarray:
    g[index] = value
    return g


# ----------------------------------------------------------------------------- spike


SPIKE_WIDTH = 1e-12
SPIKE_DEPTH = -3.2


def spike_loss(theta, centre, depth, width) -> float:
    """50 + ½‖θ − 0.3‖² + sin(θ₁θ₂) + depth·exp(−((θ₀ − centre)/width)²)."""
    smooth = 50.0 + 0.5 * np.sum((theta - 0.3) ** 2) + math.sin(theta[1] * theta[2])
    return float(smooth + depth * math.exp(-(((theta[0] - centre) / width) ** 2)))


def spike_grad(theta, centre, depth, width) -> np.ndarray:
    """(θ − 0.3) + cos(θ₁θ₂)·(θ₂ e₁ + θ₁ e₂) − 2·depth·(θ₀ − c)/w²·exp(−((θ₀ − c)/w)²)·e₀."""
    g = np.asarray(theta, dtype=np.float64) - 0.3
    c = math.cos(theta[1] * theta[2])
    g[1] += c * theta[2]
    g[2] += c * theta[1]
    offset = (theta[0] - centre) / width
    g[0] += -2.0 * depth * offset / width * math.exp(-offset * offset)
    return g


def _spike_model() -> HardModel:
    theta = np.array([0.7, -0.4, 1.1, 0.2, -0.9, 0.5])
    bugs = issue_bugs(hyper=4, off=2, swap=(1, 3), hyper_name="coordinate 4")
    return HardModel("spike", "smooth + a dip of width 1e-12 centred at theta_0 (|f| ~ 51)",
                     spike_loss, spike_grad, theta, (float(theta[0]), SPIKE_DEPTH, SPIKE_WIDTH),
                     "warn", bugs)


# ----------------------------------------------------------------------------- flat


def flat_loss(theta, A, b) -> float:
    """2.5 + Σ relu(Aθ + b): with every Aθ + b ≤ −1 near θ, exactly 2.5."""
    return float(2.5 + np.sum(np.maximum(A @ theta + b, 0.0)))


def flat_grad(theta, A, b) -> np.ndarray:
    """Aᵀ·1[Aθ + b > 0]: exactly 0 here."""
    return A.T @ (A @ theta + b > 0.0).astype(np.float64)


def _flat_model() -> HardModel:
    rng = np.random.default_rng(2)
    A = rng.standard_normal((8, 6))
    theta = rng.standard_normal(6)
    b = -np.abs(A @ theta) - 1.0 - rng.uniform(size=8)  # every input ≤ −1 at θ

    def identity_backward(_grad):
        return lambda theta, A, b: A.T @ np.ones(A.shape[0])

    def leaky_backward(_grad):
        return lambda theta, A, b: A.T @ np.full(A.shape[0], 0.01)

    bugs = (Bug("backward as if the ReLU were the identity", identity_backward),
            Bug("leaky slope 0.01 in the backward pass only", leaky_backward))
    return HardModel("flat", "ReLU of inputs <= -1: locally constant, gradient exactly 0",
                     flat_loss, flat_grad, theta, (A, b), "pass", bugs)


# ----------------------------------------------------------------------------- jump at θ


def jump_loss(theta, X, margin) -> float:
    """Σ_i ℓ(s_i), s = Xθ, ℓ(s) = s where s == 1 (the branch of target 1), else
    log(1 + e^{margin − s}): it jumps where s₀ passes through 1, exactly at θ."""
    s = X @ theta
    return float(np.sum(np.where(s == 1.0, s, np.logaddexp(0.0, margin - s))))


def jump_grad(theta, X, margin) -> np.ndarray:
    """The smooth branch's Xᵀ(−σ(margin − s)): the derivative on either side of θ."""
    return X.T @ -_sigmoid(margin - X @ theta)


def _jump_model() -> HardModel:
    # θ and the first row of X are dyadic with few bits: s₀ = x₀·θ = 1 exactly, in any order
    theta = np.array([0.5, -0.25, 0.75, 0.125, -0.5, 0.5])
    first = np.array([1.0, -1.0, 0.5, 2.0, -0.5, 0.0])
    first[5] = (1.0 - first[:5] @ theta[:5]) / theta[5]
    rng = np.random.default_rng(3)
    X = np.vstack([first, rng.standard_normal((11, 6))])
    assert (X @ theta)[0] == 1.0 and np.all((X @ theta)[1:] != 1.0)
    bugs = (*issue_bugs(hyper=3, off=1, swap=(0, 2), hyper_name="coordinate 3"),
            times(0.0, "gradient dropped (zeros)"))
    return HardModel("jump", "hinge whose branch is chosen by s == 1, true exactly at theta",
                     jump_loss, jump_grad, theta, (X, 2.0), "pass", bugs)


def models() -> list[HardModel]:
    """Every hard model, built afresh (about 0.1 s: the GP optimum is solved here)."""
    return [*_gp_models(), _logistic_model(), _spike_model(), _flat_model(), _jump_model()]
