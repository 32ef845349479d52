"""Smoke test of ``fastgrad bench --quick``: it runs, and writes the JSON and Markdown it promises;
and the consistency of the bench's sparse logistic regression.

No timing is asserted: the figures of a quick run on a shared machine mean nothing; the
test only holds the command to its outputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.models import logistic

COMPARISONS = ("efficiency", "growth", "naive", "scipy", "logistic", "monitor", "startup",
               "memory", "derivatives", "torch", "opinfo")
#: Comparisons that need optional dependencies: skipped (with a line saying so) without them.
OPTIONAL = {"scipy": ("scipy",), "torch": ("torch",), "derivatives": ("scipy",),
            "opinfo": ("torch", "expecttest")}
STATUSES = {"met", "MISSED", "skipped", "n/a", ""}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    stem = tmp_path_factory.mktemp("bench") / "b"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "fastgrad", "bench", "--quick", "--plot",
                           "--output", str(stem)], capture_output=True, text=True, timeout=600, env=env,
                          check=False)
    return done, stem


def test_quick_bench_exits_0(quick_run):
    done, _ = quick_run
    assert done.returncode == 0, done.stderr[-3000:]


def test_quick_bench_writes_json_and_markdown(quick_run):
    _, stem = quick_run
    assert Path(f"{stem}.json").is_file()
    assert Path(f"{stem}.md").is_file()


def test_json_has_every_comparison(quick_run):
    _, stem = quick_run
    document = json.loads(Path(f"{stem}.json").read_text())
    assert set(COMPARISONS) <= set(document["comparisons"])
    for key in ("cpu", "cores", "date", "versions", "command"):
        assert key in document["machine"]
    assert {"numpy", "numba"} <= set(document["machine"]["versions"])
    assert document["targets"], "no target lines"
    for target in document["targets"]:
        assert target["status"] in STATUSES, target


def test_comparisons_ran_unless_a_dependency_is_missing(quick_run):
    _, stem = quick_run
    comparisons = json.loads(Path(f"{stem}.json").read_text())["comparisons"]
    for key in COMPARISONS:
        figures = comparisons[key]["figures"]
        assert "error" not in figures, figures.get("traceback")
        installed = all(importlib.util.find_spec(name) is not None for name in OPTIONAL.get(key, ()))
        assert ("skipped" in figures) == (not installed), (key, figures.get("skipped"))


def test_plot_is_saved_with_matplotlib_or_explained_without(quick_run):
    done, stem = quick_run
    png = stem.with_suffix(".png")
    if importlib.util.find_spec("matplotlib") is None:
        assert not png.exists()
        assert "--plot needs matplotlib" in done.stderr
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000  # four panels, not an empty figure


def test_markdown_table_has_a_header_row(quick_run):
    done, stem = quick_run
    for text in (Path(f"{stem}.md").read_text(), done.stdout):
        rows = [line for line in text.splitlines() if line.startswith("|")]
        assert rows[0] == "| comparison | result | target | status |"
        assert set(rows[1].replace("|", "")) == {"-"}
        assert len(rows) > len(COMPARISONS) + 2


def test_logistic_model_of_the_bench_is_consistent():
    """The bench's sparse logistic regression: the Numba and NumPy losses agree, and the
    analytic gradient passes a full check (small n, so that every coordinate is checked)."""
    problem = logistic.problem(m=300, n=2000, per_row=4, seed=3)
    compiled = logistic.loss(problem.theta, *problem.args)
    assert np.isclose(compiled, logistic.loss_numpy(problem.theta, *problem.args), rtol=1e-13)
    report = fg.check(logistic.loss, logistic.grad, problem.theta, problem.args)
    assert report.verdict == "pass", report
    inactive = np.setdiff1d(np.arange(problem.n), problem.args[4])
    assert np.all(logistic.grad(problem.theta, *problem.args)[inactive] == 0.0)
