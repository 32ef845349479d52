"""The README's code and the example model file run, and say what the README says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fastgrad.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "least_squares.py"


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)


def test_readme_python_blocks_run(capsys):
    """Block 2 is complete; block 1 (the API tour) and block 3 (the Monitor) run in its
    namespace with the names they leave to the reader."""
    pytest.importorskip("scipy")  # Numba's @ in block 2 needs SciPy's BLAS
    tour, example, monitor = readme_blocks()[:3]
    namespace: dict = {}
    exec(compile(example, "README block 2", "exec"), namespace)  # noqa: S102 -- the README is ours
    assert "PASS" in capsys.readouterr().out
    namespace.update(theta=np.random.default_rng(1).standard_normal(50))
    namespace["params"] = namespace["theta"]
    theta_before = namespace["theta"].copy()
    exec(compile(tour, "README block 1", "exec"), namespace)  # noqa: S102 -- the README is ours
    assert namespace["report"].passed
    assert namespace["g_num"].shape == (50,)
    np.testing.assert_array_equal(namespace["theta"], theta_before)
    namespace.update(steps=201, X_batch=namespace["X"], y_batch=namespace["y"])
    exec(compile(monitor, "README block 3", "exec"), namespace)  # noqa: S102 -- the README is ours
    assert len(namespace["mon"].history) == 3  # steps 0, 100 and 200
    assert namespace["mon"].seconds > 0


def test_example_model_file_passes(capsys):
    assert main(["check", str(EXAMPLE), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "pass"
    assert report["checked"] == 200


def test_example_model_file_with_a_bug_fails(tmp_path, capsys):
    """The same file with the gradient scaled by 1 + 1e-4 on every coordinate."""
    text = EXAMPLE.read_text()
    assert "return X.T @ (X @ theta - y)" in text
    buggy = tmp_path / "buggy.py"
    buggy.write_text(text.replace("return X.T @ (X @ theta - y)",
                                  "return 1.0001 * (X.T @ (X @ theta - y))"))
    assert main(["check", str(buggy), "--sample", "20", "--seed", "0", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"] == "fail"
