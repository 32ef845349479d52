"""check_vjp, check_jvp and check_hvp: correct products pass, planted bugs fail, bad input is
an InputError before any finite difference, the user's arrays are left alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numba
import numpy as np
import pytest
from scipy.optimize import rosen, rosen_der, rosen_hess_prod

import fastgrad as fg
from fastgrad.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(14)
A = RNG.standard_normal((6, 5))
X0 = RNG.standard_normal(5)


# ------------------------------------------------------------------ problems
def linear(x):
    return A @ x


def linear_vjp(x, u):
    return A.T @ u


def linear_jvp(x, v):
    return A @ v


@numba.njit
def compiled_layer(x, matrix):
    return np.tanh(matrix @ x)


def layer_vjp(x, u, matrix):
    y = np.tanh(matrix @ x)
    return matrix.T @ (u * (1.0 - y * y))


def layer_jvp(x, v, matrix):
    y = np.tanh(matrix @ x)
    return (1.0 - y * y) * (matrix @ v)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def softmax_vjp(z, u):
    s = softmax(z)
    return s * (u - s @ u)


def softmax_jvp(z, v):
    s = softmax(z)
    return s * (v - s @ v)


FEATURES = RNG.standard_normal((7, 3))
PARAMS = {"W": RNG.standard_normal((3, 4)), "b": RNG.standard_normal(4)}


def mlp_layer(params, inputs):
    """A dense layer tanh(X W + b): dict input, (7, 4) output."""
    return np.tanh(inputs @ params["W"] + params["b"])


def mlp_layer_vjp(params, u, inputs):
    y = mlp_layer(params, inputs)
    delta = u * (1.0 - y * y)
    return {"W": inputs.T @ delta, "b": delta.sum(axis=0)}


def two_outputs(x):
    return {"square": x[:3] ** 2, "sum": np.array([x.sum(), np.sin(x[0]) * x[1]])}


def two_outputs_vjp(x, u):
    g = 2.0 * x * np.r_[u["square"], 0.0, 0.0]
    g += u["sum"][0]
    g[0] += u["sum"][1] * np.cos(x[0]) * x[1]
    g[1] += u["sum"][1] * np.sin(x[0])
    return g


def two_outputs_jvp(x, v):
    return {"square": 2.0 * x[:3] * v[:3],
            "sum": np.array([v.sum(), np.cos(x[0]) * x[1] * v[0] + np.sin(x[0]) * v[1]])}


# ------------------------------------------------------------------ VJP
@pytest.mark.parametrize("fun, vjp, x", [
    (linear, linear_vjp, X0),
    (softmax, softmax_vjp, X0),
    (two_outputs, two_outputs_vjp, X0),
])
def test_correct_vjps_pass(fun, vjp, x):
    report = fg.check_vjp(fun, vjp, x, seed=3)
    assert report.verdict == "pass", report
    assert report.kind == "vjp" and len(report.reports) == 4
    json.dumps(report.to_dict(), allow_nan=False)


def test_mlp_layer_backward_passes_and_its_bugs_fail():
    assert fg.check_vjp(mlp_layer, mlp_layer_vjp, PARAMS, args=(FEATURES,), seed=1).verdict == "pass"

    def forgets_one_output(params, u, inputs):
        u = u.copy()
        u[4, 2] = 0.0  # the backward pass drops output (4, 2)
        return mlp_layer_vjp(params, u, inputs)

    report = fg.check_vjp(mlp_layer, forgets_one_output, PARAMS, args=(FEATURES,), seed=1)
    assert report.verdict == "fail"
    assert re.match(r"cotangent \d: (W\[\d, 2\]|b\[2\])", report.worst[0].label)

    def transposed_block(params, u, inputs):
        g = mlp_layer_vjp(params, u, inputs)
        g["W"][:3, :3] = g["W"][:3, :3].T.copy()
        return g

    assert fg.check_vjp(mlp_layer, transposed_block, PARAMS, args=(FEATURES,), seed=1).verdict == "fail"


def test_one_jacobian_entry_off_by_a_relative_1e_3_fails():
    wrong = A.copy()
    wrong[2, 1] *= 1.0 + 1e-3
    report = fg.check_vjp(linear, lambda x, u: wrong.T @ u, X0, seed=5)
    assert report.verdict == "fail"
    assert report.worst[0].label.endswith("theta[1]")


def test_a_vjp_that_forgets_a_dict_output_fails():
    def forgets_sum(x, u):
        return two_outputs_vjp(x, {"square": u["square"], "sum": np.zeros(2)})

    assert fg.check_vjp(two_outputs, forgets_sum, X0, seed=2).verdict == "fail"


def test_compiled_fun_runs_on_the_compiled_engine():
    report = fg.check_vjp(compiled_layer, layer_vjp, X0, args=(A,), seed=4)
    assert report.verdict == "pass", report
    assert report.reports[0].engine == "numba"

    def forgets(x, u, matrix):
        u = u.copy()
        u[0] = 0.0
        return layer_vjp(x, u, matrix)

    assert fg.check_vjp(compiled_layer, forgets, X0, args=(A,), seed=4).verdict == "fail"


def test_check_options_apply_to_each_cotangent():
    x = RNG.standard_normal(40)
    matrix = RNG.standard_normal((3, 40))
    report = fg.check_vjp(lambda x: matrix @ x, lambda x, u: matrix.T @ u, x, cotangents=2,
                          seed=7, sample=20, directions=2)
    assert report.verdict == "pass"
    assert all(r.coverage is not None and r.coverage.sampled == 20 for r in report.reports)
    assert all(len(r.directions) == 2 for r in report.reports)


def test_large_outputs_whose_inner_product_cancels_pass():
    def fun(x):
        return np.array([1e8 + x[0] ** 2, -1e8 + x[1] * x[0], 1e8 * np.cos(x[2])])

    def vjp(x, u):
        return np.array([2 * x[0] * u[0] + x[1] * u[1], x[0] * u[1], -1e8 * np.sin(x[2]) * u[2]])

    x = np.array([0.3, -1.2, 0.7])
    assert fg.check_vjp(fun, vjp, x, cotangents=[np.array([1.0, 1.0, 0.0]),
                                                   np.array([1.0, -1.0, 1e-8])], seed=0).passed


def test_linearized_vjp():
    calls = []

    def linearize(x):
        calls.append(1)
        y = softmax(x)
        return y, lambda u: y * (u - y @ u)

    report = fg.check_vjp(softmax, linearize, X0, linearized=True, seed=1)
    assert report.verdict == "pass" and len(calls) == 1
    with pytest.raises(InputError, match="differs from fun"):
        fg.check_vjp(softmax, lambda x: (softmax(1.1 * x), lambda u: u), X0, linearized=True)


def test_seed_reproduces_the_cotangents():
    first = fg.check_vjp(softmax, softmax_vjp, X0, seed=11)
    again = fg.check_vjp(softmax, softmax_vjp, X0, seed=first.seed)
    assert [e.to_dict() for e in first.worst] == [e.to_dict() for e in again.worst]
    assert fg.check_vjp(softmax, softmax_vjp, X0).seed is not None


# ------------------------------------------------------------------ JVP
@pytest.mark.parametrize("fun, jvp", [
    (linear, linear_jvp), (softmax, softmax_jvp), (two_outputs, two_outputs_jvp)])
def test_correct_jvps_pass(fun, jvp):
    report = fg.check_jvp(fun, jvp, X0, seed=3)
    assert report.verdict == "pass", report
    assert report.kind == "jvp" and len(report.products) == 4
    # fun(x), the two noise tables, a pair a tangent (two where an element is refined at 2t)
    assert report.evaluations == 1 + 16 + sum(p.evaluations for p in report.products)
    assert all(p.evaluations in (2, 4) for p in report.products)
    json.dumps(report.to_dict(), allow_nan=False)


def test_jvp_bugs_fail_and_are_named():
    def softmax_missing_term(z, v):
        return softmax(z) * v

    assert fg.check_jvp(softmax, softmax_missing_term, X0, seed=1).verdict == "fail"
    wrong = A.copy()
    wrong[3, 2] *= 1.0 + 1e-3
    report = fg.check_jvp(linear, lambda x, v: wrong @ v, X0, seed=1)
    assert report.verdict == "fail" and report.worst[0].label.endswith(": out[3]")

    def drops_sum(x, v):
        out = two_outputs_jvp(x, v)
        out["sum"][1] = 0.0
        return out

    report = fg.check_jvp(two_outputs, drops_sum, X0, seed=1)
    assert report.verdict == "fail" and report.worst[0].label.endswith(": sum[1]")


def test_compiled_jvp_and_given_tangents():
    report = fg.check_jvp(compiled_layer, layer_jvp, X0, args=(A,),
                          tangents=[np.eye(5)[1], RNG.standard_normal(5)])
    assert report.verdict == "pass" and len(report.products) == 2

    def transposed(x, v, matrix):  # the Jacobian's leading 3 × 3 block transposed
        y = np.tanh(matrix @ x)
        jacobian = (1.0 - y * y)[:, None] * matrix
        jacobian[:3, :3] = jacobian[:3, :3].T.copy()
        return jacobian @ v

    assert fg.check_jvp(compiled_layer, transposed, X0, args=(A,), seed=2).verdict == "fail"


def test_linearized_jvp_and_kwargs():
    def fun(x, *, scale):
        return scale * np.sin(x)

    def linearize(x, *, scale):
        return scale * np.sin(x), lambda v: scale * np.cos(x) * v

    assert fg.check_jvp(fun, linearize, X0, kwargs={"scale": 3.0}, linearized=True, seed=0).passed
    assert not fg.check_jvp(fun, lambda x, v, scale: np.cos(x) * v, X0, kwargs={"scale": 3.0},
                            seed=0).passed


# ------------------------------------------------------------------ HVP
def test_rosenbrock_hessian_products():
    x = np.array([1.3, 0.7, 0.8, 1.9, 1.2])
    assert rosen(x) > 0
    report = fg.check_hvp(rosen_der, rosen_hess_prod, x, seed=2)
    assert report.verdict == "pass", report
    assert report.kind == "hvp" and report.worst[0].label.startswith("vector ")

    def missing_diagonal_term(x, v):  # the 2·v of (1 − x_i)², i < n − 1, forgotten
        return rosen_hess_prod(x, v) - 2.0 * np.r_[v[:-1], 0.0]

    assert fg.check_hvp(rosen_der, missing_diagonal_term, x, seed=2).verdict == "fail"


def _sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


DESIGN = RNG.standard_normal((30, 4))
LABELS = (RNG.random(30) < 0.5).astype(float)


def logistic_grad(theta, X, y, penalty):
    return X.T @ (_sigmoid(X @ theta) - y) + penalty * theta


def logistic_hvp(theta, v, X, y, penalty):
    p = _sigmoid(X @ theta)
    return X.T @ (p * (1.0 - p) * (X @ v)) + penalty * v


def test_logistic_regression_hessian_products():
    theta = RNG.standard_normal(4)
    args = (DESIGN, LABELS, 0.5)
    assert fg.check_hvp(logistic_grad, logistic_hvp, theta, args=args, seed=1).verdict == "pass"

    def missing_penalty(theta, v, X, y, penalty):  # the diagonal term λ·v
        return logistic_hvp(theta, v, X, y, 0.0)

    assert fg.check_hvp(logistic_grad, missing_penalty, theta, args=args, seed=1).verdict == "fail"

    def one_entry(theta, v, X, y, penalty):
        p = _sigmoid(X @ theta)
        hessian = X.T @ (X * (p * (1 - p))[:, None]) + penalty * np.eye(4)
        hessian[1, 3] *= 1.0 + 1e-3
        return hessian @ v

    report = fg.check_hvp(logistic_grad, one_entry, theta, args=args, seed=1)
    assert report.verdict == "fail" and report.worst[0].label.endswith("theta[1]")


def test_hvp_on_a_dict_theta_and_linearized():
    theta = {"a": np.array([0.4, -0.3]), "b": np.array([[1.1]])}

    def grad(t):
        return {"a": 2 * t["a"] * t["b"][0, 0], "b": np.array([[t["a"] @ t["a"] + 3 * t["b"][0, 0] ** 2]])}

    def linearize(t):
        def hvp(v):
            return {"a": 2 * v["a"] * t["b"][0, 0] + 2 * t["a"] * v["b"][0, 0],
                    "b": np.array([[2 * t["a"] @ v["a"] + 6 * t["b"][0, 0] * v["b"][0, 0]]])}
        return grad(t), hvp

    report = fg.check_hvp(grad, linearize, theta, linearized=True, seed=0)
    assert report.verdict == "pass", report
    assert any(e.label.endswith("b[0, 0]") for e in report.worst)


# ------------------------------------------------------------------ bad input
class Counting:
    def __init__(self, fun):
        self.fun, self.calls = fun, 0

    def __call__(self, x, *args):
        self.calls += 1
        return self.fun(x, *args)


@pytest.mark.parametrize("check, options, match", [
    ("vjp", {"vjp": 3}, "vjp must be callable"),
    ("vjp", {"cotangents": 0}, "cotangents"),
    ("vjp", {"bogus": 1}, "unexpected option"),
    ("vjp", {"seed": -1}, "seed"),
    ("vjp", {"cotangents": [np.ones(5)]}, "shape"),
    ("vjp", {"vjp": lambda x, u: np.ones(3)}, "shape"),
    ("vjp", {"vjp": lambda x, u: 1 / 0}, "ZeroDivisionError"),
    ("jvp", {"tangents": [np.ones(4)]}, "shape"),
    ("jvp", {"jvp": lambda x, v: {"out": v}}, "dict"),
    ("jvp", {"jvp": lambda x: x, "linearized": True}, "pair"),
    ("hvp", {"vectors": []}, "non-empty"),
])
def test_bad_input_is_an_input_error_before_any_finite_difference(check, options, match):
    fun = Counting(linear)
    x = X0.copy()
    if check == "vjp":
        call = {"vjp": linear_vjp, **options}
        with pytest.raises(InputError, match=match):
            fg.check_vjp(fun, call.pop("vjp"), x, **call)
    elif check == "jvp":
        call = {"jvp": linear_jvp, **options}
        with pytest.raises(InputError, match=match):
            fg.check_jvp(fun, call.pop("jvp"), x, **call)
    else:
        with pytest.raises(InputError, match=match):
            fg.check_hvp(fun, linear_jvp, x, **options)
    assert fun.calls <= 1  # at most fun(x), to learn its output's structure
    np.testing.assert_array_equal(x, X0)


def test_non_callable_fun_and_grad():
    with pytest.raises(InputError, match="fun must be callable"):
        fg.check_vjp(np.ones(3), linear_vjp, X0)
    with pytest.raises(InputError, match="grad must be callable"):
        fg.check_hvp(None, linear_jvp, X0)


def test_user_arrays_are_left_alone():
    params = {k: v.copy() for k, v in PARAMS.items()}
    inputs = FEATURES.copy()
    cotangents = [RNG.standard_normal((7, 4))]
    kept = [c.copy() for c in cotangents]
    fg.check_vjp(mlp_layer, mlp_layer_vjp, params, args=(inputs,), cotangents=cotangents)
    for key in PARAMS:
        np.testing.assert_array_equal(params[key], PARAMS[key])
    np.testing.assert_array_equal(inputs, FEATURES)
    np.testing.assert_array_equal(cotangents[0], kept[0])
    tangents = [RNG.standard_normal(5)]
    kept = [t.copy() for t in tangents]
    fg.check_jvp(softmax, softmax_jvp, X0, tangents=tangents)
    np.testing.assert_array_equal(tangents[0], kept[0])


def test_report_text_and_json():
    report = fg.check_jvp(two_outputs, two_outputs_jvp, X0, seed=1)
    text = str(report)
    assert text.startswith("PASS") and "tangent 1" in text and "seed=1" in text
    data = report.to_dict()
    assert data["kind"] == "jvp" and data["non_finite"] == {}
    assert set(data["worst"][0]) >= {"label", "difference", "allowed", "score"}


def test_readme_section_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Derivative products"):]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks
    namespace: dict = {}
    exec(compile(blocks[0], "README products block", "exec"), namespace)
    assert namespace["report"].passed


@numba.njit
def compiled_scaled_sine(x, scale=1.0):
    return scale * np.sin(x)


def test_compiled_fun_of_a_dict_x_gets_the_flat_vector_and_its_keywords():
    x = {"a": np.array([0.2, -0.7]), "b": np.array([[1.3, 0.4]])}

    def vjp(x, u, scale):
        flat = np.r_[x["a"], x["b"].ravel()]
        g = scale * np.cos(flat) * u
        return {"a": g[:2], "b": g[2:].reshape(1, 2)}

    report = fg.check_vjp(compiled_scaled_sine, vjp, x, kwargs={"scale": 2.5}, seed=0)
    assert report.verdict == "pass", report
    assert report.reports[0].engine == "numba"
    assert not fg.check_vjp(compiled_scaled_sine, lambda x, u, scale: vjp(x, u, 1.0), x,
                            kwargs={"scale": 2.5}, seed=0).passed


def test_columnwise_ecnoise_matches_fastgrads_ecnoise():
    """Vectorised over the columns, the same σ and detection as fastgrad.noise.ecnoise."""
    from fastgrad.noise import ecnoise, ecnoise_columns, noise_bound

    rng = np.random.default_rng(0)
    steps = np.arange(-4, 5)[:, None]
    table = np.concatenate([
        1.0 + 1e-3 * steps * rng.standard_normal(6) + 1e-14 * rng.standard_normal((9, 6)),  # noisy
        1e150 * (2.0 + steps * 1e-9 + 1e-15 * rng.standard_normal((9, 3))),  # large values
        np.ones((9, 2)),  # constant: code 2
        steps * 0.5 + 1e-15 * rng.standard_normal((9, 2)),  # through zero: spread, code 3
    ], axis=1)
    sigma, detected = ecnoise_columns(table)
    for j in range(table.shape[1]):
        expected, code = ecnoise(table[:, j])
        assert detected[j] == (code == 1)
        if code == 1:
            assert sigma[j] == pytest.approx(expected, rel=1e-12)
        elif code == 3:
            assert sigma[j] == pytest.approx(noise_bound(table[:, j]), rel=1e-12)
        else:
            assert sigma[j] == 0.0
    assert detected[:9].all() and not detected[9:].any()


def test_a_loss_summed_over_many_samples_is_judged_by_its_measured_noise():
    rng = np.random.default_rng(3)
    design, labels = rng.standard_normal((20000, 6)), (rng.random(20000) < 0.5).astype(float)
    theta = rng.standard_normal(6)
    args = (design, labels, 0.0)
    assert fg.check_hvp(logistic_grad, logistic_hvp, theta, args=args, seed=0).verdict == "pass"

    def one_entry(theta, v, X, y, penalty):
        p = _sigmoid(X @ theta)
        hessian = X.T @ (X * (p * (1 - p))[:, None])
        hessian[2, 4] *= 1.0 + 1e-3
        return hessian @ v

    report = fg.check_hvp(logistic_grad, one_entry, theta, args=args, seed=0)
    assert report.verdict == "fail" and report.worst[0].label.endswith("theta[2]")


def tridiagonal_residual(x, b):
    r = -2.0 * x + x ** 3 - b
    r[1:] += x[:-1]
    r[:-1] += x[1:]
    return r


def tridiagonal_jvp(x, v, b):
    r = (3.0 * x ** 2 - 2.0) * v
    r[1:] += v[:-1]
    r[:-1] += v[1:]
    return r


@pytest.mark.parametrize("seed", [1, 4])
def test_sparse_residual_at_1e5_elements_whose_noise_hides_from_ecnoise(seed):
    """Seeds on which one √u table (and two at √u, 100√u along one direction) left elements
    F_i ≈ 0.006 (cancelling terms of ~1) at σ = u·|F_i| and failed the correct JVP."""
    n = 100_000
    b = np.random.default_rng(0).standard_normal(n)
    x = np.random.default_rng(seed).standard_normal(n)
    report = fg.check_jvp(tridiagonal_residual, tridiagonal_jvp, x, args=(b,), seed=seed)
    assert report.verdict == "pass", report

    def one_entry(x, v, b):  # J[500, 501] off by a relative 1e-3
        r = tridiagonal_jvp(x, v, b)
        r[500] += 1e-3 * v[501]
        return r

    report = fg.check_jvp(tridiagonal_residual, one_entry, x, args=(b,), seed=seed)
    assert report.verdict == "fail" and report.worst[0].label.endswith(": out[500]")


def test_a_kink_within_the_step_warns_and_a_bug_beside_it_still_fails():
    """ReLU(A·x) with one pre-activation 1e-7 from 0: the tangents' pairs cross its kink. The
    correct JVP agrees with a one-sided difference there (warn, with a note, never fail); a
    1e-3 bug in a smooth element at the same x fails."""
    rng = np.random.default_rng(1)
    matrix, x = rng.standard_normal((6, 4)), rng.standard_normal(4)
    x = x + matrix[2] * (1e-7 - matrix[2] @ x) / (matrix[2] @ matrix[2])
    assert 0 < matrix[2] @ x < 2e-7 and matrix[3] @ x > 1.0

    def relu_layer(x):
        return np.maximum(matrix @ x, 0.0)

    def jacobian(x, row_scale=1.0):
        J = (matrix @ x > 0)[:, None] * matrix
        J[3] *= row_scale
        return J

    correct = fg.check_jvp(relu_layer, lambda x, v: jacobian(x) @ v, x, seed=0)
    assert correct.verdict == "warn", correct
    assert any("one-sided" in note for note in correct.notes)
    wrong = fg.check_jvp(relu_layer, lambda x, v: jacobian(x, 1.001) @ v, x, seed=0)
    assert wrong.verdict == "fail" and wrong.worst[0].label.endswith("out[3]"), wrong
