"""Sampled gradient checks inside a training loop, on a schedule, at bounded cost.

>>> mon = Monitor(loss, grad, every=100, sample=64, directions=2, seed=0, on_fail="warn")
>>> for step in range(steps):
...     mon.step(theta, args=(X_batch, y_batch))   # does nothing off schedule

Each scheduled check takes the next coordinates of a rotation through every
group, so that over ⌈N_g / k_g⌉ checks each coordinate of group g is checked
once.  The rotation visits group g in the order j ↦ (a·j + b) mod N_g with a
random stride a coprime to N_g: a bijection that needs no O(n) permutation.
The gradient's correctness does not depend on the batch: passing a few samples
of the batch as ``args`` makes each check cheap.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validation as validate
from .errors import GradientMismatch
from .parameters import Gradient, ParameterLayout, Theta
from .pipeline import Continuation, run_check
from .report import Report
from .sampling import ALPHA, Coverage, GroupCoverage, allocate, coverage_of

#: The options of :func:`fastgrad.check` that a Monitor passes on to each of its checks.
PASSED_OPTIONS = ("kwargs", "method", "eps", "dtype", "workers", "engine", "executor", "progress",
                  "gradient_eps")


class GradientCheckWarning(UserWarning):
    """A monitored gradient check failed (``on_fail="warn"``)."""


@dataclass(frozen=True)
class _Rotation:
    """Group g's coordinates in the order offset + (stride·j + shift) mod size."""

    offset: int
    size: int
    stride: int
    shift: int

    def take(self, start: int, count: int) -> np.ndarray:
        j = np.arange(start, start + count, dtype=np.int64) % self.size
        return self.offset + (self.stride * j + self.shift) % self.size


def _coprime_stride(size: int, rng: np.random.Generator) -> int:
    if size <= 2:
        return 1
    while True:
        stride = int(rng.integers(1, size))
        if math.gcd(stride, size) == 1:
            return stride


class Monitor:
    """Checks the gradient every ``every`` calls of :meth:`step`, on a rotating sample.

    Parameters
    ----------
    loss, grad
        As for :func:`fastgrad.check`; ``grad`` is usually a callable ``grad(theta, *args)``.
    every : int
        Check on calls 0, every, 2·every, ...
    sample : int
        Coordinates per check, stratified over the groups like ``check(sample=...)``.
    directions : int
        Random directions per check (0 for none).
    seed : int, optional
        Seed of the rotation and the directions.
    on_fail : "warn", "raise" or callable
        What to do with a failing report: warn (GradientCheckWarning), raise
        :class:`fastgrad.GradientMismatch` (an AssertionError carrying ``.report``), or
        call ``on_fail(report)``.
    **options
        Passed to :func:`fastgrad.check`: ``kwargs``, ``method``, ``eps``, ``dtype``,
        ``workers``, ``engine``, ``executor``, ``progress``; and ``gradient_eps``, the machine
        epsilon of the precision ``grad`` computes in where its arrays do not show it (a
        bfloat16 gradient returned in float64).  Every option is checked here, before any
        evaluation.
    """

    def __init__(self, loss: Callable, grad: Gradient, *, every: int = 100, sample: int = 64,
                 directions: int = 2, seed: int | None = None,
                 on_fail: str | Callable[[Report], object] = "warn", **options: Any) -> None:
        validate.known_options(options, PASSED_OPTIONS, "Monitor")
        every = validate.positive_int("every", every)
        sample = validate.positive_int("sample", sample)
        validated = validate.check_options(loss, directions=directions, seed=seed,
                                           directions_minimum=0, **options)
        self._options = validated  # each step adds its args
        on_fail = validate.on_fail(on_fail)
        self.loss, self.grad = loss, grad
        self.every, self.sample, self.directions = every, sample, validated.directions
        self.on_fail = on_fail
        self.options = options
        self.rng = np.random.default_rng(validated.seed)
        self.calls = 0
        self.seconds = 0.0  # spent in checks
        self.history: list[dict] = []
        self._rotations: list[_Rotation] | None = None
        self._layout: ParameterLayout | None = None  # theta's, at the first check
        self._guarantee: list[GroupCoverage] | None = None  # what each check's sample vouches for
        self._counts: list[int] = []
        self._checks = 0
        self._directional_step: float | None = None  # where the last directional tests settled

    def step(self, theta: Theta, args: tuple | list = ()) -> Report | None:
        """Check on schedule and return the report; otherwise do nothing and return None."""
        call = self.calls
        self.calls += 1
        if call % self.every:
            return None
        started = time.perf_counter()
        coverage = self._next_sample(theta)
        options = dataclasses.replace(self._options, args=validate.args(args))
        report = run_check(self.loss, self.grad, theta, options, Continuation(
            self._layout, coverage, self.rng, self._directional_step))
        if report.directions and self._options.eps is None:
            self._directional_step = min(result.step for result in report.directions)
        elapsed = time.perf_counter() - started
        self.seconds += elapsed
        self.history.append(self.summary(call, report, elapsed))
        if not report.passed:
            self._fail(report)
        return report

    def _next_sample(self, theta) -> Coverage:
        """The next coordinates of the rotation, and what they vouch for.

        The same counts per group at every check, hence the same guarantee.
        """
        if self._rotations is None:
            layout, _ = ParameterLayout.from_theta(theta, self._options.dtype)
            self._layout = layout
            self._rotations = [_Rotation(g.offset, g.size, _coprime_stride(g.size, self.rng),
                                         int(self.rng.integers(g.size))) for g in layout.groups]
            self._counts = allocate([g.size for g in layout.groups], self.sample)
        start = self._checks
        self._checks += 1
        coords = np.sort(np.concatenate([rotation.take(start * count, count) for rotation, count
                                         in zip(self._rotations, self._counts, strict=True)]))
        if self._guarantee is None:
            assert self._layout is not None  # set with the rotations
            self._guarantee = coverage_of(self._layout, coords, presorted=True).groups
        return Coverage(coords, self._guarantee, ALPHA)

    @staticmethod
    def summary(call: int, report: Report, seconds: float) -> dict:
        """The entry of :attr:`history` for the check at call ``call``."""
        return {"step": call, "verdict": report.verdict, "relative_error": report.relative_error,
                "checked": report.checked, "failed": report.failed,
                "directions_failed": sum(d.failed for d in report.directions),
                "evaluations": report.evaluations, "seconds": seconds,
                "worst": report.worst_label}

    def _fail(self, report: Report) -> None:
        act_on_failure(self.on_fail, report, self.history[-1]["step"], stacklevel=4)


def act_on_failure(on_fail: str | Callable[[Report], object], report: Report, step: int,
                   stacklevel: int = 3) -> None:
    """Warn (GradientCheckWarning), raise GradientMismatch or call ``on_fail(report)``.

    What a Monitor does with a failing report.
    """
    if on_fail == "raise":
        raise GradientMismatch(report)
    if on_fail == "warn":
        worst = report.worst[0].label if report.worst else "a direction"
        warnings.warn(f"gradient check failed at step {step}: {report.failed} coordinate(s) "
                      f"disagree, worst {worst}", GradientCheckWarning, stacklevel=stacklevel)
    elif callable(on_fail):
        on_fail(report)
