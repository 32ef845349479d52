"""The Monitor's overhead in an example training loop (SGD on the MLP, NumPy backprop).

The loop is that of ``examples/train_mlp.py`` (batch 256, the monitor given 2 samples of
it, every=100, sample=64, directions=2), written here so that the installed package needs
nothing outside it.

Both loops run with BLAS limited to one thread: on small products a multi-threaded
OpenBLAS is several times slower and far noisier on a small shared machine, which would
make the baseline, and so the overhead, meaningless.  A check limits BLAS itself anyway.
The target is held to the checks' own time (``Monitor.seconds``) over the plain loop's: the
loops' wall-clock difference, also reported, swings by ±10 % on a shared 2-core machine.
"""

from __future__ import annotations

import statistics
from functools import partial

import numpy as np

from fastgrad.engine.blas import limit_blas_threads
from fastgrad.models import mlp
from fastgrad.monitor import Monitor

from .common import Line, Section, Sizes, fmt_seconds, judged, timed

TARGET_OVERHEAD = 0.05
#: Samples of the batch handed to the monitor: the gradient's correctness does not depend on it.
MONITOR_SLICE = 2
LEARNING_RATE = 0.05
SAMPLE, DIRECTIONS = 64, 2


def train(problem, steps: int, batch: int, monitor: Monitor | None, seed: int = 0) -> dict:
    """Minibatch SGD with ``mlp.grad``; ``monitor.step`` after every gradient, if given."""
    params = {key: value.copy() for key, value in problem.params.items()}
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rows = rng.integers(0, problem.m, size=batch)
        X, Y = problem.X[rows], problem.Y[rows]
        grads = mlp.grad(params, X, Y)
        if monitor is not None:
            monitor.step(params, args=(X[:MONITOR_SLICE], Y[:MONITOR_SLICE]))
        for key in params:
            params[key] -= LEARNING_RATE * grads[key]
    return params


def _monitor(sizes: Sizes, **options) -> Monitor:
    return Monitor(mlp.loss, mlp.grad, every=sizes.monitor_every, sample=SAMPLE,
                   directions=DIRECTIONS, seed=0, on_fail="raise", **options)


def _rounds(problem, sizes: Sizes, variants: dict) -> dict:
    """Per variant (None: no monitor), the loop's wall times and the monitors' own seconds."""
    steps, batch = sizes.monitor_steps, sizes.monitor_batch
    results: dict[str, dict] = {name: {"wall_s": [], "monitor_s": [], "checks": 0} for name in variants}
    for _ in range(max(1, sizes.monitor_repeats)):
        for name, options in variants.items():
            monitor = None if options is None else _monitor(sizes, **options)
            results[name]["wall_s"].append(timed(partial(train, problem, steps, batch,
                                                         monitor))[1])
            if monitor is not None:
                results[name]["monitor_s"].append(monitor.seconds)
                results[name]["checks"] = len(monitor.history)
    return results


def measure_monitor(sizes: Sizes) -> Section:
    """Wall time of the loop with and without a Monitor (every=100), rounds interleaved."""
    problem = mlp.problem(*sizes.monitor_shape, m=16 * sizes.monitor_batch)
    steps, batch, every = sizes.monitor_steps, sizes.monitor_batch, sizes.monitor_every
    variants = {"plain": None, "monitor": {}, "monitor_workers_1": {"workers": 1}}
    with limit_blas_threads(1):
        for options in variants.values():  # warm-up: compiles the kernel
            train(problem, every + 1, batch, None if options is None else _monitor(sizes, **options))
        results = _rounds(problem, sizes, variants)
    default_blas = _rounds(problem, sizes, {"plain": None, "monitor": {}})
    t_plain = statistics.median(results["plain"]["wall_s"])
    per_step = t_plain / steps
    figures = {"n": problem.n, "steps": steps, "batch": batch, "every": every,
               "monitor_slice": MONITOR_SLICE, "sample": SAMPLE, "directions": DIRECTIONS,
               "blas_threads": 1, "seconds_per_training_step": per_step, "variants": results,
               "default_blas_threads": default_blas}
    section = Section("monitor", "Monitor overhead in a training loop", figures)
    for name in ("monitor", "monitor_workers_1"):
        result = results[name]
        wall = statistics.median(result["wall_s"]) / t_plain - 1.0
        share = statistics.median(result["monitor_s"]) / t_plain  # the checks' own time
        per_check = statistics.median(result["monitor_s"]) / max(result["checks"], 1)
        result.update(wall_overhead=wall, checks_share=share, seconds_per_check=per_check,
                      break_even_step_s=per_check / (TARGET_OVERHEAD * every))
        text = (f"{share:+.1%} in the checks ({result['checks']} of {fmt_seconds(per_check)}), "
                f"{wall:+.1%} by wall clock; {steps} steps of {fmt_seconds(per_step)}")
        if name == "monitor":
            why = (f"one check takes {fmt_seconds(per_check)} = {per_check / per_step:.0f} "
                   f"training steps of {fmt_seconds(per_step)}; at every={every} the overhead "
                   f"is under {TARGET_OVERHEAD:.0%} only for steps of at least "
                   f"{fmt_seconds(result['break_even_step_s'])}")
            result["why"] = "" if share < TARGET_OVERHEAD else why
            section.lines.append(judged(
                f"Monitor(every={every}, sample={SAMPLE}, directions={DIRECTIONS}), SGD on the "
                f"MLP n = {problem.n:,}, batch {batch}, monitor given {MONITOR_SLICE} samples "
                "(judged on the checks' own time)",
                text, f"< {TARGET_OVERHEAD:.0%}", share < TARGET_OVERHEAD, why))
        else:
            section.lines.append(Line("  the same Monitor with workers=1", text))
    plain = statistics.median(default_blas["plain"]["wall_s"])
    overhead = statistics.median(default_blas["monitor"]["wall_s"]) / plain - 1.0
    default_blas["overhead"] = overhead
    section.lines.append(Line("  the same loops with BLAS's default threads (noisier)",
                              f"{overhead:+.1%} ({steps} steps of {fmt_seconds(plain / steps)})"))
    return section
