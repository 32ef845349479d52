"""The three derivative methods: "central", "central4" and "complex" (issue #4, accuracy).

* the stencils themselves, against hand computations: exact identities on x^5 with a
  dyadic step, and the 4-point formula on exp at the default step u^(1/5);
* the number of loss evaluations per coordinate (2, 4, 1 complex);
* accuracy on a smooth float64 tanh MLP with n = 1029 against two independent
  references (the complex step and hand-written backprop);
* every method on the parallel engine: the same gradient, bit for bit, with 1 and 2 workers;
* the complex step refuses losses that cannot carry an imaginary part;
* a planted bug fails, and the correct gradient passes, with each method.

Run with ``-s`` to see the measured accuracy figures.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from conftest import decay_grad, decay_loss

import fastgrad as fg
from fastgrad.models import mlp

METHODS = ("central", "central4", "complex")
EPS64 = float(np.finfo(np.float64).eps)
SEEDS = (0, 1, 2)
#: d=10, h=64, c=5, m=32: n = 640 + 64 + 320 + 5 = 1029.
SIZES = {"d": 10, "h": 64, "c": 5, "m": 32}
#: Required seed relative error ‖D − g‖ / (‖D‖ + ‖g‖), per method.
TARGET = {"central": 1e-9, "central4": 1e-11, "complex": 1e-13}
#: Evaluations per coordinate, per method; anything else (f(θ) at the start and end,
#: the noise estimate, the complex-input validation) is a fixed overhead.
PER_COORDINATE = {"central": 2, "central4": 4, "complex": 1}
MAX_OVERHEAD = 40


def rel(a, b) -> float:
    """The seed's ‖a − b‖₂ / (‖a‖₂ + ‖b‖₂)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b)))


@pytest.fixture(scope="module")
def problems():
    """seed -> (problem, flat mlp.grad, flat complex-step reference)."""
    out = {}
    for seed in SEEDS:
        p = mlp.problem(**SIZES, seed=seed)
        assert p.n == 1029
        backprop = mlp.flatten(mlp.grad(p.params, p.X, p.Y))
        complex_ref = mlp.flatten(
            fg.numerical_gradient(mlp.loss, p.params, (p.X, p.Y), method="complex"))
        out[seed] = (p, backprop, complex_ref)
    return out


# ------------------------------------------------------------------ the stencils by hand
def fifth_powers(theta):
    return float(np.sum(theta**5))


#: Dyadic points with |θ| <= 1 and a dyadic step: θ ± k·h are exact, h = eps exactly.
DYADIC = np.array([0.5, -0.75, 1.0, 0.25, -1.0, 0.0, 0.875])
DYADIC_STEP = 2.0**-7


def test_central_is_the_two_point_stencil_exactly():
    # ((x+h)^5 − (x−h)^5) / 2h = 5x^4 + 10x²h² + h^4, exactly.
    h = DYADIC_STEP
    d = fg.numerical_gradient(fifth_powers, DYADIC, method="central", eps=h)
    expected = 5 * DYADIC**4 + 10 * DYADIC**2 * h**2 + h**4
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-13)


def test_central4_is_the_four_point_stencil_exactly():
    # (−f(x+2h) + 8f(x+h) − 8f(x−h) + f(x−2h)) / 12h = 5x^4 − 4h^4 for f = x^5, exactly:
    # the O(h²) term is gone, the O(h⁴) one is −h⁴·f⁽⁵⁾/30.
    h = DYADIC_STEP
    d = fg.numerical_gradient(fifth_powers, DYADIC, method="central4", eps=h)
    expected = 5 * DYADIC**4 - 4 * h**4
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-13)
    # −4h⁴ = −1.5e-8 is 10⁵ times the tolerance: the test sees the stencil's own error.
    assert 4 * h**4 > 1e5 * 1e-13


def test_complex_step_on_a_polynomial_is_exact():
    # Im (x + ih)^5 / h = 5x^4 − 10x²h² + h^4; with h = 1e-20·max(1, |x|) that is 5x^4
    # to the last bit (h^4 = 1e-80 at x = 0).
    d = fg.numerical_gradient(lambda t: np.sum(t**5), DYADIC, method="complex")
    np.testing.assert_allclose(d, 5 * DYADIC**4, rtol=2 * EPS64, atol=1e-70)


def exp_poly(theta):
    return np.sum(np.exp(0.7 * theta) + theta**3 - 0.3 * theta**5)


def exp_poly_derivative(theta):
    return 0.7 * np.exp(0.7 * theta) + 3 * theta**2 - 1.5 * theta**4


def test_central4_matches_a_hand_computation_at_its_default_step():
    theta = np.array([0.3, -1.7, 2.5, 0.0, -0.05, 1.0])
    h0 = EPS64 ** (1 / 5)
    assert fg.check(exp_poly, exp_poly_derivative(theta), theta,
                    method="central4").relative_step == pytest.approx(h0, rel=1e-12)
    d = fg.numerical_gradient(exp_poly, theta, method="central4")

    hand, hand_central = np.empty_like(theta), np.empty_like(theta)
    for i in range(theta.size):
        h = h0 * max(1.0, abs(theta[i]))

        def f(k, i=i, h=h):
            point = theta.copy()
            point[i] = theta[i] + k * h
            return exp_poly(point)

        hand[i] = (-f(2) + 8 * f(1) - 8 * f(-1) + f(-2)) / (12 * h)
        hand_central[i] = (f(1) - f(-1)) / (2 * h)
    exact = exp_poly_derivative(theta)
    # The same values as the hand-written 4-point stencil, up to rounding of f / h.
    np.testing.assert_allclose(d, hand, rtol=1e-10, atol=1e-10)
    # ...and it is fourth order: accurate to ~h^4, where a plain central difference at the
    # same step is off by h²·f'''/6 ≈ 1e-7 relative.
    np.testing.assert_allclose(d, exact, rtol=1e-10, atol=1e-10)
    assert np.max(np.abs(hand_central - exact)) > 1e-7
    assert np.max(np.abs(d - exact)) < 1e-3 * np.max(np.abs(hand_central - exact))


def test_default_relative_steps():
    theta = np.array([0.3, -1.7, 2.5])
    g = exp_poly_derivative(theta)
    steps = {m: fg.check(exp_poly, g, theta, method=m).relative_step for m in METHODS}
    assert steps["central"] == pytest.approx(EPS64 ** (1 / 3), rel=1e-12)  # 6.06e-6
    assert steps["central4"] == pytest.approx(EPS64 ** (1 / 5), rel=1e-12)  # 7.4e-4
    assert steps["complex"] <= 1e-8


# ------------------------------------------------------------------ evaluation counts
@pytest.mark.parametrize("method", METHODS)
def test_evaluations_scale_with_the_method(problems, method):
    p, backprop, _ = problems[0]
    report = fg.check(mlp.loss, mlp.unflatten(backprop, p.d, p.h, p.c), p.params,
                      (p.X, p.Y), method=method)
    assert report.passed and report.refined == 0
    assert report.method == method
    overhead = report.evaluations - PER_COORDINATE[method] * p.n
    print(f"\n{method}: {report.evaluations} evaluations for n = {p.n} "
          f"(overhead {overhead})")
    assert 0 <= overhead <= MAX_OVERHEAD


def test_complex_makes_one_complex_evaluation_per_coordinate():
    calls = {"real": 0, "complex": 0}

    def loss(theta):
        calls["complex" if np.iscomplexobj(theta) else "real"] += 1
        return np.sum(np.sin(theta) * theta**2)

    theta = np.linspace(-2.0, 2.0, 101)
    grad = np.cos(theta) * theta**2 + 2 * theta * np.sin(theta)
    report = fg.check(loss, grad, theta, method="complex")
    assert report.passed
    assert theta.size <= calls["complex"] <= theta.size + 5  # + the validation calls
    assert calls["real"] <= MAX_OVERHEAD  # no real stencil
    assert report.evaluations == calls["real"] + calls["complex"]


# ------------------------------------------------------------------ accuracy
def test_the_two_references_agree(problems):
    for seed, (_, backprop, complex_ref) in problems.items():
        figure = rel(complex_ref, backprop)
        print(f"\nseed {seed}: complex-step reference vs mlp.grad: {figure:.2e}")
        assert figure < 1e-14


@pytest.mark.parametrize("method", METHODS)
def test_accuracy_on_a_smooth_mlp(problems, method):
    lines = []
    for seed, (p, backprop, complex_ref) in problems.items():
        report = fg.check(mlp.loss, mlp.unflatten(backprop, p.d, p.h, p.c), p.params,
                          (p.X, p.Y), method=method)
        assert report.verdict == "pass", str(report)
        numerical = mlp.flatten(report.numerical)
        against_backprop = rel(numerical, backprop)
        assert against_backprop == pytest.approx(report.relative_error, rel=1e-12)
        # The classic recipe (numerical_gradient) gives the same figures.
        plain = mlp.flatten(fg.numerical_gradient(mlp.loss, p.params, (p.X, p.Y),
                                                  method=method))
        assert rel(plain, backprop) <= TARGET[method]
        lines.append(f"{method:8s} seed {seed}: rel. error vs mlp.grad {against_backprop:.2e}, "
                     f"vs complex step {rel(numerical, complex_ref):.2e}, "
                     f"numerical_gradient vs mlp.grad {rel(plain, backprop):.2e}")
        assert against_backprop <= TARGET[method], lines[-1]
        if method != "complex":  # vs the complex step it would compare the code with itself
            assert rel(numerical, complex_ref) <= TARGET[method], lines[-1]
    print("\n" + "\n".join(lines))


# ------------------------------------------------------------------ parallel engine
@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_bitwise_the_same_on_1_and_2_workers(problems, method):
    p, backprop, _ = problems[1]
    one = mlp.flatten(fg.numerical_gradient(mlp.loss, p.params, (p.X, p.Y), method=method,
                                            workers=1))
    two = mlp.flatten(fg.numerical_gradient(mlp.loss, p.params, (p.X, p.Y), method=method,
                                            workers=2))
    np.testing.assert_array_equal(one, two)
    grad = mlp.unflatten(backprop, p.d, p.h, p.c)
    reports = [fg.check(mlp.loss, grad, p.params, (p.X, p.Y), method=method, workers=w)
               for w in (1, 2)]
    assert [r.engine for r in reports] == ["numba", "numba"]
    assert [r.workers for r in reports] == [1, 2]
    np.testing.assert_array_equal(mlp.flatten(reports[0].numerical),
                                  mlp.flatten(reports[1].numerical))
    # And the check uses the same values as numerical_gradient.
    np.testing.assert_array_equal(mlp.flatten(reports[0].numerical), one)


# ------------------------------------------------------------------ complex: refusals
@numba.njit("float64(float64[:])")
def typed_loss(theta):
    return np.sum(theta**2)


def loss_calling_float(theta):
    return float(theta @ theta)


def loss_calling_math(theta):
    return math.exp(theta[0]) + float(np.sum(theta[1:] ** 2))


def loss_with_abs(theta):
    return np.sum(np.abs(theta) ** 3)


def loss_with_real(theta):
    return np.sum(theta.real**2)


@numba.njit
def compiled_loss_with_abs(theta):
    total = 0.0
    for value in theta:
        total += abs(value) ** 3
    return total


REFUSED = {
    "njit with a float64 signature": typed_loss,
    "float()": loss_calling_float,
    "math.exp": loss_calling_math,
    "np.abs": loss_with_abs,
    "x.real": loss_with_real,
    "compiled abs": compiled_loss_with_abs,
}


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("entry", ["check", "numerical_gradient"])
@pytest.mark.parametrize("name", list(REFUSED))
def test_complex_refuses_a_loss_that_cannot_take_complex_input(name, entry):
    loss = REFUSED[name]
    theta = np.linspace(-1.0, 1.5, 8)
    grad = np.zeros_like(theta)  # never looked at: the refusal comes first
    # The loss itself is fine for real input.
    assert fg.check(loss, fg.numerical_gradient(loss, theta, method="central4"), theta).passed
    with pytest.raises(fg.InputError) as caught:
        if entry == "check":
            fg.check(loss, grad, theta, method="complex")
        else:
            fg.numerical_gradient(loss, theta, method="complex")
    message = str(caught.value)
    assert "complex" in message
    assert "method='central'" in message
    if name == "njit with a float64 signature":
        assert "accepts complex input" in message
    elif name in ("np.abs", "x.real", "compiled abs", "float()"):
        assert "drops the imaginary part" in message


def l2_plus_l1(theta):
    """A smooth term plus an L1 penalty written with np.abs (which drops the imaginary part)."""
    return np.sum(theta**2) + 0.5 * np.sum(np.abs(theta))


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
def test_complex_does_not_pass_a_gradient_missing_a_term_the_loss_hides_from_it():
    theta = np.linspace(-1.0, 1.5, 8)
    forgot_l1 = 2 * theta
    assert not fg.check(l2_plus_l1, forgot_l1, theta, method="central").passed
    try:
        report = fg.check(l2_plus_l1, forgot_l1, theta, method="complex")
    except fg.InputError as error:
        assert "central" in str(error)
    else:
        assert not report.passed, str(report)


# ------------------------------------------------------------------ planted bug
@pytest.mark.parametrize("method", METHODS)
def test_a_factor_two_on_w2_fails_and_the_correct_gradient_passes(problems, method):
    p, backprop, _ = problems[2]
    correct = mlp.unflatten(backprop.copy(), p.d, p.h, p.c)
    good = fg.check(mlp.loss, correct, p.params, (p.X, p.Y), method=method)
    assert good.verdict == "pass" and good.failed == 0, str(good)

    buggy = {k: v.copy() for k, v in correct.items()}
    buggy["W2"] *= 2.0
    bad = fg.check(mlp.loss, buggy, p.params, (p.X, p.Y), method=method)
    assert not bad.passed and bad.verdict == "fail"
    verdicts = {g.name: g.verdict for g in bad.groups}
    assert verdicts == {"W1": "ok", "b1": "ok", "W2": "fail", "b2": "ok"}, str(bad)
    # Every W2 coordinate with a visible gradient is flagged.
    visible = np.abs(correct["W2"]) > 1e-8
    assert bad.groups[2].failed >= int(visible.sum())
    assert bad.relative_error > 1e-3  # the seed's "wrong" band
    assert bad.worst[0].group == "W2" and bad.worst[0].status == "fail"


@pytest.mark.parametrize("frequency", [50.0, 100.0, 200.0])
def test_central4_refined_values_keep_a_margin_where_truncation_dominates(frequency):
    """Σ sin(w·θ_i): at the default step u^(1/5) every coordinate's 4-point value errs by
    truncation far above rounding.  The refined value is the sixth-order extrapolation,
    judged against the estimated error of the fourth-order one: a correct gradient passes
    with room to spare (with the fourth-order value judged against its own estimated
    error, 48 of 50 coordinates scored just above 1), and a relative 1e-4 error fails."""
    theta = np.random.default_rng(0).uniform(-1.0, 1.0, 50)

    def loss(t):
        return float(np.sum(np.sin(frequency * t)))

    correct = frequency * np.cos(frequency * theta)
    report = fg.check(loss, correct, theta, method="central4", workers=1)
    assert report.passed, str(report)
    assert report.worst[0].score < 0.1
    wrong = correct.copy()
    wrong[3] *= 1.0 + 1e-4
    failed = fg.check(loss, wrong, theta, method="central4", workers=1)
    assert failed.verdict == "fail" and failed.worst[0].index == (3,)


def test_complex_accepts_a_generic_loss_whose_real_difference_is_truncation_dominated():
    """A two-exponential decay fit with rates ~1e-4: the validating central difference at
    h0·max(1, |θ|) moves a rate by 6 % of itself, far from the asymptotic range; its
    Richardson value and truncation estimate keep the complex step from being refused
    (it raised InputError, "drops the imaginary part"), and the check passes."""
    t = np.linspace(0.0, 3e4, 200)
    amplitudes, rates = np.array([1e4, 2e4]), np.array([1e-4, 3e-4])
    data = (amplitudes[:, None] * np.exp(-rates[:, None] * t)).sum(0) + 50.0
    theta = {"amp": amplitudes * 1.05, "rate": rates * 0.95}
    loss, grad = decay_loss, decay_grad
    report = fg.check(loss, grad, theta, args=(t, data), method="complex", workers=1)
    assert report.passed, str(report)
    wrong = grad(theta, t, data)
    wrong["rate"] = -wrong["rate"]
    assert fg.check(loss, wrong, theta, args=(t, data), method="complex", workers=1).verdict == "fail"
