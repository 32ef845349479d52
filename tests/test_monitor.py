"""fastgrad.Monitor (issue #3): schedule, rotation, theta untouched, on_fail, arguments, costs."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import fastgrad
from fastgrad import GradientCheckWarning, InputError, Monitor
from fastgrad.models import mlp
from fastgrad.plan import directional_relative_step

# W1 48 (k=6: 8 checks per cycle), b1 8 (k=5: does not divide), W2 24 (k=6: 4 checks),
# b2 3 (whole).  The counts are what the stratified rule gives for sample=20 (floor
# lowered to 20 // 4 = 5, the rest in proportion); the test reads them from the reports.
D, H, C, M = 6, 8, 3, 8
SAMPLE = 20


@pytest.fixture(scope="module")
def problem():
    return mlp.problem(d=D, h=H, c=C, m=M, seed=1)


def _grad(params, X, Y):
    return mlp.grad(params, X, Y)


def _checked(report) -> dict[str, np.ndarray]:
    """Per group, the local indices the report checked (its finite ``numerical`` entries)."""
    return {name: np.flatnonzero(np.isfinite(np.ravel(values)))
            for name, values in report.numerical.items()}


def _snapshot(params):
    return {k: (v.dtype, v.shape, v.tobytes()) for k, v in params.items()}


# ----------------------------------------------------------------------------- schedule


def test_schedule_every(problem):
    p = problem
    mon = Monitor(mlp.loss, _grad, every=3, sample=SAMPLE, directions=1, seed=0)
    results = [mon.step(p.params, args=(p.X, p.Y)) for _ in range(8)]
    on = [i for i, r in enumerate(results) if r is not None]
    assert on == [0, 3, 6]
    assert all(isinstance(results[i], fastgrad.Report) for i in on)
    assert mon.calls == 8
    assert len(mon.history) == 3
    assert [h["step"] for h in mon.history] == [0, 3, 6]
    assert all(results[i].passed for i in on)


def test_history_entries_and_seconds(problem):
    p = problem
    mon = Monitor(mlp.loss, _grad, every=2, sample=SAMPLE, directions=2, seed=0)
    assert mon.seconds == 0.0
    seen = []
    for _ in range(6):
        before = mon.seconds
        report = mon.step(p.params, args=(p.X, p.Y))
        if report is None:
            assert mon.seconds == before  # off schedule: nothing spent
        else:
            assert mon.seconds > before
        seen.append(mon.seconds)
    assert seen == sorted(seen)
    assert len(mon.history) == 3
    for entry in mon.history:
        assert {"step", "verdict", "relative_error", "checked", "evaluations", "seconds"} <= set(entry)
        assert entry["verdict"] == "pass"
        assert entry["checked"] == SAMPLE  # 6 + 5 + 6 + 3
        assert entry["evaluations"] >= 2 * SAMPLE + 2 * 2
        assert entry["seconds"] > 0.0
        assert math.isfinite(entry["relative_error"])
    assert math.isclose(mon.seconds, sum(h["seconds"] for h in mon.history), rel_tol=1e-9)


# ----------------------------------------------------------------------------- rotation


def test_rotation_checks_every_coordinate_once_per_cycle(problem):
    p = problem
    mon = Monitor(mlp.loss, _grad, every=1, sample=SAMPLE, directions=0, seed=123)
    sizes = {k: v.size for k, v in p.params.items()}
    checks = 16
    taken = [_checked(mon.step(p.params, args=(p.X, p.Y))) for _ in range(checks)]
    counts = {name: len(taken[0][name]) for name in sizes}
    assert sum(counts.values()) == SAMPLE
    assert counts == {"W1": 6, "b1": 5, "W2": 6, "b2": 3}
    for name, size in sizes.items():
        k = counts[name]
        assert all(len(t[name]) == k for t in taken)  # the same count every time
        cycle = math.ceil(size / k)
        # within one cycle of ceil(N/k) checks: every coordinate, and no repeat until the
        # rotation wraps (the last check of the cycle wraps when k does not divide N)
        first_cycle = np.concatenate([t[name] for t in taken[:cycle]])
        assert np.array_equal(np.unique(first_cycle), np.arange(size)), name
        full = size // k
        before_wrap = np.concatenate([t[name] for t in taken[:full]])
        assert np.unique(before_wrap).size == before_wrap.size == full * k, name
        # over lcm(N, k)/k checks each coordinate is checked exactly lcm/N times: an even rotation
        period = math.lcm(size, k) // k
        assert period <= checks
        for start in range(0, checks - period + 1, period):
            window = np.concatenate([t[name] for t in taken[start:start + period]])
            multiplicity = np.bincount(window, minlength=size)
            assert np.all(multiplicity == period * k // size), (name, start, multiplicity)
    # W1 (48 = 8·6) and W2 (24 = 4·6): exactly once per cycle, cycle after cycle
    for name, cycle in (("W1", 8), ("W2", 4)):
        for start in (0, cycle):
            window = np.concatenate([t[name] for t in taken[start:start + cycle]])
            assert np.array_equal(np.sort(window), np.arange(sizes[name]))
    # b2 (3 coordinates, below the floor) is checked whole every time
    assert all(np.array_equal(t["b2"], np.arange(3)) for t in taken)


def test_rotation_depends_on_the_seed_and_repeats_with_it(problem):
    p = problem

    def coordinates(seed):
        mon = Monitor(mlp.loss, _grad, every=1, sample=SAMPLE, directions=0, seed=seed)
        return [_checked(mon.step(p.params, args=(p.X, p.Y)))["W1"] for _ in range(2)]

    first, again, other = coordinates(5), coordinates(5), coordinates(6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_directions_repeat_with_the_seed_and_differ_between_checks(problem):
    p = problem

    def directional(seed):
        mon = Monitor(mlp.loss, _grad, every=1, sample=SAMPLE, directions=2, seed=seed)
        return [[d.analytic for d in mon.step(p.params, args=(p.X, p.Y)).directions]
                for _ in range(2)]

    first, again, other = directional(5), directional(5), directional(6)
    assert first == again  # the same directions, check by check
    assert first[0] != first[1]  # fresh directions at every check
    assert first != other


def test_theta_must_keep_its_structure(problem):
    p = problem
    mon = Monitor(mlp.loss, _grad, every=1, sample=SAMPLE, directions=0, seed=0)
    mon.step(p.params, args=(p.X, p.Y))
    renamed = {("w1" if k == "W1" else k): v for k, v in p.params.items()}
    with pytest.raises(InputError, match="structure"):
        mon.step(renamed, args=(p.X, p.Y))


# ----------------------------------------------------------------------------- theta untouched


def test_theta_is_never_modified(problem):
    p = problem
    params = {k: v.copy() for k, v in p.params.items()}
    before = _snapshot(params)
    mon = Monitor(mlp.loss, _grad, every=1, sample=SAMPLE, directions=2, seed=0,
                  on_fail=lambda report: None)
    for _ in range(3):
        mon.step(params, args=(p.X, p.Y))
    mon_bad = Monitor(mlp.loss, mlp.grad_buggy, every=1, sample=SAMPLE, directions=2, seed=0,
                      on_fail=lambda report: None)
    for _ in range(2):  # failing checks localise: more perturbations, still no write
        assert not mon_bad.step(params, args=(p.X, p.Y)).passed
    assert _snapshot(params) == before
    # a flat array theta too
    flat = p.theta
    copy = flat.copy()

    def flat_grad(t, X, Y):
        return mlp.flatten(mlp.grad(mlp.unflatten(t.copy(), D, H, C), X, Y))

    mon_flat = Monitor(mlp.loss, flat_grad, every=1, sample=SAMPLE, directions=2, seed=0)
    for _ in range(2):
        assert mon_flat.step(flat, args=(p.X, p.Y)).passed
    assert flat.tobytes() == copy.tobytes()


# ----------------------------------------------------------------------------- on_fail


def test_on_fail_warn(problem):
    p = problem
    mon = Monitor(mlp.loss, mlp.grad_buggy, every=1, sample=SAMPLE, directions=2, seed=0, on_fail="warn")
    with pytest.warns(GradientCheckWarning, match="gradient check failed at step 0"):
        report = mon.step(p.params, args=(p.X, p.Y))
    assert report is not None and not report.passed
    assert mon.history[-1]["verdict"] == "fail"
    assert mon.history[-1]["worst"] == report.worst[0].label  # the summary names the worst
    # a correct gradient does not warn
    good = Monitor(mlp.loss, _grad, every=1, sample=SAMPLE, directions=2, seed=0, on_fail="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert good.step(p.params, args=(p.X, p.Y)).passed


def test_on_fail_raise(problem):
    p = problem
    mon = Monitor(mlp.loss, mlp.grad_buggy, every=2, sample=SAMPLE, directions=2, seed=0, on_fail="raise")
    with pytest.raises(AssertionError, match="FAIL"):
        mon.step(p.params, args=(p.X, p.Y))
    assert mon.history[-1]["verdict"] == "fail"
    assert mon.step(p.params, args=(p.X, p.Y)) is None  # off schedule: no check, no raise


def test_on_fail_callable(problem):
    p = problem
    calls = []
    mon = Monitor(mlp.loss, mlp.grad_buggy, every=1, sample=SAMPLE, directions=2, seed=0,
                  on_fail=calls.append)
    reports = [mon.step(p.params, args=(p.X, p.Y)) for _ in range(2)]
    assert len(calls) == 2
    assert all(a is b for a, b in zip(calls, reports, strict=True))
    assert all(isinstance(r, fastgrad.Report) and r.verdict == "fail" for r in calls)
    good = Monitor(mlp.loss, _grad, every=1, sample=SAMPLE, directions=2, seed=0, on_fail=calls.append)
    good.step(p.params, args=(p.X, p.Y))
    assert len(calls) == 2  # not called on a pass


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("options", [
    {"every": 0}, {"every": -5}, {"every": 1.5}, {"every": "10"}, {"every": None},
    {"sample": 0}, {"sample": -1}, {"sample": 2.5}, {"sample": "64"},
    {"on_fail": "ignore"}, {"on_fail": 3}, {"on_fail": None},
])
def test_bad_arguments_raise_input_error(options):
    with pytest.raises(InputError):
        Monitor(mlp.loss, _grad, **options)


@pytest.mark.parametrize("directions", [-1, 2.5, "x"])
def test_bad_directions_raise_input_error_at_construction(directions):
    with pytest.raises(InputError):
        Monitor(mlp.loss, _grad, directions=directions)


# ----------------------------------------------------------------------------- the example


def test_example_training_script_runs():
    """examples/train_mlp.py: SGD with the monitor every 100 steps (2 checks in 150 steps)."""
    script = Path(__file__).resolve().parents[1] / "examples" / "train_mlp.py"
    done = subprocess.run([sys.executable, str(script), "--steps", "150"], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "final loss" in done.stdout
    assert "monitor: 2 checks" in done.stdout and "verdicts pass 2" in done.stdout
    off = subprocess.run([sys.executable, str(script), "--steps", "20", "--no-monitor"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert off.returncode == 0 and "monitor: off" in off.stdout, off.stderr


def test_later_checks_start_the_directions_at_the_settled_step(problem):
    """The first check tests each direction at u^(1/5), refines it and tests it again at the
    balanced step; later checks start at that step and save those evaluations, and the
    planted bug still fails every check."""
    args = (problem.X, problem.Y)
    mon = Monitor(mlp.loss, _grad, every=1, sample=SAMPLE, directions=2, seed=0)
    reports = [mon.step(problem.params, args) for _ in range(3)]
    assert all(report.passed for report in reports)
    first_steps = [result.step for result in reports[0].directions]
    assert max(first_steps) < directional_relative_step(np.float64)  # re-tested
    assert all(result.step <= min(first_steps) for result in reports[2].directions)
    assert reports[2].evaluations < reports[0].evaluations
    buggy = Monitor(mlp.loss, mlp.grad_buggy, every=1, sample=SAMPLE, directions=2, seed=0,
                    on_fail=lambda report: None)
    assert [buggy.step(problem.params, args).verdict for _ in range(3)] == ["fail"] * 3
