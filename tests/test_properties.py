"""Properties that hold for every theta, loss and option (issue 10, item 21).

Random theta structures (0-d to 3-d, strided, negative strides, Fortran order, read-only,
float32/float64, dicts of 1-6 groups) with a NumPy loss and a Numba loss of known gradient
(tests/strategies.py), and every option of check, numerical_gradient, plan_sample, step_scan
and Monitor. Properties:

* a correct gradient passes; a relative 1e-2 error planted in one checked coordinate fails,
  and the report names that coordinate and no other;
* theta, grad and args are bit-identical afterwards, whatever happened;
* ``report.to_dict()`` is strict JSON (``json.dumps(..., allow_nan=False)``);
* bad input is an InputError before the first loss evaluation;
* a fault at any evaluation (raise, NaN, inf, wrong type) is a LossError; KeyboardInterrupt
  reaches the caller and leaves no worker thread behind; a failing progress callback stops
  the check;
* four checks on threads at once give bit for bit what they give one after another, and leave
  the BLAS thread count as they found it;
* the verdict is the same for f and for 1e±200·f.

Run with CI=1 for the fixed profile of tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading

import numpy as np
import pytest
import threadpoolctl
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import (
    SEEDS,
    GroupSpec,
    Problem,
    ProgressRecord,
    ThetaSpec,
    check_options,
    counted,
    flat_values,
    problems,
    theta_specs,
)

import fastgrad as fg

U64 = float(np.finfo(np.float64).eps)


# ----------------------------------------------------------------------------- helpers
def snapshot(*objects):
    """Bytes, dtype, shape, strides and writeability of every array in ``objects``."""
    out = []
    for obj in objects:
        if isinstance(obj, dict):
            out.append({k: snapshot(v) for k, v in obj.items()})
        elif isinstance(obj, (tuple, list)):
            out.append([snapshot(v) for v in obj])
        elif isinstance(obj, np.ndarray):
            out.append((obj.dtype.str, obj.shape, obj.strides, obj.tobytes(), obj.flags.writeable))
        else:
            out.append(repr(obj))
    return out


def strict_json(report) -> str:
    return json.dumps(report.to_dict(), allow_nan=False)


def failing_labels(report) -> set[str]:
    """The coordinates a report blames: failing rows, and those a localisation named."""
    named = {c.label for c in report.worst if c.status == "fail"}
    return named | set((report.localisation or {}).get("coordinates", []))


def raised(expected, call):
    """The exception of type ``expected`` that ``call()`` raises; a failure naming what it
    returned instead."""
    try:
        result = call()
    except expected as error:
        return error
    pytest.fail(f"no {expected.__name__}; it returned:\n{result}")


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fastgrad-") and t.is_alive()]


def caught_by_directions(report, problem: Problem, theta, bug: int) -> bool:
    """True when the planted error is at least 1e4 times what the report's directions catch
    w.p. 95% (|δ| >= sensitivity / max(1, |θ_i|)): a Gaussian direction then misses it
    with probability about 0.05/1e4 per direction."""
    if not report.directions or report.sensitivity is None:
        return False
    delta = 1e-2 * abs(problem.gradient_flat(theta)[bug])
    x = abs(float(flat_values(theta)[bug]))
    return delta * max(1.0, x) >= 1e4 * report.sensitivity


def checked_coordinates(report, size: int) -> set[int]:
    """Flat indices checked one by one (none for directions alone)."""
    if report.coverage is not None:
        return set(report.coverage.coords.tolist())
    return set() if report.directions else set(range(size))


# ----------------------------------------------------------------------------- verdicts
@given(problem=problems(), callable_grad=st.booleans(), data=st.data())
def test_a_correct_gradient_passes_and_a_planted_error_fails_at_its_coordinate(
        problem, callable_grad, data):
    theta, args = problem.spec.build(), problem.args()
    bug = data.draw(st.integers(0, problem.spec.size - 1), label="bug")
    label = problem.spec.labels()[bug]
    grad, wrong = problem.gradient(theta), problem.gradient(theta, bug)
    before = snapshot(theta, grad, wrong, args)
    if callable_grad:
        grad_of, wrong_of = (lambda t, *a: problem.gradient(t)), (lambda t, *a: wrong)
    else:
        grad_of, wrong_of = grad, wrong
    report = fg.check(problem.loss, grad_of, theta, args)
    assert report.verdict == "pass", str(report)
    strict_json(report)
    failed = fg.check(problem.loss, wrong_of, theta, args)
    assert failed.verdict == "fail", str(failed)
    assert failing_labels(failed) == {label}, str(failed)
    strict_json(failed)
    assert snapshot(theta, grad, wrong, args) == before


@given(problem=problems(), data=st.data())
def test_every_valid_option_of_check(problem, data):
    options = data.draw(check_options(problem), label="options")
    theta, args = problem.spec.build(), problem.args()
    bug = data.draw(st.integers(0, problem.spec.size - 1), label="bug")
    label = problem.spec.labels()[bug]
    grad, wrong = problem.gradient(theta), problem.gradient(theta, bug)
    before = snapshot(theta, grad, wrong, args)
    report = fg.check(problem.loss, grad, theta, args, **options)
    assert report.verdict == "pass", str(report)
    strict_json(report)
    failed = fg.check(problem.loss, wrong, theta, args, **options)
    strict_json(failed)
    assert failing_labels(failed) <= {label}, str(failed)
    # one assertion a line: hypothesis reports each failing line as a distinct failure
    if bug in checked_coordinates(failed, problem.spec.size):
        assert failed.verdict == "fail", str(failed)
        assert failing_labels(failed) == {label}, str(failed)
    elif caught_by_directions(failed, problem, theta, bug):
        assert failed.verdict == "fail", str(failed)
        assert failing_labels(failed) == {label}, f"not localised:\n{failed}"
    elif not failed.directions:  # the error is in no coordinate checked: nothing to see
        assert failed.verdict == "pass", str(failed)
    assert snapshot(theta, grad, wrong, args) == before
    drawn = ("sample" in options and not isinstance(options["sample"], (list, tuple, np.ndarray))
             ) or "detect" in options
    if drawn and "seed" in options:  # plan_sample foretells the sample
        plan = fg.plan_sample(theta, sample=options.get("sample"), detect=options.get("detect"),
                              seed=options["seed"])
        assert np.array_equal(plan.coords, failed.coverage.coords)
        assert np.array_equal(plan.coords, report.coverage.coords)
    progress = options.get("progress")
    if isinstance(progress, ProgressRecord):  # counted twice: both checks
        assert progress.evaluations <= report.evaluations + failed.evaluations


@example(problem=Problem(ThetaSpec((GroupSpec("W", (1, 4), "float32"),), False, 1)),
         method="complex", dtype="float64", directions=1, seed=6, bug=0)
@example(problem=Problem(ThetaSpec((GroupSpec("W", (7,), "float64"), GroupSpec("b", (4,), "float32"),
                                    GroupSpec("W2", (6,), "float32"),
                                    GroupSpec("b2", (15,), "float64")), True, 4294967295)),
         method="central", dtype=None, directions=1, seed=412230344853458, bug=11)
@example(problem=Problem(ThetaSpec((GroupSpec("W", (34,), "float64"), GroupSpec("b", (1,), "float32"),
                                    GroupSpec("W2", (4,), "float32"), GroupSpec("b2", (3,), "float32"),
                                    GroupSpec("lr", (3,), "float32"),
                                    GroupSpec("gamma", (4,), "float32")), True, 40), "numba"),
         method="central", dtype=None, directions=1, seed=232, bug=0)
@given(problem=problems(), method=st.sampled_from(("central", "central4", "complex")),
       dtype=st.sampled_from((None, "float64")), directions=st.integers(1, 3), seed=SEEDS,
       bug=st.integers(0, 10**6))
def test_directions_alone_name_the_coordinate_of_an_error_they_catch(problem, method, dtype,
                                                                       directions, seed, bug):
    """A failing direction is localised by group testing: a single wrong coordinate, caught,
    is named (not "dense", not nothing)."""
    theta, args = problem.spec.build(), problem.args()
    bug %= problem.spec.size
    failed = fg.check(problem.loss, problem.gradient(theta, bug), theta, args, method=method,
                      dtype=dtype, directions=directions, seed=seed)
    strict_json(failed)
    if caught_by_directions(failed, problem, theta, bug):
        assert failed.verdict == "fail", str(failed)
        assert failing_labels(failed) == {problem.spec.labels()[bug]}, f"not localised:\n{failed}"


def numerical_tolerance(problem: Problem, theta, relative_step: float, working) -> np.ndarray:
    """|D_i − g_i| bound for the central and 4-point differences of the sine problem (scale
    and unit 1): truncation h²·max|f'''| = h²·|w_i| (h_i = h0·max(1, |θ_i|)), the rounding of
    f by 16·u·Σ|terms| over h, the rounding of sin(θ_i ± h_i), computed in the working dtype
    (the loss receives it), by at most 2 ulp = 2·eps_work·|w_i| at each point, over 2h_i, and
    the gradient's change |f''|·eps_work·|θ_i| when theta is rounded to the working dtype."""
    w, c = problem.data()
    x = flat_values(theta).astype(np.float64)
    h = relative_step * np.maximum(1.0, np.abs(x))
    terms = float(np.sum(np.abs(w) + np.abs(c * x)))
    eps_work = float(np.finfo(working).eps)
    return (h * h * np.abs(w) + 16 * U64 * terms / h + 2.0 * eps_work * np.abs(w) / h
            + np.abs(w) * eps_work * np.abs(x))


@given(problem=problems(), method=st.sampled_from(("central", "central4", "complex")),
       dtype=st.sampled_from((None, "float32", "float64")), workers=st.sampled_from((None, 1, 2)),
       engine=st.sampled_from(("auto", "python")), step_factor=st.sampled_from((None, 0.5, 2.0)))
def test_every_valid_option_of_numerical_gradient(problem, method, dtype, workers, engine,
                                                  step_factor):
    theta, args = problem.spec.build(), problem.args()
    before = snapshot(theta, args)
    working = np.dtype(dtype or ("float32" if problem.spec.float32 else "float64"))
    default = {"central": float(np.cbrt(np.finfo(working).eps)),
               "central4": float(np.finfo(working).eps) ** 0.2, "complex": 1e-20}[method]
    eps = None if step_factor is None or method == "complex" else default * step_factor
    result = fg.numerical_gradient(problem.loss, theta, args, method=method, eps=eps, dtype=dtype,
                                   workers=workers, engine=engine)
    assert snapshot(theta, args) == before
    if problem.spec.is_dict:
        assert list(result) == [g.name for g in problem.spec.groups]
        assert [np.shape(v) for v in result.values()] == [g.shape for g in problem.spec.groups]
    else:
        assert np.shape(result) == problem.spec.groups[0].shape
    exact = problem.gradient_flat(theta)
    step = default if eps is None else eps
    if method == "complex":  # no cancellation: rounding of g_i, and theta's in the working dtype
        w, c = problem.data()
        x = np.abs(flat_values(theta).astype(np.float64))
        tolerance = 8 * U64 * (np.abs(w) + np.abs(c)) + np.abs(w) * np.finfo(working).eps * x
    else:
        tolerance = numerical_tolerance(problem, theta, step, working)
    error = np.abs(flat_values(result) - exact)
    assert (error <= tolerance).all(), (error.max(), tolerance[np.argmax(error - tolerance)])


# ----------------------------------------------------------------------------- magnitudes
@given(problem=problems(), scale=st.sampled_from((1e200, 1e-200)),
       bug=st.none() | st.integers(0, 10**6))
def test_the_verdict_is_the_same_for_f_and_for_f_scaled_by_1e200_or_1e_minus_200(
        problem, scale, bug):
    theta, args = problem.spec.build(), problem.args()
    bug = None if bug is None else bug % problem.spec.size
    scaled = dataclasses.replace(problem, scale=scale)
    report = fg.check(problem.loss, problem.gradient(theta, bug), theta, args)
    other = fg.check(scaled.loss, scaled.gradient(theta, bug), theta, scaled.args())
    strict_json(other)
    assert (other.verdict, failing_labels(other)) == (report.verdict, failing_labels(report)), \
        f"{report}\n--- scaled by {scale:g} ---\n{other}"


#: (magnitude of θ, scale of f): |g| ~ scale/magnitude stays >= 1e-200, so that its rounding
#: u·|g| is a normal number and the check has the precision it has near 1.
SCALES = ((1e100, 1e-100), (1e100, 1.0), (1e100, 1e200), (1e300, 1.0), (1e300, 1e200))


@given(spec=theta_specs(dtypes=("float64",), low=0.5, max_size=100, ranks=(1, 2)),
       scales=st.sampled_from(SCALES), kind=st.sampled_from(("numpy", "numba")), data=st.data())
def test_a_theta_near_1e300_keeps_the_verdicts(spec, scales, kind, data):
    """θ = magnitude·u, f(θ) = scale·F(θ/magnitude): the steps h_i = h0·|θ_i| are h0·|u_i| in
    u, as for a theta near 1; a correct gradient passes, a planted error fails."""
    magnitude, scale = scales
    spec = dataclasses.replace(spec, magnitude=magnitude)
    problem = Problem(spec, kind, scale=scale, unit=1.0 / magnitude)
    theta, args = spec.build(), problem.args()
    bug = data.draw(st.integers(0, spec.size - 1), label="bug")
    report = fg.check(problem.loss, problem.gradient(theta), theta, args)
    assert report.verdict == "pass", str(report)
    failed = fg.check(problem.loss, problem.gradient(theta, bug), theta, args)
    assert failed.verdict == "fail" and failing_labels(failed) == {spec.labels()[bug]}, str(failed)
    strict_json(report)
    strict_json(failed)


# ----------------------------------------------------------------------------- faults
class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("this exception cannot be printed")


def _raise(error: BaseException):
    raise error


#: What a faulty loss does at its chosen call, given the value it would have returned.
FAULTS = {
    "raise": lambda value: _raise(ZeroDivisionError("planted failure")),
    "raise an unprintable exception": lambda value: _raise(Unprintable()),
    "return nan": lambda value: math.nan,
    "return inf": lambda value: math.inf,
    "return -inf": lambda value: -math.inf,
    "return a numeric string": lambda value: str(float(value)),
    "return None": lambda value: None,
    "return a bool": lambda value: True,
    "return a complex": lambda value: complex(value) + 1j,
    "return shape (1,)": lambda value: np.array([value]),
    "return shape (2,)": lambda value: np.array([value, value]),
    "return a list": lambda value: [value],
    "raise KeyboardInterrupt": lambda value: _raise(KeyboardInterrupt()),
}


class Faulty:
    """The problem's loss, which does ``FAULTS[fault]`` at call number ``at`` (from 1) and
    remembers the exception it raised."""

    def __init__(self, loss, fault: str, at: int):
        self.loss, self.fault, self.at = loss, fault, at
        self.calls = 0
        self.raised: BaseException | None = None
        self.lock = threading.Lock()

    def __call__(self, theta, *args):
        with self.lock:
            self.calls += 1
            call = self.calls
        value = self.loss(theta, *args)
        if call != self.at:
            return value
        try:
            return FAULTS[self.fault](value)
        except BaseException as error:
            self.raised = error
            raise


def threaded(problem: Problem, workers: int) -> Problem:
    """With 2 workers, a loss slow enough (~0.1 ms a call at n = 60) that the coordinate
    batches run on threads, not serially in the caller."""
    return dataclasses.replace(problem, repeats=20) if workers > 1 else problem


def evaluations_of_a_clean_check(problem: Problem, theta, grad, args, **options) -> int:
    loss = counted(problem.loss)
    fg.check(loss, grad, theta, args, **options)
    return len(loss.calls)


@pytest.mark.parametrize("fault", sorted(set(FAULTS) - {"raise KeyboardInterrupt"}))
@settings(max_examples=6)
@given(problem=problems(kinds=("numpy",), max_size=60), workers=st.sampled_from((1, 2)),
       data=st.data())
def test_a_fault_at_any_evaluation_is_a_loss_error(fault, problem, workers, data):
    problem = threaded(problem, workers)
    theta, args = problem.spec.build(), problem.args()
    grad = problem.gradient(theta)
    before = snapshot(theta, grad, args)
    total = evaluations_of_a_clean_check(problem, theta, grad, args, workers=workers)
    loss = Faulty(problem.loss, fault, data.draw(st.integers(1, total), label="at evaluation"))
    error = raised(fg.LossError, lambda: fg.check(loss, grad, theta, args, workers=workers))
    assert str(error)  # readable, whatever the loss raised
    if loss.raised is not None:
        assert error.__cause__ is loss.raised
    assert snapshot(theta, grad, args) == before
    assert not worker_threads()


@given(problem=problems(kinds=("numpy",), max_size=60), workers=st.sampled_from((1, 2)),
       data=st.data())
def test_keyboard_interrupt_from_the_loss_reaches_the_caller_and_stops_every_worker(
        problem, workers, data):
    problem = threaded(problem, workers)
    theta, args = problem.spec.build(), problem.args()
    grad = problem.gradient(theta)
    before = snapshot(theta, grad, args)
    total = evaluations_of_a_clean_check(problem, theta, grad, args, workers=workers)
    loss = Faulty(problem.loss, "raise KeyboardInterrupt",
                  data.draw(st.integers(1, total), label="at evaluation"))
    raised(KeyboardInterrupt, lambda: fg.check(loss, grad, theta, args, workers=workers))
    assert snapshot(theta, grad, args) == before
    assert not worker_threads()


class FailingProgress:
    """A progress callback that raises ``error`` once the evaluations it was told of reach
    ``at``.  (The evaluations a check reports are the same from run to run; its calls are
    not: the chunks follow the measured time per evaluation.)"""

    def __init__(self, error: BaseException | None, at: int):
        self.error, self.at, self.calls, self.evaluations = error, at, 0, 0

    def __call__(self, coordinates, evaluations):
        self.calls += 1
        before, self.evaluations = self.evaluations, self.evaluations + evaluations
        if before < self.at <= self.evaluations:
            raise self.error


def chain(error: BaseException | None) -> list[BaseException]:
    found = []
    while error is not None and error not in found:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


@given(problem=problems(kinds=("numpy", "numba"), max_size=60), workers=st.sampled_from((1, 2)),
       interrupt=st.booleans(), data=st.data())
def test_a_progress_callback_that_raises_stops_the_check_with_its_error(
        problem, workers, interrupt, data):
    problem = dataclasses.replace(problem, repeats=200 if problem.kind == "numba" else 20)
    theta, args = problem.spec.build(), problem.args()
    grad = problem.gradient(theta)
    before = snapshot(theta, grad, args)
    counting = FailingProgress(None, 0)
    fg.check(problem.loss, grad, theta, args, workers=workers, progress=counting)
    if counting.evaluations == 0:
        return
    error = KeyboardInterrupt() if interrupt else ValueError("planted in the progress callback")
    progress = FailingProgress(error, data.draw(st.integers(1, counting.evaluations),
                                                label="at evaluation"))
    caught = raised(BaseException, lambda: fg.check(problem.loss, grad, theta, args,
                                                    workers=workers, progress=progress))
    if interrupt:
        assert caught is error
    else:
        assert error in chain(caught)
    assert snapshot(theta, grad, args) == before
    assert not worker_threads()


# ----------------------------------------------------------------------------- concurrency
def outcome(problem: Problem, theta, grad, args, options) -> tuple:
    """Everything a check returns but its duration and how it was cut into chunks (which
    follows the measured time per evaluation), bit for bit (floats by repr)."""
    try:
        report = fg.check(problem.loss, grad, theta, args, **options)
    except fg.GradientCheckError as error:
        return type(error).__name__, str(error)
    summary = {k: v for k, v in report.to_dict().items()
               if k not in ("seconds", "timings", "chunks")}
    return repr(summary), flat_values(report.numerical).tobytes(), str(report).split("\n")[3:]


def blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


@settings(max_examples=8)
@given(drawn=st.lists(problems(max_size=120), min_size=4, max_size=4), data=st.data())
def test_four_checks_on_threads_at_once_equal_serial_checks_bit_for_bit(drawn, data):
    cases = []
    for problem in drawn:
        problem = dataclasses.replace(problem, repeats=100 if problem.kind == "numba" else 10)
        options = data.draw(check_options(problem), label="options")
        options.pop("progress", None)
        options["workers"] = data.draw(st.sampled_from((1, 2)), label="workers")
        theta = problem.spec.build()
        bug = data.draw(st.none() | st.integers(0, problem.spec.size - 1), label="bug")
        cases.append((problem, theta, problem.gradient(theta, bug), problem.args(), options))
    serial = [outcome(*case) for case in cases]
    concurrent = at_once([lambda case=case: outcome(*case) for case in cases])
    for k in range(len(cases)):
        assert concurrent[k] == serial[k], k
    assert not worker_threads()


def at_once(calls, stagger: float = 0.0) -> list:
    """Run ``calls`` together, call 0 in this thread and the others on threads, call k
    after k·stagger seconds; their results, or ("raised", repr) for an exception."""
    results: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(k: int) -> None:
        start.wait()
        threading.Event().wait(k * stagger)
        try:
            results[k] = calls[k]()
        except BaseException as error:
            results[k] = ("raised", repr(error))

    runners = [threading.Thread(target=run, args=(k,)) for k in range(1, len(calls))]
    for runner in runners:
        runner.start()
    run(0)
    for runner in runners:
        runner.join()
    return results


@settings(max_examples=3)
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4))
def test_concurrent_checks_leave_the_blas_thread_count_as_they_found_it(seeds):
    """Each check with 2 workers limits BLAS to 1 thread while its workers run; checks that
    overlap without nesting (started 20 ms apart, each ~40 ms; one in this thread, whose BLAS
    limit is read) must not restore each other's limit. 120 coordinates at ~0.2 ms a call
    (repeats=200) make the batches run on threads."""
    problems_ = [Problem(ThetaSpec((GroupSpec("W", (120,), "float64"),), False, seed), "numba",
                         repeats=200) for seed in seeds]
    cases = [(p, p.spec.build(), p.args()) for p in problems_]
    calls = [lambda p=p, t=t, a=a: fg.check(p.loss, p.gradient(t), t, a, workers=2).verdict
             for p, t, a in cases]
    assert [call() for call in calls] == ["pass"] * 4  # compiled, and every BLAS loaded
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        assert at_once(calls, stagger=0.02) == ["pass"] * 4
        after = blas_threads()
    assert after == before


# ----------------------------------------------------------------------------- bad input
@dataclasses.dataclass
class Inputs:
    """A valid problem's inputs, with a loss that counts its calls."""

    problem: Problem
    theta: object
    grad: object
    args: tuple
    loss: object

    @property
    def size(self) -> int:
        return self.problem.spec.size

    def theta_with(self, index: int, value: float, dtype=np.float64):
        """theta's structure (as ``dtype`` arrays) with flat coordinate ``index`` = value."""
        flat = flat_values(self.theta).astype(dtype)
        flat[index] = value
        return {k: v.astype(dtype) for k, v in self._structured(flat).items()} \
            if self.problem.spec.is_dict else self._structured(flat).astype(dtype)

    def _structured(self, flat):
        return self.problem.structured(flat.astype(np.float64))

    def grad_with(self, flat) -> object:
        return self.problem.structured(np.asarray(flat, dtype=np.float64))


def check_with(**options):
    return lambda x: fg.check(x.loss, x.grad, x.theta, x.args, **options)


def check_theta(make):
    return lambda x: fg.check(x.loss, x.grad, make(x), x.args)


def check_grad(make):
    return lambda x: fg.check(x.loss, make(x), x.theta, x.args)


def gradient_with(**options):
    return lambda x: fg.numerical_gradient(x.loss, x.theta, x.args, **options)


def plan_with(**options):
    return lambda x: fg.plan_sample(x.theta, **options)


def scan_with(coords=(0,), **options):
    return lambda x: fg.step_scan(x.loss, x.theta, coords(x) if callable(coords) else coords,
                                  x.args, **options)


def monitor_with(**options):
    def run(x):
        monitor = fg.Monitor(x.loss, x.grad, **{"every": 1, "sample": 2, **options})
        monitor.step(x.theta, x.args)
    return run


def wrong_shape(x):
    if x.problem.spec.is_dict:
        return {**x.grad, next(iter(x.grad)): np.zeros(x.size + 1)}
    return np.zeros(x.size + 1)


def overflowing_theta(x):
    """theta with a coordinate whose step h = h0·|θ_i| carries θ_i ± h past the largest float."""
    return x.theta_with(x.size // 2, (1.0 - 1e-9) * np.finfo(np.float64).max)


#: (name, call, fragment of the message or None): every call must raise InputError before the
#: loss is evaluated.
INVALID = [
    # check: seed, with the sample or directions it seeds
    ("check seed=-1", check_with(seed=-1, sample=2), None),
    ("check seed=-1 directions", check_with(seed=-1, directions=1), None),
    ("check seed='abc'", check_with(seed="abc", sample=2), None),
    ("check seed=1.5 directions", check_with(seed=1.5, directions=2), None),
    ("check seed=True", check_with(seed=True, directions=1), None),
    # dtype, method, eps
    ("check dtype='nonsense'", check_with(dtype="nonsense"), None),
    ("check dtype='float16'", check_with(dtype="float16"), None),
    ("check dtype=int", check_with(dtype=int), None),
    ("check dtype='complex128'", check_with(dtype="complex128"), None),
    ("check method='backward'", check_with(method="backward"), None),
    ("check method=None", check_with(method=None), None),
    ("check eps=0", check_with(eps=0.0), None),
    ("check eps=-1e-6", check_with(eps=-1e-6), None),
    ("check eps=nan", check_with(eps=math.nan), None),
    ("check eps=inf", check_with(eps=math.inf), None),
    ("check eps='abc'", check_with(eps="abc"), None),
    ("check eps=1", check_with(eps=1.0), None),
    # workers, engine
    ("check workers=0", check_with(workers=0), None),
    ("check workers=-1", check_with(workers=-1), None),
    ("check workers=True", check_with(workers=True), None),
    ("check workers=1.5", check_with(workers=1.5), None),
    ("check workers='2'", check_with(workers="2"), None),
    ("check engine='gpu'", check_with(engine="gpu"), None),
    ("check engine=None", check_with(engine=None), None),
    ("check engine='numba' python loss", check_with(engine="numba"), None),
    # sample, detect, directions
    ("check sample=0", check_with(sample=0), None),
    ("check sample=-1", check_with(sample=-1), None),
    ("check sample=True", check_with(sample=True), None),
    ("check sample=False", check_with(sample=False), None),
    ("check sample=1.5", check_with(sample=1.5), None),
    ("check sample=0.0", check_with(sample=0.0), None),
    ("check sample='3'", check_with(sample="3"), None),
    ("check sample=[]", check_with(sample=[]), None),
    ("check sample=[n]", lambda x: fg.check(x.loss, x.grad, x.theta, x.args, sample=[x.size]),
     None),
    ("check sample=[-1]", check_with(sample=np.array([-1])), None),
    ("check sample=[0, 0]", check_with(sample=[0, 0]), None),
    ("check sample=[[0]]", check_with(sample=[[0]]), None),
    ("check sample=[0.5]", check_with(sample=[0.5]), None),
    ("check sample and detect", check_with(sample=2, detect=(0.1, 0.05)), None),
    ("check detect=(0, .05)", check_with(detect=(0.0, 0.05)), None),
    ("check detect=(1.5, .05)", check_with(detect=(1.5, 0.05)), None),
    ("check detect=(.1, 1)", check_with(detect=(0.1, 1.0)), None),
    ("check detect=(.1, 0)", check_with(detect=(0.1, 0.0)), None),
    ("check detect=(nan, .05)", check_with(detect=(math.nan, 0.05)), None),
    ("check detect='x'", check_with(detect="x"), None),
    ("check detect=(.1,)", check_with(detect=(0.1,)), None),
    ("check detect=(.1, .05, 3)", check_with(detect=(0.1, 0.05, 3)), None),
    ("check directions=0", check_with(directions=0), None),
    ("check directions=-1", check_with(directions=-1), None),
    ("check directions=True", check_with(directions=True), None),
    ("check directions=1.5", check_with(directions=1.5), None),
    ("check directions='2'", check_with(directions="2"), None),
    ("check progress=5", check_with(progress=5), None),
    ("check progress='bar'", check_with(progress="bar"), None),
    # args, loss
    ("check args=bare array", lambda x: fg.check(x.loss, x.grad, x.theta, x.args[0]), "tuple"),
    ("check args=5", lambda x: fg.check(x.loss, x.grad, x.theta, 5), None),
    ("check loss=5", lambda x: fg.check(5, x.grad, x.theta, x.args), None),
    # theta
    ("check theta=list of unequal arrays", check_theta(lambda x: [np.ones(3), np.ones(2)]), None),
    ("check theta=empty array", check_theta(lambda x: np.empty((3, 0))), None),
    ("check theta=empty group",
     check_theta(lambda x: {"W": np.ones(2), "e": np.empty(0)}), None),
    ("check theta={}", check_theta(lambda x: {}), None),
    ("check theta with nan", check_theta(lambda x: x.theta_with(x.size // 2, math.nan)), None),
    ("check theta with inf", check_theta(lambda x: x.theta_with(0, -math.inf)), None),
    ("check theta int", check_theta(lambda x: np.arange(x.size)), None),
    ("check theta bool", check_theta(lambda x: np.ones(x.size, dtype=bool)), None),
    ("check theta complex", check_theta(lambda x: x.theta_with(0, 1.0, np.complex128)), None),
    ("check theta object", check_theta(lambda x: np.array([1.0, None])), None),
    ("check theta key not str", check_theta(lambda x: {1: np.ones(2)}), None),
    ("check theta step overflows", check_theta(overflowing_theta), "label"),
    ("check theta float32 step overflows",
     check_theta(lambda x: x.theta_with(x.size - 1, 0.999 * np.finfo(np.float32).max,
                                        np.float32)), "last label"),
    # grad
    ("check grad wrong shape", check_grad(wrong_shape), None),
    ("check grad wrong keys", check_grad(lambda x: {"nope": np.zeros(x.size)}), None),
    ("check grad with nan",
     check_grad(lambda x: x.grad_with(np.where(np.arange(x.size) == 0, np.nan, 1.0))), None),
    ("check grad bool", check_grad(lambda x: np.ones(x.size, dtype=bool)
                                   if not x.problem.spec.is_dict
                                   else {k: np.ones(np.shape(v), dtype=bool)
                                         for k, v in x.grad.items()}), None),
    ("check grad complex", check_grad(lambda x: x.grad_with(np.ones(x.size)).astype(complex)
                                      if not x.problem.spec.is_dict
                                      else {k: np.asarray(v, dtype=complex)
                                            for k, v in x.grad.items()}), None),
    ("check grad='abc'", check_grad(lambda x: "abc"), None),
    ("check grad=None", check_grad(lambda x: None), None),
    ("check grad callable of the wrong shape", check_grad(lambda x: lambda t, *a: wrong_shape(x)),
     None),
    # numerical_gradient
    ("numerical_gradient method='bogus'", gradient_with(method="bogus"), None),
    ("numerical_gradient eps=0", gradient_with(eps=0.0), None),
    ("numerical_gradient eps=nan", gradient_with(eps=math.nan), None),
    ("numerical_gradient dtype='nonsense'", gradient_with(dtype="nonsense"), None),
    ("numerical_gradient workers=0", gradient_with(workers=0), None),
    ("numerical_gradient workers=True", gradient_with(workers=True), None),
    ("numerical_gradient engine='gpu'", gradient_with(engine="gpu"), None),
    ("numerical_gradient args=bare array",
     lambda x: fg.numerical_gradient(x.loss, x.theta, x.args[0]), None),
    ("numerical_gradient theta=empty",
     lambda x: fg.numerical_gradient(x.loss, np.empty(0), x.args), None),
    ("numerical_gradient theta step overflows",
     lambda x: fg.numerical_gradient(x.loss, overflowing_theta(x), x.args), "label"),
    # plan_sample
    ("plan_sample sample=0", plan_with(sample=0), None),
    ("plan_sample sample=True", plan_with(sample=True), None),
    ("plan_sample sample=1.5", plan_with(sample=1.5), None),
    ("plan_sample sample='3'", plan_with(sample="3"), None),
    ("plan_sample sample=[]", plan_with(sample=[]), None),
    ("plan_sample sample=[0, 0]", plan_with(sample=[0, 0]), None),
    ("plan_sample detect=(0, .05)", plan_with(detect=(0.0, 0.05)), None),
    ("plan_sample detect='x'", plan_with(detect="x"), None),
    ("plan_sample sample and detect", plan_with(sample=2, detect=(0.1, 0.05)), None),
    ("plan_sample seed=-1", plan_with(sample=2, seed=-1), None),
    ("plan_sample seed='abc'", plan_with(sample=2, seed="abc"), None),
    ("plan_sample seed=True", plan_with(sample=2, seed=True), None),
    ("plan_sample seed=1.5", plan_with(sample=2, seed=1.5), None),
    ("plan_sample theta=list of unequal arrays",
     lambda x: fg.plan_sample([np.ones(3), np.ones(2)], sample=2), None),
    # step_scan
    ("step_scan coords=[n]", scan_with(lambda x: [x.size]), None),
    ("step_scan coords=[-1]", scan_with((-1,)), None),
    ("step_scan coords=['nope[0]']", scan_with(("nope[0]",)), None),
    ("step_scan coords=[True]", scan_with((True,)), None),
    ("step_scan coords=[1.5]", scan_with((1.5,)), None),
    ("step_scan steps=[0]", scan_with(steps=[0.0]), None),
    ("step_scan steps=[-1e-6]", scan_with(steps=[-1e-6]), None),
    ("step_scan steps=[nan]", scan_with(steps=[math.nan]), None),
    ("step_scan steps=[1]", scan_with(steps=[1.0]), None),
    ("step_scan steps=[[1e-6]]", scan_with(steps=[[1e-6]]), None),
    ("step_scan steps=[]", scan_with(steps=[]), None),
    ("step_scan steps='abc'", scan_with(steps="abc"), None),
    ("step_scan method='complex'", scan_with(method="complex"), None),
    ("step_scan method='bogus'", scan_with(method="bogus"), None),
    ("step_scan engine='gpu'", scan_with(engine="gpu"), None),
    ("step_scan workers=0", scan_with(workers=0), None),
    ("step_scan workers=True", scan_with(workers=True), None),
    ("step_scan args=bare array", lambda x: fg.step_scan(x.loss, x.theta, [0], x.args[0]), None),
    ("step_scan grad wrong shape", lambda x: fg.step_scan(x.loss, x.theta, [0], x.args,
                                                          grad=wrong_shape(x)), None),
    # Monitor
    ("Monitor every=0", monitor_with(every=0), None),
    ("Monitor every=-1", monitor_with(every=-1), None),
    ("Monitor every=True", monitor_with(every=True), None),
    ("Monitor every=1.5", monitor_with(every=1.5), None),
    ("Monitor sample=0", monitor_with(sample=0), None),
    ("Monitor sample=True", monitor_with(sample=True), None),
    ("Monitor sample=1.5", monitor_with(sample=1.5), None),
    ("Monitor every=True sample=True", monitor_with(every=True, sample=True), None),
    ("Monitor directions=-1", monitor_with(directions=-1), None),
    ("Monitor directions=True", monitor_with(directions=True), None),
    ("Monitor directions=1.5", monitor_with(directions=1.5), None),
    ("Monitor seed=-1", monitor_with(seed=-1), None),
    ("Monitor seed='abc'", monitor_with(seed="abc"), None),
    ("Monitor seed=True", monitor_with(seed=True), None),
    ("Monitor seed=1.5", monitor_with(seed=1.5), None),
    ("Monitor on_fail='x'", monitor_with(on_fail="x"), None),
    ("Monitor on_fail=5", monitor_with(on_fail=5), None),
    ("Monitor eps=-1", monitor_with(eps=-1.0), None),
    ("Monitor method='bogus'", monitor_with(method="bogus"), None),
    ("Monitor dtype='nonsense'", monitor_with(dtype="nonsense"), None),
    ("Monitor workers=0", monitor_with(workers=0), None),
    ("Monitor engine='gpu'", monitor_with(engine="gpu"), None),
    ("Monitor progress=5", monitor_with(progress=5), None),
    ("Monitor step args=bare array",
     lambda x: fg.Monitor(x.loss, x.grad, every=1, sample=2).step(x.theta, x.args[0]), None),
]


@pytest.mark.parametrize("call, fragment", [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
@settings(max_examples=3)
@given(problem=problems(kinds=("numpy",), max_size=40, dtypes=("float64",)))
def test_bad_input_is_an_input_error_before_the_first_evaluation(call, fragment, problem):
    theta = problem.spec.build()
    x = Inputs(problem, theta, problem.gradient(theta), problem.args(), counted(problem.loss))
    before = snapshot(x.theta, x.grad, x.args)
    with pytest.raises(fg.InputError) as caught:
        call(x)
    assert not x.loss.calls, f"{len(x.loss.calls)} loss evaluation(s) before: {caught.value}"
    labels = problem.spec.labels()
    if fragment == "label":  # the coordinate is named
        assert labels[len(labels) // 2] in str(caught.value)
    elif fragment == "last label":
        assert labels[-1] in str(caught.value)
    elif fragment is not None:
        assert fragment in str(caught.value)
    assert snapshot(x.theta, x.grad, x.args) == before


# ----------------------------------------------------------------------------- other entry points
@given(spec=theta_specs(), form=st.sampled_from(("count", "fraction", "detect")),
       seed=st.integers(0, 2**64), data=st.data())
def test_plan_sample_is_reproducible_and_vouches_within_each_group(spec, form, seed, data):
    theta = spec.build()
    before = snapshot(theta)
    if form == "count":
        options = {"sample": data.draw(st.integers(1, spec.size + 3), label="sample")}
    elif form == "fraction":
        options = {"sample": data.draw(st.sampled_from((0.01, 0.3, 1.0)), label="sample")}
    else:
        options = {"detect": (data.draw(st.sampled_from((0.01, 0.2, 1.0)), label="p"),
                              data.draw(st.sampled_from((0.01, 0.05, 0.5)), label="alpha"))}
    plan = fg.plan_sample(theta, seed=seed, **options)
    again = fg.plan_sample(theta, seed=seed, **options)
    coords = plan.coords
    assert np.array_equal(coords, again.coords)
    assert coords.size and (np.diff(coords) > 0).all() and 0 <= coords[0] and coords[-1] < spec.size
    assert [g.size for g in plan.groups] == [g.size for g in spec.groups]
    assert sum(g.sampled for g in plan.groups) == coords.size
    for group in plan.groups:
        assert 0 <= group.sampled <= group.size
        assert group.sampled == 0 or 1 <= group.caught_from <= group.size
    assert plan.caught_from is None or 1 <= plan.caught_from <= spec.size
    json.dumps(plan.to_dict(), allow_nan=False)
    assert snapshot(theta) == before


@settings(max_examples=10)
@given(problem=problems(), method=st.sampled_from(("central", "central4")),
       with_grad=st.booleans(), custom_steps=st.booleans(), data=st.data())
def test_step_scan_finds_a_step_as_accurate_as_the_error_analysis_allows(
        problem, method, with_grad, custom_steps, data):
    theta, args = problem.spec.build(), problem.args()
    before = snapshot(theta, args)
    labels = problem.spec.labels()
    chosen = sorted(data.draw(st.sets(st.integers(0, problem.spec.size - 1), min_size=1,
                                      max_size=3), label="coordinates"))
    coords = [labels[i] if data.draw(st.booleans(), label="by label") else i for i in chosen]
    working = np.dtype("float32" if problem.spec.float32 else "float64")
    default = (float(np.cbrt(np.finfo(working).eps)) if method == "central"
               else float(np.finfo(working).eps) ** 0.2)
    steps = default * np.array([0.25, 0.5, 1.0, 2.0, 4.0]) if custom_steps else None
    grad = problem.gradient(theta) if with_grad else None
    scan = fg.step_scan(problem.loss, theta, coords, args, grad=grad, steps=steps, method=method)
    assert snapshot(theta, args) == before
    assert scan.labels == [labels[i] for i in chosen]
    assert scan.errors.shape == (len(chosen), scan.steps.size)
    exact = problem.gradient_flat(theta)[chosen]
    assert np.allclose(scan.reference, exact, rtol=1e-6 if working == np.float64 else 1e-3)
    bounds = np.column_stack([numerical_tolerance(problem, theta, h, working)[chosen]
                              for h in scan.steps])
    error = np.abs(scan.numerical - exact[:, None])
    assert (np.nanmin(error - bounds, axis=1) <= 0).all(), (error, bounds)
    str(scan)


@settings(max_examples=10)
@given(problem=problems(kinds=("numpy",), max_size=30), every=st.integers(1, 3),
       sample=st.integers(1, 8), directions=st.integers(0, 2), seed=SEEDS, data=st.data())
def test_a_monitor_finds_a_planted_error_within_one_rotation(problem, every, sample, directions,
                                                             seed, data):
    theta, args = problem.spec.build(), problem.args()
    bug = data.draw(st.integers(0, problem.spec.size - 1), label="bug")
    grad, wrong = problem.gradient(theta), problem.gradient(theta, bug)
    before = snapshot(theta, grad, wrong, args)
    steps = every * problem.spec.size  # each check takes at least one coordinate per group
    for gradient, expect_failure in ((grad, False), (wrong, True)):
        failures: list = []
        monitor = fg.Monitor(problem.loss, gradient, every=every, sample=sample,
                             directions=directions, seed=seed, on_fail=failures.append)
        for step in range(steps):
            report = monitor.step(theta, args)
            assert (report is None) == bool(step % every)
            if report is not None:
                strict_json(report)
            if failures:
                break
        if expect_failure:
            assert failures, "the rotation never reached the planted error"
            assert failing_labels(failures[0]) == {problem.spec.labels()[bug]}, str(failures[0])
        else:
            assert not failures, str(failures[0])
            assert len(monitor.history) == -(-steps // every)
    assert snapshot(theta, grad, wrong, args) == before


@settings(max_examples=5)
@given(problem=problems(kinds=("numpy",), max_size=30))
def test_progress_true_is_a_progress_bar(problem):
    theta, args = problem.spec.build(), problem.args()
    report = fg.check(problem.loss, problem.gradient(theta), theta, args, progress=True)
    assert report.verdict == "pass", str(report)


@settings(max_examples=10)
@given(problem=problems(kinds=("numpy",), dicts=True, max_size=60), data=st.data())
def test_a_loss_that_rebinds_its_dict_keys_is_checked_or_refused(problem, data):
    """``p[k] = p[k] * 1.0`` inside the loss: each call must still see the current point (or
    the rebinding is refused as a loss that modifies its input)."""
    def rebinding(p, *args):
        for name in list(p):
            p[name] = p[name] * 1.0
        return problem.loss(p, *args)

    theta, args = problem.spec.build(), problem.args()
    bug = data.draw(st.integers(0, problem.spec.size - 1), label="bug")
    try:
        report = fg.check(rebinding, problem.gradient(theta), theta, args)
        failed = fg.check(rebinding, problem.gradient(theta, bug), theta, args)
    except fg.LossError as error:
        assert "modifies its input" in str(error)
        return
    assert report.verdict == "pass", str(report)
    assert failing_labels(failed) == {problem.spec.labels()[bug]}, str(failed)
