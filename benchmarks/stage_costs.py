"""The four figures a change to the check's architecture must keep, as JSON on stdout.

* ``full_check_efficiency``: 2n·T_f / (workers·t) for a full check of the compiled MLP at
  n = 10,505 (T_f: one loss call from Python, t: the check's wall time), median of 3;
* ``monitor_ms``: one scheduled Monitor check (64 coordinates, 2 directions, 2 samples) of
  the same MLP, median of 40 back-to-back steps;
* ``fixed_ms``: a full check of a compiled sum of squares at n = 1,000, whose 2n evaluations
  cost microseconds: what a check costs besides its loss, median of 20;
* ``first_check_s``: import fastgrad and run one check of a small MLP in a fresh process
  (Numba's cache of the loss warm, the chunk kernel compiled in that process), median of 3.

Run it with two installs, one after the other and again, on one machine (the notes of
issue 12 did: ``python benchmarks/stage_costs.py`` under the venv before and after).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import numba
import numpy as np

import fastgrad as fg
from fastgrad.engine import available_cores
from fastgrad.models import mlp


@numba.njit(cache=True)
def squares(theta):
    return 0.5 * np.sum(theta * theta)


def median_time(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> dict:
    problem = mlp.problem(64, 150, 5, m=16)  # n = 64·150 + 150 + 150·5 + 5 = 10,505
    theta, args = problem.theta, (problem.X, problem.Y)
    grad = mlp.flatten(mlp.grad(problem.params, *args))
    fg.check(mlp.loss, grad, theta, args)  # compiled
    t_f = median_time(lambda: mlp.loss(theta, *args), 200)
    t = median_time(lambda: fg.check(mlp.loss, grad, theta, args), 3)
    workers = available_cores()
    efficiency = 2 * theta.size * t_f / (workers * t)

    few = (problem.X[:2], problem.Y[:2])
    monitor = fg.Monitor(mlp.loss, lambda p, X, Y: mlp.flatten(mlp.grad(mlp.unflatten(p, 64, 150, 5), X, Y)),
                         every=1, sample=64, directions=2, seed=0)
    for _ in range(3):
        monitor.step(theta, few)
    step = median_time(lambda: monitor.step(theta, few), 40)

    x = np.linspace(-1.0, 1.0, 1000)
    fg.check(squares, x, x)
    fixed = median_time(lambda: fg.check(squares, x, x), 20)

    code = ("import fastgrad as fg; from fastgrad.models import mlp; p = mlp.problem(6, 5, 3, m=20); "
            "fg.check(mlp.loss, mlp.grad, p.params, (p.X, p.Y))")
    firsts = []
    for _ in range(4):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        firsts.append(time.perf_counter() - started)
    return {"n": int(theta.size), "workers": workers, "T_f_us": t_f * 1e6,
            "full_check_s": t, "full_check_efficiency": efficiency,
            "monitor_ms": step * 1e3, "fixed_ms": fixed * 1e3,
            "first_check_s": statistics.median(firsts[1:])}


if __name__ == "__main__":
    print(json.dumps(main()))
