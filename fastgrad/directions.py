"""Directional checks, and group testing to localise what they find.

Directional derivative.  For a direction v (scaled per coordinate by
s_i = max(1, |θ_i|), like the coordinate steps), the loss is evaluated at
x_± = fl(θ ± h0·v), and with the offsets actually taken Δ_± = x_± − θ:

    numerical N = (f(x_+) − f(x_-)) / 2h0,     analytic A = g·(Δ_+ − Δ_-) / 2h0.

N − A is judged by the same rule as a coordinate (see :mod:`.analysis`): against
z·r, r = √2·σ/2h0 plus the rounding of the dot product, and, when that is
exceeded, again at 2h0 with Richardson extrapolation and a truncation estimate.

Sensitivity.  An error δ in a single coordinate i of the gradient moves A − N by
v_i·δ, with v_i = Z·s_i, Z ~ N(0, 1).  Over m independent directions it shows
(|v_i·δ| > T, T the allowed error) with probability 1 − P(|Z| < T/(s_i·|δ|))^m,
which is ≥ 1 − α once s_i·|δ| ≥ T/q, q = Φ⁻¹((1 + α^{1/m}) / 2).

Localisation.  A failing set of coordinates is halved, and a direction supported
on one half is tested: if it fails the error is there, else in the other half.
One test costs 2 evaluations.  From the Gaussian tests, which measured the
rounding r and the truncation T of their differences, the localising tests take
the step h* that balances the two (:func:`balanced_step`) and predict their own
truncation as c·h*²·‖v‖ (:func:`truncation_coefficient`); only a residual within
a margin of that prediction is settled by a second step.  The prediction can be
far too small (the Gaussian direction's third derivative may nearly cancel, a
half's need not), so no conclusion rests on it alone: "dense" needs both halves
to fail again when settled at the second step (their truncation measured), and a
descent whose coordinate the check does not confirm is run again with every
failing test settled so.  Both cost evaluations only when a prediction misled.
First over the groups, then within the group.  A group both of whose halves fail
holds a dense error and is named as a whole; otherwise the descent ends on one
coordinate, which a coordinate check confirms.  Then the set without what was
found is tested again, until it passes.  Localising directions have random signs
and magnitudes uniform on [1/2, 3/2] (times s_i): every coordinate weighs at least
half its scale, so a single error cannot hide behind a small Gaussian weight, and
two errors cancel with probability 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np

from . import analysis
from .engine import Engine
from .parameters import ParameterLayout
from .sampling import ALPHA

#: At most this many separate findings (coordinates or dense groups) per localisation.
MAX_FINDINGS = 8
#: A localising test fails at once when its residual exceeds z·r by this many predicted
#: truncation errors; closer calls are settled at a second step (see Localiser).
TRUNCATION_MARGIN = 4.0


@dataclass(frozen=True)
class DirectionResult:
    """One directional test: numerical and analytic directional derivatives (per unit h0)."""

    label: str
    numerical: float
    analytic: float
    error_estimate: float
    score: float
    evaluations: int
    truncation: float = 0.0  # |D(h) − R|, when the test was refined at 2h
    norm: float = 0.0  # ‖v‖₂ of the direction
    rounding: float = 0.0  # r, the rounding std of D(h)
    step: float = 0.0  # h0 of the test
    moved: bool = True  # whether θ ± h·v differ from θ at all (a tiny step may move nothing)
    kinks: float = 0.0  # slope jumps allowed for: the loss is not smooth along v (see test)

    @property
    def failed(self) -> bool:
        return self.score > 1.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "failed": self.failed}


@dataclass
class Localisation:
    """What group testing found: wrong coordinates, groups with a dense error, and its cost."""

    coordinates: list[int] = field(default_factory=list)  # flat indices, each confirmed
    dense: list[str] = field(default_factory=list)  # group names (or ranges) with a dense error
    evaluations: int = 0
    complete: bool = False  # the set without the findings passes again
    reproduced: bool = False  # a localising test (on part of θ) failed too

    def to_dict(self, layout: ParameterLayout) -> dict:
        return {"coordinates": [layout.label(c) for c in self.coordinates], "dense": self.dense,
                "evaluations": self.evaluations, "complete": self.complete,
                "reproduced": self.reproduced}


@dataclass
class DirectionalChecks:
    """The directional tests of a check, and the localisation when one failed."""

    results: list[DirectionResult]
    sensitivity: float  # single-coordinate error s_i·|δ| caught w.p. ≥ 1 − ALPHA
    localisation: Localisation | None = None
    confirmed: dict[int, tuple[float, float]] = field(default_factory=dict)  # coord -> (D, error)

    @property
    def failed(self) -> bool:
        return any(result.failed for result in self.results)

    @property
    def unconfirmed(self) -> bool:
        """A test failed, but no localising test (a direction on part of θ, at the
        balanced step) failed again, and nothing was named.  A directional step that
        crosses kinks (ReLU, hinge) or runs past the asymptotic range of its truncation
        estimate (float32) can do that; a real error, tested again on the part it lies
        in, shows again, even one too small for the coordinate check to confirm."""
        found = self.localisation
        return (self.failed and found is not None and not found.reproduced
                and not (found.coordinates or found.dense))


class DirectionalTester:
    """Directional tests of the analytic gradient at θ, sharing the loss's noise estimate."""

    def __init__(self, run: Engine, theta: np.ndarray, analytic: np.ndarray, noise_references,
                 relative_step: float, values_dtype: np.dtype, multiplier: float,
                 f0: float | None = None, analytic_eps: float = 0.0, analytic_scale: float = 0.0):
        self.run = run
        self.f0 = f0  # f(θ): with it, a disagreeing test checks that f is smooth along v
        #: the gradient's machine epsilon (0: its rounding not allowed for) and max |g|
        self.analytic_eps, self.analytic_scale = analytic_eps, analytic_scale
        self.theta = theta
        self.analytic = analytic
        self.noise_references = noise_references  # (σ, f) pairs: see analysis.evaluation_noise
        self.values_dtype = values_dtype  # precision of f's values: see NoiseEstimate
        self.step = relative_step
        self.multiplier = multiplier
        self.base = theta.astype(np.float64, copy=False)
        self.scale = np.maximum(1.0, np.abs(self.base))

    def gaussian(self, rng: np.random.Generator, count: int | None = None) -> np.ndarray:
        """v = Z·s, Z ~ N(0, I); with ``count``, that many as the rows of one array (the
        same values as ``count`` draws of one)."""
        shape = self.theta.size if count is None else (count, self.theta.size)
        directions = rng.standard_normal(shape)
        directions *= self.scale
        return directions

    def localising(self, rng: np.random.Generator, support: np.ndarray) -> np.ndarray:
        """v_i = ±U(1/2, 3/2)·s_i on ``support`` (a boolean mask), 0 elsewhere."""
        weights = rng.uniform(0.5, 1.5, self.theta.size) * rng.choice((-1.0, 1.0), self.theta.size)
        return np.where(support, weights * self.scale, 0.0)

    def _difference(self, direction: np.ndarray, multiple: float):
        """(N, A, r, moved, S, σ) at step t = multiple·h0: numerical, analytic and rounding
        std, per unit h0, whether the two points differ at all, the second difference
        S(t) = f(θ+tv) − 2f(θ) + f(θ−tv) (NaN without f(θ)) and the noise σ of the two values."""
        return self.differences(direction[np.newaxis], multiple)[0]

    def differences(self, directions: np.ndarray, multiple: float) -> list[tuple]:
        """:meth:`_difference` of each row of ``directions`` (m × n), in m-row array
        operations: the NumPy calls of one direction serve them all."""
        dtype = self.theta.dtype
        step = multiple * self.step
        move = directions * step
        plus = (self.base + move).astype(dtype, copy=False)
        minus = (self.base - move).astype(dtype, copy=False)
        terms = np.subtract(plus, minus, out=move, dtype=np.float64)  # the offsets taken
        moved = terms.any(axis=1).tolist()
        # the analytic gradient's own rounding, u_g·(|g_i| + max|g|) a coordinate (as for a
        # coordinate's allowed error), times the offsets: a float32 gradient against float64
        # differences errs by that much
        offsets = np.abs(terms).sum(axis=1) * self.analytic_scale if self.analytic_eps else None
        values = [(self.run.at(plus[j], "along a direction", fresh=True),
                   self.run.at(minus[j], "along a direction", fresh=True))
                  for j in range(len(directions))]
        terms *= self.analytic
        analytic = (terms.sum(axis=1) / (2.0 * step)).tolist()  # pairwise along each row
        magnitude = np.abs(terms, out=terms).sum(axis=1)
        own = [0.0] * len(directions) if offsets is None \
            else (self.analytic_eps * (magnitude + offsets)).tolist()
        magnitude = magnitude.tolist()
        # NumPy's pairwise sum of the n products g_i·Δ_i errs by at most about
        # u·(log2 n + 1)·Σ|g_i·Δ_i| (Higham, Accuracy and Stability, §4.2).
        pairwise = float(np.finfo(np.float64).eps) * (math.log2(max(terms.shape[1], 2)) + 1.0)
        results = []
        for (f_plus, f_minus), a, size, shifted, gradient_rounding in zip(
                values, analytic, magnitude, moved, own, strict=True):
            noise = float(analysis.evaluation_noise(self.noise_references, f_plus, f_minus,
                                                    self.values_dtype))
            rounding = math.sqrt(2.0) * noise / (2.0 * step)
            rounding += (pairwise * size + gradient_rounding) / (2.0 * step)
            bend = math.nan if self.f0 is None else (f_plus - self.f0) + (f_minus - self.f0)
            results.append(((f_plus - f_minus) / (2.0 * step), a, rounding, shifted, bend, noise))
        return results

    def test(self, direction: np.ndarray, label: str,
             predicted_truncation: float | None = None, first: tuple | None = None
             ) -> DirectionResult:
        """N − A judged against z·r; on disagreement, again at 2h0 with Richardson.

        With ``predicted_truncation`` T (from a related direction, see :class:`Localiser`),
        a residual beyond z·r + TRUNCATION_MARGIN·T fails without the second step.
        ``first``: the difference at h0, if already made (see :meth:`differences`).
        """
        numerical, analytic, rounding, moved, bend, noise = first or self._difference(direction, 1.0)
        first_rounding = rounding
        error = self.multiplier * rounding
        evaluations, truncation, kinks = 2, 0.0, 0.0
        residual = abs(numerical - analytic)
        if predicted_truncation is not None \
                and residual > error + TRUNCATION_MARGIN * predicted_truncation:
            error += TRUNCATION_MARGIN * predicted_truncation
        elif residual > error:
            numerical2, analytic2, rounding2, _, bend2, noise2 = self._difference(direction, 2.0)
            evaluations += 2
            extrapolated = analysis.richardson(numerical, numerical2)
            analytic_r = analysis.richardson(analytic, analytic2)
            truncation = abs((numerical - analytic) - (extrapolated - analytic_r))
            error = (self.multiplier * float(analysis.richardson_rounding_std(rounding, rounding2))
                     + truncation)
            first = (numerical - analytic, numerical2 - analytic2, rounding, rounding2)
            numerical, analytic = extrapolated, analytic_r
            if abs(numerical - analytic) > error:  # kinks along v? (see analysis)
                kinks = float(analysis.kink_allowance(bend, bend2, max(noise, noise2),
                                                      self.step, self.multiplier))
                d1, d2, r1, r2 = first
                if abs(numerical - analytic) > error + kinks and analysis.may_be_unconverged(
                        numerical - analytic, error + kinks, d1, d2):
                    numerical4, analytic4, rounding4, *_ = self._difference(direction, 4.0)
                    evaluations += 2
                    kinks += float(analysis.unconverged_allowance(
                        d1, d2, numerical4 - analytic4, r1, r2, rounding4, self.multiplier))
                error += kinks
        score = float(analysis.disagreement(numerical, analytic, error))
        return DirectionResult(label, float(numerical), float(analytic), float(error), score,
                               evaluations, float(truncation), float(np.linalg.norm(direction)),
                               float(first_rounding), self.step, moved, float(kinks))

    def with_step(self, step: float) -> DirectionalTester:
        """The same tester at another relative step."""
        return DirectionalTester(self.run, self.theta, self.analytic, self.noise_references, step,
                                 self.values_dtype, self.multiplier, self.f0,
                                 self.analytic_eps, self.analytic_scale)

    def sensitivity(self, results: list[DirectionResult], alpha: float = ALPHA) -> float:
        """The single-coordinate error s_i·|δ| caught w.p. ≥ 1 − α by these Gaussian directions."""
        quantile = NormalDist().inv_cdf((1.0 + alpha ** (1.0 / len(results))) / 2.0)
        return max(r.error_estimate for r in results) / quantile


def run_directions(tester: DirectionalTester, count: int, rng: np.random.Generator
                   ) -> list[DirectionResult]:
    """``count`` Gaussian directional tests.

    A test whose refinement found the truncation T above z·r is repeated at the
    step that balances the two (:func:`balanced_step`): its allowed error, hence the
    smallest error it can see, falls from about T to about z·r at h*.  Once a test
    fails, the others are not repeated.
    """
    directions = tester.gaussian(rng, count)
    firsts = tester.differences(directions, 1.0)
    results = [tester.test(v, f"direction {j + 1}", first=first)
               for j, (v, first) in enumerate(zip(directions, firsts, strict=True))]
    for j, (direction, result) in enumerate(zip(directions, results, strict=True)):
        if any(r.failed for r in results):
            break  # the verdict is made: the rest keep their first, coarser test
        if result.truncation > tester.multiplier * result.rounding:
            step = balanced_step([result], tester.multiplier)
            again = tester.with_step(step).test(direction, result.label)
            results[j] = replace(again, evaluations=again.evaluations + result.evaluations)
    return results


class Localiser:
    """Group testing over the flat coordinates: :meth:`run` names what is wrong."""

    def __init__(self, tester: DirectionalTester, layout: ParameterLayout,
                 confirm, rng: np.random.Generator, budget: int,
                 references: list[DirectionResult]):
        self.coefficient = truncation_coefficient(references)  # T ≈ c·h²·‖v‖
        self.tester = tester.with_step(balanced_step(references, tester.multiplier))
        self.layout = layout
        self.confirm = confirm  # flat index -> (disagrees, evaluations)
        self.rng = rng
        self.budget = budget
        self.found = Localisation()
        self.excluded = np.zeros(layout.size, dtype=bool)
        self.careful = False  # settle every failing test at a second step (see fails)
        self.unsettled: np.ndarray | None = None  # the first direction that failed unsettled

    def fails(self, ranges: list[tuple[int, int]], settle: bool = False) -> bool:
        """Test a localising direction supported on ``ranges``, minus what was found.

        A disagreement beyond the predicted truncation fails at once, unless ``settle``
        (or :attr:`careful`): then it is judged again at 2h with its truncation measured."""
        support = np.zeros(self.layout.size, dtype=bool)
        for start, stop in ranges:
            support[start:stop] = True
        support &= ~self.excluded
        if not support.any():
            return False
        direction = self.tester.localising(self.rng, support)
        predicted = self.coefficient * self.tester.step ** 2 * np.linalg.norm(direction)
        result = self.tester.test(direction, "localising",
                                  None if settle or self.careful else predicted)
        self.found.evaluations += result.evaluations
        if result.failed and result.evaluations == 2:  # on a predicted truncation alone
            if self.unsettled is None:
                self.unsettled = direction
        else:
            # A test whose step moved nothing cannot clear anything.
            self.found.reproduced |= result.failed or not result.moved
        return result.failed

    def run(self) -> Localisation:
        """:meth:`search`; where it names nothing and only tests that failed on a predicted
        truncation reproduced the failure, the first of them again, settled (its truncation
        measured, kinks allowed for): a directional failure that no settled localising test
        reproduces is not confirmed (the verdict warns), as on a ReLU network, whose
        localising directions cross kinks too."""
        found = self.search()
        if not (found.reproduced or found.coordinates or found.dense) and self.unsettled is not None:
            settled = self.tester.test(self.unsettled, "localising")
            found.evaluations += settled.evaluations
            found.reproduced = settled.failed
        return found

    def search(self) -> Localisation:
        """Find up to MAX_FINDINGS wrong coordinates or dense groups; the full set is known to fail."""
        live = [(g.offset, g.stop) for g in self.layout.groups]
        for finding in range(MAX_FINDINGS):
            if self.found.evaluations >= self.budget:
                return self.found
            if finding and not self.fails(live):
                self.found.complete = True
                return self.found
            where = self._find_one(live)
            if where is None:
                return self.found
            start, stop = where
            self.excluded[start:stop] = True
            if stop - start == 1:
                self.found.coordinates.append(start)
            else:
                self.found.dense.append(self._name(start, stop))
        self.found.complete = self.found.evaluations < self.budget and not self.fails(live)
        return self.found

    def _find_one(self, live: list[tuple[int, int]]) -> tuple[int, int] | None:
        """A failing coordinate (start, start + 1), a dense group's range, or None; a
        descent that ends on nothing is run again with every failing test settled."""
        found = self._descend(live)
        if found is None and not self.careful and self.found.evaluations < self.budget:
            self.careful = True  # a predicted truncation may have misled the descent
            found = self._descend(live)
        return found

    def _descend(self, live: list[tuple[int, int]]) -> tuple[int, int] | None:
        """Over the groups, then halving within one, to a confirmed coordinate or a group
        both of whose halves fail."""
        current = live
        while len(current) > 1:  # over the groups
            first, second = _split_ranges(current)
            current = first if self.fails(first) else second
        start, stop = current[0]
        if stop - start > 1:  # is the error dense in this group?
            left, right = _halves(start, stop)
            left_fails, right_fails = self.fails([left]), self.fails([right])
            if left_fails and right_fails and not self.careful:  # settled, both again?
                left_fails, right_fails = (self.fails([left], settle=True),
                                           self.fails([right], settle=True))
            if left_fails and right_fails:
                return start, stop
            if not (left_fails or right_fails):
                return None
            start, stop = left if left_fails else right
        while stop - start > 1:  # binary descent to one coordinate
            left, right = _halves(start, stop)
            start, stop = left if self.fails([left]) else right
        disagrees, evaluations = self.confirm(start)
        self.found.evaluations += evaluations
        return (start, stop) if disagrees else None

    def _name(self, start: int, stop: int) -> str:
        group = self.layout.groups[int(self.layout.group_index(start))]
        if (start, stop) == (group.offset, group.stop):
            return group.name
        return f"{self.layout.label(start)}..{self.layout.label(stop - 1)}"


def truncation_coefficient(results: list[DirectionResult]) -> float:
    """c = max T/(h²·‖v‖) over the refined tests: the truncation model T(h, v) ≈ c·h²·‖v‖.

    The third-derivative term h²·D³f[v,v,v]/6 of incoherent coordinates grows like
    ‖v‖; taking the largest c over several random directions guards against one
    whose D³f happened to nearly cancel.
    """
    return max((r.truncation / (r.step ** 2 * r.norm) for r in results if r.truncation > 0.0),
               default=0.0)


def balanced_step(results: list[DirectionResult], multiplier: float) -> float:
    """h* = (z·ρ / (2·c·‖v‖))^(1/3), at most the tests' step: it minimises z·ρ/h + c·h²·‖v‖.

    ρ = r·h is the rounding error times the step (r ∝ 1/h), c from
    :func:`truncation_coefficient`, ‖v‖ the largest norm tested.  Tests that were
    never refined (T small) keep their step.
    """
    step = max(r.step for r in results)
    coefficient = truncation_coefficient(results)
    if coefficient <= 0.0:
        return step
    rounding = max(r.rounding * r.step for r in results)
    norm = max(r.norm for r in results)
    return min(step, (multiplier * rounding / (2.0 * coefficient * norm)) ** (1.0 / 3.0))


def _halves(start: int, stop: int) -> tuple[tuple[int, int], tuple[int, int]]:
    middle = (start + stop) // 2
    return (start, middle), (middle, stop)


def _split_ranges(ranges: list[tuple[int, int]]):
    """Split a list of ranges in two lists of about equal total size (at least one range each)."""
    sizes = np.cumsum([stop - start for start, stop in ranges])
    cut = int(np.searchsorted(sizes, sizes[-1] / 2.0))
    cut = min(max(cut, 1), len(ranges) - 1)
    return ranges[:cut], ranges[cut:]
