"""What check_vjp, check_jvp and check_hvp share: output layouts, calls of the user's
callables, drawn or given vectors, and the report.

The report core (issue 14): ``verdict``, ``passed``, ``evaluations`` (calls of ``fun``),
``seconds``, ``worst`` (entries with ``label``, ``difference`` = given − finite difference,
``allowed``, ``score`` = |difference| / allowed), ``seed``, ``notes``, ``kind``, ``str()``
and a strict-JSON ``to_dict()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .. import _validation as validate
from ..engine.compiled import is_compiled
from ..errors import InputError, LossError, describe
from ..parameters import Group, ParameterLayout
from ..report import CheckReport, _table, strict_dict
from ..sampling import check_entropy, stream
from ..verdict import worse

#: Name of the single output group when fun returns one array.
OUTPUT_GROUP = "out"
#: Entries a report lists.
WORST_SHOWN = 10
#: The random vectors' stream of a check's seed (the gradient check uses streams 0 and 1).
VECTORS_STREAM = 2


@dataclass(frozen=True)
class ProductEntry:
    """One judged entry: ``difference`` = given − finite difference, ``score`` = |difference| / allowed."""

    label: str
    given: float
    numerical: float
    difference: float
    allowed: float
    score: float

    def to_dict(self) -> dict:
        """The fields, as a dict."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class ProductSummary:
    """One cotangent's, tangent's or vector's check."""

    label: str  # "cotangent 1", "tangent 2", "vector 3"
    verdict: str
    failed: int  # entries above their allowed error
    checked: int
    max_score: float
    relative_error: float  # ‖given − D‖ / (‖given‖ + ‖D‖) over the entries
    evaluations: int  # calls of fun for this product

    def to_dict(self) -> dict:
        """The fields, as a dict."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class ProductReport(CheckReport):
    """The outcome of :func:`fastgrad.check_vjp`, :func:`fastgrad.check_jvp` or
    :func:`fastgrad.check_hvp`; ``passed`` is False only on "fail".

    ``worst`` lists the entries with the highest scores over all products; ``products``
    summarises each cotangent (tangent, vector); for a VJP, ``reports`` holds the full
    :class:`fastgrad.Report` of each cotangent's gradient check.
    """

    kind: str  # "vjp", "jvp" or "hvp"
    verdict: str
    evaluations: int  # calls of fun (grad for an hvp)
    seconds: float
    worst: list[ProductEntry]
    products: list[ProductSummary]
    size: int  # coordinates of x
    outputs: int  # elements of fun's output
    seed: int | None = None
    notes: list[str] = field(default_factory=list)
    reports: list = field(default_factory=list, repr=False)  # per-cotangent Reports (vjp)

    def to_dict(self) -> dict:
        """Strict-JSON types: a non-finite figure becomes None, its path and value kept in
        ``"non_finite"`` (as :meth:`fastgrad.Report.to_dict`)."""
        return strict_dict({
            "kind": self.kind, "verdict": self.verdict, "passed": self.passed,
            "evaluations": self.evaluations, "seconds": self.seconds, "size": self.size,
            "outputs": self.outputs, "seed": self.seed, "notes": list(self.notes),
            "worst": [entry.to_dict() for entry in self.worst],
            "products": [product.to_dict() for product in self.products],
            "reports": [report.to_dict() for report in self.reports],
        })

    def summary(self) -> str:
        return (f"{len(self.products)} product(s), {self.size:,} inputs, {self.outputs:,} outputs, "
                f"{self.evaluations:,} evaluations, {self.seconds:.2f} s"
                + (f", seed={self.seed}" if self.seed is not None else ""))

    def _repr_html_(self) -> str:
        """The verdict, the summary, one row per product and the worst entries, coloured."""
        from ..notebook import check_html, table

        return check_html(self, table(
            ["product", "verdict", "failed", "max score", "rel. error"],
            [[p.label, p.verdict, f"{p.failed:,} of {p.checked:,}", f"{p.max_score:.3g}",
              f"{p.relative_error:.2e}"] for p in self.products], [p.verdict for p in self.products]))

    def __str__(self) -> str:
        what = {"vjp": "vector-Jacobian products J^T u", "jvp": "Jacobian-vector products J v",
                "hvp": "Hessian-vector products H v"}[self.kind]
        headline = {"pass": "PASS  the given {} agree with the finite differences",
                    "warn": "WARN  nothing disagrees, but the check is not conclusive for the {}",
                    "fail": "FAIL  the given {} disagree with the finite differences beyond "
                            "their error"}[self.verdict].format(what)
        lines = [headline, f"checked         {self.summary()}",
                 _table(["product", "verdict", "failed", "max score", "rel. error"],
                        [[p.label, p.verdict, f"{p.failed:,} of {p.checked:,}", f"{p.max_score:.3g}",
                          f"{p.relative_error:.2e}"] for p in self.products])]
        if self.worst:
            lines += ["", "worst entries (score = |given - D| / allowed error; above 1 disagrees)",
                      _table(["entry", "given", "numerical", "given - D", "allowed", "score"],
                             [[e.label, f"{e.given:+.6e}", f"{e.numerical:+.6e}",
                               f"{e.difference:+.2e}", f"{e.allowed:.2e}", f"{e.score:.3g}"]
                              for e in self.worst])]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def worst_verdict(verdicts) -> str:
    """The worst of the verdicts ("pass" for none)."""
    result = "pass"
    for verdict in verdicts:
        result = worse(result, verdict)
    return result


def top_entries(entries: list[ProductEntry]) -> list[ProductEntry]:
    """The WORST_SHOWN entries with the highest scores, highest first."""
    return sorted(entries, key=lambda entry: -entry.score)[:WORST_SHOWN]


def merged_notes(labelled: list[tuple[str, str]]) -> list[str]:
    """Notes of several products, each once, prefixed by the products that gave it."""
    where: dict[str, list[str]] = {}
    for label, note in labelled:
        where.setdefault(note, []).append(label)
    return [f"{', '.join(labels)}: {note}" for note, labels in where.items()]


# ---------------------------------------------------------------------------- outputs
def output_layout(value, what: str, name: str = OUTPUT_GROUP) -> tuple[ParameterLayout, np.ndarray]:
    """The layout of a function's output (an array of any shape, or a dict of arrays) and
    its values as a flat float64 vector; groups named ``name`` (an array) or by the keys.
    The flat layout is that of x: groups in order, each in C order."""
    items = list(value.items()) if isinstance(value, Mapping) else [(name, value)]
    if isinstance(value, Mapping) and not items:
        raise InputError(f"{what} is an empty dict")
    groups, offset, arrays = [], 0, []
    for key, item in items:
        if not isinstance(key, str):
            raise InputError(f"{what}'s keys must be strings, got {key!r}")
        array = np.asarray(item)
        if array.dtype.kind not in "fiu" or array.dtype == bool:
            raise InputError(f"{what}{f'[{key!r}]' if isinstance(value, Mapping) else ''} must be "
                             f"a real numeric array, got dtype {array.dtype}")
        groups.append(Group(key, tuple(array.shape), offset))
        offset += array.size
        arrays.append(array)
    if offset == 0:
        raise InputError(f"{what} is empty: there is nothing to check")
    precision = np.float32 if all(a.dtype == np.float32 for a in arrays) else np.float64
    layout = ParameterLayout(tuple(groups), isinstance(value, Mapping), np.dtype(precision))
    flat = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
    return layout, flat


def flat_values(layout: ParameterLayout, value, what: str) -> np.ndarray:
    """``value`` (structured like ``layout``) as a flat float64 vector; LossError if it is
    not (a function that changed its output's structure, or returned a non-finite value)."""
    try:
        return layout.flatten_like(value, what)
    except InputError as error:
        raise LossError(describe(error)) from None


# ---------------------------------------------------------------------------- calls
@dataclass
class Function:
    """The user's ``fun(x, *args, **kwargs)``, called with x as it expects it: a compiled
    (Numba) fun gets the flat vector for a dict x, as :func:`fastgrad.check` gives a compiled
    loss; ``evaluations`` counts the calls."""

    fun: Callable
    layout: ParameterLayout
    args: tuple
    kwargs: dict
    compiled: bool
    evaluations: int = 0

    @classmethod
    def of(cls, fun, layout: ParameterLayout, args, kwargs) -> Function:
        compiled = is_compiled(fun)
        args, kwargs = validate.args(args), validate.kwargs(kwargs)
        if compiled and kwargs:
            args, kwargs = validate._in_positions(fun, args, kwargs), {}
        return cls(fun, layout, args, kwargs, compiled)

    def argument(self, flat: np.ndarray):
        """x as fun receives it: a fresh copy, flat (compiled fun, dict x) or structured."""
        point = flat.copy()
        return point.reshape(self.layout.array_shape) if self.compiled \
            else self.layout.structured(point)

    def __call__(self, flat: np.ndarray, where: str):
        self.evaluations += 1
        try:
            return self.fun(self.argument(flat), *self.args, **self.kwargs)
        except Exception as error:
            raise LossError(f"fun raised {type(error).__name__} {where}: {describe(error)}") \
                from error


def user_call(what: str, function: Callable, *arguments, **keywords):
    """``function(*arguments, **keywords)``; an InputError naming ``what`` if it raises
    (a derivative callable is called before any finite difference, as fastgrad.check calls
    a callable grad)."""
    try:
        return function(*arguments, **keywords)
    except Exception as error:
        raise InputError(f"{what} raised {type(error).__name__}: {describe(error)}") from error


def linearization(linearize: Callable, x, args: tuple, kwargs: dict, what: str):
    """(value, product) from ``linearize(x, *args, **kwargs)``; InputError unless a pair
    whose second item is callable."""
    result = user_call(f"{what}(x, *args)", linearize, x, *args, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 2 and callable(result[1])):
        raise InputError(f"{what}(x, *args) must return a pair (value, product) with product "
                         f"callable, got {type(result).__name__}")
    return result


def require_same_value(value_flat: np.ndarray, f0: np.ndarray, what: str) -> None:
    """The value a linearization returns must be fun(x) to within √u relative: else it was
    made at another point or with other arguments."""
    tolerance = np.sqrt(np.finfo(np.float64).eps) * np.maximum(np.abs(value_flat), np.abs(f0))
    if np.any(np.abs(value_flat - f0) > tolerance):
        worst = int(np.argmax(np.abs(value_flat - f0) - tolerance))
        raise InputError(f"the value {what} returns differs from fun(x) (entry {worst}: "
                         f"{value_flat[worst]!r} vs {f0[worst]!r}): was it linearized at x "
                         "with the same args?")


def vectors(given, layout: ParameterLayout, entropy: int, what: str) -> list[np.ndarray]:
    """The flat vectors to check with: ``given`` a count (Gaussian, from stream
    VECTORS_STREAM of the check's entropy) or a list in ``layout``'s structure."""
    if validate.is_integer(given):
        rng = stream(entropy, VECTORS_STREAM)
        return [rng.standard_normal(layout.size) for _ in range(validate.positive_int(what, given))]
    items = validate.sequence(what, given)
    flats = [layout.flatten_like(item, f"{what}[{k}]") for k, item in enumerate(items)]
    for k, flat in enumerate(flats):
        if not flat.any():
            raise InputError(f"{what}[{k}] is zero: it checks nothing")
    return flats


def vector_count(given, what: str) -> None:
    """InputError unless ``given`` is a positive count or a non-empty list (checked before
    fun is first called)."""
    if validate.is_integer(given):
        validate.positive_int(what, given)
    else:
        validate.sequence(what, given)


def entropy_of(seed) -> int:
    """The entropy that reproduces a check's random vectors (``seed`` None: fresh)."""
    return check_entropy(validate.seed(seed))


class Clock:
    """Wall time since construction."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.started
