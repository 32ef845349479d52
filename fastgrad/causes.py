"""Likely causes of a failing gradient, fitted to what the check measured.

A check gives, for each checked coordinate i, the numerical derivative D_i, the analytic
g_i, θ_i and the allowed error a_i of D_i (a correct gradient has |D_i − g_i| ≤ a_i).
A *cause* is a simple model of how g was computed wrongly from the true derivative, with
at most one fitted parameter; it is reported when, over a group's checked entries, it
explains **every** entry within the same bounds (the failing ones included), on at least
:data:`OVERDETERMINED` informative entries (a one-parameter fit of one entry proves
nothing).  The models, tried in this order for each failing group:

- ``zero``: g_i = 0 on every failing entry (a gradient never written);
- ``sign`` / ``scale``: g ≈ c·D, c fitted by weighted least squares; |g_i − c·D_i| ≤
  |c|·a_i + |D_i|·σ_c (the error of c·D_i, and of c itself).  c named when it is −1, an
  integer m ≥ 2, or 1/m within that bound;
- ``missing_term``: D − g ≈ λ·θ (an L2 term λ/2·‖θ‖² missing, or extra when λ < 0), or
  D − g ≈ κ, a constant; |D_i − g_i − λθ_i| ≤ a_i + |θ_i|·σ_λ;
- ``transpose``: a 2-D group's g matches Dᵀ (square), or Dᵀ laid out in the group's shape;
- ``shift``: g matches D moved by k = ±1, ±2 along one axis (an off-by-one index), the
  entries with no partner left free;
- ``swap``: every failing entry pairs with another one, g_i ≈ D_j and g_j ≈ D_i;
  ``groups_swapped``: two failing groups of one shape each hold the other's D;
- ``isolated``: at most :data:`HANDFUL` entries fail and no model above fits: listed.

A failing group that none fits gets a cause of kind ``none`` ("no simple cause fits").
A passing check has no causes.  For a sampled check the fits use the sample only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .parameters import ParameterLayout

#: A fit must explain at least this many informative entries (more than its one parameter).
OVERDETERMINED = 2
#: At most this many failing entries of a group are "isolated" and listed one by one.
HANDFUL = 5
#: Offsets tried for an off-by-one index.
SHIFTS = (1, -1, 2, -2)


@dataclass(frozen=True)
class Cause:
    """One likely cause: the group, its kind, a sentence, and the fit that supports it."""

    group: str
    kind: str
    sentence: str
    evidence: dict = field(default_factory=dict)  # the fitted figure, entries explained, worst fit

    def to_dict(self) -> dict:
        return {"group": self.group, "kind": self.kind, "sentence": self.sentence,
                "evidence": dict(self.evidence)}


@dataclass(frozen=True)
class GroupEntries:
    """A group's checked entries: flat positions within the group, and D, g, θ, a there."""

    name: str
    shape: tuple[int, ...]
    positions: np.ndarray  # 0..size-1, sorted
    numerical: np.ndarray
    analytic: np.ndarray
    theta: np.ndarray
    allowed: np.ndarray  # > 0: floored at the smallest positive float
    failing: np.ndarray  # bool: the check's own verdict on each entry (score > 1)

    def on_grid(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per checked entry) in the group's shape, NaN where unchecked."""
        grid = np.full(math.prod(self.shape), np.nan)
        grid[self.positions] = values
        return grid.reshape(self.shape)


def likely_causes(layout: ParameterLayout, coords: np.ndarray, numerical: np.ndarray,
                  analytic: np.ndarray, theta: np.ndarray, allowed: np.ndarray,
                  score: np.ndarray) -> list[Cause]:
    """The causes of each failing group (see the module docstring), from the checked
    coordinates ``coords`` and, at each, D, g, θ, the allowed error and the score |D − g| /
    allowed (> 1: the entry fails); [] when nothing fails."""
    groups = _entries_by_group(layout, coords, numerical, analytic, theta, allowed, score)
    failing = [entries for entries in groups if entries.failing.any()]
    causes, explained = _swapped_groups(failing), set[str]()
    for cause in causes:
        explained.update(cause.evidence["groups"])
    for entries in failing:
        if entries.name not in explained:
            causes.append(_cause_of(entries))
    return _merged(causes)


def _merged(causes: list[Cause]) -> list[Cause]:
    """One cause for the groups that share a named factor (a 1/m missing everywhere): its
    group the names joined, its entries summed; other causes as they are."""
    shared: dict[tuple, list[Cause]] = {}
    for cause in causes:
        named = cause.evidence.get("named")
        if cause.kind in ("scale", "sign") and named is not None:
            shared.setdefault((cause.kind, named), []).append(cause)
    merged = []
    for cause in causes:
        same = shared.get((cause.kind, cause.evidence.get("named")), [cause])
        if len(same) == 1:
            merged.append(cause)
        elif cause is same[0]:
            names = ", ".join(c.group for c in same)
            entries = sum(c.evidence["entries"] for c in same)
            merged.append(Cause(names, cause.kind, cause.sentence.replace(
                f"{cause.group}:", f"{names}:", 1).replace(
                _entries(cause.evidence["entries"]), _entries(entries), 1),
                {**cause.evidence, "entries": entries, "groups": [c.group for c in same]}))
    return merged


def _entries_by_group(layout, coords, numerical, analytic, theta, allowed, score) -> list[GroupEntries]:
    order = np.argsort(coords, kind="stable")
    ordered = coords[order]
    found = []
    for group in layout.groups:
        first, last = np.searchsorted(ordered, [group.offset, group.stop])
        rows = order[first:last]
        if rows.size:
            found.append(GroupEntries(
                group.name, group.shape, ordered[first:last] - group.offset,
                numerical[rows].astype(np.float64), analytic[rows].astype(np.float64),
                theta[rows].astype(np.float64),
                np.maximum(allowed[rows].astype(np.float64), np.finfo(np.float64).tiny),
                score[rows] > 1.0))
    return found


def _cause_of(entries: GroupEntries) -> Cause:
    for fit in (_zero, _scale, _missing_term, _transpose, _shift, _swap, _isolated):
        cause = fit(entries)
        if cause is not None:
            return cause
    count = int(entries.failing.sum())
    return Cause(entries.name, "none", f"{entries.name}: no simple cause fits the "
                 f"{_entries(count)} that disagree (a scale, a sign, a missing term, a transpose, "
                 "a shift, swapped entries, zeros)", {"failing": count})


# ----------------------------------------------------------------- the models
def _zero(e: GroupEntries) -> Cause | None:
    failing = e.failing
    if not (e.analytic[failing] == 0.0).all():
        return None
    count, size = int(failing.sum()), e.positions.size
    where = f"on all {_entries(size)}" if count == size else f"on {count:,} of {_entries(size)}"
    return Cause(e.name, "zero", f"{e.name}: analytic = 0 where numerical is not, {where}: "
                 "a gradient never written?", {"failing": count, "checked": size})


def _scale(e: GroupEntries) -> Cause | None:
    informative = np.abs(e.numerical) > e.allowed
    if informative.sum() < OVERDETERMINED:
        return None
    c, spread = _weighted_fit(e.numerical, e.analytic, e.allowed)

    def explains(factor: float, uncertainty: float) -> float:
        bound = abs(factor) * e.allowed + np.abs(e.numerical) * uncertainty
        return _worst(e.analytic - factor * e.numerical, bound)

    named = _named_factor(c, lambda value: explains(value, 0.0) <= 1.0)
    worst = explains(c, spread) if named is None else explains(named[0], 0.0)
    if worst > 1.0:
        return None
    size = e.positions.size
    evidence = {"factor": c, "uncertainty": spread, "worst_fit": worst, "entries": size}
    if named is not None:
        evidence["named"] = named[0]
    if named is not None and named[0] == -1.0:
        return Cause(e.name, "sign", f"{e.name}: analytic = -numerical on all {_entries(size)}: "
                     "a sign flipped (a minus lost, or added)?", evidence)
    if named is not None:
        _, text, guess = named
        return Cause(e.name, "scale", f"{e.name}: analytic = numerical {text} on all "
                     f"{_entries(size)}: {guess}", evidence)
    return Cause(e.name, "scale", f"{e.name}: analytic = {c:.4g} × numerical on all "
                 f"{_entries(size)}: a constant factor wrong?", evidence)


def _named_factor(c: float, fits: Callable[[float], bool]) -> tuple[float, str, str] | None:
    """(value, how it reads, a guess) for c ≈ −1, m or 1/m (m an integer ≥ 2) when the exact
    value explains the entries; None otherwise."""
    if fits(-1.0):
        return -1.0, "", ""
    if abs(c) >= 1.5 and fits(float(round(c))):
        m = round(c)
        guess = ("a factor 2 too many (a squared error's 2 counted twice)?" if m == 2
                 else f"a factor {m} too many (a mean taken as a sum, m = {m})?")
        return float(m), f"× {m}", guess
    if 0.0 < abs(c) < 0.75 and fits(1.0 / round(1.0 / c)):
        m = round(1.0 / c)
        guess = ("a factor 2 missing (d/dx x² = 2x)?" if m == 2
                 else f"a 1/m applied twice, or where none belongs (m = {abs(m)})?")
        return 1.0 / m, f"/ {m}", guess
    return None


def _missing_term(e: GroupEntries) -> Cause | None:
    residual = e.numerical - e.analytic
    size = e.positions.size
    for name, basis in (("theta", e.theta), ("constant", np.ones_like(e.theta))):
        if (np.abs(basis) > 0).sum() < OVERDETERMINED:
            continue
        slope, spread = _weighted_fit(basis, residual, e.allowed)
        worst = _worst(residual - slope * basis, e.allowed + np.abs(basis) * spread)
        if worst > 1.0:
            continue
        evidence = {"term": name, "coefficient": slope, "uncertainty": spread, "worst_fit": worst,
                    "entries": size}
        if name == "theta":
            what = "missing" if slope > 0 else "extra"
            text = (f"{e.name}: numerical - analytic = {slope:.3g} × {e.name} on all "
                    f"{_entries(size)}: an L2 term {what} (lambda = {abs(slope):.3g})?")
        else:
            text = (f"{e.name}: numerical - analytic = {slope:.3g} on all {_entries(size)}: "
                    "a constant term missing?")
        return Cause(e.name, "missing_term", text, evidence)
    return None


def _transpose(e: GroupEntries) -> Cause | None:
    if len(e.shape) != 2 or min(e.shape) < 2:
        return None
    rows, cols = e.shape
    # Dᵀ read in C order is Dᵀ laid out in the group's shape (square or not)
    return _matches(e, e.on_grid(e.numerical).T.ravel(), e.on_grid(e.allowed).T.ravel(), "transpose",
                    f"{e.name}: analytic = numerical transposed"
                    + ("" if rows == cols else f" ({cols}×{rows}, laid out as {rows}×{cols})")
                    + " on {explained}: a transpose missing or extra?", {})


def _shift(e: GroupEntries) -> Cause | None:
    for axis, length in enumerate(e.shape):
        for k in SHIFTS:
            if abs(k) >= length:
                continue
            moved = _moved(e.on_grid(e.numerical), axis, k)
            bound = _moved(e.on_grid(e.allowed), axis, k)
            where = f" along axis {axis}" if len(e.shape) > 1 else ""
            cause = _matches(e, moved.ravel(), bound.ravel(), "shift",
                             f"{e.name}: analytic[i] = numerical[i {'+' if k > 0 else '-'} {abs(k)}]"
                             f"{where} on {{explained}}: an off-by-one index?",
                             {"axis": axis, "offset": k})
            if cause is not None:
                return cause
    return None


def _moved(grid: np.ndarray, axis: int, k: int) -> np.ndarray:
    """out[..., i, ...] = grid[..., i + k, ...] along ``axis``, NaN where i + k is outside."""
    out = np.full(grid.shape, np.nan)
    length = grid.shape[axis]
    source = [slice(None)] * grid.ndim
    target = [slice(None)] * grid.ndim
    source[axis] = slice(max(k, 0), length + min(k, 0))
    target[axis] = slice(max(-k, 0), length - max(k, 0))
    out[tuple(target)] = grid[tuple(source)]
    return out


def _matches(e: GroupEntries, partner: np.ndarray, partner_allowed: np.ndarray, kind: str,
             text: str, evidence: dict) -> Cause | None:
    """A cause when g_i equals a partner entry's D (``partner``, NaN: no partner or not
    checked) within that D's allowed error on every entry that has a partner, at least
    OVERDETERMINED of them where the partner's D differs from the entry's own (entries with no
    partner, at an edge or unchecked, are left free)."""
    theirs = partner[e.positions]
    allowed = np.where(np.isfinite(theirs), partner_allowed[e.positions], 0.0)
    known = np.isfinite(theirs)
    theirs = np.where(known, theirs, 0.0)
    agrees = np.abs(e.analytic - theirs) <= allowed
    telling = known & (np.abs(theirs - e.numerical) > allowed + e.allowed)
    if not agrees[known].all() or (telling & agrees).sum() < OVERDETERMINED:
        return None
    count = int(known.sum())
    return Cause(e.name, kind, text.format(explained=f"{_entries(count)} with a partner"),
                 {**evidence, "entries": count})


def _swap(e: GroupEntries) -> Cause | None:
    failing = np.flatnonzero(e.failing)
    if failing.size < 2 or failing.size > 2 * HANDFUL:
        return None
    g, d, a = e.analytic[failing], e.numerical[failing], e.allowed[failing]
    match = np.abs(g[:, None] - d[None, :]) <= a[None, :]
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for i in range(failing.size):
        if i in used:
            continue
        partners = [int(j) for j in np.flatnonzero(match[i] & match[:, i]) if j != i and j not in used]
        if not partners:
            return None
        used.update((i, partners[0]))
        pairs.append((int(e.positions[failing[i]]), int(e.positions[failing[partners[0]]])))
    labels = [f"{_label(e, i)} <-> {_label(e, j)}" for i, j in pairs]
    return Cause(e.name, "swap", f"{e.name}: {', '.join(labels)} hold each other's derivative: "
                 "swapped indices?", {"pairs": [[_label(e, i), _label(e, j)] for i, j in pairs]})


def _isolated(e: GroupEntries) -> Cause | None:
    failing = np.flatnonzero(e.failing)
    if failing.size > HANDFUL or failing.size == e.positions.size:
        return None
    labels = [_label(e, int(e.positions[i])) for i in failing]
    return Cause(e.name, "isolated", f"{e.name}: only {', '.join(labels)} "
                 f"({'disagrees' if len(labels) == 1 else 'disagree'}; the other "
                 f"{_entries(e.positions.size - failing.size)} agree): a special case (an edge, "
                 "an index) handled wrongly?", {"coordinates": labels})


def _swapped_groups(failing: list[GroupEntries]) -> list[Cause]:
    """Pairs of failing groups, fully checked and of one shape, each holding the other's D."""
    causes: list[Cause] = []
    taken: set[str] = set()
    for k, first in enumerate(failing):
        for second in failing[k + 1:]:
            if first.name in taken or second.name in taken or first.shape != second.shape \
                    or not np.array_equal(first.positions, second.positions) \
                    or first.positions.size < OVERDETERMINED:
                continue
            if _worst(first.analytic - second.numerical, second.allowed) <= 1.0 \
                    and _worst(second.analytic - first.numerical, first.allowed) <= 1.0:
                taken.update((first.name, second.name))
                causes.append(Cause(first.name, "groups_swapped",
                                    f"{first.name}, {second.name}: each gradient matches the other's "
                                    "numerical derivative: the two groups swapped?",
                                    {"groups": [first.name, second.name]}))
    return causes


# ----------------------------------------------------------------- helpers
def _weighted_fit(x: np.ndarray, y: np.ndarray, allowed: np.ndarray) -> tuple[float, float]:
    """The slope s of y ≈ s·x weighted by 1/allowed², and its standard error
    1/√(Σ x²/allowed²) (allowed taken as each y's standard error); weights normalised by the
    smallest allowed error, and x by its largest magnitude, so that no square overflows or
    underflows (a loss scaled by 1e±200).  x must not be all 0."""
    weight = (allowed.min() / allowed) ** 2
    size = float(np.abs(x).max())
    unit = x / size
    norm = float(np.sum(weight * unit * unit))
    return (float(np.sum(weight * unit * y)) / norm / size,
            float(allowed.min()) / size / math.sqrt(norm))


def _worst(residual: np.ndarray, bound: np.ndarray) -> float:
    """max |residual| / bound (0 where both are 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(residual == 0.0, 0.0, np.abs(residual) / bound)
    return float(ratio.max(initial=0.0))


def _entries(count: int) -> str:
    return f"{count:,} entr{'y' if count == 1 else 'ies'}"


def _label(e: GroupEntries, position: int) -> str:
    """``W2[3, 17]``, or the bare name of a 0-d group."""
    if not e.shape:
        return e.name
    index = np.unravel_index(position, e.shape)
    return f"{e.name}[{', '.join(str(int(i)) for i in index)}]"
