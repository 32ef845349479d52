"""What fastgrad.Monitor costs a training loop: examples/train_mlp.py with and without it.

    python benchmarks/monitor_overhead.py [--steps 1000] [--reps 7] [--every 100] [--profile 40]

Prints Markdown tables:

1. the wall time of the example's SGD loop (MLP n = 9,610, batch 256) without and with the
   monitor (every=100, sample=64, directions=2, checks on 2 samples of the batch): runs
   interleaved (the order alternating), medians over the repetitions, the overhead and the
   target (< 5%), judged like ``fastgrad bench`` on the checks' own time (Monitor.seconds)
   over the plain loop's: the loops' wall-clock difference, also printed, swings by ±10% of
   a loop on a shared 2-core machine.  Numba's compile of fastgrad's chunk kernel is
   excluded: a warm-up check runs first, and its extra time is reported on its own line;
2. where one warm check's time goes: each stage of fastgrad.check timed by wrapping it
   (in this process only; nothing in fastgrad is changed), the fixed costs measured alone
   (BLAS limiter entry, thread start, math.fsum over n, the noise estimate), and the loss
   evaluations at their single-call cost.

Compare within one run: the machine may be shared, and only ratios are meaningful.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import math
import statistics
import sys
import threading
import time
import timeit
from collections import defaultdict
from pathlib import Path

import numpy as np

import fastgrad
from fastgrad import directions, engine, pipeline
from fastgrad.engine import executors
from fastgrad.engine.blas import limit_blas_threads
from fastgrad.models import mlp

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.05  # the target overhead at every=100


def load_example():
    """examples/train_mlp.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_mlp", ROOT / "examples" / "train_mlp.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_mlp", module)
    spec.loader.exec_module(module)
    return module


def warm_up(example) -> dict:
    """Compile (first check in this process) and time it against a warm check."""
    X, Y = example.teacher_data(256, 64, 10)
    params = mlp.init_params(64, 128, 10)
    args = (X[:example.CHECK_ROWS], Y[:example.CHECK_ROWS])
    monitor = fastgrad.Monitor(mlp.loss, mlp.grad, every=1, sample=64, directions=2, seed=0)
    started = time.perf_counter()
    monitor.step(params, args=args)
    first = time.perf_counter() - started
    warm = []
    for _ in range(5):
        started = time.perf_counter()
        monitor.step(params, args=args)
        warm.append(time.perf_counter() - started)
    return {"first": first, "warm": statistics.median(warm)}


def interleaved(example, steps: int, reps: int, every: int) -> dict:
    """Alternate monitored and unmonitored runs; per-run wall times and check costs."""
    off, on, check_seconds, per_check, checks = [], [], [], [], []
    for rep in range(reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        for monitored in order:
            result = example.train(steps, monitor=monitored, every=every)
            if monitored:
                on.append(result.seconds)
                check_seconds.append(result.monitor.seconds)
                per_check += [entry["seconds"] for entry in result.monitor.history]
                checks.append(len(result.monitor.history))
                assert all(entry["verdict"] == "pass" for entry in result.monitor.history)
            else:
                off.append(result.seconds)
    paired = [(a - b) / b for a, b in zip(on, off, strict=True)]
    return {"off": off, "on": on, "check_seconds": check_seconds, "per_check": per_check,
            "checks": checks, "paired": paired}


# ----------------------------------------------------------------------------- profile


class StageTimer:
    """Wrap functions (module attributes) to accumulate their wall time per call of check."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self.patches: list[tuple[object, str, object]] = []

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)
        raw = vars(owner).get(name) if isinstance(owner, type) else original

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.totals[label] += time.perf_counter() - started

        self.patches.append((owner, name, raw))
        setattr(owner, name, timed)

    def wrap_context(self, owner, name: str, label: str) -> None:
        """Time the entry and exit of a context manager factory (not the with-body)."""
        original = getattr(owner, name)

        @contextlib.contextmanager
        def timed(*args, **kwargs):
            started = time.perf_counter()
            manager = original(*args, **kwargs)
            manager.__enter__()
            self.totals[label] += time.perf_counter() - started
            try:
                yield
            finally:
                started = time.perf_counter()
                manager.__exit__(*sys.exc_info())
                self.totals[label] += time.perf_counter() - started

        self.patches.append((owner, name, original))
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self.patches):
            setattr(owner, name, original)
        self.patches.clear()


#: The stages, in the order of fastgrad.check; indented ones are inside the one above.
STAGES = [
    ("layout", "layout: validate and copy theta, O(n)"),
    ("grad", "analytic gradient: grad(theta, *args) + flatten, O(n)"),
    ("engine", "engine setup"),
    ("noise", "noise estimate (ECnoise): 8 evaluations + a random direction over n"),
    ("coords", "coordinates: 2 evaluations each (128), on the worker threads"),
    ("blas", "&nbsp;&nbsp;inside: BLAS limiter entry + exit (threadpoolctl)"),
    ("threads", "&nbsp;&nbsp;inside: Thread.start x 2 (returns once the thread runs)"),
    ("directions", "directions: 2 Gaussian tests, 4 evaluations each"),
    ("fsum", "&nbsp;&nbsp;inside: math.fsum over n, 4 calls (the analytic g.dv)"),
    ("report", "report"),
    ("at", "single evaluations via Engine.at (f0 x 2, noise, directions: inside the above)"),
]


def _problem(example, rows):
    X, Y = example.teacher_data(256, 64, 10)
    return mlp.init_params(64, 128, 10), (X[:rows], Y[:rows])


def warm_checks(example, count: int, rows: int | None = None, directions: int = 2,
                **options) -> list[float]:
    """Wall times of ``count`` warm Monitor checks (every=1) with these options."""
    params, args = _problem(example, example.CHECK_ROWS if rows is None else rows)
    monitor = fastgrad.Monitor(mlp.loss, mlp.grad, every=1, sample=64, directions=directions,
                               seed=0, **options)
    monitor.step(params, args=args)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        monitor.step(params, args=args)
        times.append(time.perf_counter() - started)
    return times


def profile_check(example, count: int) -> tuple[dict, dict]:
    """Stage totals over ``count`` warm checks, per check (stages timed by wrapping them)."""
    params, args = _problem(example, example.CHECK_ROWS)
    monitor = fastgrad.Monitor(mlp.loss, mlp.grad, every=1, sample=64, directions=2, seed=0)
    monitor.step(params, args=args)  # compiled already; the rotation is set up
    timer = StageTimer()
    timer.wrap(pipeline.ParameterLayout, "from_theta", "layout")
    timer.wrap(pipeline, "analytic_gradient", "grad")
    timer.wrap(pipeline, "make_engine", "engine")
    timer.wrap(pipeline, "estimate_noise", "noise")
    timer.wrap(pipeline, "coordinate_derivatives", "coords")
    timer.wrap_context(executors, "limit_blas_threads", "blas")
    timer.wrap(threading.Thread, "start", "threads")
    timer.wrap(pipeline, "directional_tests", "directions")
    timer.wrap(directions.math, "fsum", "fsum")
    timer.wrap(pipeline, "build_report", "report")
    timer.wrap(engine.Engine, "at", "at")
    totals = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            report = monitor.step(params, args=args)
            totals.append(time.perf_counter() - started)
    finally:
        timer.restore()
    per = {key: timer.totals.get(key, 0.0) / count for key, _ in STAGES}
    theta = mlp.flatten(params)
    one = min(timeit.repeat(lambda: mlp.loss(theta, *args), number=200, repeat=5)) / 200
    facts = {"check_mean": statistics.mean(totals), "check_median": statistics.median(totals),
             "evaluations": report.evaluations, "loss_call": one, "n": theta.size}
    return per, facts


def fixed_costs(n: int) -> dict:
    """Each fixed cost alone, best of several repeats."""

    def best(fn, number):
        return min(timeit.repeat(fn, number=number, repeat=5)) / number

    def blas_entry():
        with limit_blas_threads(1):
            pass

    def two_threads():
        workers = [threading.Thread(target=lambda: None) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    vector = np.random.default_rng(0).standard_normal(n)
    return {
        "BLAS limiter entry + exit (threadpoolctl)": best(blas_entry, 20),
        "start + join 2 threads": best(two_threads, 50),
        f"math.fsum over n = {n:,}": best(lambda: math.fsum(vector), 50),
        f"np.sum over n = {n:,}": best(lambda: vector.sum(), 500),
        f"np.random standard_normal(n = {n:,})": best(
            lambda: np.random.default_rng(1).standard_normal(n), 200),
    }


# ----------------------------------------------------------------------------- output


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--profile", type=int, default=40, help="warm checks to profile")
    options = parser.parse_args(argv)
    example = load_example()

    compile_times = warm_up(example)
    runs = interleaved(example, options.steps, options.reps, options.every)
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    per_check = statistics.median(runs["per_check"])
    checks = runs["checks"][0]
    step_seconds = off / options.steps
    overhead = on / off - 1.0
    paired = statistics.median(runs["paired"])
    needed_every = per_check / (TARGET * step_seconds)
    print(f"## Monitor overhead: examples/train_mlp.py, {options.steps} SGD steps, "
          f"every={options.every}, sample=64, directions=2 ({options.reps} interleaved repetitions)\n")
    print("| quantity | value |")
    print("|---|---|")
    print(f"| loop without monitor (median) | {off:.3f} s ({_ms(step_seconds)} per step) |")
    print(f"| loop with monitor (median) | {on:.3f} s ({checks} checks) |")
    print(f"| overhead (ratio of medians) | {overhead:+.1%} |")
    print(f"| overhead (median of paired runs) | {paired:+.1%} |")
    print(f"| check time (median, warm) | {_ms(per_check)} |")
    share = statistics.median(runs["check_seconds"]) / off
    print(f"| the checks' own time over the plain loop's (median) | {share:+.1%} |")
    print(f"| target, on the checks' own time | < {TARGET:.0%} at every=100: "
          f"{'met' if share < TARGET else 'MISSED'} |")
    print(f"| every= that would meet 5% at this check cost | {math.ceil(needed_every)} |")
    print(f"| first check in the process (Numba compile of the chunk kernel) | "
          f"{compile_times['first']:.2f} s, a warm check {_ms(compile_times['warm'])}: compile "
          f"≈ {compile_times['first'] - compile_times['warm']:.2f} s, excluded above |")

    per, facts = profile_check(example, options.profile)
    print(f"\n## One warm check, stage by stage (mean of {options.profile}; n = {facts['n']:,}, "
          f"{facts['evaluations']} loss evaluations on {example.CHECK_ROWS} samples)\n")
    print("| stage | time per check | share |")
    print("|---|---|---|")
    for key, label in STAGES:
        print(f"| {label} | {_ms(per[key])} | {per[key] / facts['check_mean']:.0%} |")
    print(f"| **whole check** (mean; median {_ms(facts['check_median'])}) | "
          f"{_ms(facts['check_mean'])} | 100% |")
    ideal = facts["evaluations"] * facts["loss_call"]
    print(f"| for comparison: the loss alone, {facts['evaluations']} calls x "
          f"{facts['loss_call'] * 1e6:.1f} us, serial | {_ms(ideal)} | "
          f"{ideal / facts['check_mean']:.0%} |")

    print(f"\n## Warm check time by option (median of {options.profile}, interleaved)\n")
    variants = {
        "as in the example (all cores, 2 samples)": ({}, None),
        "workers=1 (no threads, no BLAS limiter), 2 samples": ({"workers": 1}, None),
        "workers=1, 1 sample": ({"workers": 1}, 1),
        "directions=0 (Monitor(directions=0)), 2 samples": ({"directions": 0}, None),
    }
    times = {label: [] for label in variants}
    for _ in range(max(1, options.profile // 10)):
        for label, (extra, rows) in variants.items():
            times[label] += warm_checks(example, 10, rows, **extra)
    print("| monitor options | check (median) | overhead at every=100 |")
    print("|---|---|---|")
    for label, values in times.items():
        check = statistics.median(values)
        print(f"| {label} | {_ms(check)} | {check / (100 * step_seconds):.1%} |")

    print("\n## Fixed costs, measured alone (best of 5)\n")
    print("| cost | time |")
    print("|---|---|")
    for label, seconds in fixed_costs(facts["n"]).items():
        print(f"| {label} | {_ms(seconds)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
