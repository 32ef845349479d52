"""check_jacobian and check_hessian: correct matrices pass, planted bugs fail and are named,
on Python and Numba functions, dense, sparse and LinearOperator Jacobians, dict x and dict
output; bad input is refused before any evaluation; the vector engine on every executor."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import JIT_DISABLED
from scipy.optimize import rosen_der, rosen_hess
from scipy.sparse.linalg import aslinearoperator

import fastgrad as fg
from fastgrad.engine.vector import Groups, OutputLayout, make_vector_evaluator
from fastgrad.errors import InputError, LossError
from fastgrad.grouping import Pattern, group_columns
from fastgrad.parameters import ParameterLayout

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(7)
A = RNG.standard_normal((6, 4))
X0 = RNG.standard_normal(4)


def tanh_layer(x):
    return np.tanh(A @ x)


def tanh_layer_jac(x):
    return (1.0 - np.tanh(A @ x) ** 2)[:, None] * A


@numba.njit
def tanh_layer_compiled(x, a):
    return np.tanh(a @ x)


@numba.njit
def tridiagonal_residual(x):
    """r_i = 2x_i − x_{i−1} − x_{i+1} + x_i³ − 1: a tridiagonal Jacobian."""
    n = x.size
    r = np.empty(n)
    for i in range(n):
        left = x[i - 1] if i > 0 else 0.0
        right = x[i + 1] if i < n - 1 else 0.0
        r[i] = 2.0 * x[i] - left - right + x[i] ** 3 - 1.0
    return r


def tridiagonal_jac(x):
    n = x.size
    return sp.diags([-np.ones(n - 1), 2.0 + 3.0 * x**2, -np.ones(n - 1)], [-1, 0, 1], format="csr")


@numba.njit
def laplacian_residual(u):
    """r = L·u + exp(u) on an N × N grid, L the 5-point Laplacian."""
    size = int(np.sqrt(u.size))
    r = np.empty(u.size)
    for i in range(size):
        for j in range(size):
            k = i * size + j
            s = 4.0 * u[k]
            if i > 0:
                s -= u[k - size]
            if i < size - 1:
                s -= u[k + size]
            if j > 0:
                s -= u[k - 1]
            if j < size - 1:
                s -= u[k + 1]
            r[k] = s + np.exp(u[k])
    return r


def laplacian_jac(u):
    size = int(np.sqrt(u.size))
    eye = sp.identity(size)
    band = sp.diags([-1.0, 4.0, -1.0], [-1, 0, 1], shape=(size, size))
    off = sp.diags([-1.0, -1.0], [-1, 1], shape=(size, size))
    return (sp.kron(eye, band) + sp.kron(off, eye) + sp.diags(np.exp(u))).tocsr()


# ----------------------------------------------------------------------------- dense
def test_correct_dense_jacobian_passes_and_one_entry_off_by_1e_3_fails_named():
    report = fg.check_jacobian(tanh_layer, tanh_layer_jac, X0, seed=0)
    assert report.verdict == "pass", report
    assert report.kind == "jacobian" and report.shape == (6, 4) and report.judged == 24
    # F(x), the noise (8 evaluations a step tried, at most 3 steps), a pair per column
    assert 1 + 8 + 2 * 4 <= report.evaluations <= 1 + 24 + 2 * 4
    wrong = tanh_layer_jac(X0)
    wrong[2, 1] *= 1.0 + 1e-3
    bad = fg.check_jacobian(tanh_layer, wrong, X0, seed=0)
    assert bad.verdict == "fail" and not bad.passed
    assert bad.worst[0].label == "out[2] / theta[1]"
    assert bad.worst[0].score > 1 >= bad.worst[1].score
    assert bad.failing == 1


def test_compiled_function_with_args_and_a_transposed_block_fails():
    jac = tanh_layer_jac(X0)
    assert fg.check_jacobian(tanh_layer_compiled, jac, X0, args=(A,), seed=1).passed
    transposed = jac.copy()
    transposed[:2, :2] = jac[:2, :2].T
    report = fg.check_jacobian(tanh_layer_compiled, transposed, X0, args=(A,), seed=1)
    assert report.verdict == "fail"
    assert {e.label for e in report.worst if e.score > 1} == {"out[0] / theta[1]", "out[1] / theta[0]"}


def test_structured_jacobian_shape_kwargs_and_callable():
    W = RNG.standard_normal((2, 3))

    def fun(w, scale=1.0):
        return scale * np.sin(w) ** 2  # elementwise: J[i, j, k, l] = δ_ik δ_jl · scale·sin(2w)

    def jac(w, scale=1.0):
        out = np.zeros(w.shape + w.shape)
        for i in range(2):
            for j in range(3):
                out[i, j, i, j] = scale * np.sin(2.0 * w[i, j])
        return out

    assert fg.check_jacobian(fun, jac, W, kwargs={"scale": 3.0}, seed=2).passed
    assert not fg.check_jacobian(fun, jac(W, 3.0), W, kwargs={"scale": 3.1}, seed=2).passed


def test_dict_x_and_dict_output_name_the_entries():
    x = {"W": RNG.standard_normal((2, 3)), "b": RNG.standard_normal(2)}
    before = {k: v.copy() for k, v in x.items()}

    def fun(p):
        y = p["W"] @ np.arange(1.0, 4.0) + p["b"]
        return {"y": np.tanh(y), "s": np.array([np.sum(p["W"] ** 2)])}

    def jac(p):
        y = p["W"] @ np.arange(1.0, 4.0) + p["b"]
        d = 1.0 - np.tanh(y) ** 2
        J = np.zeros((3, 8))  # rows y[0], y[1], s[0]; columns W (C order), then b
        for i in range(2):
            J[i, 3 * i:3 * i + 3] = d[i] * np.arange(1.0, 4.0)
            J[i, 6 + i] = d[i]
        J[2, :6] = 2.0 * p["W"].ravel()
        return J

    assert fg.check_jacobian(fun, jac, x, seed=3).passed
    wrong = jac(x)
    wrong[1, 5] *= 1.0 + 1e-3
    report = fg.check_jacobian(fun, wrong, x, seed=3)
    assert report.worst[0].label == "y[1] / W[1, 2]" and not report.passed
    for key in x:
        np.testing.assert_array_equal(x[key], before[key])


def test_order_f_reads_column_major_coefficients():
    W = RNG.standard_normal((2, 3))

    def fun(w):
        return w.ravel() ** 3  # output in C order

    jac_c = np.diag(3.0 * W.ravel() ** 2)
    jac_f = jac_c[:, np.arange(6).reshape(2, 3).ravel(order="F")]  # columns in W's F order
    assert fg.check_jacobian(fun, jac_f, W, order="F", seed=4).passed
    assert not fg.check_jacobian(fun, jac_f, W, seed=4).passed


# ----------------------------------------------------------------------------- sparse
def test_tridiagonal_sparse_jacobian_in_three_groups_and_a_dropped_entry_is_missing():
    x = np.linspace(0.0, 1.0, 300)
    report = fg.check_jacobian(tridiagonal_residual, tridiagonal_jac, x, seed=5)
    assert report.passed, report
    assert report.groups == 3 and report.pattern == "jac" and report.directions == 2
    # F(x), the noise, 3 pairs, 2 directions; at most every pair again at 2h
    assert 1 + 8 + 2 * 5 <= report.evaluations <= 1 + 24 + 4 * 5
    dropped = tridiagonal_jac(x).tolil()
    dropped[5, 6] = 0.0
    dropped = dropped.tocsr()
    dropped.eliminate_zeros()
    bad = fg.check_jacobian(tridiagonal_residual, dropped, x, seed=5)
    assert bad.verdict == "fail" and bad.missing == 1
    assert any(e.what == "missing" and e.label == "out[5] / theta[6]" for e in bad.worst)
    assert any("pattern came from the sparse jac" in note for note in bad.notes)


def test_sparse_entry_off_by_1e_3_and_an_entry_outside_a_given_pattern_fail():
    x = np.linspace(-1.0, 1.0, 50)
    jac = tridiagonal_jac(x).tolil()
    jac[10, 10] *= 1.0 + 1e-3
    report = fg.check_jacobian(tridiagonal_residual, jac.tocsc(), x, seed=6)
    assert report.worst[0].label == "out[10] / theta[10]" and not report.passed
    # a pattern without entry (5, 6): its group holds no other column of row 5, so it is missing
    pattern = (tridiagonal_jac(x) != 0).toarray()
    pattern[5, 6] = False
    dense = tridiagonal_jac(x).toarray() * pattern
    missing = fg.check_jacobian(tridiagonal_residual, dense, x, sparsity=pattern, seed=6)
    assert missing.pattern == "sparsity" and missing.missing == 1 and not missing.passed
    assert missing.worst[0].label == "out[5] / theta[6]" and missing.worst[0].what == "missing"
    # without the upper diagonal (2 groups): each dropped entry shows in its row's entry of the
    # same group, (i, i − 1)
    pattern[np.arange(49), np.arange(1, 50)] = False
    bidiagonal = fg.check_jacobian(tridiagonal_residual, tridiagonal_jac(x).toarray() * pattern, x,
                                   sparsity=pattern, seed=6)
    assert bidiagonal.groups == 2 and bidiagonal.failing >= 48 and not bidiagonal.passed


def test_laplacian_five_groups_and_linear_operator():
    u = np.random.default_rng(8).standard_normal(144) * 0.1
    report = fg.check_jacobian(laplacian_residual, laplacian_jac, u, seed=7)
    assert report.passed and report.groups == 5
    operator = aslinearoperator(laplacian_jac(u))
    assert fg.check_jacobian(laplacian_residual, operator, u, sparsity=laplacian_jac(u), seed=7).passed
    assert fg.check_jacobian(laplacian_residual, operator, u, seed=7).groups == 144
    wrong = laplacian_jac(u).tolil()
    wrong[30, 31] *= 1.0 + 1e-3
    bad = fg.check_jacobian(laplacian_residual, aslinearoperator(wrong.tocsr()), u,
                            sparsity=laplacian_jac(u), seed=7)
    assert bad.worst[0].label == "out[30] / theta[31]" and not bad.passed


@pytest.mark.skipif(JIT_DISABLED, reason="n = 10^5 is sized for the compiled residual")
def test_tridiagonal_of_a_hundred_thousand_in_three_groups():
    x = np.linspace(0.0, 1.0, 100_000)
    report = fg.check_jacobian(tridiagonal_residual, tridiagonal_jac, x, seed=9)
    assert report.passed and report.groups == 3 and report.evaluations <= 1 + 24 + 4 * 5
    wrong = tridiagonal_jac(x).tolil()
    wrong[77_777, 77_778] = 0.0
    wrong = wrong.tocsr()
    wrong.eliminate_zeros()
    bad = fg.check_jacobian(tridiagonal_residual, wrong, x, seed=9)
    assert any(e.label == "out[77777] / theta[77778]" for e in bad.worst) and not bad.passed


def test_grouping_is_a_valid_colouring():
    rows, cols = np.nonzero(RNG.random((30, 40)) < 0.1)
    pattern = Pattern.from_entries((30, 40), rows, cols)
    groups = group_columns(pattern)
    for r in range(30):
        members = cols[rows == r]
        assert len(set(groups[members])) == members.size


# ----------------------------------------------------------------------------- Hessians
THETA = np.array([1.3, 0.7, 0.8, 1.9, 1.2, -0.4])


def test_rosenbrock_hessian_passes_dense_and_sparse():
    report = fg.check_hessian(rosen_der, rosen_hess, THETA, seed=10)
    assert report.verdict == "pass" and report.kind == "hessian" and report.asymmetric == 0
    sparse = fg.check_hessian(rosen_der, sp.csr_matrix(rosen_hess(THETA)), THETA, seed=10)
    assert sparse.passed and sparse.groups == 3


def test_hessian_planted_bugs_fail():
    missing_diagonal = rosen_hess(THETA)
    missing_diagonal[np.arange(5), np.arange(5)] -= 2.0  # the 2 of (1 − x_i)²
    assert not fg.check_hessian(rosen_der, missing_diagonal, THETA, seed=11).passed
    one_entry = rosen_hess(THETA)
    one_entry[3, 4] *= 1.0 + 1e-3
    one_entry[4, 3] *= 1.0 + 1e-3
    report = fg.check_hessian(rosen_der, one_entry, THETA, seed=11)
    assert not report.passed and report.asymmetric == 0
    assert {e.label for e in report.worst[:2]} == {"theta[3] / theta[4]", "theta[4] / theta[3]"}
    asymmetric = rosen_hess(THETA)
    asymmetric[0, 1] *= 1.0 + 1e-3
    lopsided = fg.check_hessian(rosen_der, asymmetric, THETA, seed=11)
    assert lopsided.asymmetric == 1 and not lopsided.passed
    assert any("asymmetric" in note for note in lopsided.notes)


def test_logistic_regression_hessian():
    rng = np.random.default_rng(12)
    X, y = rng.standard_normal((40, 5)), (rng.random(40) < 0.5).astype(float)

    def grad(w, X, y):
        p = 1.0 / (1.0 + np.exp(-X @ w))
        return X.T @ (p - y)

    def hess(w, X, y):
        p = 1.0 / (1.0 + np.exp(-X @ w))
        return X.T @ ((p * (1.0 - p))[:, None] * X)

    def hess_wrong(w, X, y):  # p instead of p(1 − p)
        p = 1.0 / (1.0 + np.exp(-X @ w))
        return X.T @ (p[:, None] * X)

    w = rng.standard_normal(5) * 0.3
    assert fg.check_hessian(grad, hess, w, args=(X, y), seed=13).passed
    assert not fg.check_hessian(grad, hess_wrong, w, args=(X, y), seed=13).passed


def test_dict_theta_hessian_in_thetas_key_order():
    theta = {"a": np.array([0.3, -0.2]), "b": np.array([1.1])}

    def grad(p):  # f = a0² a1 + sin(b) a0, returned in another key order
        a, b = p["a"], p["b"]
        return {"b": np.cos(b) * a[0], "a": np.array([2 * a[0] * a[1] + np.sin(b[0]), a[0] ** 2])}

    a0, a1, b0 = 0.3, -0.2, 1.1
    H = np.array([[2 * a1, 2 * a0, np.cos(b0)], [2 * a0, 0.0, 0.0], [np.cos(b0), 0.0, -np.sin(b0) * a0]])
    assert fg.check_hessian(grad, H, theta, seed=14).passed
    H[2, 2] *= 1.0 + 1e-3
    assert fg.check_hessian(grad, H, theta, seed=14).worst[0].label == "b[0] / b[0]"


# ----------------------------------------------------------------------------- input, report
def test_bad_input_is_refused_before_any_evaluation():
    calls = []

    def fun(x):
        calls.append(1)
        return tanh_layer(x)

    jac = tanh_layer_jac(X0)
    for bad, kwargs in [(jac[:, :3], {}), (jac.T, {}), ("jac", {}), (jac, {"order": "K"}),
                        (jac, {"sparsity": np.ones((6, 5))}), (jac, {"sparsity": np.ones((5, 4))}),
                        (jac, {"seed": -1}), (sp.csr_matrix(jac[:, :2]), {}),
                        (np.full_like(jac, np.nan), {})]:
        with pytest.raises(InputError):
            fg.check_jacobian(fun, bad, X0, **kwargs)
    with pytest.raises(InputError):
        fg.check_hessian(fun, np.zeros((6, 4)), X0)
    assert calls == []
    with pytest.raises(InputError, match="rows"):  # m is the function's: one evaluation
        fg.check_jacobian(fun, jac[:5], X0)
    assert len(calls) == 1


def test_failures_of_the_function_name_the_group():
    def fun(x):
        if x[2] > X0[2]:
            return np.full(6, np.nan)
        return tanh_layer(x)

    with pytest.raises(LossError, match="non-finite"):
        fg.check_jacobian(fun, tanh_layer_jac, X0, seed=0)
    with pytest.raises(LossError):
        fg.check_jacobian(lambda x: tanh_layer(x)[: int(x[0] >= X0[0]) + 5], tanh_layer_jac, X0)


def test_report_is_strict_json_and_readable():
    wrong = tanh_layer_jac(X0)
    wrong[0, 0] = 0.0
    report = fg.check_jacobian(tanh_layer, wrong, X0, seed=0)
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["verdict"] == "fail" and data["worst"][0]["label"] == "out[0] / theta[0]"
    assert data["non_finite"] == {} and data["seed"] == 0
    text = str(report)
    assert text.startswith("jacobian check: FAIL") and "out[0] / theta[0]" in text


def test_vector_engine_same_values_on_threads_processes_and_python():
    """The compiled kernel and the Python path give the same out[j, q, :], coordinate and
    group rows, on the calling thread, threads and processes."""
    layout, flat = ParameterLayout.from_theta(X0)
    output = OutputLayout.of(tanh_layer(X0))
    groups = Groups.from_parts([np.array([0, 2]), np.array([1, 3])], np.full(4, 1e-3))
    from fastgrad.engine import Engine, executor_for

    results = []
    for fun, executors in [(tanh_layer_compiled, ("serial", "threads")),
                           (lambda x, a: np.tanh(a @ x), ("serial", "threads", "processes"))]:
        for executor in executors:
            evaluator = make_vector_evaluator(fun, flat, (A,), layout, output, groups)
            run = Engine(evaluator, layout, executor_for(executor, evaluator, 2))
            run.seconds_per_evaluation = 1.0  # worth the workers
            results.append(run.perturbed(np.array([0, 1]), np.array([[1.0, -1.0], [2.0, -2.0]])))
            assert run.evaluations == 4
    expected = np.array([[np.tanh(A @ (X0 + t * 1e-3 * np.array([1, 0, 1, 0])))
                          for t in (1.0, -1.0)], [np.tanh(A @ (X0 + t * 1e-3 * np.array([0, 1, 0, 1])))
                                                  for t in (2.0, -2.0)]])
    for out in results:
        np.testing.assert_allclose(out, expected, rtol=1e-14)


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0]


@pytest.mark.parametrize("title", ["Jacobians", "Hessians"])
def test_readme_examples_run(title, capsys):
    exec(compile(_readme_section(title), f"README {title}", "exec"), {})
    assert "check: PASS" in capsys.readouterr().out


def test_an_element_that_cancels_larger_terms_is_judged_by_their_rounding():
    """F_5 = 2x_5 − x_6 − x_4 + 0.3·x_5³ ≈ −2e-4 cancels terms of 0.27 at x = linspace(−1, 1, 12).
    Along some noise directions its subtractions are exact and ECnoise measures σ ≈ u·|F_5|,
    while the pairs that move x_6 alone carry ≈ 7e-17: seeds 8, 13, 17, 142 among others
    failed the correct Jacobian before the floor u·Σ_c |J_ic|·|x_c|. An entry off by 1e-3
    still fails."""
    x = np.linspace(-1.0, 1.0, 12)

    def fun(x, c):
        return 2 * x - np.r_[x[1:], 0.0] - np.r_[0.0, x[:-1]] + c * x ** 3

    def jac(x, c):
        return np.diag(2 + 3 * c * x ** 2) - np.eye(x.size, k=1) - np.eye(x.size, k=-1)

    for seed in [8, 13, 17, 142, 187, 222, *range(40)]:
        report = fg.check_jacobian(fun, jac, x, args=(0.3,), seed=seed)
        assert report.verdict == "pass", (seed, report)
    wrong = jac(x, 0.3)
    wrong[5, 6] *= 1.001
    assert fg.check_jacobian(fun, wrong, x, args=(0.3,), seed=142).worst[0].label == "out[5] / theta[6]"
    assert not fg.check_jacobian(fun, wrong, x, args=(0.3,), seed=142).passed
