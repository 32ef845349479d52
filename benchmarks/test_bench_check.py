"""pytest-benchmark: a full fastgrad check of the compiled MLP loss against the naive loop.

    python -m pytest benchmarks/test_bench_check.py --benchmark-only

The default test run collects ``tests/`` only, so these run when asked.  For each
size (MLP ``d, h, c`` with ``m`` samples, ``n = d·h + h + h·c + c`` parameters) one
group of three benchmarks:

* ``fastgrad``: ``fastgrad.check`` of ``mlp.loss`` (Numba) on every core: all n
  coordinates, with its noise estimate and re-checks (``evaluations`` in the extra info);
* ``naive-numba``: the seed's loop, written as a user would in Python: for each i, copy
  θ, move coordinate i by ±eps, call the same compiled ``mlp.loss`` twice (2n calls);
* ``naive-numpy``: the same loop with ``mlp.loss_numpy`` (plain NumPy, BLAS products).

Compilation (the loss, and fastgrad's chunk kernel) is done before the timed rounds.
Compare within one run: the machine may be shared, and only ratios are meaningful.
No timing is asserted; each round's result is checked for correctness only.
"""

from __future__ import annotations

import pytest
from fastgrad_bench.peers import naive_gradient

import fastgrad as fg
from fastgrad.analysis import relative_error
from fastgrad.engine import available_cores
from fastgrad.models import mlp

#: name -> (d, h, c, m, rounds); n = 1,396 and 14,218.  A round of the large size takes
#: ~5-10 s (fastgrad on 2 cores ~6 s, naive-numba ~11 s, naive-numpy ~4 s).
SIZES = {
    "n1396": (24, 48, 4, 128, 5),
    "n14218": (100, 128, 10, 128, 3),
}
#: The classic recipe's step for the naive loop (see fastgrad.check's ``eps``).
EPS = 1e-7
#: The naive loop's relative error ‖D − g‖ / (‖D‖ + ‖g‖) with eps = 1e-7 on these models
#: is ~1e-8; far above this means the loop is broken, not slow.
NAIVE_CORRECT = 1e-6

HOW = ("fastgrad", "naive-numba", "naive-numpy")


@pytest.fixture(scope="module")
def problems():
    """The problems, with the losses and fastgrad's kernel compiled (untimed)."""
    built = {}
    for name, (d, h, c, m, _) in SIZES.items():
        problem = mlp.problem(d=d, h=h, c=c, m=m)
        args = (problem.X, problem.Y)
        mlp.loss(problem.theta, *args)
        mlp.loss_numpy(problem.theta, *args)
        fg.check(mlp.loss, mlp.grad, problem.params, args, sample=4, seed=0)
        analytic = mlp.flatten(mlp.grad(problem.params, *args))
        built[name] = (problem, args, analytic)
    return built


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("size", list(SIZES))
def test_full_check(benchmark, problems, size, how):
    problem, args, analytic = problems[size]
    d, h, c, m, rounds = SIZES[size]
    workers = available_cores() if how == "fastgrad" else 1
    benchmark.group = f"full check, MLP d={d} h={h} c={c} m={m}: n = {problem.n:,}"
    benchmark.extra_info.update(n=problem.n, d=d, h=h, c=c, m=m, workers=workers)

    if how == "fastgrad":
        report = benchmark.pedantic(fg.check, args=(mlp.loss, mlp.grad, problem.params, args),
                                    kwargs={"workers": workers}, rounds=rounds, iterations=1)
        assert report.passed, str(report)
        assert report.checked == problem.n
        benchmark.extra_info["evaluations"] = report.evaluations
    else:
        loss = mlp.loss if how == "naive-numba" else mlp.loss_numpy
        numerical = benchmark.pedantic(naive_gradient, args=(loss, problem.theta, args, EPS),
                                       rounds=rounds, iterations=1)
        assert relative_error(numerical, analytic) < NAIVE_CORRECT
        benchmark.extra_info["evaluations"] = 2 * problem.n
