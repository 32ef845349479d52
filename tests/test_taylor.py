"""fg.taylor_test: correct derivatives pass on several models, planted bugs fail, bad input is an
InputError before any evaluation, the report's core and plot."""

from __future__ import annotations

import json
import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import rosen, rosen_der, rosen_hess_prod

import fastgrad as fg
from fastgrad.models import logistic, mlp
from fastgrad.taylor import fit_rate, judge_rate

RNG = np.random.default_rng(0)
N = 12
A = RNG.standard_normal((N, N))
A = A @ A.T + N * np.eye(N)
C = RNG.standard_normal(N)
THETA = RNG.standard_normal(N)


def quadratic(theta, A, c):
    return 0.5 * theta @ A @ theta + c @ theta


def quadratic_grad(theta, A, c):
    return A @ theta + c


@numba.njit
def quadratic_njit(theta, A, c):
    total = 0.0
    for i in range(theta.size):
        total += c[i] * theta[i]
        for j in range(theta.size):
            total += 0.5 * theta[i] * A[i, j] * theta[j]
    return total


def off_by(grad, index: int, relative: float):
    """``grad`` with coordinate ``index`` multiplied by 1 + relative."""
    def wrong(theta, *args, **kwargs):
        value = np.array(grad(theta, *args, **kwargs), dtype=np.float64)
        value.flat[index] *= 1.0 + relative
        return value
    return wrong


@pytest.mark.parametrize("loss", [quadratic, quadratic_njit], ids=["python", "njit"])
def test_quadratic_passes_and_one_coordinate_off_by_1e3_fails(loss):
    report = fg.taylor_test(loss, quadratic_grad, THETA, (A, C), seed=3)
    assert report.verdict == "pass", report
    assert abs(report.rate - 2) <= report.rate_uncertainty < 0.5
    for index in range(N):  # every coordinate is in a Gaussian direction's support
        wrong = fg.taylor_test(loss, off_by(quadratic_grad, index, 1e-3), THETA, (A, C), seed=3)
        assert wrong.verdict == "fail", (index, wrong)
        assert abs(wrong.rate - 1) <= wrong.rate_uncertainty


def test_evaluations_are_counted_and_few():
    calls = []

    def counted(theta, A, c):
        calls.append(1)
        return quadratic(theta, A, c)
    report = fg.taylor_test(counted, quadratic_grad, THETA, (A, C), seed=1)
    assert report.evaluations == len(calls) <= 40


def test_hvp_gives_rate_3_on_rosenbrock_and_a_wrong_hvp_fails():
    x = np.random.default_rng(5).uniform(-1.5, 1.5, 10)
    assert fg.taylor_test(rosen, rosen_der, x, seed=2).verdict == "pass"
    report = fg.taylor_test(rosen, rosen_der, x, hvp=rosen_hess_prod, seed=2)
    assert report.verdict == "pass" and report.expected_rate == 3, report
    assert abs(report.rate - 3) <= report.rate_uncertainty

    def missing_diagonal(x, v):  # forgets the 2·v term of the Hessian's diagonal
        return rosen_hess_prod(x, v) - 2.0 * v
    wrong = fg.taylor_test(rosen, rosen_der, x, hvp=missing_diagonal, seed=2)
    assert wrong.verdict == "fail", wrong
    assert abs(wrong.rate - 2) <= wrong.rate_uncertainty
    assert fg.taylor_test(rosen, off_by(rosen_der, 4, 1e-3), x, hvp=rosen_hess_prod,
                          seed=2).verdict == "fail"


def test_logistic_regression_numba_model():
    problem = logistic.problem(m=200, n=50, seed=1)
    assert fg.taylor_test(logistic.loss, logistic.grad, problem.theta, problem.args, seed=0).passed
    report = fg.taylor_test(logistic.loss, logistic.grad, problem.theta, problem.args, seed=0)
    assert report.verdict == "pass", report


def test_mlp_dict_theta_and_its_buggy_backprop():
    problem = mlp.problem(d=4, h=5, c=3, m=20, seed=0)
    report = fg.taylor_test(mlp.loss_params, mlp.grad, problem.params, (problem.X, problem.Y), seed=4)
    assert report.verdict == "pass", report
    buggy = fg.taylor_test(mlp.loss_params, mlp.grad_buggy, problem.params, (problem.X, problem.Y),
                           seed=4)
    assert buggy.verdict == "fail", buggy


def test_wrong_sign_of_one_group_fails():
    problem = mlp.problem(d=4, h=5, c=3, m=20, seed=0)

    def negated_b2(params, X, Y):
        return {**mlp.grad(params, X, Y), "b2": -mlp.grad(params, X, Y)["b2"]}
    report = fg.taylor_test(mlp.loss_params, negated_b2, problem.params, (problem.X, problem.Y), seed=4)
    assert report.verdict == "fail", report


def test_large_loss_with_small_gradient_passes():
    offset = 1e8

    def loss(theta):
        return offset + 1e-3 * np.sum(np.sin(theta))

    def grad(theta):
        return 1e-3 * np.cos(theta)
    report = fg.taylor_test(loss, grad, THETA, seed=0)
    assert report.passed, report
    assert report.verdict != "fail"


def test_float32_theta():
    theta = THETA.astype(np.float32)
    assert theta.dtype == np.float32
    report = fg.taylor_test(lambda t: float(np.sum(np.cosh(t.astype(np.float32)))),
                            lambda t: np.sinh(t), theta, seed=0)
    assert report.verdict == "pass", report
    wrong = fg.taylor_test(lambda t: float(np.sum(np.cosh(t.astype(np.float32)))),
                           lambda t: -np.sinh(t), theta, seed=0)
    assert wrong.verdict == "fail", wrong


def test_jvp_of_a_vector_function():
    M = A[:5]

    def fun(x):
        return {"y": np.tanh(M @ x), "z": x[:2] ** 3}

    def jvp(x, v):
        return {"y": (1 - np.tanh(M @ x) ** 2) * (M @ v), "z": 3 * x[:2] ** 2 * v[:2]}

    def jvp_forgets_z1(x, v):
        out = jvp(x, v)
        out["z"][1] = 0.0
        return out
    x = 0.1 * THETA
    report = fg.taylor_test(fun, None, x, jvp=jvp, seed=3)
    assert report.verdict == "pass" and report.checked == "jvp" and report.norm, report
    assert fg.taylor_test(fun, None, x, jvp=jvp_forgets_z1, seed=3).verdict == "fail"


def test_exact_hvp_of_a_quadratic_passes_without_a_rate():
    report = fg.taylor_test(quadratic, quadratic_grad, THETA, (A, C), hvp=lambda t, v, A, c: A @ v, seed=0)
    assert report.verdict == "pass" and math.isnan(report.rate), report
    assert "in the noise at every" in " ".join(report.notes)


def test_given_direction_and_kwargs():
    direction = np.zeros(N)
    direction[3] = 2.0

    def loss(theta, *, power):
        return float(np.sum(theta**power))

    def grad(theta, *, power):
        return power * theta ** (power - 1)
    report = fg.taylor_test(loss, grad, THETA, kwargs={"power": 4}, direction=direction)
    assert report.verdict == "pass" and report.seed is None
    assert report.direction_norm == 2.0
    assert fg.taylor_test(loss, off_by(grad, 3, 1e-3), THETA, kwargs={"power": 4},
                          direction=direction).verdict == "fail"


def test_seed_reproduces_the_direction():
    first = fg.taylor_test(quadratic, quadratic_grad, THETA, (A, C), seed=11)
    again = fg.taylor_test(quadratic, quadratic_grad, THETA, (A, C), seed=11)
    assert _remainders(first) == _remainders(again) and first.seed == 11
    unseeded = fg.taylor_test(quadratic, quadratic_grad, THETA, (A, C))
    assert _remainders(fg.taylor_test(quadratic, quadratic_grad, THETA, (A, C), seed=unseeded.seed)) \
        == _remainders(unseeded)


def _remainders(report) -> list[tuple[float, float]]:
    return [(row.epsilon, row.remainder) for row in report.table]


def test_report_core_str_and_strict_json():
    report = fg.taylor_test(quadratic, off_by(quadratic_grad, 0, 1e-3), THETA, (A, C), seed=3)
    assert report.kind == "taylor" and not report.passed and report.seconds > 0
    (worst,) = report.worst
    assert worst.score == pytest.approx(abs(worst.difference) / worst.allowed)
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["non_finite"]["table[0].rate"] == "nan"
    assert data["verdict"] == "fail" and len(data["table"]) == len(report.table)
    text = str(report)
    assert text.startswith("taylor check: FAIL") and "fitted" in text and "off by about" in text


def test_user_arrays_unchanged():
    theta = {"W": THETA[:6].reshape(2, 3).copy(), "b": THETA[6:].copy()}
    before = {k: v.copy() for k, v in theta.items()}
    direction = {"W": np.ones((2, 3)), "b": np.ones(6)}

    def loss(p):
        p["W"] += 0.0  # a loss that writes into what it gets must not reach the user's arrays
        return float(np.sum(p["W"] ** 2) + np.sum(np.exp(p["b"])))

    def grad(p):
        return {"W": 2 * p["W"], "b": np.exp(p["b"])}
    assert fg.taylor_test(loss, grad, theta, direction=direction).verdict == "pass"
    for key in theta:
        np.testing.assert_array_equal(theta[key], before[key])
    np.testing.assert_array_equal(direction["W"], np.ones((2, 3)))


def _never_called(*_):
    raise AssertionError("called before the input was validated")


@pytest.mark.parametrize("kwargs, message", [
    ({"theta": np.arange(3)}, "dtype"),
    ({"direction": np.zeros(N)}, "direction is zero"),
    ({"direction": np.ones(N + 1)}, "shape"),
    ({"direction": np.full(N, np.nan)}, "non-finite"),
    ({"seed": -1}, "seed"),
    ({"args": np.ones(2)}, "args"),
    ({"grad": None}, "grad is None"),
    ({"jvp": _never_called}, "with jvp="),
    ({"hvp": 3}, "hvp must be callable"),
    ({"grad": np.ones(N + 1)}, "shape"),
])
def test_bad_input_is_an_input_error_before_any_evaluation(kwargs, message):
    call = {"loss": _never_called, "grad": _never_called, "theta": THETA, **kwargs}
    with pytest.raises(fg.InputError, match=message):
        fg.taylor_test(call.pop("loss"), call.pop("grad"), call.pop("theta"), **call)


def test_fit_and_judge_rules():
    eps = 2.0 ** -np.arange(10, 14)[::-1]
    rate, uncertainty = fit_rate(eps, 3 * eps**2, np.full(4, 1e-30))
    assert rate == pytest.approx(2) and uncertainty < 1e-6
    # a noise bound of half the smallest remainder moves its log2 by at most 1
    rate, uncertainty = fit_rate(eps, 3 * eps**2, np.full(4, 1.5 * eps[0] ** 2))
    assert 0.2 < uncertainty < 0.5
    assert judge_rate(2.1, 0.2, 2)[0] == "pass"
    assert judge_rate(1.05, 0.2, 2)[0] == "fail"
    assert judge_rate(1.5, 0.6, 2)[0] == "warn"  # both 1 and 2 within the uncertainty
    assert judge_rate(2.0, 0.2, 3)[0] == "fail" and judge_rate(1.0, 0.2, 3)[0] == "fail"
    assert judge_rate(-1.0, 0.2, 2)[0] == "warn"
    assert judge_rate(2.5, 0.2, 2)[0] == "warn"  # between orders: not asymptotic
    assert judge_rate(3.05, 0.2, 2) == ("pass", judge_rate(3.05, 0.2, 2)[1]) and "vanishes" in \
        judge_rate(3.05, 0.2, 2)[1]


def test_a_vanishing_quadratic_term_passes_at_rate_3():
    def loss(t):  # along h = (1, 1) from 0: f = 2ε³ exactly, no ε² term
        return float(np.sum(t**3) + np.sum(t))
    report = fg.taylor_test(loss, lambda t: 3 * t**2 + 1, np.zeros(2), direction=np.ones(2))
    assert report.verdict == "pass" and abs(report.rate - 3) <= report.rate_uncertainty, report
    assert fg.taylor_test(loss, lambda t: 3 * t**2 + 1.001, np.zeros(2), direction=np.ones(2)).verdict \
        == "fail"


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.integers(0, 2**31), st.floats(-6, 6), st.floats(-3, 3))
def test_random_quadratics_never_fail(n, seed, log_scale, log_theta):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n, n))
    H = 10.0**log_scale * (B @ B.T + rng.uniform(-1, 1) * np.eye(n))  # indefinite ones too
    c = 10.0**log_scale * rng.standard_normal(n)
    theta = 10.0**log_theta * rng.standard_normal(n)
    report = fg.taylor_test(quadratic, quadratic_grad, theta, (H, c), seed=seed)
    assert report.verdict != "fail", report


def test_plot_draws_the_remainders():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    report = fg.taylor_test(quadratic, quadratic_grad, THETA, (A, C), seed=0)
    ax = report.plot()
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[0].get_xdata(), [r.epsilon for r in report.table if r.remainder > 0])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert sum(r.fitted for r in report.table) == len(lines[1].get_xdata())


def test_import_does_not_import_matplotlib():
    import subprocess
    import sys
    code = "import sys, fastgrad; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_readme_example_runs(capsys):
    import re
    from pathlib import Path
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("\n## Taylor test\n", 1)[1].split("\n## ", 1)[0]
    exec(compile(re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0], "README Taylor test",
                 "exec"), {})
    assert "taylor check: PASS" in capsys.readouterr().out


@numba.njit
def _dict_loss_njit(flat):
    total = 0.0
    for i in range(flat.size):
        total += math.exp(0.3 * flat[i]) + flat[i] ** 2
    return total


def test_njit_loss_of_a_dict_theta_gets_the_flat_vector():
    theta = {"W": THETA[:6].reshape(2, 3), "b": THETA[6:]}

    def grad(p):
        return {key: 0.3 * np.exp(0.3 * value) + 2 * value for key, value in p.items()}
    assert fg.taylor_test(_dict_loss_njit, grad, theta, seed=2).verdict == "pass"

    def negated_b(p):
        return {**grad(p), "b": -grad(p)["b"]}
    assert fg.taylor_test(_dict_loss_njit, negated_b, theta, seed=2).verdict == "fail"


def test_plot_without_matplotlib_is_an_input_error(monkeypatch):
    import sys
    report = fg.taylor_test(quadratic, quadratic_grad, THETA, (A, C), seed=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(fg.InputError, match="needs matplotlib"):
        report.plot()


def test_a_kink_at_theta_warns_and_a_wrong_slope_there_fails():
    theta = np.array([0.0, 0.5, -0.3])  # |θ_0| has a kink at θ

    def loss(t):
        return float(abs(t[0]) + np.sum(t[1:] ** 2))

    def subgradient(t):
        return np.array([0.0, 2 * t[1], 2 * t[2]])  # between the one-sided slopes -1 and 1
    direction = np.array([1.0, 0.3, 0.2])
    report = fg.taylor_test(loss, subgradient, theta, direction=direction)
    assert report.verdict == "warn" and "kink" in " ".join(report.notes), report

    def outside(t):
        return np.array([3.0, 2 * t[1], 2 * t[2]])  # outside [-1, 1]: wrong on both sides
    assert fg.taylor_test(loss, outside, theta, direction=direction).verdict == "fail"


def test_a_loss_undefined_at_large_steps_is_walked_down_from():
    theta = np.full(5, 0.01)  # log(θ + εh) is undefined for the first steps (relative 2^-5 of 1)

    def loss(t):
        if np.any(t <= 0):
            raise ValueError("math domain error")
        return float(np.sum(np.log(t)))
    report = fg.taylor_test(loss, lambda t: 1.0 / t, theta, direction=-np.ones(5), seed=0)
    assert report.verdict == "pass", report
    assert any(math.isnan(row.remainder) for row in report.table)
    assert fg.taylor_test(loss, lambda t: 1.001 / t, theta, direction=-np.ones(5)).verdict == "fail"


def test_a_jvp_of_the_wrong_size_is_a_loss_error():
    with pytest.raises(fg.LossError, match="jvp returned 2 values"):
        fg.taylor_test(lambda x: np.sin(x), None, THETA, jvp=lambda x, v: v[:2], seed=0)
