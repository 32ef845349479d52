"""The command line: ``python -m fastgrad``, the ``fastgrad`` console script, and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest


def _console_script() -> Path:
    """The ``fastgrad`` script installed beside this interpreter."""
    candidates = [Path(sys.executable).parent / "fastgrad",
                  Path(sysconfig.get_path("scripts")) / "fastgrad"]
    for path in candidates:
        if path.exists():
            return path
    pytest.fail(f"no fastgrad console script in {[str(c) for c in candidates]}")


def _run(command, timeout=120):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_python_m_fastgrad_help():
    result = _run([sys.executable, "-m", "fastgrad", "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: fastgrad")
    for command in ("demo", "check", "bench"):
        assert command in result.stdout


def test_console_script_help_and_version():
    script = _console_script()
    assert os.access(script, os.X_OK)
    result = _run([str(script), "--help"])
    assert result.returncode == 0, result.stderr
    assert "usage: fastgrad" in result.stdout and "demo" in result.stdout
    version = _run([str(script), "--version"])
    assert version.returncode == 0 and version.stdout.startswith("fastgrad ")


def test_no_command_is_a_usage_error():
    result = _run([sys.executable, "-m", "fastgrad"])
    assert result.returncode == 2
    assert "usage: fastgrad" in result.stderr


def test_demo_passes_the_correct_gradient_and_fails_the_bug():
    result = _run([str(_console_script()), "demo"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "1. The correct backprop" in out and "2. The same backprop" in out
    first, second = out.split("2. The same backprop")
    assert "PASS" in first and "FAIL" not in first
    assert "FAIL" in second
    assert "As expected: correct -> pass, planted bug -> fail" in out
