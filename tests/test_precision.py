"""Precision and trust in the loss (issue #4).

* float32: a loss computing in float32 is checked in float32 (steps ∛u32, float32
  tolerances), or in float64 with ``dtype="float64"``;
* nondeterminism: an unseeded random perturbation, a loss that drifts after many calls,
  and a loss that writes to its input are refused with a LossError that says so.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastgrad as fg
from fastgrad.models import mlp

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
SIZES = {"d": 10, "h": 64, "c": 5, "m": 32}


# ------------------------------------------------------------------ float32
@pytest.fixture(scope="module")
def float32_problem():
    """float32 params and data; the analytic gradient is mlp.grad in float64 at exactly the
    float32 values, cast to float32."""
    p = mlp.problem(**SIZES, seed=0)
    params = {k: v.astype(np.float32) for k, v in p.params.items()}
    X, Y = p.X.astype(np.float32), p.Y.astype(np.float32)
    grad64 = mlp.grad({k: v.astype(np.float64) for k, v in params.items()},
                      X.astype(np.float64), Y.astype(np.float64))
    grad32 = {k: v.astype(np.float32) for k, v in grad64.items()}
    return params, X, Y, grad32


def flat32(structure):
    return np.concatenate([structure[k].ravel() for k in mlp.KEYS])


def recording(dtypes):
    """mlp.loss of a flat theta, through Python, recording the dtype of every theta given."""
    def loss(theta, X, Y):
        dtypes.add(theta.dtype)
        return mlp.loss(theta, X, Y)
    return loss


def test_the_loss_computes_in_float32(float32_problem):
    params, X, Y, _ = float32_problem
    value32 = mlp.loss(flat32(params), X, Y)  # numba boxes the float32 result as a float
    value64 = mlp.loss(flat32(params).astype(np.float64), X.astype(np.float64),
                       Y.astype(np.float64))
    # float32 rounding: far above float64's, within a few float32 units.
    assert 1e3 * EPS64 < abs(value32 - value64) / value64 < 1e3 * EPS32


def test_float32_passes_in_float32(float32_problem):
    params, X, Y, grad = float32_problem
    report = fg.check(mlp.loss, grad, params, (X, Y))
    assert report.verdict == "pass", str(report)
    assert report.dtype == "float32"
    assert report.relative_step == pytest.approx(EPS32 ** (1 / 3), rel=1e-6)
    assert report.relative_step == pytest.approx(4.9e-3, rel=0.01)
    # The noise is float32 rounding (~1e-7 relative), not float64's.
    assert report.noise > 1e3 * EPS64
    # float32 can only confirm a gradient to ~1e-5: the seed's bands, honestly.
    print(f"\nfloat32: relative error {report.relative_error:.2e}, noise {report.noise:.1e}")
    assert 1e-7 < report.relative_error < 1e-3


def test_float32_is_evaluated_in_float32(float32_problem):
    params, X, Y, grad = float32_problem
    seen = set()
    report = fg.check(recording(seen), flat32(grad), flat32(params), (X, Y))
    assert report.passed and report.engine == "python" and report.dtype == "float32"
    assert seen == {np.dtype(np.float32)}


@pytest.mark.parametrize("group", ["W1", "b1", "W2", "b2"])
def test_float32_factor_two_bug_fails(float32_problem, group):
    params, X, Y, grad = float32_problem
    wrong = {k: v.copy() for k, v in grad.items()}
    wrong[group] *= np.float32(2.0)
    report = fg.check(mlp.loss, wrong, params, (X, Y))
    assert not report.passed
    assert {g.name for g in report.groups if g.verdict == "fail"} == {group}


def test_float32_in_float64(float32_problem):
    params, X, Y, grad = float32_problem
    seen = set()
    report = fg.check(recording(seen), flat32(grad), flat32(params), (X, Y), dtype="float64")
    assert report.passed and report.dtype == "float64"
    assert seen == {np.dtype(np.float64)}
    report = fg.check(mlp.loss, grad, params, (X, Y), dtype="float64")
    assert report.verdict == "pass", str(report)
    assert report.dtype == "float64"
    assert report.relative_step == pytest.approx(EPS64 ** (1 / 3), rel=1e-12)
    # Now the float32 rounding of the analytic gradient is what is left.
    print(f"\nfloat32 in float64: relative error {report.relative_error:.2e}")
    assert report.relative_error < 1e-7
    # And it still finds a bug.
    wrong = {k: v.copy() for k, v in grad.items()}
    wrong["b2"] *= np.float32(2.0)
    assert not fg.check(mlp.loss, wrong, params, (X, Y), dtype="float64").passed


# ------------------------------------------------------------------ nondeterminism
@pytest.fixture(scope="module")
def small():
    """n = 6·12 + 12 + 12·3 + 3 = 123: a check makes 2n + 12 > 200 calls."""
    p = mlp.problem(d=6, h=12, c=3, m=16, seed=0)
    return p, mlp.flatten(mlp.grad(p.params, p.X, p.Y))


@pytest.mark.parametrize("relative", [1e-2, 1e-6])
def test_random_perturbation_is_not_deterministic(small, relative):
    p, grad = small
    rng = np.random.default_rng(7)  # fixed here so the test is reproducible; never reset

    def dropout_like(theta, X, Y):
        return mlp.loss(theta, X, Y) * (1.0 + relative * rng.standard_normal())

    with pytest.raises(fg.LossError, match="not deterministic"):
        fg.check(dropout_like, grad, p.theta, (p.X, p.Y))


@numba.njit
def seed_numba(seed):
    np.random.seed(seed)


@numba.njit
def compiled_dropout(theta, X, Y):
    """Drops each sample with probability 1/2 (rescaled): the compiled engine's path."""
    m = X.shape[0]
    keep = np.random.random(m) < 0.5
    Xk, Yk = X[keep], Y[keep]
    return mlp.loss(theta, Xk, Yk) * Xk.shape[0] / m


def test_compiled_dropout_is_not_deterministic(small):
    p, grad = small
    seed_numba(3)
    with pytest.raises(fg.LossError, match="not deterministic"):
        fg.check(compiled_dropout, grad, p.theta, (p.X, p.Y))


def test_drift_after_many_calls_is_caught_at_the_end(small):
    p, grad = small
    calls = [0]

    def drifting(theta, X, Y):
        calls[0] += 1
        value = mlp.loss(theta, X, Y)
        return value * (1.0 + 1e-6) if calls[0] > 200 else value

    with pytest.raises(fg.LossError, match="not deterministic") as caught:
        fg.check(drifting, grad, p.theta, (p.X, p.Y))
    assert "at the end of the check" in str(caught.value)
    assert calls[0] > 200
    # The same loss without the drift passes (the end-of-check call is what caught it).
    assert fg.check(mlp.loss, grad, p.theta, (p.X, p.Y)).passed


def writes_to_theta(theta, X, Y):
    theta[3] += 1.0
    return mlp.loss(theta, X, Y)


@numba.njit
def compiled_writes_to_theta(theta, X, Y):
    theta[0] = 0.0
    return mlp.loss(theta, X, Y)


@pytest.mark.parametrize("loss", [writes_to_theta, compiled_writes_to_theta],
                         ids=["python", "numba"])
def test_a_loss_that_modifies_its_input(small, loss):
    p, grad = small
    theta = p.theta
    before = theta.copy()
    with pytest.raises(fg.LossError, match="modifies its input"):
        fg.check(loss, grad, theta, (p.X, p.Y))
    np.testing.assert_array_equal(theta, before)


def test_a_loss_that_modifies_a_dict_theta(small):
    p, _ = small
    params = {k: v.copy() for k, v in p.params.items()}
    before = {k: v.copy() for k, v in params.items()}

    def scale_w2(params, X, Y):
        params["W2"] *= 0.5  # e.g. an in-place weight decay step left in the loss
        return mlp.loss_params(params, X, Y)

    grad = mlp.grad(params, p.X, p.Y)
    with pytest.raises(fg.LossError, match="modifies its input") as caught:
        fg.check(scale_w2, grad, params, (p.X, p.Y))
    assert "W2[" in str(caught.value)
    for k, value in params.items():
        np.testing.assert_array_equal(value, before[k])


def test_a_loss_that_starts_modifying_its_input_later(small):
    """Writes only from its 50th call: inside the chunk kernels, where nobody looks."""
    p, grad = small
    theta = p.theta
    before = theta.copy()
    calls = [0]

    def late_writer(theta, X, Y):
        calls[0] += 1
        if calls[0] >= 50:
            theta[1] = 0.0
        return mlp.loss(theta, X, Y)

    with pytest.raises(fg.LossError, match="modifies its input"):  # by the end-of-check call
        fg.check(late_writer, grad, theta, (p.X, p.Y))
    np.testing.assert_array_equal(theta, before)


# ---------------------------------------------------------------- the precision of f's values
def _float32_theta_float64_loss(theta, w, c):
    """float32 θ, float64 data: sin in float32, the rest and the sum in float64."""
    return float(np.sum(w * np.sin(theta) + c * theta))


def test_values_dtype_tells_float32_results_from_float64_ones():
    from fastgrad.noise import values_dtype

    rng = np.random.default_rng(0)
    assert values_dtype(rng.standard_normal(9).astype(np.float32).tolist()) == np.float32
    assert values_dtype(rng.standard_normal(9).tolist()) == np.float64
    assert values_dtype([1.0, 0.5, float("inf")]) == np.float32  # short binary fractions


def test_float32_theta_with_float64_values_is_floored_at_float64_rounding():
    """The noise floor is u·|f| in the precision of the values returned: a float32 theta whose
    loss returns float64 (|f| ≈ 18.6, measured σ ≈ 5e-8) was floored at u32·|f| = 2.2e-6, and
    a relative 1e-2 error in one coordinate only warned."""
    rng = np.random.default_rng(29634)
    theta = rng.uniform(-2.0, 2.0, 23).astype(np.float32)
    w, c = rng.uniform(-0.5, 0.5, 23), rng.uniform(1.0, 2.0, 23) * rng.choice((-1.0, 1.0), 23)
    exact = w * np.cos(theta.astype(np.float64)) + c
    report = fg.check(_float32_theta_float64_loss, exact, theta, (w, c))
    assert report.verdict == "pass", str(report)
    f0 = _float32_theta_float64_loss(theta, w, c)
    assert report.noise < float(np.finfo(np.float32).eps) * abs(f0)
    for bug in (0, 2, 22):
        wrong = exact.copy()
        wrong[bug] *= 1.01
        failed = fg.check(_float32_theta_float64_loss, wrong, theta, (w, c))
        assert failed.verdict == "fail", str(failed)
        assert [r.label for r in failed.worst if r.status == "fail"] == [f"theta[{bug}]"]


def test_float32_values_keep_the_float32_floor():
    """The same loss rounded to float32 on return: its values are float32 numbers, and the
    floor stays u32·|f|."""
    rng = np.random.default_rng(29634)
    theta = rng.uniform(-2.0, 2.0, 23).astype(np.float32)
    w, c = rng.uniform(-0.5, 0.5, 23), rng.uniform(1.0, 2.0, 23)
    report = fg.check(lambda t, w, c: np.float32(_float32_theta_float64_loss(t, w, c)),
                      w * np.cos(theta.astype(np.float64)) + c, theta, (w, c))
    assert report.verdict == "pass", str(report)
    f0 = float(np.float32(_float32_theta_float64_loss(theta, w, c)))
    assert report.noise >= float(np.finfo(np.float32).eps) * abs(f0)
