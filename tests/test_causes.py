"""Likely causes of a failing gradient: each kind found on planted bugs in two models (an MLP
with a Python and a Numba loss; a square tanh regression with a Numba and a Python loss), and
nothing structured read into a failure that has no structure."""

from __future__ import annotations

import json

import numba
import numpy as np
import pytest

import fastgrad as fg
from fastgrad.models import mlp

LAM = 1e-2
M = 32  # samples of both models: a 1/m bug is a factor 32


# ----------------------------------------------------------------- model A: an MLP, W1 and W2 square
def _mlp():
    problem = mlp.problem(6, 6, 6, m=M, seed=2)
    args = (problem.X, problem.Y)
    return problem.params, args, mlp.grad(problem.params, *args)


def _mlp_l2_loss(p, X, Y):
    return mlp.loss_params(p, X, Y) + 0.5 * LAM * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2))


# ----------------------------------------------------------------- model B: square tanh regression
D = 5


@numba.njit
def _square_loss(theta, X, Y, lam):
    """0.5/m·Σ‖tanh(X W1 + b1) W2 + b2 − Y‖² + lam/2·(‖W1‖² + ‖W2‖²), θ = [W1, b1, W2, b2]."""
    W1 = theta[:D * D].reshape((D, D))
    b1 = theta[D * D:D * D + D]
    W2 = theta[D * D + D:2 * D * D + D].reshape((D, D))
    b2 = theta[2 * D * D + D:]
    out = np.tanh(X @ W1 + b1) @ W2 + b2 - Y
    return 0.5 * np.sum(out * out) / X.shape[0] + 0.5 * lam * (np.sum(W1 * W1) + np.sum(W2 * W2))


def _square_loss_python(p, X, Y, lam):
    flat = np.concatenate([p[k].ravel() for k in ("W1", "b1", "W2", "b2")])
    return _square_loss.py_func(flat, X, Y, lam) if hasattr(_square_loss, "py_func") \
        else _square_loss(flat, X, Y, lam)


def _square_grad(p, X, Y, lam):
    A = np.tanh(X @ p["W1"] + p["b1"])
    dOut = (A @ p["W2"] + p["b2"] - Y) / X.shape[0]
    dZ = (dOut @ p["W2"].T) * (1 - A * A)
    return {"W1": X.T @ dZ + lam * p["W1"], "b1": dZ.sum(axis=0),
            "W2": A.T @ dOut + lam * p["W2"], "b2": dOut.sum(axis=0)}


def _square():
    rng = np.random.default_rng(4)
    params = {"W1": 0.5 * rng.standard_normal((D, D)), "b1": 0.1 * rng.standard_normal(D),
              "W2": 0.5 * rng.standard_normal((D, D)), "b2": 0.1 * rng.standard_normal(D)}
    X, Y = rng.standard_normal((M, D)), rng.standard_normal((M, D))
    args = (X, Y, LAM)
    return params, args, _square_grad(params, *args)


MODELS = {
    "mlp python": (_mlp, mlp.loss_params),
    "mlp numba": (_mlp, mlp.loss),
    "square numba": (_square, _square_loss),
    "square python": (_square, _square_loss_python),
}


def _with(grad, **changes):
    return {**{k: v.copy() for k, v in grad.items()}, **changes}


def _roll_rows(a):
    return np.roll(a, 1, axis=0)  # g[i] = D[i - 1]; row 0 takes the last row (no partner)


def _swap_entries(a):
    b = a.copy()
    b[1, 2], b[3, 0] = a[3, 0], a[1, 2]
    return b


def _one_entry(a):
    b = a.copy()
    b[2, 3] *= 1.01
    return b


BUGS = {  # name: (the wrong gradient from the right one, the groups blamed, the kind)
    "b1 never written": (lambda g: _with(g, b1=np.zeros_like(g["b1"])), {"b1"}, "zero"),
    "W1 doubled": (lambda g: _with(g, W1=2 * g["W1"]), {"W1"}, "scale"),
    "b2 divided by m again": (lambda g: _with(g, b2=g["b2"] / M), {"b2"}, "scale"),
    "mean taken as a sum": (lambda g: {k: M * v for k, v in g.items()}, {"W1", "b1", "W2", "b2"}, "scale"),
    "W2 sign": (lambda g: _with(g, W2=-g["W2"]), {"W2"}, "sign"),
    "b2 constant term": (lambda g: _with(g, b2=g["b2"] - 0.05), {"b2"}, "missing_term"),
    "W1 transposed": (lambda g: _with(g, W1=g["W1"].T.copy()), {"W1"}, "transpose"),
    "W2 rows off by one": (lambda g: _with(g, W2=_roll_rows(g["W2"])), {"W2"}, "shift"),
    "W2 two entries swapped": (lambda g: _with(g, W2=_swap_entries(g["W2"])), {"W2"}, "swap"),
    "W1 and W2 swapped": (lambda g: _with(g, W1=g["W2"], W2=g["W1"]), {"W1", "W2"}, "groups_swapped"),
    "W2 one entry": (lambda g: _with(g, W2=_one_entry(g["W2"])), {"W2"}, "isolated"),
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("bug", BUGS)
def test_each_planted_bug_is_named_with_its_cause(model, bug):
    make, loss = MODELS[model]
    params, args, grad = make()
    wrong, groups, kind = BUGS[bug]
    report = fg.check(loss, wrong(grad), params, args)
    assert report.verdict == "fail"
    causes = report.causes
    assert [c.kind for c in causes] == [kind], [c.sentence for c in causes]
    named = set(causes[0].evidence.get("groups", [causes[0].group]))
    assert named == groups, causes[0].sentence
    assert f"likely cause    {causes[0].sentence}" in str(report)


@pytest.mark.parametrize("model", MODELS)
def test_the_fitted_figures_are_the_planted_ones(model):
    make, loss = MODELS[model]
    params, args, grad = make()
    halved = fg.check(loss, _with(grad, b2=grad["b2"] / M), params, args).causes[0]
    assert halved.evidence["named"] == 1 / M and f"/ {M}" in halved.sentence
    assert halved.sentence.startswith(f"b2: analytic = numerical / {M} on all 6 entries" if "mlp" in model
                                      else f"b2: analytic = numerical / {M} on all 5 entries")
    odd = fg.check(loss, _with(grad, W1=1.37 * grad["W1"]), params, args).causes[0]
    assert odd.kind == "scale" and "named" not in odd.evidence
    assert abs(odd.evidence["factor"] - 1.37) <= 3 * odd.evidence["uncertainty"]


def test_a_missing_l2_term_is_fitted_with_its_lambda():
    params, args, grad = _mlp()
    python = fg.check(_mlp_l2_loss, grad, params, args)
    square_params, square_args, _ = _square()
    numba_ = fg.check(_square_loss, _square_grad(square_params, *square_args[:2], 0.0), square_params,
                      square_args)
    for report in (python, numba_):
        causes = {c.group: c for c in report.causes}
        assert set(causes) == {"W1", "W2"}, [c.sentence for c in report.causes]
        for cause in causes.values():
            assert cause.kind == "missing_term" and cause.evidence["term"] == "theta"
            assert abs(cause.evidence["coefficient"] - LAM) <= 3 * cause.evidence["uncertainty"]
            assert "an L2 term missing (lambda = 0.01)" in cause.sentence


@pytest.mark.parametrize("model", MODELS)
def test_a_failure_without_structure_is_said_to_fit_nothing(model):
    make, loss = MODELS[model]
    params, args, grad = make()
    rng = np.random.default_rng(0)
    noisy = _with(grad, W1=grad["W1"] + 0.05 * rng.standard_normal(grad["W1"].shape))
    report = fg.check(loss, noisy, params, args)
    assert [(c.group, c.kind) for c in report.causes] == [("W1", "none")]
    assert "no simple cause fits" in report.causes[0].sentence


def test_the_mlps_own_planted_bug_fits_no_simple_cause():
    problem = mlp.problem(6, 8, 5, m=M, seed=1)
    args = (problem.X, problem.Y)
    report = fg.check(mlp.loss_params, mlp.grad_buggy(problem.params, *args), problem.params, args)
    assert report.verdict == "fail" and {c.kind for c in report.causes} == {"none"}


@pytest.mark.parametrize("model", MODELS)
def test_no_cause_for_a_correct_gradient(model):
    make, loss = MODELS[model]
    params, args, grad = make()
    report = fg.check(loss, grad, params, args)
    assert report.verdict == "pass" and report.causes == []
    assert report.to_dict()["causes"] == [] and "likely cause" not in str(report)


def test_causes_travel_in_the_dict_as_strict_json():
    params, args, grad = _mlp()
    report = fg.check(mlp.loss_params, _with(grad, W2=-grad["W2"]), params, args)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["causes"] == [c.to_dict() for c in report.causes]
    assert data["causes"][0]["kind"] == "sign" and data["causes"][0]["group"] == "W2"


def test_a_sampled_check_fits_its_sample_only():
    params, args, grad = _mlp()
    report = fg.check(mlp.loss_params, {k: M * v for k, v in grad.items()}, params, args, sample=40,
                      seed=3)
    assert report.checked < report.size and report.verdict == "fail"
    (cause,) = report.causes
    assert cause.kind == "scale" and cause.evidence["named"] == M
    assert cause.evidence["entries"] == report.checked


def test_the_readme_example_runs_and_finds_its_cause(tmp_path, monkeypatch):
    """The Python block of the README's section on failing checks, run as a reader would."""
    import re
    from pathlib import Path

    pytest.importorskip("matplotlib").use("Agg")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## When a check fails", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    namespace: dict = {}
    exec(compile(block, "README: When a check fails", "exec"), namespace)
    assert namespace["report"].causes[0].group == "b2"
    assert (tmp_path / "docs" / "failing-check.png").stat().st_size > 0
