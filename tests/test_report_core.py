"""Every check returns a report with the same core (issue 14, item 1): kind, verdict, passed,
evaluations, seconds, worst entries with their difference and allowed error, seed, notes, str(),
a strict-JSON to_dict() and a well-formed notebook view; a failing check of each kind says so
through all of them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from scipy.optimize import rosen_der, rosen_hess, rosen_hess_prod

import fastgrad as fg
from fastgrad.notebook import COLOURS

RNG = np.random.default_rng(5)
A = RNG.standard_normal((4, 3))
X = RNG.standard_normal(3)
WRONG = A.copy()
WRONG[2, 1] *= 1.1  # one entry off by 10 %


def fun(x):
    return np.tanh(A @ x)


def jacobian(matrix):
    def jac(x):
        return (1.0 - np.tanh(A @ x) ** 2)[:, None] * matrix
    return jac


def vjp(matrix):
    return lambda x, u: jacobian(matrix)(x).T @ u


def jvp(matrix):
    return lambda x, v: jacobian(matrix)(x) @ v


def loss(x):
    return float(np.sum(fun(x)))


def grad(matrix):
    return lambda x: jacobian(matrix)(x).sum(axis=0)


T = np.array([1.2, 0.8, -0.4, 1.1])
BROKEN_HESS = rosen_hess(T).copy()
BROKEN_HESS[1, 1] += 3.0

CHECKS = {
    "gradient": lambda m: fg.check(loss, grad(m), X, seed=1),
    "vjp": lambda m: fg.check_vjp(fun, vjp(m), X, seed=1),
    "jvp": lambda m: fg.check_jvp(fun, jvp(m), X, seed=1),
    "jacobian": lambda m: fg.check_jacobian(fun, jacobian(m), X, seed=1),
    "hessian": lambda m: fg.check_hessian(rosen_der, rosen_hess(T) if m is A else BROKEN_HESS, T,
                                          seed=1),
    "hvp": lambda m: fg.check_hvp(rosen_der, rosen_hess_prod if m is A
                                  else (lambda t, v: BROKEN_HESS @ v), T, seed=1),
    "taylor": lambda m: fg.taylor_test(loss, grad(m), X, seed=1),
}


@pytest.mark.parametrize("kind", CHECKS)
@pytest.mark.parametrize("correct", [True, False], ids=["correct", "wrong"])
def test_every_check_has_the_same_core(kind, correct):
    report = CHECKS[kind](A if correct else WRONG)
    assert isinstance(report, fg.CheckReport)
    assert report.kind == kind
    assert report.verdict == ("pass" if correct else "fail")
    assert report.passed is correct
    assert isinstance(report.evaluations, int) and report.evaluations > 0
    assert report.seconds > 0 and isinstance(report.notes, list)
    # the seed of what was drawn; a full gradient check draws nothing
    assert report.seed == (None if kind == "gradient" else 1)
    assert report.worst, "the worst entries are listed"
    for entry in report.worst:
        assert entry.score == pytest.approx(abs(entry.difference) / entry.allowed, rel=1e-9)
    assert (max(e.score for e in report.worst) > 1) is (not correct)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert {"kind", "verdict", "passed", "evaluations", "seconds", "worst", "seed", "notes",
            "non_finite"} <= data.keys()
    assert data["kind"] == kind and data["passed"] is correct
    assert {"label", "difference", "allowed", "score"} <= data["worst"][0].keys()
    assert report.verdict.upper() in str(report)


@pytest.mark.parametrize("kind", CHECKS)
def test_every_report_renders_as_well_formed_html_with_its_verdict(kind):
    report = CHECKS[kind](WRONG)
    root = ElementTree.fromstring(report._repr_html_())  # raises unless well-formed
    text = " ".join("".join(root.itertext()).split())
    assert text.startswith("FAIL")
    assert COLOURS["fail"] in root.find("div").get("style")


@pytest.mark.parametrize("matrix", [A, WRONG], ids=["correct", "wrong"])
def test_the_taylor_table_marks_its_fitted_rows_in_the_verdicts_colour(matrix):
    report = fg.taylor_test(loss, grad(matrix), X, seed=1)
    root = ElementTree.fromstring(report._repr_html_())
    rows = [row for row in root.iter("tr") if row.find("td") is not None]
    assert len(rows) == len(report.table)
    for row, entry in zip(rows, report.table, strict=True):
        assert (COLOURS[report.verdict] in row.get("style", "")) is entry.fitted
    assert sum(entry.fitted for entry in report.table) >= 3
