"""``fg.check`` with its defaults against the seed's naive loop, on a NumPy loss, run as a
user's script: ``python benchmarks/naive_vs_defaults.py [m]`` (m samples, default 256).

Issue 13's promise: a NumPy loss is never slower under the defaults than the naive loop.
Run as a script, the default executor is the calling thread (workers would import the
script again), so this is the comparison a script's author sees.  Interleaved, 3 rounds,
the order alternating; prints every time, the medians and their ratio.
"""

from __future__ import annotations

import statistics
import sys
import time

from fastgrad_bench.peers import _flat_grad, naive_gradient

import fastgrad as fg
from fastgrad.models import mlp

if __name__ == "__main__":
    m = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    problem = mlp.problem(64, 128, 10, m=m)
    theta, args, grad = problem.theta, (problem.X, problem.Y), _flat_grad(problem)
    times: dict[str, list[float]] = {"naive": [], "defaults": []}
    report = None
    for round_ in range(3):
        for name in ("naive", "defaults") if round_ % 2 == 0 else ("defaults", "naive"):
            started = time.perf_counter()
            if name == "naive":
                naive_gradient(mlp.loss_numpy, theta, args)
            else:
                report = fg.check(mlp.loss_numpy, grad, theta, args)
            times[name].append(time.perf_counter() - started)
    assert report is not None
    print(f"n = {problem.n:,}, m = {m}: the check ran on {report.executor} ({report.workers} worker)")
    print(*[note for note in report.notes if note.startswith("BLAS")], sep="\n")
    for name, seconds in times.items():
        listed = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"{name}: {listed} s, median {statistics.median(seconds):.2f} s")
    print(f"naive / defaults: {statistics.median(times['naive']) / statistics.median(times['defaults']):.3f}")
