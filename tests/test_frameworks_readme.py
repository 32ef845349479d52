"""The README's framework sections run as written: the PyTorch block (check_function,
check_module, a Monitor in a training loop), the JAX block (a custom_vjp rule), and the pytest
plugin's three-line test, run by pytest itself with the plugin and both of its options."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from test_testing import plugin_args

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

pytest_plugins = ["pytester"]


def _block(section: str) -> str:
    match = re.search(rf"\n## {re.escape(section)}\n.*?```python\n(.*?)```", README, flags=re.DOTALL)
    assert match, f"README has no python block under '## {section}'"
    return match.group(1)


def test_the_pytorch_section_runs():
    pytest.importorskip("torch")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(_block("PyTorch"), "README PyTorch block", "exec"), {})
    assert "PASS" in printed.getvalue()


def test_the_jax_section_runs():
    pytest.importorskip("jax")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(_block("JAX"), "README JAX block", "exec"), {})
    assert "PASS" in printed.getvalue()


def test_the_plugins_example_passes_and_fails_with_the_report(pytester, tmp_path):
    example = _block("pytest plugin")
    model = '''
import numpy as np
rng = np.random.default_rng(0)
X, y = rng.standard_normal((40, 3)), (rng.random(40) < 0.5).astype(float)
theta = rng.standard_normal(3)
def loss(t, X, y):
    z = X @ t
    return float(np.mean(np.logaddexp(0.0, z) - y * z))
def grad(t, X, y):
    return X.T @ (1.0 / (1.0 + np.exp(-(X @ t))) - y) / len(y) * SCALE
'''
    pytester.makepyfile(test_right=model.replace("SCALE", "1.0") + example,
                        test_wrong=model.replace("SCALE", "1.001") + example)
    reports = tmp_path / "reports"
    result = pytester.runpytest(*plugin_args(), "-p", "no:cacheprovider", "--fastgrad-report", str(reports))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*GradientMismatch*", "*FAIL*"])
    saved = sorted(path.name for path in reports.iterdir())
    assert len(saved) == 2
    assert {json.loads((reports / name).read_text())["verdict"] for name in saved} == {"pass", "fail"}
