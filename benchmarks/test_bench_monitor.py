"""pytest-benchmark: the cost of fastgrad.Monitor in examples/train_mlp.py's training loop.

    python -m pytest benchmarks/test_bench_monitor.py --benchmark-only

Group "monitor-loop": the SGD loop (MLP n = 9,610, batch 256, STEPS steps) without and
with the monitor (every=100, sample=64, directions=2, checks on 2 samples), and one
round of both interleaved (the overhead of each pair in extra_info).  Group
"monitor-check": one warm check.  Numba's compile of the chunk kernel happens in the
module fixture, before any timed round, and its time is in every benchmark's extra_info
("compile_seconds").  The target is < 5% overhead at every=100; see
benchmarks/monitor_overhead.py for the breakdown of a check.  No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path

import pytest

import fastgrad
from fastgrad.models import mlp

ROOT = Path(__file__).resolve().parents[1]
STEPS = 500
EVERY = 100
ROUNDS = 5


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_mlp", ROOT / "examples" / "train_mlp.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_mlp", module)
    spec.loader.exec_module(module)
    X, Y = module.teacher_data(256, 64, 10)
    params = mlp.init_params(64, 128, 10)
    args = (X[:module.CHECK_ROWS], Y[:module.CHECK_ROWS])
    monitor = fastgrad.Monitor(mlp.loss, mlp.grad, every=1, sample=64, directions=2, seed=0)
    started = time.perf_counter()
    monitor.step(params, args=args)  # compiles fastgrad's kernel for mlp.loss
    first = time.perf_counter() - started
    started = time.perf_counter()
    monitor.step(params, args=args)
    module.compile_seconds = first - (time.perf_counter() - started)
    return module


def _check_result(result, monitored: bool) -> None:
    assert result.loss < 0.5 * 2.302  # below half of log(10), the loss at chance
    if monitored:
        assert len(result.monitor.history) == STEPS // EVERY
        assert all(entry["verdict"] == "pass" for entry in result.monitor.history)


@pytest.mark.benchmark(group="monitor-loop")
@pytest.mark.parametrize("monitored", [False, True], ids=["without-monitor", "with-monitor"])
def test_training_loop(benchmark, example, monitored):
    results = []

    def run():
        result = example.train(STEPS, monitor=monitored, every=EVERY)
        results.append(result)
        return result

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    for result in results:
        _check_result(result, monitored)
    benchmark.extra_info["compile_seconds"] = example.compile_seconds
    benchmark.extra_info["steps"] = STEPS
    if monitored:
        per_check = [e["seconds"] for r in results for e in r.monitor.history]
        benchmark.extra_info["checks_per_round"] = STEPS // EVERY
        benchmark.extra_info["check_seconds_median"] = statistics.median(per_check)
        benchmark.extra_info["check_share_of_loop_median"] = statistics.median(
            r.monitor.seconds / r.seconds for r in results)


@pytest.mark.benchmark(group="monitor-loop")
def test_interleaved_pair(benchmark, example):
    """One round = the loop without, then with the monitor (order alternating)."""
    pairs = []

    def run():
        order = (False, True) if len(pairs) % 2 == 0 else (True, False)
        seconds = {}
        for monitored in order:
            result = example.train(STEPS, monitor=monitored, every=EVERY)
            _check_result(result, monitored)
            seconds[monitored] = result.seconds
        pairs.append(seconds)

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    overheads = [p[True] / p[False] - 1.0 for p in pairs]
    benchmark.extra_info["compile_seconds"] = example.compile_seconds
    benchmark.extra_info["overhead_median"] = statistics.median(overheads)
    benchmark.extra_info["overhead_target"] = 0.05
    benchmark.extra_info["without_median_s"] = statistics.median(p[False] for p in pairs)
    benchmark.extra_info["with_median_s"] = statistics.median(p[True] for p in pairs)


@pytest.mark.benchmark(group="monitor-check")
@pytest.mark.parametrize("workers", [None, 1], ids=["all-cores", "one-worker"])
def test_one_warm_check(benchmark, example, workers):
    X, Y = example.teacher_data(256, 64, 10)
    params = mlp.init_params(64, 128, 10)
    args = (X[:example.CHECK_ROWS], Y[:example.CHECK_ROWS])
    options = {} if workers is None else {"workers": workers}
    monitor = fastgrad.Monitor(mlp.loss, mlp.grad, every=1, sample=64, directions=2, seed=0,
                               **options)
    monitor.step(params, args=args)
    report = benchmark(monitor.step, params, args=args)
    assert report.passed and report.checked == 64
    benchmark.extra_info["evaluations"] = report.evaluations
    benchmark.extra_info["compile_seconds"] = example.compile_seconds
