"""The README's code and the example model file run, and say what the README says."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from readme_blocks import run_readme

from fastgrad.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "least_squares.py"


def test_readme_python_blocks_run():
    """In this venv (whatever it has installed): see tests/readme_blocks.py."""
    run_readme(ROOT / "README.md")


@pytest.mark.slow
def test_readme_blocks_run_after_the_readmes_own_install_command(tmp_path):
    """In a venv made by the README's demo command alone (``pip install .``: no SciPy, no
    threadpoolctl), the README's Python blocks run and say what the README says."""
    command = re.search(r"```bash\n(python3 -m venv .venv && .venv/bin/pip install -q \.)"
                        r" && .venv/bin/fastgrad demo\n```", (ROOT / "README.md").read_text())
    assert command, "the README's install command changed: update this test"
    venv = tmp_path / ".venv"
    install = command.group(1).replace(".venv", str(venv)).replace("install -q .",
                                                                   f"install -q {ROOT}")
    subprocess.run(install, shell=True, check=True, cwd=tmp_path, timeout=900)
    python = venv / "bin" / "python"
    found = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('scipy'))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert found == "None"  # the test means something only without SciPy
    ran = subprocess.run([python, ROOT / "tests" / "readme_blocks.py", ROOT / "README.md"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "README blocks ran" in ran.stdout
    bench = subprocess.run([venv / "bin" / "fastgrad", "bench", "--quick"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=60)
    assert bench.returncode == 2  # the harness lives in the checkout, not in the package
    assert "runs from a source checkout" in bench.stderr


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
