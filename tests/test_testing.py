"""The pytest plugin fastgrad.testing: its assert helpers, --fastgrad-strict and
--fastgrad-report, run in inner pytest sessions (pytester), and its entry point."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import testing

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]

#: The inner tests: a quadratic's gradient right and wrong (one element off by a relative
#: 1e-3), and a spike narrower than the step, whose correct gradient gets "warn"
#: (tests/test_hard_verdicts.py).
INNER = '''
import numpy as np
from fastgrad.testing import assert_gradient
from test_hard_verdicts import THETA as SPIKE_AT, _spike_args, _spike_grad, _spike_loss

THETA = np.array([0.3, -0.7, 1.1, 0.2])

def loss(t):
    return float(0.5 * np.sum(t ** 2) + np.sum(np.sin(t)))

def grad(t):
    return t + np.cos(t)

def wrong(t):
    g = grad(t)
    g[2] *= 1.001
    return g

def test_right():
    assert_gradient(loss, grad, THETA)

def test_wrong():
    assert_gradient(loss, wrong, THETA)

def test_warned():
    assert_gradient(_spike_loss, _spike_grad, SPIKE_AT, _spike_args(0.0), engine="python")
'''


def plugin_args() -> list[str]:
    """``-p fastgrad.testing`` unless the entry point already loads the plugin (registering
    it twice under two names is an error)."""
    installed = any(entry.value == "fastgrad.testing"
                    for entry in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "fastgrad.testing"]


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=INNER)
    pytester.syspathinsert(ROOT / "tests")
    return pytester.runpytest(*plugin_args(), "-p", "no:cacheprovider", *args)


def test_a_failure_shows_the_report_and_no_fastgrad_frames(pytester):
    result = run_inner(pytester, "--tb=long")
    result.assert_outcomes(passed=2, failed=1)
    output = result.stdout.str()
    assert "GradientMismatch" in output
    assert "FAIL" in output and "theta[2]" in output  # the report, naming the wrong element
    assert "assert_gradient(loss, wrong, THETA)" in output  # the user's line is shown
    frames = [line for line in result.stdout.lines if line.endswith(("Error", "Mismatch"))
              or ".py:" in line]
    assert not [line for line in frames if "fastgrad/" in line or "fastgrad\\" in line], output


def test_strict_fails_a_warn(pytester):
    result = run_inner(pytester, "--fastgrad-strict")
    result.assert_outcomes(passed=1, failed=2)
    assert "test_warned" in "\n".join(line for line in result.stdout.lines if line.startswith("FAILED"))


def test_report_dir_holds_each_checked_report_as_json(pytester, tmp_path):
    directory = tmp_path / "reports"
    result = run_inner(pytester, f"--fastgrad-report={directory}")
    result.assert_outcomes(passed=2, failed=1)
    saved = {path.name: json.loads(path.read_text()) for path in directory.glob("*.json")}
    assert set(saved) == {f"test_inner.py__test_{name}.json" for name in ("right", "wrong", "warned")}
    assert saved["test_inner.py__test_wrong.json"]["verdict"] == "fail"
    assert saved["test_inner.py__test_right.json"]["verdict"] == "pass"
    assert saved["test_inner.py__test_warned.json"]["verdict"] == "warn"


def test_without_the_options_nothing_is_saved_and_warn_passes(pytester):
    result = run_inner(pytester)
    result.assert_outcomes(passed=2, failed=1)
    assert not list(pytester.path.rglob("*.json"))


def test_a_test_with_two_reports_saves_both(pytester, tmp_path):
    pytester.makepyfile(test_two='''
import numpy as np
import pytest
from fastgrad.testing import assert_gradient

@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_twice(scale):
    theta = np.array([0.5, -1.5])
    for power in (2, 4):
        assert_gradient(lambda t: float(scale * np.sum(t ** power)),
                        lambda t: scale * power * t ** (power - 1), theta)
''')
    result = pytester.runpytest(*plugin_args(), "-p", "no:cacheprovider",
                                f"--fastgrad-report={tmp_path}")
    result.assert_outcomes(passed=2)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "test_two.py__test_twice_1.0_-2.json", "test_two.py__test_twice_1.0_.json",
        "test_two.py__test_twice_2.0_-2.json", "test_two.py__test_twice_2.0_.json"]


def test_helpers_outside_pytest_sessions_use_their_own_strict():
    theta = np.array([0.3, -0.7])
    report = testing.assert_gradient(lambda t: float(np.sum(t ** 3)), lambda t: 3 * t ** 2, theta,
                                     strict=True)
    assert report.verdict == "pass"
    with pytest.raises(fg.GradientMismatch) as raised:
        testing.assert_gradient(lambda t: float(np.sum(t ** 3)), lambda t: 3 * t ** 2 + [0, 1e-3],
                                theta)
    assert raised.value.report.verdict == "fail" and "theta[1]" in str(raised.value)
    with pytest.raises(fg.InputError):
        testing.assert_gradient(lambda t: float(np.sum(t ** 3)), lambda t: 3 * t ** 2, theta,
                                strict="yes")


def _fun(x):
    return np.array([x[0] * x[1], np.sin(x[0]), x[1] ** 3])


def _jacobian(x):
    return np.array([[x[1], x[0]], [np.cos(x[0]), 0.0], [0.0, 3 * x[1] ** 2]])


def test_assert_vjp_jvp_and_jacobian_pass_right_and_raise_on_wrong():
    x = np.array([0.4, -1.2])
    wrong = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]) * 1e-3
    testing.assert_vjp(_fun, lambda x, u: _jacobian(x).T @ u, x, seed=1)
    testing.assert_jvp(_fun, lambda x, v: _jacobian(x) @ v, x, seed=1)
    testing.assert_jacobian(_fun, _jacobian, x)
    with pytest.raises(fg.GradientMismatch) as vjp:
        testing.assert_vjp(_fun, lambda x, u: (_jacobian(x) * (1 + wrong)).T @ u, x, seed=1)
    assert vjp.value.report.kind == "vjp"
    with pytest.raises(fg.GradientMismatch) as jvp:
        testing.assert_jvp(_fun, lambda x, v: (_jacobian(x) * (1 + wrong)) @ v, x, seed=1)
    assert jvp.value.report.kind == "jvp"
    with pytest.raises(fg.GradientMismatch) as jacobian:
        testing.assert_jacobian(_fun, lambda x: _jacobian(x) * (1 + wrong), x)
    assert jacobian.value.report.kind == "jacobian"


def test_assert_torch_function_wraps_fastgrad_torch():
    pytest.importorskip("fastgrad.torch", reason="fastgrad.torch is not in this build")
    torch = pytest.importorskip("torch")
    x = torch.tensor([0.3, -1.1, 2.0], dtype=torch.float64, requires_grad=True)
    assert testing.assert_torch_function(torch.sin, x).verdict == "pass"


def test_the_plugin_module_imports_only_the_standard_library_at_import_time():
    """pytest imports the plugin in every session: its own top-level imports are the standard
    library's (numpy, numba and the checks come when a helper runs; the package fastgrad
    itself is imported first, as for any submodule)."""
    tree = ast.parse((ROOT / "fastgrad" / "testing.py").read_text())
    imported = set()
    for node in tree.body:  # module level only; `if TYPE_CHECKING:` bodies are not run
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." if node.level else (node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    code = "import sys, fastgrad.testing; print([m for m in ('jax', 'torch') if m in sys.modules])"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                           check=True)
    assert shown.stdout.strip() == "[]", shown.stdout


def test_report_file_names_keep_the_node_id_readable():
    assert testing.report_file_name("tests/test_a.py::test_b[1-x]") == "tests_test_a.py__test_b_1-x_"


def test_a_relative_report_dir_is_taken_from_where_pytest_ran(pytester):
    pytester.makepyfile(test_moves='''
import os
import numpy as np
from fastgrad.testing import assert_gradient

def test_moves(tmp_path):
    os.chdir(tmp_path)  # a test that changes directory does not move the reports
    assert_gradient(lambda t: float(np.sum(t ** 2)), lambda t: 2 * t, np.array([0.5, 1.5]))
''')
    result = pytester.runpytest(*plugin_args(), "-p", "no:cacheprovider", "--fastgrad-report=reports")
    result.assert_outcomes(passed=1)
    assert [p.name for p in (pytester.path / "reports").iterdir()] == ["test_moves.py__test_moves.json"]


def test_the_summary_line_of_a_failure_is_the_verdict():
    """``GradientMismatch``'s message starts with the report's verdict line, so that pytest's
    one-line summary (``FAILED ... - GradientMismatch: FAIL ...``) says what failed."""
    import numpy as np

    import fastgrad as fg

    theta = np.array([0.3, -0.7])
    with pytest.raises(fg.GradientMismatch) as caught:
        fg.assert_gradient(lambda t: float(np.sum(t ** 2)), 3.0 * theta, theta)
    assert str(caught.value).splitlines()[0].startswith("FAIL")
