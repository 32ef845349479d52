"""The seams of issue 12: one registry of methods, an executor interface with self-contained
chunks, the verdict apart from the report, objects built whole, and a light ``import``."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import cli
from fastgrad._validation import method as method_named
from fastgrad.engine import CallingThread, ThreadPool, make_evaluator
from fastgrad.methods import METHODS, CentralMethod, finite_differences
from fastgrad.parameters import ParameterLayout

EPS64 = float(np.finfo(np.float64).eps)
THETA = np.linspace(-1.0, 1.5, 9)


def sine(theta, scale=1.0):
    """A module-level loss: picklable by reference."""
    return scale * np.sum(np.sin(theta) + 0.1 * theta ** 3)  # complex-safe


def sine_grad(theta, scale=1.0):
    return scale * (np.cos(theta) + 0.3 * theta ** 2)


# ------------------------------------------------------------------------- methods
def test_every_entry_point_reads_the_one_registry():
    commands = next(a for a in cli.build_parser()._actions if a.dest == "command")
    method = next(a for a in commands.choices["check"]._actions if a.dest == "method")
    assert tuple(method.choices) == tuple(METHODS)
    assert finite_differences() == tuple(n for n in METHODS if not METHODS[n].complex)
    for name in METHODS:
        assert fg.check(sine, sine_grad, THETA, method=name).method == name
        np.testing.assert_allclose(fg.numerical_gradient(sine, THETA, method=name),
                                   sine_grad(THETA), rtol=1e-6)
    with pytest.raises(fg.InputError, match="method must be one of"):
        method_named("backward")


def test_a_new_method_is_one_object_in_the_registry(monkeypatch):
    """A central difference with h0 = u^(1/4), registered under a new name: check,
    numerical_gradient and step_scan take it with nothing else changed."""
    wide = CentralMethod("central_quarter", (1.0, -1.0), (2.0, -2.0), 0.25)
    monkeypatch.setitem(METHODS, wide.name, wide)
    report = fg.check(sine, sine_grad, THETA, method="central_quarter")
    assert report.passed and report.method == "central_quarter"
    assert report.relative_step == pytest.approx(EPS64 ** 0.25, rel=1e-12)
    wrong = sine_grad(THETA)
    wrong[4] *= 1.001
    assert fg.check(sine, wrong, THETA, method="central_quarter").worst_label == "theta[4]"
    np.testing.assert_allclose(fg.numerical_gradient(sine, THETA, method="central_quarter"),
                               sine_grad(THETA), rtol=1e-6)
    scan = fg.step_scan(sine, THETA, [0, 3], method="central_quarter", steps=[1e-4, 1e-3])
    assert scan.method == "central_quarter" and scan.errors.shape == (2, 2)


# ------------------------------------------------------------------------- executors
def _batch(theta: np.ndarray):
    coords = np.arange(theta.size, dtype=np.int64)
    values = theta[:, None] + np.array([[1e-3, -1e-3]])
    return coords, values


@pytest.mark.parametrize("engine", ["python", "auto"])
def test_executors_return_the_same_chunks_bit_for_bit(engine):
    """The calling thread and a pool of threads, with 1-row and 3-row chunks: the same
    ``out``, every chunk counted, and the progress totals equal to the batch."""
    from fastgrad.models import mlp

    problem = mlp.problem(3, 4, 2, m=12)
    theta, args = problem.theta, (problem.X, problem.Y)
    layout, flat = ParameterLayout.from_theta(theta)
    evaluator = make_evaluator(mlp.loss, flat, args, layout, engine)
    coords, values = _batch(flat)
    results = []
    for executor in (CallingThread(), ThreadPool(2)):
        for rows in (1, 3):
            told = []
            batch = executor.run(evaluator, coords, values, rows_per_chunk=rows,
                                 progress=lambda c, e, told=told: told.append((c, e)))
            assert batch.failure is None
            assert batch.chunks == -(-coords.size // rows)
            assert sum(c for c, _ in told) == coords.size
            assert sum(e for _, e in told) == values.size
            results.append(batch.out)
    for out in results[1:]:
        np.testing.assert_array_equal(out, results[0])


def test_a_failure_in_a_chunk_carries_its_row_and_point():
    def loss(theta):
        if theta[5] > 1.0 + 5e-4:
            raise ValueError("planted")
        return sine(theta)

    theta = np.ones(9)
    layout, flat = ParameterLayout.from_theta(theta)
    evaluator = make_evaluator(loss, flat, (), layout)
    coords, values = _batch(flat)
    for executor in (CallingThread(), ThreadPool(2)):
        batch = executor.run(evaluator, coords, values, rows_per_chunk=2)
        assert (batch.failure.row, batch.failure.point) == (5, 0)
        assert isinstance(batch.failure.error, ValueError)
        assert np.isnan(batch.out[5, 0])


def test_a_python_evaluator_pickles_and_evaluates_alike_after():
    """What a process pool would receive once per worker: loss, args and θ."""
    layout, flat = ParameterLayout.from_theta({"a": THETA[:4], "b": THETA[4:]})
    evaluator = make_evaluator(sine, flat, (2.0,), layout)
    coords, values = _batch(flat)
    here = CallingThread().run(evaluator, coords, values, rows_per_chunk=3).out
    there = CallingThread().run(pickle.loads(pickle.dumps(evaluator)), coords, values,
                                rows_per_chunk=3).out
    np.testing.assert_array_equal(there, here)


def test_the_report_names_its_executor_and_chunks():
    from fastgrad.models import mlp

    problem = mlp.problem(3, 4, 2, m=12)
    args = (problem.X, problem.Y)
    grad = mlp.flatten(mlp.grad(problem.params, *args))
    compiled = fg.check(mlp.loss, grad, problem.theta, args, workers=2)
    assert (compiled.executor, compiled.workers) == ("threads", 2)
    python = fg.check(mlp.loss_numpy, grad, problem.theta, args)
    assert (python.executor, python.workers) == ("serial", 1)
    for report in (compiled, python):
        assert report.chunks >= 1
        assert set(report.timings) == {"noise", "coordinates", "directions", "batches"}
        assert all(seconds >= 0.0 for seconds in report.timings.values())
        json.dumps(report.to_dict(), allow_nan=False)


# ------------------------------------------------------------------------- built whole
def test_jitter_builds_a_new_report_and_leaves_the_first_alone():
    from fastgrad import report as report_module

    first = fg.check(sine, sine_grad, THETA)
    nearby = fg.check(sine, lambda t: 2.0 * sine_grad(t), THETA)
    notes = list(first.notes)
    combined = report_module.with_jittered(first, nearby, 1e-3)
    assert combined is not first and combined.verdict == "fail"
    assert combined.jittered is nearby
    assert (first.verdict, first.jittered, first.notes) == ("pass", None, notes)


def test_the_verdict_module_holds_the_rule():
    from fastgrad import verdict

    assert verdict.worse("pass", "warn") == "warn" and verdict.worse("fail", "warn") == "fail"
    report = fg.check(sine, sine_grad, THETA)
    assert dataclasses.is_dataclass(report)


# ------------------------------------------------------------------------- import
def test_import_fastgrad_loads_neither_the_bench_nor_matplotlib():
    """(SciPy is imported by Numba itself when installed.)"""
    code = ("import sys, fastgrad; "
            "print([m for m in ('fastgrad.bench', 'fastgrad_bench', 'matplotlib', "
            "'fastgrad.models', 'hypothesis') if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
