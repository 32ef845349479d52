"""The report: what a check found, as text for people and a dict for programs.

The verdict and its reasons are made by :mod:`.verdict`; this module only presents them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np

from . import analysis
from .analysis import CORRECT_BELOW, WRONG_ABOVE, relative_error, seed_band
from .causes import Cause, likely_causes
from .directions import DirectionResult
from .parameters import ParameterLayout, format_label
from .sampling import FLOOR, Coverage, GroupCoverage
from .verdict import Verdict, worse

#: How many of the worst coordinates a report lists.
WORST_SHOWN = 10


@dataclass(frozen=True)
class CoordinateResult:
    """One checked coordinate: its name, both derivatives and the error allowed."""

    label: str
    group: str
    index: tuple[int, ...]
    analytic: float
    numerical: float
    difference: float  # numerical − analytic
    error_estimate: float  # z·r + t, the largest |difference| a correct gradient should show
    score: float  # |difference| / error_estimate
    status: str  # "ok", "fail", "kink" (agrees with a one-sided derivative at a kink) or
    # "unresolved" (agrees with a one-sided derivative, no kink resolved: a warning)

    @property
    def allowed(self) -> float:
        """The report core's name of ``error_estimate``."""
        return self.error_estimate

    def to_dict(self) -> dict:
        """The fields, the index as a list, and ``allowed`` (= ``error_estimate``)."""
        return {**self.__dict__, "index": list(self.index), "allowed": self.error_estimate}


@dataclass(frozen=True)
class GroupResult:
    """Summary of one named parameter group."""

    name: str
    shape: tuple[int, ...]
    checked: int
    failed: int
    max_difference: float
    max_score: float
    relative_error: float
    verdict: str

    def to_dict(self) -> dict:
        """The fields, the shape as a list."""
        return {**self.__dict__, "shape": list(self.shape)}


@dataclass(frozen=True)
class CheckedCoordinates:
    """The checked coordinates' results.

    A report builds its tables and gradients from them when they are first read: a
    Monitor reads a verdict, not a table.
    """

    layout: ParameterLayout
    coords: np.ndarray  # flat indices, in the rows' order
    numerical: np.ndarray
    analytic: np.ndarray  # at coords
    error: np.ndarray
    score: np.ndarray
    kink: np.ndarray  # bool
    unresolved: np.ndarray  # bool
    analytic_flat: np.ndarray  # every coordinate (the report's own copy)
    theta: np.ndarray  # θ at coords (float64), for the causes' fits

    def marks(self) -> np.ndarray:
        """Per row: "kink", "unresolved" or ""."""
        return np.where(self.kink, "kink", np.where(self.unresolved, "unresolved", ""))


class CheckReport:
    """The core every fastgrad report shares, whatever it checked.

    ``kind`` names the check ("gradient", "vjp", "jvp", "hvp", "jacobian", "hessian",
    "taylor"); ``verdict`` is "pass", "warn" or "fail" and ``passed`` False only on "fail";
    ``evaluations`` counts the calls of the function differenced and ``seconds`` the wall
    time; ``worst`` lists the worst entries, each with ``label``, ``difference``,
    ``allowed`` (the largest difference the entry's own finite-difference error explains,
    same units) and ``score`` = |difference| / allowed, above 1 a disagreement; ``seed``
    reproduces the random choices and ``notes`` says what else the reader should know.
    ``str()`` is the text report, :meth:`to_dict` strict JSON, ``_repr_html_`` the notebook
    view.
    """

    kind: str
    verdict: str
    evaluations: int
    seconds: float
    seed: int | None
    notes: list[str]

    @property
    def passed(self) -> bool:
        """False only on "fail"."""
        return self.verdict != "fail"

    def summary(self) -> str:
        """One line under the verdict: what was checked, at what cost."""
        return f"{self.kind} check, {self.evaluations:,} evaluations in {self.seconds:.2f} s"

    def _repr_html_(self) -> str:
        """The report in a notebook: the verdict, the summary, the worst entries, coloured."""
        from .notebook import check_html

        return check_html(self)


def strict_dict(data: dict) -> dict:
    """``data`` in strict JSON types, which ``json.dumps(..., allow_nan=False)`` accepts.

    Each non-finite figure becomes None, and ``"non_finite"`` maps its path (``"noise"``,
    ``"groups[0].max_score"``) to what it was ("nan", "inf" or "-inf").
    """
    non_finite: dict[str, str] = {}
    return {**_strict_json(data, "", non_finite), "non_finite": non_finite}


@dataclass
class Report(CheckReport):
    """The outcome of :func:`fastgrad.check`.

    ``verdict`` is "pass", "warn" or "fail"; ``passed`` is False only on "fail".
    ``relative_error`` is the seed's ‖D − g‖₂ / (‖D‖₂ + ‖g‖₂) over the checked
    coordinates; ``numerical`` and ``analytic`` are in theta's structure (NaN at
    coordinates not checked); ``groups`` and ``worst`` summarise the checked coordinates.
    """

    verdict: str
    relative_error: float
    size: int
    checked: int
    failed: int
    evaluations: int
    seconds: float
    engine: str
    workers: int
    dtype: str
    relative_step: float
    method: str
    kinks: int  # coordinates whose disagreement a kink explains
    unresolved: int  # coordinates a one-sided value vouches for, with no kink resolved
    noise: float
    noise_detected: bool
    refined: int  # coordinates re-evaluated at a second step
    multiplier: float  # z
    details: CheckedCoordinates = field(repr=False, compare=False)
    notes: list[str] = field(default_factory=list)
    seed: int | None = None  # reproduces the sample and the directions (None: a Monitor's)
    coverage: Coverage | None = None  # what a sampled check vouches for
    directions: list[DirectionResult] = field(default_factory=list)
    sensitivity: float | None = None  # single-coordinate error s_i·|δ| the directions catch
    localisation: dict | None = None  # what group testing found (labels), and its cost
    jittered: Report | None = None  # the check at a nearby point (jitter=)
    executor: str = "serial"  # where the chunks ran ("serial": the calling thread, "threads")
    chunks: int = 0  # chunks of evaluations the executor ran
    timings: dict = field(default_factory=dict)  # seconds: "noise", "coordinates",
    # "directions" (the stages) and "batches" (inside the executor's batches, of them all)
    screen: dict | None = None  # a screening method's first pass (derivatives.Screen's fields)
    kind: str = "gradient"

    @cached_property
    def groups(self) -> list[GroupResult]:
        """One summary per named group."""
        d = self.details
        return group_results(d.layout, d.coords, d.numerical, d.analytic, d.score)

    @cached_property
    def worst(self) -> list[CoordinateResult]:
        """The checked coordinates with the highest scores, then those at kinks."""
        d = self.details
        return worst_coordinates(d.layout, d.coords, d.numerical, d.analytic, d.error, d.score,
                                 d.marks())

    @cached_property
    def causes(self) -> list[Cause]:
        """Likely causes of a failure, each fitted to every checked entry of its group.

        See :mod:`fastgrad.causes`; [] unless the verdict is "fail".
        """
        d = self.details
        if self.verdict != "fail":
            return []
        return likely_causes(d.layout, d.coords, d.numerical, d.analytic, d.theta, d.error, d.score)

    @property
    def worst_label(self) -> str | None:
        """The label of the highest-scoring checked coordinate (None if none was checked)."""
        d = self.details
        return d.layout.label(int(d.coords[np.argmax(d.score)])) if d.coords.size else None

    @cached_property
    def numerical(self):
        """The numerical gradient in theta's structure, NaN where not checked."""
        d = self.details
        full = np.full(d.layout.size, np.nan)
        full[d.coords] = d.numerical
        return d.layout.structured(full)

    @cached_property
    def analytic(self):
        """The analytic gradient in theta's structure, as checked (float64)."""
        return self.details.layout.structured(self.details.analytic_flat)

    @property
    def band(self) -> str:
        """The classic recipe's band of the relative error: "correct", "look closer", "wrong"."""
        return seed_band(self.relative_error)

    def to_dict(self) -> dict:
        """Everything but the full gradients, in strict JSON types.

        ``json.dumps(..., allow_nan=False)`` accepts it.  A non-finite figure (NaN, ±inf) becomes None, and
        ``"non_finite"`` maps its path (``"noise"``, ``"groups[0].max_score"``) to what it
        was (``"nan"``, ``"inf"`` or ``"-inf"``); it is empty when every figure is finite.
        """
        structured = ("details", "notes", "coverage", "directions", "localisation", "jittered")
        scalars = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in structured}
        return strict_dict({
            **scalars,
            "passed": self.passed,
            "band": self.band,
            "groups": [g.to_dict() for g in self.groups],
            "worst": [c.to_dict() for c in self.worst],
            "causes": [c.to_dict() for c in self.causes],
            "notes": list(self.notes),
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
            "directions": [d.to_dict() for d in self.directions],
            "localisation": self.localisation,
            "jittered": None if self.jittered is None else self.jittered.to_dict(),
        })

    def plot(self, groups: list[str] | None = None):
        """Draw the check: per group, analytic against numerical, and the scores.

        Analytic against numerical with the allowed band, and each checked coordinate's score
        against the threshold (a heat map for a 2-D group); the failing groups first, at most
        8 unless ``groups`` names them.  Returns the matplotlib figure (needs ``fastgrad[plot]``).
        """
        from .plotting import plot_report

        return plot_report(self, groups)

    def _repr_html_(self) -> str:
        """The report in a notebook: verdict, causes, groups and worst coordinates, coloured."""
        from .notebook import report_html

        return report_html(self)

    def format(self, *, command_line: bool = False) -> str:
        """The report as text.

        ``command_line``: options named as ``fastgrad check`` spells them (``--seed``)
        rather than as :func:`fastgrad.check` does (``seed=``).
        """
        return format_report(self, command_line=command_line)

    def __str__(self) -> str:
        return self.format()


def _strict_json(value, path: str, non_finite: dict[str, str]):
    """``value`` with Python/NumPy scalars as JSON types.

    Each non-finite float becomes None, its path and value recorded in ``non_finite``.
    """
    if isinstance(value, dict):
        return {key: _strict_json(item, f"{path}.{key}" if path else str(key), non_finite)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item, f"{path}[{i}]", non_finite) for i, item in enumerate(value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isfinite(value):
            return float(value)
        non_finite[path] = repr(float(value))
        return None
    return value


def format_report(report: Report, *, command_line: bool = False) -> str:
    """The report as a few aligned blocks of plain text (see :meth:`Report.format`)."""
    headline = {
        "pass": "PASS  the analytic gradient agrees with the finite differences",
        "warn": "WARN  no coordinate disagrees, but the check is not conclusive",
        "fail": "FAIL  the analytic gradient disagrees with the finite differences beyond "
                "their error",
    }[report.verdict]
    lines = [
        headline,
        f"relative error  {report.relative_error:.3e}  ({report.band}: <= {CORRECT_BELOW:g} "
        f"correct, > {WRONG_ABOVE:g} wrong)",
        _checked_line(report),
        *(f"likely cause    {cause.sentence}" for cause in report.causes),
        _method_line(report),
    ]
    if (report.coverage is not None or report.directions) and report.seed is not None:
        lines.append(_seed_line(report, command_line))
    if report.coverage is not None:
        lines += coverage_lines(report.coverage)
    if report.directions:
        lines.append(_directions_line(report))
    if report.localisation is not None:
        found = report.localisation
        named = ", ".join(found["coordinates"] + [f"{g} (dense)" for g in found["dense"]])
        if any(d.failed for d in report.directions):
            why = '' if found['complete'] else '; more may remain'
        else:
            why = ("; looked for because a direction agreed only once the slope jumps of the "
                   "kinks it crosses were allowed for")
        lines.append(f"localised       {named or 'nothing'} in {found['evaluations']} loss "
                     f"evaluations{why}")
    if report.kinks:
        lines.append(f"kinks           {report.kinks:,} coordinate(s) sit at a kink (ReLU, max, abs): "
                     "their central difference straddles it, and the analytic value matches "
                     "a one-sided derivative")
    if report.checked:
        lines += _coordinate_tables(report)
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def _directions_only(report: Report) -> bool:
    """Random directions without a coordinate plan.

    Coordinates checked one by one, if any, are those a localisation confirmed.
    """
    return bool(report.directions) and report.coverage is None


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _checked_line(report: Report) -> str:
    if _directions_only(report):
        what = (f"{_plural(len(report.directions), 'random direction')} through all "
                f"{report.size:,} coordinates, "
                + (f"then {_plural(report.checked, 'coordinate')} one by one"
                   if report.checked else "no coordinate one by one"))
    else:
        what = f"{report.checked:,} of {report.size:,} coordinates"
    return (f"checked         {what}, {report.evaluations:,} loss evaluations, "
            f"{report.seconds:.2f} s ({report.engine}, {_plural(report.workers, 'worker')}, "
            f"{report.dtype})")


def _method_line(report: Report) -> str:
    noise = (f"loss noise {report.noise:.2e}"
             f"{'' if report.noise_detected else ' (not measured: bound used)'}")
    if _directions_only(report):  # directions.py differences centrally, at its own steps
        return f"method          central differences along each direction (steps below); {noise}"
    line = (f"method          {report.method}, h = {report.relative_step:.2e} * max(1, |theta_i|); "
            f"{noise}; allowed |D - g| = {report.multiplier:.1f} * rounding + truncation")
    return line if report.screen is None else line + "\n" + _screen_line(report.screen)


def _screen_line(screen: dict) -> str:
    """What a screen cleared at one evaluation a coordinate, and what it left to its confirmer."""
    judged = screen["size"] - screen["cleared"]
    audit = (f"; a bug it clears at >= {_share(screen['caught_from'], screen['cleared'])} of them "
             f"is caught w.p. >= {1 - screen['alpha']:.0%}" if screen["audited"] < screen["cleared"]
             else "")
    return (f"                screen: {screen['screened']:,} of {screen['size']:,} coordinates "
            f"differenced from f(theta) (the others it cannot resolve to {WRONG_ABOVE:g}), "
            f"{screen['cleared']:,} cleared; {judged:,} not cleared and {screen['audited']:,} "
            f"cleared, drawn at random, judged by {screen['confirmed_by']}, "
            f"h = {screen['confirm_step']:.2e} * max(1, |theta_i|){audit}")


def _seed_line(report: Report, command_line: bool) -> str:
    drawn = [what for what, used in (("sample", report.coverage is not None),
                                     ("directions", bool(report.directions))) if used]
    option = f"--seed {report.seed}" if command_line else f"seed={report.seed}"
    return f"seed            {report.seed} ({option} repeats the {' and '.join(drawn)})"


def _directions_line(report: Report) -> str:
    """What the directional tests did.

    How many disagree, their steps and evaluations, and the single-coordinate error they
    catch.
    """
    directions = report.directions
    failed = sum(d.failed for d in directions)
    steps = sorted({d.step for d in directions})
    step = f"{steps[0]:.2e}" if len(steps) == 1 else f"{steps[0]:.2e} to {steps[-1]:.2e}"
    refined = sum(d.evaluations > 2 for d in directions)
    return (f"directions      {failed} of {_plural(len(directions), 'random direction')} "
            f"disagree ({sum(d.evaluations for d in directions):,} loss evaluations, "
            f"h = {step} * max(1, |theta_i|) * z_i"
            f"{f'; {refined} refined at 2h or a balanced step' if refined else ''}); "
            f"a single coordinate off by |delta| >= {report.sensitivity:.2e} "
            f"/ max(1, |theta_i|) is caught w.p. >= 95%")


def coverage_lines(coverage: Coverage) -> list[str]:
    """What a sample vouches for: overall, then per group; one line for one group.

    A guarantee names at most the coordinates there are: a bug touching all N of them
    is caught with certainty once every group is sampled, so min(K, N) is as true as K.
    """
    size = sum(g.size for g in coverage.groups)
    confidence = f"{1 - coverage.alpha:.0%}"
    head = f"sampled         {coverage.sampled:,} of {size:,} coordinates: "
    raised = ([] if coverage.floor_raised_from is None else
              [f"  (sample= asked for {coverage.floor_raised_from:,}: raised to "
               f"{coverage.sampled:,} by the floor of min(group size, {FLOOR}) per group)"])
    if len(coverage.groups) == 1:
        return [head + _group_guarantee(coverage.groups[0], "them", confidence), *raised]
    if coverage.caught_from is None:
        overall = "a group is not sampled: a bug confined to it cannot be caught"
    else:
        overall = (f"a bug touching at least {_share(min(coverage.caught_from, size), size)} "
                   f"of them is caught with probability >= {confidence}")
    return [head + overall] + [f"  {g.name}: {g.sampled:,} of {g.size:,}, "
                               f"{_group_guarantee(g, 'it', confidence)}"
                               for g in coverage.groups] + raised


def _group_guarantee(group: GroupCoverage, pronoun: str, confidence: str) -> str:
    if group.sampled == 0:
        return "not sampled"
    if group.sampled == group.size:
        return "checked whole"
    caught = min(group.caught_from, group.size)
    return (f"a bug touching >= {_share(caught, group.size)} of {pronoun} is caught "
            f"w.p. >= {confidence}")


def _share(count: int, size: int) -> str:
    return f"{count:,} ({count / size:.2%})"


def _coordinate_tables(report: Report) -> list[str]:
    return [
        "",
        _table(["group", "shape", "checked", "failed", "max |D - g|", "max score", "rel. error",
                "verdict"],
               [[g.name, _shape(g.shape), f"{g.checked:,}", f"{g.failed:,}",
                 f"{g.max_difference:.2e}", f"{g.max_score:.2g}", f"{g.relative_error:.2e}",
                 g.verdict] for g in report.groups]),
        "",
        "worst coordinates (score = |D - g| / allowed error; above 1 disagrees)",
        _table(["coordinate", "analytic", "numerical", "D - g", "allowed", "score", ""],
               [[c.label, f"{c.analytic:+.6e}", f"{c.numerical:+.6e}", f"{c.difference:+.2e}",
                 f"{c.error_estimate:.2e}", f"{c.score:.3g}", c.status]
                for c in report.worst]),
    ]


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    numeric = [i > 0 for i in range(len(header))]

    def line(cells):
        return "  ".join(
            (str(c).rjust(w) if right else str(c).ljust(w))
            for c, w, right in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(header)] + [line(row) for row in rows])


def group_results(layout: ParameterLayout, coords, numerical, analytic, score) -> list[GroupResult]:
    """Per-group maxima and verdicts over the checked coordinates ``coords``."""
    if coords.size < 2 or bool((coords[1:] >= coords[:-1]).all()):  # sorted: slices
        bounds = np.searchsorted(coords, [g.offset for g in layout.groups] + [layout.size])
        rows_of = [slice(start, stop) for start, stop in itertools.pairwise(bounds.tolist())]
        counts = np.diff(bounds).tolist()
    else:  # coordinates named by a localisation come last
        which = layout.group_index(coords)
        rows_of = [which == index for index in range(len(layout.groups))]
        counts = np.bincount(which, minlength=len(layout.groups)).tolist()
    results = []
    for group, rows, checked in zip(layout.groups, rows_of, counts, strict=True):
        group_score = score[rows]
        failed = int(np.count_nonzero(group_score > 1.0))
        results.append(GroupResult(
            name=group.name, shape=group.shape, checked=checked, failed=failed,
            max_difference=float(np.abs(numerical[rows] - analytic[rows]).max(initial=0.0)),
            max_score=float(group_score.max(initial=0.0)),
            relative_error=relative_error(numerical[rows], analytic[rows]),
            verdict="fail" if failed else ("ok" if checked else "unchecked"),
        ))
    return results


def worst_coordinates(layout: ParameterLayout, coords, numerical, analytic, error, score, marks,
                      count: int = WORST_SHOWN) -> list[CoordinateResult]:
    """The ``count`` coordinates with the highest score, highest first.

    Then those marked ("kink", "unresolved").
    """
    order = np.argsort(-score, kind="stable")[:count]
    for mark in ("kink", "unresolved") if (marks != "").any() else ():
        marked = np.flatnonzero(marks == mark)
        order = np.concatenate([order, marked[~np.isin(marked, order)][:count]])
    results = []
    for row in order:
        group, index = layout.multi_index(int(coords[row]))
        results.append(CoordinateResult(
            label=format_label(group, index), group=group.name, index=index,
            analytic=float(analytic[row]), numerical=float(numerical[row]),
            difference=float(numerical[row] - analytic[row]),
            error_estimate=float(error[row]), score=float(score[row]),
            status="fail" if score[row] > 1.0 else (str(marks[row]) or "ok"),
        ))
    return results


def with_jittered(report: Report, nearby: Report, distance: float) -> Report:
    """A new report: the one at θ with the check at a nearby point attached.

    ``jittered`` is the nearby check; the verdict is the worse of the two (see
    :func:`fastgrad.verdict.worse`).
    """
    note = (f"checked again at a nearby point (every coordinate moved by a relative "
            f"{distance / 2:g} to {distance:g}, jitter={distance:g}): {nearby.verdict}, "
            f"relative error {nearby.relative_error:.3e}, {nearby.failed} coordinate(s) "
            f"disagree{f', worst {nearby.worst_label}' if nearby.failed else ''}")
    return dataclasses.replace(report, jittered=nearby, verdict=worse(report.verdict,
                                                                      nearby.verdict),
                               notes=[*report.notes, note])


def build_report(judged: Verdict, layout: ParameterLayout, plan, coordinates, noise, run,
                 directional, coverage, *, method: str, seed, evaluations: int,
                 seconds: float, timings: dict | None = None) -> Report:
    """The report of a judged check: the verdict's figures and notes, and what was run."""
    return Report(
        verdict=judged.verdict, relative_error=judged.relative_error, size=layout.size,
        checked=int(judged.coords.size), failed=judged.failed, evaluations=evaluations,
        seconds=seconds, engine=run.name, workers=run.workers, dtype=layout.dtype.name,
        relative_step=plan.relative_step, method=method, kinks=int(judged.kink.sum()),
        unresolved=int(judged.unresolved.sum()), noise=float(noise.sigma),
        noise_detected=bool(noise.detected), refined=int(coordinates.refined.size),
        multiplier=analysis.noise_multiplier(len(plan)),
        details=CheckedCoordinates(layout, judged.coords, judged.numerical, judged.analytic,
                                   judged.error, judged.score, judged.kink, judged.unresolved,
                                   judged.analytic_flat,
                                   run.evaluator.theta[judged.coords].astype(np.float64)),
        notes=list(judged.notes), seed=seed, coverage=coverage,
        directions=[] if directional is None else directional.results,
        sensitivity=None if directional is None else directional.sensitivity,
        localisation=(None if directional is None or directional.localisation is None
                      else directional.localisation.to_dict(layout)),
        executor=run.executor.name, chunks=run.chunks, timings=dict(timings or {}),
        screen=None if coordinates.screen is None else dataclasses.asdict(coordinates.screen),
    )
