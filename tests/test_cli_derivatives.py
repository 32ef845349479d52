"""``fastgrad check FILE`` runs every check the file defines: Jacobians, Hessians, derivative
products and, with --taylor, the Taylor test; one report each, the exit status of the worst."""

from __future__ import annotations

import json
import textwrap

import pytest

import fastgrad as fg
from fastgrad.cli import FAILED, PASSED, USAGE, main

RESIDUAL = """
import numpy as np
x = np.linspace(-1.0, 1.0, 12)
args = (0.3,)
def fun(x, c):
    return 2 * x - np.r_[x[1:], 0.0] - np.r_[0.0, x[:-1]] + c * x ** 3
def jac(x, c):
    J = np.diag(2 + 3 * c * x ** 2) - np.eye(x.size, k=1) - np.eye(x.size, k=-1)
    {bug}
    return J
"""

QUADRATIC = """
import numpy as np
A = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.5]])
theta = np.array([0.3, -0.2, 0.7])
def loss(t):
    return 0.5 * t @ A @ t + np.sum(np.cos(t))
def grad(t):
    return A @ t - np.sin(t)
def hess(t):
    H = A - np.diag(np.cos(t))
    {bug}
    return H
"""


def _model(tmp_path, source: str, bug: str = "pass"):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(source).replace("{bug}", bug))
    return str(path)


def test_a_jacobian_file_is_checked(tmp_path, capsys):
    assert main(["check", _model(tmp_path, RESIDUAL)]) == PASSED
    out = capsys.readouterr().out
    assert out.startswith("jacobian check: PASS")
    assert main(["check", _model(tmp_path, RESIDUAL, "J[3, 4] *= 1.001")]) == FAILED
    assert "out[3] / theta[4]" in capsys.readouterr().out


def test_every_check_a_file_defines_runs_and_the_worst_sets_the_status(tmp_path, capsys):
    good = _model(tmp_path, QUADRATIC)
    assert main(["check", good]) == PASSED
    out = capsys.readouterr().out
    assert "== gradient ==" in out and "== hessian ==" in out
    wrong = _model(tmp_path, QUADRATIC, "H[0, 1] += 0.01")
    assert main(["check", wrong]) == FAILED
    capsys.readouterr()
    assert main(["check", "--json", wrong]) == FAILED
    data = json.loads(capsys.readouterr().out)
    assert [(c["check"], c["verdict"]) for c in data["checks"]] == [("gradient", "pass"), ("hessian", "fail")]


def test_a_file_without_a_pair_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "model.py"
    path.write_text("import numpy as np\nx = np.ones(3)\ndef fun(x):\n    return x\n")
    assert main(["check", str(path)]) == USAGE
    assert "must define theta (or x)" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(fg, "taylor_test"), reason="the Taylor test is not built yet")
def test_taylor_runs_with_the_flag(tmp_path, capsys):
    assert main(["check", "--taylor", _model(tmp_path, QUADRATIC)]) == PASSED
    assert "== taylor ==" in capsys.readouterr().out
