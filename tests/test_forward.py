"""method="forward" (issue 13, item 6): a forward-difference screen at one evaluation a
coordinate, with every row it cannot clear, and an audit of those it clears, judged by
"central" (see fastgrad.derivatives.screen_clears).

* the stencil by hand, and its default step √u;
* on the verdict tests' problems (tests/test_verdict.py, test_hard_verdicts.py,
  hard_models.py, test_kinks.py, test_precision.py), the same verdict and the same failing
  groups as "central";
* the evaluation count, exactly: f(θ) and the noise estimate (as central's), one per screened
  coordinate, two per row central judges, two per row it refines;
* a gradient computed by forward differences itself fails (the audit catches it), and what
  the screen cannot see (an error below its rounding allowance) is stated in the report;
* float32, the report's text and dict, step_scan.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_hard_verdicts as hard
import test_kinks as kinks
import test_verdict as verdicts
from conftest import MLP_SIZES
from hard_models import models

import fastgrad as fg
from fastgrad import derivatives
from fastgrad.models import mlp

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)


# ------------------------------------------------------------------ the stencil by hand
def fifth_powers(theta):
    return float(np.sum(theta**5))


def test_forward_is_the_one_sided_stencil_exactly():
    # ((x+h)^5 − x^5)/h = 5x⁴ + 10x³h + 10x²h² + 5xh³ + h⁴, exactly for dyadic x and h.
    x = np.array([0.5, -0.75, 1.0, 0.25, -1.0, 0.0, 0.875])
    h = 2.0**-7
    d = fg.numerical_gradient(fifth_powers, x, method="forward", eps=h)
    expected = 5 * x**4 + 10 * x**3 * h + 10 * x**2 * h**2 + 5 * x * h**3 + h**4
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-13)
    # first order: the h term is 10x³h, up to 0.08 here, far beyond the tolerance
    assert np.max(np.abs(d - 5 * x**4)) > 1e-2


def test_default_step_is_sqrt_u_and_numerical_gradient_costs_n_after_f_theta():
    calls = []

    def loss(t):
        calls.append(1)
        return float(np.sum(np.cosh(t)))

    theta = np.linspace(-2.0, 3.0, 11)
    report = fg.check(loss, np.sinh(theta), theta, method="forward")
    assert report.relative_step == np.sqrt(EPS64) and report.method == "forward"
    calls.clear()
    d = fg.numerical_gradient(loss, theta, method="forward")
    assert len(calls) == theta.size + 1  # f(θ), then one a coordinate
    h = np.sqrt(EPS64) * np.maximum(1.0, np.abs(theta))
    by_hand = [(loss(theta + h[i] * np.eye(theta.size)[i]) - loss(theta))
               / ((theta[i] + h[i]) - theta[i]) for i in range(theta.size)]
    np.testing.assert_array_equal(d, by_hand)
    assert fg.check(loss, np.sinh(theta).astype(np.float32), theta.astype(np.float32),
                    method="forward").relative_step == pytest.approx(np.sqrt(EPS32), rel=1e-6)


# ------------------------------------------------------------------ the same verdicts
def _cases():
    """name -> (loss, grad, theta, args, options): correct gradients and planted bugs."""
    cases = {}
    for model in models():
        cases[f"{model.name}: correct"] = (model.loss, model.grad, model.theta, model.args, {})
        for bug in model.bugs[:3]:
            cases[f"{model.name}: {bug.name}"] = (model.loss, model.buggy(bug), model.theta,
                                                  model.args, {})
    problem = mlp.problem(**MLP_SIZES, seed=5)
    args, grad = (problem.X, problem.Y), mlp.grad(problem.params, problem.X, problem.Y)
    cases["mlp: correct"] = (mlp.loss, grad, problem.params, args, {})
    cases["mlp: factor 2 on b1"] = (mlp.loss, {**grad, "b1": 2 * grad["b1"]}, problem.params, args, {})
    cases["mlp: sign of W2"] = (mlp.loss, {**grad, "W2": -grad["W2"]}, problem.params, args, {})
    cases["mlp: tanh' as 1 - A"] = (mlp.loss, mlp.grad_buggy(problem.params, *args), problem.params,
                                    args, {})
    cases["mlp: missing L2"] = (verdicts._l2_loss, mlp.grad, problem.params, args, {})
    cases["mlp: with L2"] = (verdicts._l2_loss, verdicts._l2_grad, problem.params, args, {})
    for seed, padded in ((0, False), (3, False), (23, True)):
        theta, X, y = kinks.make_problem(seed, padded)
        for bug in (None, *kinks.BUGS):
            cases[f"relu hinge {seed}{' padded' if padded else ''}: {bug or 'correct'}"] = (
                kinks.hinge_loss, kinks.hinge_grad(theta, X, y, bug), theta, (X, y), {})
    rng = np.random.default_rng(4)
    theta, a = rng.uniform(-1.0, 1.0, 20), rng.uniform(0.5, 2.0, 20)
    theta[5], a[5] = 0.7, 50.0
    grad = a * theta + np.cos(theta)
    cases["smooth: correct"] = (kinks.smooth, grad, theta, (a,), {})
    cases["smooth: one coordinate off by 1e-4"] = (kinks.smooth, grad * np.r_[[1.0] * 5, 1.0001, [1.0] * 14],
                                                   theta, (a,), {})
    cases["jump at theta: correct"] = (hard._jump_loss, hard._jump_grad, hard.THETA, (),
                                       {"engine": "python"})
    cases["noisy: correct"] = (hard._cancelling, hard._cancelling_grad, hard.THETA, (),
                               {"engine": "python"})
    cases["noisy: theta[1] x 0.5"] = (hard._cancelling,
                                      lambda t: hard._cancelling_grad(t) * np.array([1, 0.5, 1, 1]),
                                      hard.THETA, (), {"engine": "python"})
    return cases


CASES = _cases()


def _outcome(report):
    return report.verdict, {group.name for group in report.groups if group.verdict == "fail"}


@pytest.mark.parametrize("name", list(CASES))
def test_the_same_verdict_and_failing_groups_as_central(name):
    loss, grad, theta, args, options = CASES[name]
    central = fg.check(loss, grad, theta, args, method="central", **options)
    forward = fg.check(loss, grad, theta, args, method="forward", **options)
    assert _outcome(forward) == _outcome(central), str(forward)
    assert forward.failed <= central.failed  # a failing row is one central judged, and failed
    wanted = "fail" if "correct" not in name and "with L2" not in name else None
    assert wanted is None or central.verdict == "fail"


def test_the_screen_does_the_work_on_the_mlp_and_the_relu_net():
    """Not a central check in disguise: on these the screen clears most coordinates."""
    for name in ("mlp: correct", "relu hinge 0: correct"):
        loss, grad, theta, args, options = CASES[name]
        report = fg.check(loss, grad, theta, args, method="forward", **options)
        assert report.screen["cleared"] >= 0.8 * report.checked, report.screen


def test_a_kink_beyond_the_screen_step_is_not_crossed():
    """The one difference from central on the verdict tests: a kink 2/3 of a central step
    away, which central's pair straddles (unresolved: warn), lies 270 forward steps away; the
    screen differences a smooth piece and clears the correct gradient."""
    theta, c, w, grad = kinks.near_kink(2.0 / 3.0, weight=1.0)
    assert fg.check(kinks.weighted_abs, grad, theta, (c, w)).verdict == "warn"
    report = fg.check(kinks.weighted_abs, grad, theta, (c, w), method="forward")
    assert report.verdict == "pass", str(report)
    wrong = grad.copy()
    wrong[0] = -wrong[0]
    assert fg.check(kinks.weighted_abs, wrong, theta, (c, w), method="forward").verdict == "fail"


# ------------------------------------------------------------------ evaluations
def cosh_loss(theta):
    return float(np.sum(np.cosh(theta) + 2.0 * theta))


def cosh_grad(theta):
    return np.sinh(theta) + 2.0  # in [0.8, 3.2] on [-1, 1]: every coordinate resolvable


COSH_THETA = np.random.default_rng(2).uniform(-1.0, 1.0, 200)


def test_evaluation_count_is_exact():
    """calls = overhead (f(θ), noise, its probe, f(θ) at the end: central's) + one per
    screened coordinate + two per row central judges + two per row it refines."""
    calls = []

    def loss(theta):
        calls.append(1)
        return cosh_loss(theta)

    theta, n = COSH_THETA, COSH_THETA.size
    wrong = cosh_grad(theta)
    wrong[[7, 50, 120]] *= 1.01  # three rows not cleared, judged and refined by central
    central = fg.check(loss, wrong, theta, method="central")
    overhead = central.evaluations - 2 * n - 2 * central.refined
    calls.clear()
    forward = fg.check(loss, wrong, theta, method="forward")
    screen = forward.screen
    assert len(calls) == forward.evaluations
    judged = n - screen["cleared"] + screen["audited"]
    assert forward.evaluations == overhead + screen["screened"] + 2 * judged + 2 * forward.refined
    assert screen["screened"] == n and screen["cleared"] == n - 3 and screen["audited"] == 16
    assert forward.refined == central.refined == 3
    assert forward.evaluations == overhead + n + 2 * 19 + 2 * 3 < central.evaluations
    assert forward.verdict == "fail" and forward.failed == 3


# ------------------------------------------------------------------ what the screen cannot see
def test_a_gradient_computed_by_forward_differences_fails():
    """g = forward differences at a user's step 1e-6: g − f' = 1e-6·f''/2 ≈ 6e-7 in every
    coordinate, which central resolves (allowance ~1e-7) and the screen does not (its rounding
    allowance is ~100 times larger).  The screen clears them all; the audit fails them."""
    theta = COSH_THETA
    by_differences = fg.numerical_gradient(cosh_loss, theta, method="forward", eps=1e-6)
    central = fg.check(cosh_loss, by_differences, theta)
    assert central.verdict == "fail" and central.failed > 0.9 * theta.size
    forward = fg.check(cosh_loss, by_differences, theta, method="forward")
    assert forward.verdict == "fail", str(forward)
    assert forward.screen["cleared"] == theta.size and forward.failed == forward.screen["audited"]
    # ...at our own step the same: g is then F itself, bit for bit
    params, args = _mlp1029()
    ours = fg.numerical_gradient(mlp.loss, params, args, method="forward")
    assert fg.check(mlp.loss, ours, params, args, method="forward").verdict == "fail"


def _mlp1029():
    problem = mlp.problem(d=10, h=64, c=5, m=32, seed=0)
    return problem.params, (problem.X, problem.Y)


def test_without_the_audit_the_forward_difference_gradient_would_pass(monkeypatch):
    by_differences = fg.numerical_gradient(cosh_loss, COSH_THETA, method="forward", eps=1e-6)
    monkeypatch.setattr(derivatives, "AUDIT_ROWS", 0)
    assert fg.check(cosh_loss, by_differences, COSH_THETA, method="forward").verdict == "pass"


def test_an_error_below_the_screens_allowance_is_stated_not_hidden():
    """A relative 1e-5 on one cleared, unaudited coordinate: central fails it, the screen
    clears it, and its allowed error in the report (z·r of the forward pair) exceeds the error:
    the report says what the screen vouches for."""
    theta, k = COSH_THETA, 3
    wrong = cosh_grad(theta)
    wrong[k] *= 1.0 + 1e-5
    assert fg.check(cosh_loss, wrong, theta).verdict == "fail"
    forward = fg.check(cosh_loss, wrong, theta, method="forward")
    assert forward.verdict == "pass"
    row = forward.details
    assert abs(wrong[k] - cosh_grad(theta)[k]) < row.error[k] < 1e-3 * abs(wrong[k]) / 2


# ------------------------------------------------------------------ float32
def test_float32_same_verdicts_and_no_screen_where_it_cannot_resolve():
    """float32 MLP: the forward pair's rounding, √2·u₃₂·|f|/√u₃₂ ≈ 5e-4·|f| times z, is
    above 1e-3·|g| at every coordinate, so none is screened: the check is central's, at
    central's cost, and the verdicts are its verdicts."""
    params, (X, Y) = _mlp1029()
    params = {k: v.astype(np.float32) for k, v in params.items()}
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    grad = {k: v.astype(np.float32) for k, v in mlp.grad(
        {k: v.astype(np.float64) for k, v in params.items()}, X.astype(np.float64),
        Y.astype(np.float64)).items()}
    for gradient in (grad, {**grad, "b2": np.float32(2.0) * grad["b2"]}):
        central = fg.check(mlp.loss, gradient, params, (X, Y))
        forward = fg.check(mlp.loss, gradient, params, (X, Y), method="forward")
        assert _outcome(forward) == _outcome(central) and forward.dtype == "float32"
        assert forward.screen["screened"] == 0 and forward.evaluations == central.evaluations
    assert _outcome(forward) == ("fail", {"b2"})


def test_float32_screen_clears_where_f_is_small_against_g():
    """f = Σ (θ_i + θ_i²/100) at θ_i ~ 1e-2: |f| ~ 0.05 against |g| ≈ 1, so that the forward pair's
    rounding resolves 1e-3·|g| even in float32, and its truncation (3e-6) is below it: the
    screen clears coordinates."""
    theta = np.random.default_rng(0).uniform(-1e-2, 1e-2, 32).astype(np.float32)

    def loss(t):
        return np.sum(t + np.float32(0.01) * t * t, dtype=np.float32)

    grad = (1.0 + 0.02 * theta).astype(np.float32)
    report = fg.check(loss, grad, theta, method="forward", engine="python")
    assert report.verdict == "pass" and report.dtype == "float32", str(report)
    assert report.screen["cleared"] > 16, report.screen
    wrong = grad.copy()
    wrong[10] *= np.float32(1.01)
    found = fg.check(loss, wrong, theta, method="forward", engine="python")
    assert _outcome(found) == _outcome(fg.check(loss, wrong, theta, engine="python")) \
        == ("fail", {"theta"})


# ------------------------------------------------------------------ report, scan
def test_the_report_says_what_the_screen_did():
    report = fg.check(cosh_loss, cosh_grad, COSH_THETA, method="forward")
    text = str(report)
    assert "method          forward, h = 1.49e-08" in text
    assert "screen: 200 of 200 coordinates differenced from f(theta)" in text
    assert "judged by central, h = 6.06e-06" in text
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["method"] == "forward" and data["screen"]["confirmed_by"] == "central"
    assert fg.check(cosh_loss, cosh_grad, COSH_THETA).screen is None


def test_step_scan_takes_forward():
    scan = fg.step_scan(cosh_loss, COSH_THETA, [0, 5], grad=cosh_grad, method="forward",
                        steps=[1e-10, np.sqrt(EPS64), 1e-4])
    assert scan.method == "forward" and scan.default_step == np.sqrt(EPS64)
    # first order: at 1e-4 the error is h·cosh(θ)/2 ≥ 5e-5, far above that at √u
    assert np.all(scan.errors[:, 2] > 4e-5) and np.all(scan.errors[:, 1] < scan.errors[:, 2] / 10)
