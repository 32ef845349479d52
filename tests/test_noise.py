"""ECnoise (fastgrad.noise): known injected noise, accumulated rounding, the edge codes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from numba import njit

from fastgrad.errors import InputError
from fastgrad.noise import (
    NOISE_DETECTED,
    STEP_TOO_LARGE,
    STEP_TOO_SMALL,
    default_step,
    ecnoise,
    estimate_noise,
    estimate_noise_on,
    next_step,
    noise_levels,
)

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)
X0 = np.linspace(-1.0, 2.0, 10)


def hashed_normal(x: np.ndarray) -> float:
    """A standard normal value that is a deterministic function of x's bytes."""
    digest = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=8).digest()
    return float(np.random.default_rng(int.from_bytes(digest, "little")).standard_normal())


def smooth(x: np.ndarray) -> float:
    return 3.0 + float(np.sum(np.cos(x) * x**2))


class Counted:
    """Wraps f; counts calls and records the dtypes of the points received."""

    def __init__(self, f):
        self.f, self.calls, self.dtypes = f, 0, set()

    def __call__(self, point):
        self.calls += 1
        self.dtypes.add(point.dtype)
        return self.f(point)


# ---------------------------------------------------------------------- ecnoise
def test_levels_use_gamma_k():
    """γ_k·E[(Δ^k ε)²] = σ² for iid ε: averaged over many tables every σ_k² ≈ σ² = 4."""
    rng = np.random.default_rng(0)
    squared = np.mean([noise_levels(2.0 * rng.standard_normal(9))[0] ** 2 for _ in range(4000)],
                      axis=0)
    np.testing.assert_allclose(squared, 4.0, rtol=0.1)


def test_ecnoise_codes():
    offsets = np.arange(9) - 4.0
    assert ecnoise(np.full(9, 7.0)) == (0.0, STEP_TOO_SMALL)
    assert ecnoise(np.zeros(9)) == (0.0, STEP_TOO_SMALL)
    assert ecnoise(1.0 + offsets) == (0.0, STEP_TOO_LARGE)  # spread 8/5 > 0.1
    assert ecnoise(1000.0 + offsets**2) == (0.0, STEP_TOO_LARGE)  # smooth: no level qualifies
    assert ecnoise(np.r_[1.0, np.nan, np.ones(7)])[1] == STEP_TOO_LARGE
    assert ecnoise(1.0 + 1e-12 * np.r_[0, 0, 0, 0, 0, 0, 1, 2, 3])[1] == STEP_TOO_SMALL  # 5/8 Δf=0
    assert ecnoise(1.0 + 1e-12 * np.r_[0, 0, 0, 0, 0, 1, 2, 3, 4])[1] == NOISE_DETECTED  # 4/8


def test_ecnoise_returns_the_first_qualifying_level():
    """Noise 0.5: with slope 1e-3 σ_1 qualifies; with slope 10, σ_1 ≈ 7 does not, σ_2 does."""
    offsets = np.arange(9) - 4.0
    noise = 0.5 * np.random.default_rng(3).standard_normal(9)
    for slope, order in [(1e-3, 1), (10.0, 2)]:
        values = 1000.0 + slope * offsets + noise
        sigma, code = ecnoise(values)
        assert code == NOISE_DETECTED and sigma == noise_levels(values)[0][order - 1]
        assert 0.5 / 3 < sigma < 0.5 * 3


def test_next_step_moves_by_100_then_bisects():
    assert next_step(1.0, 100.0, STEP_TOO_SMALL, None) == (100.0, 100.0)
    assert next_step(1.0, 100.0, STEP_TOO_LARGE, STEP_TOO_LARGE) == (0.01, 100.0)
    assert next_step(100.0, 100.0, STEP_TOO_LARGE, STEP_TOO_SMALL) == (10.0, 10.0)


# ------------------------------------------------------------- estimate_noise
@pytest.mark.parametrize("relative", [1e-3, 1e-6, 1e-9])
def test_injected_noise_is_recovered(relative):
    """σ/σ_true measured over these 10 directions: 0.42–1.44, median 0.85 (0.42–2.04 over 40)."""
    true_sigma = relative * abs(smooth(X0))
    ratios = []
    for seed in range(10):
        estimate = estimate_noise(lambda x: smooth(x) + true_sigma * hashed_normal(x), X0, rng=seed)
        assert estimate.detected and estimate.code == NOISE_DETECTED
        ratios.append(estimate.sigma / true_sigma)
    assert 1 / 3 < min(ratios) and max(ratios) < 3
    assert 0.5 < np.median(ratios) < 2


@njit
def squared_residuals(theta, features, targets):
    out = np.empty(features.shape[0])
    for i in range(features.shape[0]):
        residual = -targets[i]
        for j in range(features.shape[1]):
            residual += features[i, j] * theta[j]
        out[i] = residual * residual
    return out


@njit
def sequential_loss(theta, features, targets):
    """Σ r_i², summed left to right: rounding error grows like u·√n·|f|."""
    total = 0.0
    for value in squared_residuals(theta, features, targets):
        total += value
    return total


def test_summed_loss_noise_is_far_above_roundoff():
    """1e5 samples, |f| ≈ 2.2e5: sequential sum σ ≈ 30–58·u·|f| over 6 directions;
    np.sum (pairwise) measures 0.54·u·|f|, so it is floored at u·|f|."""
    rng = np.random.default_rng(1)
    features = rng.standard_normal((100_000, 5))
    targets = features @ np.ones(5) + rng.standard_normal(100_000)
    theta = np.full(5, 0.5)
    sequential = estimate_noise(lambda t: sequential_loss(t, features, targets), theta, rng=0)
    pairwise = estimate_noise(lambda t: np.sum(squared_residuals(t, features, targets)), theta,
                              rng=0)
    assert sequential.detected and pairwise.detected
    ratio = sequential.sigma / (EPS64 * abs(sequential.f0))
    assert ratio > 10  # measured 29.9 with this direction
    assert pairwise.sigma < sequential.sigma / 5  # the floor u·|f|: 30 times smaller


def test_constant_function_gives_code_2_and_the_floor():
    counted = Counted(lambda x: 5.0)
    estimate = estimate_noise(counted, X0, rng=0, max_tries=3)
    assert estimate.code == STEP_TOO_SMALL and not estimate.detected
    assert estimate.sigma == EPS64 * 5.0 and estimate.f0 == 5.0
    assert estimate.evaluations == counted.calls == 1 + 3 * 8
    assert estimate.step == pytest.approx(default_step(np.float64) * 100.0**2)


def test_step_shrinks_until_noise_is_seen():
    """sin(1e9·x) varies on a scale 1e-9: δ = 1.5e-8 is too large, δ/1e4 is not."""
    counted = Counted(lambda x: 10.0 + float(np.sum(np.sin(1e9 * x))))
    estimate = estimate_noise(counted, X0, rng=0)
    assert estimate.detected
    assert estimate.step == pytest.approx(default_step(np.float64) / 100.0**2)
    assert estimate.evaluations == counted.calls == 1 + 3 * 8


def test_undetected_noise_falls_back_to_the_smallest_level():
    """f = Σ expm1(1e8·(x − x0)) is 0 at x0, so every try has spread > 0.1 (code 3).
    Measured: fallback 8.3e-9, about the noise (x's rounding, 1e-16, times 1e8); the
    first try's smallest level is 3.0, the last try's σ_1 (slope) 2.5e-7."""
    estimate = estimate_noise(lambda x: float(np.sum(np.expm1(1e8 * (x - X0)))), X0, rng=0)
    assert estimate.code == STEP_TOO_LARGE and not estimate.detected
    assert 1e-10 < estimate.sigma < 5e-8


def test_x_is_not_modified_and_calls_are_counted():
    x = X0.copy()

    def vandal(point):
        value = smooth(point)
        point[:] = 1e300  # must not reach x, nor the later points
        return np.array(value)  # a 0-d array

    counted = Counted(vandal)
    estimate = estimate_noise(counted, x, rng=0)
    np.testing.assert_array_equal(x, X0)
    assert estimate.evaluations == counted.calls
    assert estimate.f0 == smooth(X0) and estimate.detected
    assert counted.dtypes == {np.dtype(np.float64)}


def test_float32_points_are_float32():
    x = np.linspace(-1.0, 2.0, 3000).astype(np.float32)

    def sequential32(point):
        total = np.float32(0.0)
        for value in point:
            total += value * value
        return total  # a NumPy float32 scalar

    counted = Counted(sequential32)
    estimate = estimate_noise(counted, x, rng=0)
    assert counted.dtypes == {np.dtype(np.float32)}
    assert estimate.step == default_step(np.float32)
    assert estimate.f0 == float(sequential32(x))
    assert estimate.detected
    # float32 rounding: measured σ = 6.6·u32·|f| = 3.6e9·u64·|f|
    assert estimate.sigma > 2 * EPS32 * abs(estimate.f0)
    constant = estimate_noise(lambda point: np.float32(3.0), x, rng=0)
    assert constant.sigma == EPS32 * 3.0


def test_seeded_estimates_are_reproducible_and_x_is_checked():
    first, second = (estimate_noise(smooth, X0, rng=7) for _ in range(2))
    assert first == second
    with pytest.raises(InputError):
        estimate_noise(smooth, X0.reshape(2, 5))
    with pytest.raises(InputError):
        estimate_noise(smooth, X0, direction=np.zeros(10))


# ------------------------------------------------------------- a direction on a support
def test_noise_along_a_sparse_direction_matches_the_injected_level():
    """Injected σ = 1e-9 on a 2,000-dimensional x: moving 64 coordinates measures it too,
    and f_changed only ever receives the support's values, in the working dtype."""
    x = np.linspace(-1.0, 1.0, 2000)
    support = np.arange(0, 2000, 31)
    received = []

    def f_changed(values):
        received.append((values.shape, values.dtype))
        point = x.copy()
        point[support] = values
        return smooth(point) + 1e-9 * hashed_normal(point)

    estimate = estimate_noise_on(f_changed, x, support, rng=0)
    assert estimate.detected
    assert 0.5e-9 < estimate.sigma < 2e-9
    assert estimate.f0 == f_changed(x[support])
    assert set(received) == {((support.size,), np.dtype(np.float64))}
    assert estimate.evaluations == len(received) - 1


def test_noise_on_a_support_rejects_an_empty_support():
    with pytest.raises(InputError, match="support"):
        estimate_noise_on(lambda values: 1.0, X0, np.array([], dtype=np.int64))
