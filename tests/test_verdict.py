"""Steps and the verdict: every correct gradient passes (also a loss summed over 10^5
samples, where the seed's fixed 1e-7 threshold raises a false alarm), and each planted
bug fails, with its group named."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from conftest import summed_least_squares, summed_least_squares_grad

import fastgrad as fg
from fastgrad import analysis
from fastgrad.models import mlp

EPS64 = float(np.finfo(np.float64).eps)


# ================================================================= steps
def _cube(x):
    return float(np.sum(x ** 3))


def _by_hand(loss, x, relative_step):
    """(f(x+h e_i) − f(x−h e_i)) / ((x_i+h) − (x_i−h)), h = h0·max(1, |x_i|), and the
    same over the nominal 2h."""
    flat = x.reshape(-1)
    taken, nominal = np.empty(flat.size), np.empty(flat.size)
    for i in range(flat.size):
        h = relative_step * max(1.0, abs(flat[i]))
        plus, minus = flat.copy(), flat.copy()
        plus[i] += h
        minus[i] -= h
        difference = loss(plus.reshape(x.shape)) - loss(minus.reshape(x.shape))
        taken[i] = difference / (plus[i] - minus[i])
        nominal[i] = difference / (2 * h)
    return taken.reshape(x.shape), nominal.reshape(x.shape)


@pytest.fixture(scope="module")
def cube_point():
    rng = np.random.default_rng(11)
    return rng.uniform(1.05, 9.0, 40) * rng.choice([-1.0, 1.0], 40)  # |x| > 1


@pytest.mark.parametrize("compiled", [False, True])
def test_default_step_and_the_step_actually_taken(cube_point, njit_cube, compiled):
    x = cube_point
    loss = njit_cube if compiled else _cube
    report = fg.check(loss, 3 * x ** 2, x)
    assert report.passed
    assert report.relative_step == pytest.approx(np.cbrt(EPS64), rel=4 * EPS64)
    by_hand, over_2h = _by_hand(loss, x, report.relative_step)
    assert np.array_equal(report.numerical, by_hand)
    assert np.array_equal(fg.numerical_gradient(loss, x), by_hand)
    # the taken step differs from 2h here, and that changes the quotient: the test can tell
    h = report.relative_step * np.abs(x)
    assert np.any((x + h) - (x - h) != 2 * h)
    assert not np.array_equal(by_hand, over_2h)


def test_steps_scale_with_theta():
    """h_i = h0·max(1, |θ_i|): small and large coordinates, checked by hand."""
    x = np.array([1e-3, -0.5, 0.99, 1.0, -3.0, 250.0, 1e4])
    report = fg.check(_cube, 3 * x ** 2, x)
    by_hand, _ = _by_hand(_cube, x, report.relative_step)
    assert np.array_equal(report.numerical, by_hand)
    # a step of h0 everywhere (no max(1, |θ|)) gives another answer at the large ones
    flat_step = np.array([(_cube(x + s) - _cube(x - s)) / ((x[i] + report.relative_step)
                          - (x[i] - report.relative_step))
                          for i, s in enumerate(np.eye(x.size) * report.relative_step)])
    assert not np.array_equal(report.numerical[-2:], flat_step[-2:])


def test_default_relative_step_is_the_correctly_rounded_cube_root(cube_point):
    x = cube_point
    assert fg.check(_cube, 3 * x ** 2, x).relative_step == np.cbrt(EPS64)


def test_eps_overrides_the_step(cube_point):
    x = cube_point
    default = fg.check(_cube, 3 * x ** 2, x)
    classic = fg.check(_cube, 3 * x ** 2, x, eps=1e-7)
    assert classic.relative_step == 1e-7 != default.relative_step
    by_hand, _ = _by_hand(_cube, x, 1e-7)
    assert np.array_equal(classic.numerical, by_hand)
    assert np.array_equal(fg.numerical_gradient(_cube, x, eps=1e-7), by_hand)
    assert not np.array_equal(classic.numerical, default.numerical)
    assert "h = 1.00e-07" in str(classic)


# ================================================================= correct gradients pass
def test_summed_least_squares_over_1e5_samples_passes_where_the_seed_rule_false_alarms(
        record_score):
    rng = np.random.default_rng(7)
    m, d = 100_000, 5
    X = rng.standard_normal((m, d))
    w_true = rng.standard_normal(d)
    y = X @ w_true + 3.0 * rng.standard_normal(m)
    w = w_true + 0.01 * rng.standard_normal(d)
    args = (X, y)
    assert summed_least_squares(w, X, y) > 1e5
    report = fg.check(summed_least_squares, summed_least_squares_grad, w, args)
    classic = fg.check(summed_least_squares, summed_least_squares_grad, w, args, eps=1e-7)
    record_score("summed least squares 1e5 (default eps)", report, "correct")
    record_score("summed least squares 1e5 (eps=1e-7)", classic, "correct")
    assert report.verdict == "pass" and classic.verdict == "pass"
    assert report.engine == "numba" and report.noise_detected
    # the seed's metric with eps=1e-7 is above its 1e-7 threshold: it would cry wolf
    seed_metric = analysis.relative_error(
        fg.numerical_gradient(summed_least_squares, w, args, eps=1e-7),
        summed_least_squares_grad(w, *args))
    assert seed_metric > 1e-7
    assert classic.relative_error == seed_metric
    assert classic.band != "correct"


def test_correct_mlp_gradients_pass(mlp_problem, record_score):
    problem, args, grad = mlp_problem
    compiled = fg.check(mlp.loss, grad, problem.params, args)
    python = fg.check(mlp.loss_params, mlp.grad, problem.params, args)
    flat = fg.check(mlp.loss, mlp.flatten(grad), problem.theta, args)
    for name, report in [("mlp dict njit", compiled), ("mlp dict python", python),
                         ("mlp flat njit", flat)]:
        record_score(name, report, "correct")
        assert report.verdict == "pass", str(report)
        assert report.failed == 0
        assert all(group.verdict == "ok" for group in report.groups)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 5), ()])
def test_correct_gradient_of_3d_and_0d_theta_passes(njit_cube, compiled, shape, record_score):
    size = int(np.prod(shape))
    x = np.random.default_rng(5).uniform(-2, 2, size).reshape(shape)
    report = fg.check(njit_cube if compiled else _cube, 3 * x ** 2, x)
    record_score(f"cube theta shape {shape} {'njit' if compiled else 'python'}", report,
                 "correct")
    assert report.verdict == "pass"
    assert report.checked == report.size == size
    assert np.shape(report.numerical) == shape


# ================================================================= planted bugs fail
def _assert_fails_in(report, failing):
    assert report.verdict == "fail" and not report.passed
    verdicts = {group.name: group.verdict for group in report.groups}
    assert {name for name, verdict in verdicts.items() if verdict == "fail"} == set(failing)
    assert report.worst[0].group in failing and report.worst[0].status == "fail"


@pytest.mark.parametrize("bug, failing", [
    ("factor 2 on b1", {"b1"}),
    ("sign flip on W2", {"W2"}),
    ("missing 1/m", {"W1", "b1", "W2", "b2"}),
    ("tanh' written 1 - A1", {"W1", "b1"}),
])
def test_planted_mlp_bugs_fail(mlp_problem, bug, failing, record_score):
    problem, args, grad = mlp_problem
    wrong = {k: v.copy() for k, v in grad.items()}
    if bug == "factor 2 on b1":
        wrong["b1"] *= 2
    elif bug == "sign flip on W2":
        wrong["W2"] *= -1
    elif bug == "missing 1/m":
        wrong = {k: v * problem.m for k, v in grad.items()}
    else:
        wrong = mlp.grad_buggy(problem.params, *args)
    report = fg.check(mlp.loss, wrong, problem.params, args)
    record_score(f"mlp {bug}", report, "bug")
    _assert_fails_in(report, failing)


L2 = 1e-4


def _l2_loss(p, X, Y):
    return mlp.loss_params(p, X, Y) + 0.5 * L2 * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2))


def _l2_grad(p, X, Y):
    g = mlp.grad(p, X, Y)
    g["W1"] = g["W1"] + L2 * p["W1"]
    g["W2"] = g["W2"] + L2 * p["W2"]
    return g


def test_missing_l2_regularisation_fails(mlp_problem, record_score):
    problem, args, _ = mlp_problem
    correct = fg.check(_l2_loss, _l2_grad, problem.params, args)
    record_score("mlp with L2", correct, "correct")
    assert correct.verdict == "pass"
    missing = fg.check(_l2_loss, mlp.grad, problem.params, args)
    record_score("mlp missing L2 term (lambda 1e-4)", missing, "bug")
    _assert_fails_in(missing, {"W1", "W2"})


@numba.njit(nogil=True)
def square_loss(theta, X, Y):
    """0.5·mean_i ||tanh(x_i W + b) − y_i||², W square (d, d), theta = [W.ravel(), b]."""
    d = X.shape[1]
    W = theta[: d * d].reshape((d, d))
    b = theta[d * d:]
    total = 0.0
    for i in range(X.shape[0]):
        for j in range(d):
            z = b[j]
            for k in range(d):
                z += X[i, k] * W[k, j]
            r = np.tanh(z) - Y[i, j]
            total += r * r
    return 0.5 * total / X.shape[0]


def square_grad(p, X, Y):
    A = np.tanh(X @ p["W"] + p["b"])
    dZ = (A - Y) * (1 - A * A) / X.shape[0]
    return {"W": X.T @ dZ, "b": dZ.sum(axis=0)}


def test_transposed_square_weight_gradient_fails(record_score):
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((30, 5)), 0.5 * rng.standard_normal((30, 5))
    params = {"W": 0.4 * rng.standard_normal((5, 5)), "b": 0.1 * rng.standard_normal(5)}
    correct = fg.check(square_loss, square_grad, params, (X, Y))
    record_score("square model", correct, "correct")
    assert correct.verdict == "pass"
    wrong = square_grad(params, X, Y)
    assert not np.allclose(wrong["W"], wrong["W"].T)  # the bug is visible
    wrong["W"] = wrong["W"].T.copy()
    report = fg.check(square_loss, wrong, params, (X, Y))
    record_score("square model W transposed", report, "bug")
    _assert_fails_in(report, {"W"})


# ----------------------------------------------------------------- 10^5 parameters
N_BIG = 100_000


@numba.njit(nogil=True, fastmath={"reassoc"})
def separable_loss(x, c):
    """sum_i (x_i − c_i)² + x_i⁴/4, plus the rank-one coupling (c·x)²/2n.

    O(n) per evaluation; reassociation lets LLVM vectorise the sums (~30 µs at n = 10^5)."""
    s = 0.0
    p = 0.0
    for i in range(x.size):
        d = x[i] - c[i]
        q = x[i] * x[i]
        s += d * d + 0.25 * q * q
        p += c[i] * x[i]
    return s + 0.5 * p * p / x.size


def separable_grad(x, c):
    return 2 * (x - c) + x ** 3 + c * (c @ x) / x.size


@pytest.fixture(scope="module")
def big_problem():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.5, 1.5, N_BIG)
    # x − c has x's sign: the two per-coordinate terms of the gradient add, |g_i| >= 0.2
    c = x - np.sign(x) * rng.uniform(0.1, 0.3, N_BIG)
    g = separable_grad(x, c)
    assert np.abs(g).min() > 0.1
    return x, (c,), g


def test_correct_gradient_over_1e5_parameters_passes(big_problem, record_score):
    x, args, g = big_problem
    report = fg.check(separable_loss, g, x, args)
    record_score("separable + rank one, n = 1e5", report, "correct")
    assert report.verdict == "pass" and report.checked == N_BIG


def test_one_coordinate_off_by_1e_3_in_1e5_fails(big_problem, record_score):
    x, args, g = big_problem
    k = int(np.random.default_rng(20260217).integers(N_BIG))
    wrong = g.copy()
    wrong[k] *= 1 + 1e-3
    report = fg.check(separable_loss, wrong, x, args)
    record_score("one coordinate of 1e5 off by 1e-3", report, "bug")
    _assert_fails_in(report, {"theta"})
    assert report.failed == 1
    assert report.worst[0].label == f"theta[{k}]"
    assert f"theta[{k}]" in {c.label for c in report.worst}
    # the seed's relative error does not call it wrong
    assert report.relative_error <= 1e-3 and report.band != "wrong"


# ------------------------------------------------------------ noise away from θ
def test_evaluation_noise_grows_with_f_only_where_f_keeps_its_sign():
    u = float(np.finfo(np.float64).eps)
    near_minimum = analysis.evaluation_noise([(1e-20, 1e-12)], np.array([1e-10]),
                                             np.array([4e-11]), np.float64)
    assert near_minimum[0] == pytest.approx(1e-20 * 100)  # σ·max|f±|/f0
    crossing = analysis.evaluation_noise([(1e-20, 1e-12)], np.array([1e-10]),
                                         np.array([-1e-10]), np.float64)
    assert crossing[0] == pytest.approx(max(1e-20, u * 1e-10))  # no growth across a sign change
    flat = analysis.evaluation_noise([(3e-16, 1.0)], np.array([1.0 + 1e-9]),
                                     np.array([1.0 - 1e-9]), np.float64)
    assert flat[0] == pytest.approx(3e-16, rel=1e-8)
    two = analysis.evaluation_noise([(1e-20, 1e-12), (1e-18, 1e-11)], np.array([1e-10]),
                                    np.array([4e-11]), np.float64)
    assert two[0] == pytest.approx(1e-18 * 10)  # the larger of the two references' bounds


def test_evaluation_noise_of_one_pair_equals_that_of_an_array():
    """The scalar path (directional tests) and the array path (coordinates) agree exactly,
    across signs, zeros and references on either side."""
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.standard_normal(300) * 10.0 ** rng.integers(-12, 3, 300),
                             np.zeros(20)])
    for references in ([(1e-16, 2.0)], [(1e-20, -1e-12)], [(1e-18, 0.0)],
                       [(1e-20, 1e-12), (1e-17, -3.0)]):
        for dtype in (np.float64, np.float32):
            f_plus, f_minus = rng.choice(values, 200), rng.choice(values, 200)
            array = analysis.evaluation_noise(references, f_plus, f_minus, dtype)
            pairs = [analysis.evaluation_noise(references, float(a), float(b), dtype)
                     for a, b in zip(f_plus, f_minus, strict=True)]
            assert all(isinstance(pair, float) for pair in pairs)
            np.testing.assert_array_equal(array, pairs)


@pytest.mark.parametrize("residual", [1e-4, 1e-6])
def test_least_squares_near_its_fit_passes_and_a_bug_fails(residual, record_score):
    """Mean least squares with residuals ~1e-6: f(θ) ≈ 5e-13, but the stencil's values are
    ~30 times larger and so is their rounding noise, which ECnoise at θ does not see.
    Every real method passes the correct gradient and fails a relative 1e-3 error."""
    rng = np.random.default_rng(0)
    X, truth = rng.standard_normal((500, 15)), rng.standard_normal(15)
    y = X @ truth + residual * rng.standard_normal(500)
    theta = truth + residual / 10 * rng.standard_normal(15)

    def loss(t, X, y):
        return 0.5 * np.mean((X @ t - y) ** 2)

    def grad(t, X, y):
        return X.T @ (X @ t - y) / X.shape[0]

    wrong = grad(theta, X, y)
    wrong[2] *= 1.001
    for options in ({}, {"method": "central4"}, {"directions": 4, "seed": 0}):
        report = fg.check(loss, grad, theta, args=(X, y), workers=1, **options)
        record_score(f"least squares near its fit, residual {residual:g} {options}", report,
                     "correct")
        assert report.passed, str(report)
        assert fg.check(loss, wrong, theta, args=(X, y), workers=1, **options).verdict == "fail"


def test_least_squares_at_an_exact_fit_does_not_fail_a_correct_gradient():
    """y = Xθ exactly: f(θ) = 0, the gradient is 0 and the noise at θ is nil, while one step
    away the residuals and their rounding are of the step's size.  A probe one step away sees
    f grow, and the noise measured there bounds the stencil's: the correct gradient is not
    failed (it failed with a score of 9.7; "warn" at θ itself, as a zero gradient's relative
    error cannot be confirmed, "pass" a residual of 1e-7 away), and a wrong one fails."""
    rng = np.random.default_rng(0)
    X, theta = rng.standard_normal((500, 15)), rng.standard_normal(15)
    y = X @ theta

    def loss(t, X, y):
        return 0.5 * np.mean((X @ t - y) ** 2)

    def grad(t, X, y):
        return X.T @ (X @ t - y) / X.shape[0]

    near = theta + 1e-7 * rng.standard_normal(15)
    for point, verdict in ((theta, "warn"), (near, "pass")):
        for options in ({}, {"method": "central4"}, {"directions": 4, "seed": 0}):
            report = fg.check(loss, grad, point, args=(X, y), workers=1, **options)
            assert report.verdict == verdict, str(report)
            wrong = grad(point, X, y) + 1e-3
            assert fg.check(loss, wrong, point, args=(X, y), workers=1, **options).verdict == "fail"
