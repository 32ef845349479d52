"""Sampled checks: which coordinates to check, and what the sample could have missed.

Stratification.  The budget of k coordinates is shared over the named groups so
that none goes unchecked: every group first gets the floor (a group no larger
than the floor is so checked whole), and the rest of the budget is shared in
proportion to the group sizes.  The floor, 16 coordinates, is the sample on
which a bug that touches ≥ 17% of a group is caught with probability ≥ 95%,
since (1 − 0.17)^16 < 0.05.  ``sample=`` never checks fewer than min(N_g, 16)
coordinates of a group: a smaller budget is raised to Σ_g min(N_g, 16), and the
Coverage says so (``floor_raised_from``).  (A Monitor's per-check budget instead
lowers the floor to k // groups: its rotation covers every coordinate in turn.)

Guarantee.  Sampling k of a group's N coordinates without replacement, a bug
that touches K of them is missed with the hypergeometric probability

    P(miss) = C(N − K, k) / C(N, k) = Π_{j<k} (N − K − j)/(N − j) ≤ (1 − k/N)^K,

so it is caught with probability ≥ 1 − α once K is at least the smallest K with
P(miss) ≤ α.  Over all groups, whatever the placement of K bugged coordinates,
P(miss) ≤ (1 − f_min)^K with f_min the smallest sampled fraction; and a bug touching
more than N − k of the N coordinates is caught for certain (it cannot avoid all k
sampled ones), so no guarantee names more than N − k + 1 coordinates.  "Caught"
means: a bugged coordinate is in the sample; its error is then judged like any
other coordinate's, against its finite-difference error.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import cast

import numpy as np

from .errors import InputError
from .parameters import ParameterLayout

#: Coordinates a sampled group gets at least (see the module docstring).
FLOOR = 16
#: The confidence of the stated guarantees: caught with probability ≥ 1 − ALPHA.
ALPHA = 0.05


def log_miss_probability(size: int, bugged: int, sampled: int) -> float:
    """Log of P(miss) = C(N − K, k) / C(N, k) for K bugged of N, k sampled; −inf when k > N − K."""
    if sampled > size - bugged:
        return -math.inf
    return _log_comb(size - bugged, sampled) - _log_comb(size, sampled)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _first(low: int, high: int, holds) -> int:
    """The smallest x in [low, high] where the monotone predicate ``holds`` is true (else high)."""
    while low < high:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle + 1
    return low


@functools.lru_cache(maxsize=4096)  # a Monitor asks the same question at every check
def smallest_caught(size: int, sampled: int, alpha: float = ALPHA) -> int:
    """The smallest K whose P(miss) ≤ α: bugs touching ≥ K coordinates are caught w.p. ≥ 1 − α.

    P(miss) falls as K grows, and is 0 at K = N when k ≥ 1.
    """
    log_alpha = math.log(alpha)
    return _first(1, size, lambda bugged: log_miss_probability(size, bugged, sampled) <= log_alpha)


def sample_size_for(size: int, fraction: float, alpha: float) -> int:
    """The smallest k such that a bug touching ⌈fraction·N⌉ coordinates is caught w.p. ≥ 1 − α."""
    bugged = max(1, math.ceil(fraction * size))
    log_alpha = math.log(alpha)
    return _first(1, size, lambda sampled: log_miss_probability(size, bugged, sampled) <= log_alpha)


def allocate(sizes: list[int], budget: int, floor: int = FLOOR) -> list[int]:
    """Per-group sample sizes summing to ``budget`` (at least one per group).

    Each group first gets min(size, floor) — a group no larger than the floor is
    then whole — with the floor lowered to budget // groups when the budget is
    small; what is left is shared in proportion to the group sizes (largest
    remainders), never beyond a group's size.
    """
    floor = max(1, min(floor, budget // max(len(sizes), 1)))
    return _share_rest(sizes, [min(size, floor) for size in sizes], budget)


def floored_allocation(sizes: list[int], budget: int, floor: int = FLOOR) -> list[int]:
    """Per-group sample sizes, at least min(size, floor) each whatever the budget.

    The rest of ``budget`` (if any) is shared in proportion to the group sizes, as in
    :func:`allocate`; the sizes sum to max(budget, Σ min(size, floor)).
    """
    return _share_rest(sizes, [min(size, floor) for size in sizes], budget)


def _share_rest(sizes: list[int], counts: list[int], budget: int) -> list[int]:
    """``counts`` raised until they sum to ``budget``, never beyond a group's size.

    Shared in proportion to the sizes of the groups not yet whole (largest remainders).
    """
    remaining = budget - sum(counts)
    while remaining > 0:
        open_groups = [i for i, size in enumerate(sizes) if counts[i] < size]
        if not open_groups:
            break
        total = sum(sizes[i] for i in open_groups)
        shares = [remaining * sizes[i] / total for i in open_groups]
        extra = [int(share) for share in shares]
        by_remainder = sorted(range(len(open_groups)), key=lambda j: extra[j] - shares[j])
        for j in by_remainder[: remaining - sum(extra)]:
            extra[j] += 1
        for j, i in enumerate(open_groups):
            added = min(extra[j], sizes[i] - counts[i])
            counts[i] += added
            remaining -= added
    return counts


@dataclass(frozen=True)
class GroupCoverage:
    """What the sample of one group can vouch for."""

    name: str
    size: int
    sampled: int
    caught_from: int  # bugs touching ≥ this many coordinates are caught w.p. ≥ 1 − alpha

    @property
    def caught_fraction(self) -> float:
        """The share of the group that a bug must touch to be caught w.p. ≥ 1 − alpha."""
        return self.caught_from / self.size

    def to_dict(self) -> dict:
        """The fields and ``caught_fraction``, as plain values (for JSON)."""
        return {**self.__dict__, "caught_fraction": self.caught_fraction}


@dataclass(frozen=True)
class Coverage:
    """The sampled coordinates and the guarantee they give, per group and overall."""

    coords: np.ndarray  # sorted flat indices
    groups: list[GroupCoverage]
    alpha: float
    #: The k that ``sample=`` asked for when the floor of min(N_g, 16) per group raised
    #: the sample above it; None when it did not.
    floor_raised_from: int | None = None

    @property
    def sampled(self) -> int:
        """The number of sampled coordinates, k."""
        return int(self.coords.size)

    @property
    def evaluations(self) -> int:
        """Loss evaluations of the central differences (2 per coordinate), before re-checks."""
        return 2 * self.sampled

    @property
    def caught_from(self) -> int | None:
        """Overall: bugs touching ≥ this many coordinates anywhere are caught w.p. ≥ 1 − alpha.

        From P(miss) ≤ (1 − f_min)^K, f_min the smallest sampled fraction, and never
        above N − k + 1, from which on a bug cannot avoid the sample; with one group, its
        exact hypergeometric value.  None when a group is not sampled at all (a bug
        confined to it is never caught).
        """
        smallest = min(g.sampled / g.size for g in self.groups)
        if smallest <= 0.0:
            return None
        if len(self.groups) == 1:
            return self.groups[0].caught_from
        if smallest >= 1.0:
            return 1
        size = sum(g.size for g in self.groups)
        bound = math.ceil(math.log(self.alpha) / math.log1p(-smallest))
        return min(bound, size - self.sampled + 1)

    def lines(self) -> list[str]:
        """The guarantee as text: overall, then one line per group."""
        size = sum(g.size for g in self.groups)
        if self.caught_from is None:
            overall = "a group is not sampled: a bug confined to it cannot be caught"
        else:
            overall = (f"a bug touching at least {_share(self.caught_from, size)} of them is "
                       f"caught with probability >= {1 - self.alpha:.0%}")
        lines = [f"sampled {self.sampled:,} of {size:,} coordinates: {overall}"]
        if self.floor_raised_from is not None:
            lines.append(f"  (sample= asked for {self.floor_raised_from:,}: raised to "
                         f"{self.sampled:,} by the floor of min(group size, {FLOOR}) per group)")
        for g in self.groups:
            if g.sampled == 0:
                what = "not sampled"
            elif g.sampled == g.size:
                what = "checked whole"
            else:
                what = (f"a bug touching >= {_share(g.caught_from, g.size)} of it is caught "
                        f"w.p. >= {1 - self.alpha:.0%}")
            lines.append(f"  {g.name}: {g.sampled:,} of {g.size:,}, {what}")
        return lines

    def __str__(self) -> str:
        cost = (f"cost: {self.evaluations:,} loss evaluations "
                "(+ about 12 at and near θ: f(θ), the noise estimate)")
        return "\n".join([*self.lines(), cost])

    def to_dict(self) -> dict:
        """The counts and guarantees, overall and per group, as plain values (for JSON)."""
        return {"sampled": self.sampled, "alpha": self.alpha, "caught_from": self.caught_from,
                "floor_raised_from": self.floor_raised_from, "evaluations": self.evaluations,
                "groups": [g.to_dict() for g in self.groups]}


def _share(count: int, size: int) -> str:
    return f"{count:,} ({count / size:.2%})"


def sample_coordinates(layout: ParameterLayout, *, sample=None, detect=None, seed=None,
                       alpha: float | None = None) -> Coverage:
    """Stratified sample of flat coordinates, and the guarantee it gives.

    ``sample=k`` (int or fraction of n; at least min(N_g, 16) per group), ``sample=`` flat
    indices, or ``detect=(p, alpha)`` (k per group for a bug touching a fraction p caught
    w.p. ≥ 1 − alpha).
    """
    from . import _validation as validate

    sample, detect = validate.sample(sample), validate.detect(detect)
    if sample is not None and detect is not None:
        raise InputError("give sample= or detect=, not both")
    sizes = [g.size for g in layout.groups]
    if isinstance(sample, (np.ndarray, list, tuple)):
        return coverage_of(layout, validate.sample_indices(sample, layout.size),
                           ALPHA if alpha is None else alpha, presorted=True)
    budget = None
    if detect is not None:
        fraction, alpha = detect
        counts = [sample_size_for(size, fraction, alpha) for size in sizes]
    else:
        budget = _budget(sample, layout.size)
        counts = floored_allocation(sizes, budget)
    rng = np.random.default_rng(seed)
    chosen = [group.offset + rng.choice(group.size, size=count, replace=False)
              for group, count in zip(layout.groups, counts, strict=True)]
    coverage = coverage_of(layout, np.concatenate(chosen), ALPHA if alpha is None else alpha)
    if budget is not None and coverage.sampled > budget:
        coverage = dataclasses.replace(coverage, floor_raised_from=budget)
    return coverage


#: The streams of one check: children of its seed's SeedSequence, by spawn key.
SAMPLE_STREAM, DIRECTIONS_STREAM = 0, 1


def generators(seed: int | None) -> tuple[np.random.Generator, np.random.Generator, int]:
    """Independent generators for the sample and the directions of one check, from ``seed``.

    ``seed`` None draws fresh entropy; the entropy returned reproduces both generators.
    """
    entropy = check_entropy(seed)
    return stream(entropy, SAMPLE_STREAM), stream(entropy, DIRECTIONS_STREAM), entropy


def check_entropy(seed: int | None) -> int:
    """The entropy of ``seed`` (None: fresh), which reproduces every stream of a check."""
    # An int seed is its own entropy, and fresh entropy is an int (NumPy types both int | Sequence[int]).
    return cast(int, np.random.SeedSequence(seed).entropy)


def stream(entropy: int, key: int) -> np.random.Generator:
    """Stream ``key`` of a check: the generator of SeedSequence(entropy).spawn(2)[key].

    Built alone, without spawning the others (a check needs one or two, at ~10 µs each).
    """
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(key,)))


def coverage_of(layout: ParameterLayout, coords: np.ndarray, alpha: float = ALPHA,
                presorted: bool = False) -> Coverage:
    """The guarantee given by checking the flat coordinates ``coords`` (sorted here)."""
    coords = np.asarray(coords, dtype=np.int64)
    if not presorted:
        coords = np.sort(coords)
    counts = np.bincount(layout.group_index(coords), minlength=len(layout.groups))
    groups = [GroupCoverage(g.name, g.size, int(count), smallest_caught(g.size, int(count), alpha))
              for g, count in zip(layout.groups, counts, strict=True)]
    return Coverage(coords, groups, alpha)


def _budget(sample, size: int) -> int:
    """Coordinates to sample: ``sample`` (validated) as a count, at most ``size``."""
    if isinstance(sample, float):
        return max(1, round(sample * size))
    return min(int(sample), size)
