"""``fastgrad demo``: check a from-scratch MLP's backprop, then a copy with a planted bug."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .api import check
from .models import mlp


def run_demo(out: TextIO = sys.stdout, *, d: int = 64, h: int = 128, c: int = 10, m: int = 128,
             seed: int = 0, workers: int | None = None) -> int:
    """Print two reports; return 0 when the correct gradient passes and the buggy one fails."""
    started = time.perf_counter()
    problem = mlp.problem(d=d, h=h, c=c, m=m, seed=seed)
    args = (problem.X, problem.Y)
    print(f"fastgrad demo: a two-layer tanh MLP written from scratch (Numba forward pass, "
          f"hand-written backprop), {problem.n:,} parameters, {m} samples, softmax "
          f"cross-entropy.\n", file=out)

    print("1. The correct backprop", file=out)
    correct = check(mlp.loss, mlp.grad, problem.params, args, workers=workers)
    print(_indent(correct), "\n", file=out)

    print("2. The same backprop with one planted bug: tanh'(z) written as 1 - tanh(z) "
          "instead of 1 - tanh(z)**2", file=out)
    buggy = check(mlp.loss, mlp.grad_buggy, problem.params, args, workers=workers)
    print(_indent(buggy), "\n", file=out)

    as_expected = correct.passed and not buggy.passed
    print(f"{'As expected' if as_expected else 'UNEXPECTED'}: correct -> {correct.verdict}, "
          f"planted bug -> {buggy.verdict}; {time.perf_counter() - started:.1f} s in all, "
          f"Numba compilation included.", file=out)
    return 0 if as_expected else 1


def _indent(report) -> str:
    return "\n".join("   " + line if line else line for line in str(report).splitlines())
