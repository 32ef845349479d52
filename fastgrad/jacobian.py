"""Jacobians and Hessians, entry by entry, each against its own finite difference's error.

Every pair of evaluations moves a group of columns g (one column, a Curtis–Powell–Reid
group of columns that share no row, or a dense direction) by ±s, and every output element i
of the difference is judged, in the function's units:

    e_gi = P_gi − M_gi,   M_gi = F_i(x + s_g) − F_i(x − s_g),   P_gi = Σ_{c∈g} J_ic·Δ_c,

Δ_c = a₊ − a₋ the displacement of column c actually taken (s_c = h0·max(1, |x_c|),
h0 = ∛u).  For a correct J, e = T (truncation, O(h³)) + noise of standard deviation
√2·σ_i, σ_i the noise of one evaluation of F_i, measured per element by ECnoise
(:func:`element_noise`, vectorised over the m elements).  The entry disagrees when

    |e_gi| > z·r_gi + t_gi + a_gi,

r = √2·σ_i (at least u·|F_i±|, grown with |F_i±|/|F_i(x)| as for a loss), z =
:func:`fastgrad.analysis.noise_multiplier` of the number of (g, i) judged, a_gi =
z·u·(Σ_c |J_ic|·Δ_c + max_c|J_ic|·max_{c∈g} Δ_c) the given matrix's own rounding, and t
estimated only where an entry disagrees: the group is evaluated again at ±2s and
Richardson's e_R = e + (e − e₂/2)/3 replaces e, t = |e − e₂/2|/3 (for a correct J,
e = T, e₂/2 = 4T, so t = |T|; a wrong entry keeps its J error δ·Δ in e_R).

In a row i whose pattern has no column in g, P_gi is 0 (or the given entries outside the
pattern) and a significant e_gi is a **missing entry**: the true Jacobian is nonzero there.
Localised by bisecting the group (4 evaluations a level).  A group's pair holds, in every
row, the sum over its columns: a nonzero dropped from a sparse jac (whose pattern is
then the grouping's) shows either as a missing entry, or in the pattern entry of its row
and group.  It hides only when it cancels another error of the same row and group
exactly; ``directions`` random dense directions v (entries h_c·N(0, 1)), judged by the
same rule, break such a cancellation with probability 1 (default: 2 when the pattern came
from jac, 0 otherwise).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _validation as validate
from . import analysis
from .engine import Engine, executor_for
from .engine.compiled import is_compiled
from .engine.vector import Groups, OutputLayout, make_vector_evaluator
from .errors import InputError, LossError, describe
from .grouping import Pattern, group_columns, is_linear_operator, is_sparse, pattern_of
from .methods import CENTRAL
from .noise import default_step, ecnoise_columns, pair_noise, random_direction
from .parameters import ParameterLayout
from .plan import nominal_steps, require_representable_steps
from .report import CheckReport, strict_dict
from .sampling import generators

#: ECnoise's stencil: F at x + j·δ·p, j = −4..4 (9 values, 8 evaluations).
NOISE_OFFSETS = (-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0)
#: Entries named in the report.
WORST = 10
#: Columns per product with a LinearOperator (J·S for a block of S's columns).
OPERATOR_BLOCK = 256


# ----------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class EntryResult:
    """One judged entry: ``label`` "out[i] / W[3, 1]", difference given − finite difference
    and its allowed error (units of the entry), score = |difference| / allowed; ``what`` is
    "entry", "missing" (outside the pattern, nonzero in the differences) or "direction"."""

    label: str
    difference: float
    allowed: float
    score: float
    what: str = "entry"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class JacobianReport(CheckReport):
    """The outcome of :func:`check_jacobian` or :func:`check_hessian`."""

    kind: str  # "jacobian" or "hessian"
    verdict: str
    evaluations: int
    seconds: float
    worst: list[EntryResult]
    seed: int | None
    notes: list[str]
    shape: tuple[int, int]  # (m, n)
    groups: int  # pairs of evaluations (columns perturbed together count once)
    judged: int  # (group, output element) differences judged
    failing: int  # of those, disagreeing
    missing: int  # entries outside the pattern found nonzero
    asymmetric: int  # Hessian: pairs with |H − Hᵀ| beyond both entries' allowed errors
    pattern: str  # "dense", "jac" (a sparse jac's own) or "sparsity"
    directions: int  # random dense directions checked
    relative_error: float  # ‖D − J‖ / (‖D‖ + ‖J‖) over the pattern's entries

    def to_dict(self) -> dict:
        """Every field in strict JSON types; a ``"non_finite"`` map as :meth:`Report.to_dict`."""
        return strict_dict({**{k: v for k, v in self.__dict__.items() if k != "worst"},
                            "passed": self.passed, "worst": [e.to_dict() for e in self.worst]})

    def summary(self) -> str:
        m, n = self.shape
        return (f"{m} x {n} {self.kind}, pattern {self.pattern}: {self.groups} pairs of evaluations, "
                f"{self.directions} random direction(s), {self.evaluations} evaluations in "
                f"{self.seconds:.3g} s; {self.judged} differences judged, {self.failing} disagree, "
                f"{self.missing} missing entries"
                + (f", {self.asymmetric} asymmetric pairs" if self.kind == "hessian" else "")
                + f"; relative error {self.relative_error:.2e}")

    def __str__(self) -> str:
        lines = [f"{self.kind} check: {self.verdict.upper()}", self.summary()]
        lines += [f"note: {note}" for note in self.notes]
        if self.worst:
            rows = [[e.label, e.what, f"{e.difference:+.3e}", f"{e.allowed:.3e}", f"{e.score:.3g}"]
                    for e in self.worst]
            header = ["entry", "kind", "given - fd", "allowed", "score"]
            widths = [max(len(r[k]) for r in [header, *rows]) for k in range(5)]
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                      for r in [header, *rows]]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the given matrix
@dataclass
class Given:
    """The given Jacobian with its columns (and, for a Hessian, rows) in x's flat C layout:
    a dense (m, n) array, a SciPy CSR matrix, or a LinearOperator-like ``product(S)`` = J·S."""

    kind: str  # "dense", "sparse", "operator"
    shape: tuple[int, int]
    matrix: Any = None  # dense or sparse
    operator: Callable[[np.ndarray], np.ndarray] | None = None

    def products(self, cols: np.ndarray, deltas: np.ndarray, segments: np.ndarray,
                 absolute: bool = False) -> np.ndarray:
        """(k, m): row r = Σ J_ic·Δ_c over the entries of segment r (``segments`` k + 1
        offsets into ``cols``/``deltas``); |J|·|Δ| with ``absolute`` (None for an operator)."""
        k = segments.size - 1
        if self.kind == "dense":
            matrix = np.abs(self.matrix) if absolute else self.matrix
            terms = matrix[:, cols] * (np.abs(deltas) if absolute else deltas)
            return _segment_sums(terms, segments).T
        if self.kind == "sparse":
            import scipy.sparse as sp

            matrix = abs(self.matrix) if absolute else self.matrix
            owner = np.repeat(np.arange(k), np.diff(segments))
            weights = sp.csc_matrix((np.abs(deltas) if absolute else deltas, (cols, owner)),
                                    shape=(self.shape[1], k))
            return np.asarray((matrix @ weights).toarray()).T
        assert self.operator is not None and not absolute
        out = np.empty((k, self.shape[0]))
        for first in range(0, k, OPERATOR_BLOCK):
            last = min(first + OPERATOR_BLOCK, k)
            block = np.zeros((self.shape[1], last - first))
            for r in range(first, last):
                span = slice(segments[r], segments[r + 1])
                block[cols[span], r - first] = deltas[span]
            out[first:last] = np.asarray(self.operator(block), dtype=np.float64).reshape(
                self.shape[0], last - first).T
        return out

    def row_maxima(self) -> np.ndarray:
        """max_c |J_ic| per row (0 for an operator: its entries are not at hand)."""
        if self.kind == "dense":
            return np.abs(self.matrix).max(axis=1)
        if self.kind == "sparse":
            return np.asarray(abs(self.matrix).max(axis=1).toarray()).ravel()
        return np.zeros(self.shape[0])

    def entries(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """J[rows[k], cols[k]] (dense or sparse only)."""
        if self.kind == "dense":
            return self.matrix[rows, cols]
        return np.asarray(self.matrix[rows, cols]).ravel()


def _segment_sums(terms: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Columns of ``terms`` summed over each segment (segments nonempty)."""
    return np.add.reduceat(terms, segments[:-1], axis=1) if terms.shape[1] else \
        np.zeros((terms.shape[0], segments.size - 1))


def flat_permutation(layout: ParameterLayout, order: str) -> np.ndarray | None:
    """For ``order="F"``: perm[u] = the flat C index of user column u, x's groups in order and
    each group's entries in column-major order; None for "C"."""
    if order == "C":
        return None
    return np.concatenate([g.offset + np.arange(int(np.prod(g.shape)), dtype=np.int64)
                           .reshape(g.shape).ravel(order="F") for g in layout.groups])


def parse_given(value, layout: ParameterLayout, perm: np.ndarray | None, square: bool) -> Given:
    """The given Jacobian, validated (InputError) and in the flat C layout: ``value`` a dense
    (m, n) or out_shape + x_shape array, a scipy.sparse matrix, or a LinearOperator."""
    n = layout.size
    if is_linear_operator(value):
        m, columns = (int(v) for v in value.shape)
        _require_columns(columns, n)
        operator = value.matmat
        if perm is not None:
            user = operator
            operator = (lambda S: _rows_to_flat(user(S[perm]), perm, m)) if square else \
                (lambda S: user(S[perm]))
        return Given("operator", (m, n), operator=operator)
    if is_sparse(value):
        matrix = value.tocsr().astype(np.float64)
        matrix.sum_duplicates()
        _require_columns(matrix.shape[1], n)
        if not np.all(np.isfinite(matrix.data)):
            raise InputError("the given Jacobian has non-finite entries")
        if perm is not None:
            coo = matrix.tocoo()
            rows = perm[coo.row] if square else coo.row
            matrix = type(matrix)((coo.data, (rows, perm[coo.col])), shape=matrix.shape).tocsr()
        return Given("sparse", (int(matrix.shape[0]), n), matrix=matrix)
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind not in "iuf":
        raise InputError(f"the given Jacobian must be a real array, a scipy.sparse matrix or a "
                         f"LinearOperator, got {type(value).__name__} of dtype {array.dtype}")
    if array.ndim == 2 and array.shape[1] == n:
        matrix = array.astype(np.float64)  # a copy: the user's array is never modified
    elif not layout.is_dict and array.ndim >= len(layout.groups[0].shape) \
            and array.shape[array.ndim - len(layout.groups[0].shape):] == layout.groups[0].shape \
            and array.size % n == 0:
        matrix = array.astype(np.float64).reshape(-1, n)
        perm = None  # x's own shape: no column order to read
    else:
        _require_columns(array.shape[-1] if array.ndim else 0, n)
        raise InputError(f"the given Jacobian has shape {array.shape}; expected (m, {n}) or the "
                         "output's shape followed by x's")
    if not np.all(np.isfinite(matrix)):
        bad = np.argwhere(~np.isfinite(matrix))[0]
        raise InputError(f"the given Jacobian is not finite at [{bad[0]}, {bad[1]}]")
    if perm is not None:
        permuted = np.empty_like(matrix)
        permuted[:, perm] = matrix
        if square:
            permuted[perm] = permuted.copy()
        matrix = permuted
    return Given("dense", (int(matrix.shape[0]), n), matrix=matrix)


def _rows_to_flat(product, perm: np.ndarray, m: int) -> np.ndarray:
    out = np.empty((m, np.shape(product)[1] if np.ndim(product) == 2 else 1))
    out[perm] = np.asarray(product).reshape(m, -1)
    return out


def _require_columns(columns: int, n: int) -> None:
    if columns != n:
        raise InputError(f"the given Jacobian has {columns} columns; x has {n} coordinates")


# ----------------------------------------------------------------------------- the noise
def element_noise(values: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """ECnoise for each column of ``values`` (nf × m, F at x + (j − ⌊nf/2⌋)·δ·p):
    (σ_i, detected_i) by :func:`fastgrad.noise.ecnoise_columns`, never below u·|F_i(x)|."""
    sigma, detected = ecnoise_columns(values)
    floor = float(np.finfo(dtype).eps) * np.abs(values[values.shape[0] // 2])
    return np.maximum(sigma, floor), detected


# ----------------------------------------------------------------------------- the check
#: ECnoise's step is multiplied by this for the elements whose noise it did not detect ...
NOISE_STEP_FACTOR = 100.0
#: ... up to this many times (δ = √u, 100·√u, 10⁴·√u: the last about the pairs' own ∛u).
NOISE_RETRIES = 2


def _measured_noise(run: Engine, row: int, centre: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray, int]:
    """(σ_i, detected_i, steps tried) along the noise row's direction.  Where ECnoise detects
    no noise at δ, it tries δ·100 (at most NOISE_RETRIES times, 8 evaluations each, all
    elements at once), as :func:`fastgrad.noise.estimate_noise` does after code 2.  Why: an
    element computed from values that the tiny step barely moves can come out exactly
    linear along the stencil (every higher difference 0, σ → u·|F_i|), while the pairs, at
    ∛u, see its real rounding.  An element detected at some step takes that step's σ; one
    never detected takes the largest of its bounds, which errs large (a looser check)."""
    sigma = np.zeros(centre.size)
    detected = np.zeros(centre.size, dtype=bool)
    factor, tries = 1.0, 0
    while tries <= NOISE_RETRIES and not detected.all():
        stencil = run.perturbed(np.array([row]), factor * np.array([NOISE_OFFSETS]))[0]
        values = np.insert(stencil, len(NOISE_OFFSETS) // 2, centre, axis=0)
        found, now = element_noise(values, dtype)
        sigma = np.where(detected, sigma, np.where(now, found, np.maximum(sigma, found)))
        detected |= now
        factor, tries = factor * NOISE_STEP_FACTOR, tries + 1
    return sigma, detected, tries


def conditioning_floor(given: Given, x: np.ndarray, dtype) -> np.ndarray:
    """u·Σ_c |J_ic|·|x_c| per output element (units of F_i): what rounding x alone to u
    moves F_i by, a floor under any computed F_i's noise whatever its code (0 for a
    LinearOperator, whose entries are not read).  ECnoise along one direction can miss it:
    on F_i = 2x_i − x_{i−1} − x_{i+1} + 0.3·x_i³ at x = linspace(−1, 1, 12), F_5 ≈ −2e-4
    cancels terms of 0.27; along some directions its subtractions are exact (Sterbenz) and
    ECnoise measured σ = 5e-20 at every step, while the pairs moving x_6 alone carried 7e-17
    (the floor: 1.2e-16), and 4 seeds in 300 failed the correct Jacobian."""
    if given.kind == "operator":
        return np.zeros(given.shape[0])
    x64 = np.abs(x.astype(np.float64))
    sums = given.products(np.arange(x64.size), x64, np.array([0, x64.size]), absolute=True)[0]
    return float(np.finfo(dtype).eps) * sums


@dataclass
class _Judged:
    """Residuals e (k, m) of some rows of the plan, their allowed errors, and disagreement."""

    residual: np.ndarray
    allowed: np.ndarray
    predicted: np.ndarray  # P, the given matrix's prediction of each difference

    @property
    def disagrees(self) -> np.ndarray:
        return np.abs(self.residual) > self.allowed


@dataclass
class _Setup:
    fun: Callable
    args: tuple
    layout: ParameterLayout
    flat: np.ndarray
    given: Given
    pattern: Pattern | None
    source: str
    directions: int
    engine_name: str
    executor: Any
    workers: int | None
    seed: int | None
    kind: str
    notes: list[str] = field(default_factory=list)


def check_jacobian(fun: Callable, jac, x, args: tuple | list = (), *, kwargs: Mapping | None = None,
                   sparsity=None, order: str = "C", seed: int | None = None,
                   directions: int | None = None, engine: str = "auto", executor: Any = None,
                   workers: int | None = None) -> JacobianReport:
    """Check a Jacobian entry by entry against central differences of ``fun``.

    ``fun(x, *args, **kwargs)`` returns an array of any shape or a dict of arrays (m values,
    flattened in C order, dict keys in order); ``x`` is an array or a dict of arrays (n
    values, the flat layout of :func:`fastgrad.check`).  ``jac`` is a dense (m, n) array (or
    the output's shape followed by x's), a scipy.sparse matrix, a LinearOperator (checked
    through J·S products), or ``jac(x, *args, **kwargs)`` returning one of these.  Columns
    index x's flat layout; ``order="F"`` reads each group of x column-major.

    ``sparsity`` (an m × n pattern, dense or sparse), or else the stored entries of a sparse
    jac, groups the columns that share no row (Curtis–Powell–Reid): 2 evaluations per group,
    8 for the noise.  The rule (see the module docstring): entry disagrees when
    |P − M| > z·√2·σ_i + t + a, in units of F; an entry outside the pattern that is nonzero
    in the differences is a missing entry.  Fails if any disagrees; warns if none does but
    the relative error ‖D − J‖/(‖D‖ + ‖J‖) exceeds 1e-3 (too inaccurate to confirm).
    """
    setup = _setup("jacobian", fun, jac, x, args, kwargs, sparsity, order, seed, directions,
                   engine, executor, workers)
    return _run(setup)


def check_hessian(grad: Callable, hess, theta, args: tuple | list = (), *,
                  kwargs: Mapping | None = None, sparsity=None, order: str = "C",
                  seed: int | None = None, directions: int | None = None, engine: str = "auto",
                  executor: Any = None, workers: int | None = None) -> JacobianReport:
    """Check a Hessian as the Jacobian of ``grad`` (:func:`check_jacobian`'s rule, entries
    named "W[0, 1] / b[2]"), and report the asymmetry of the given matrix on its own: a pair
    with |H_cd − H_dc| > A_cd + A_dc (each entry's allowed error) cannot be symmetric and
    within both entries' errors of the true, symmetric, Hessian: the check fails with a note.
    ``grad(theta, *args)`` returns theta's structure; ``hess`` an (n, n) array, a sparse
    matrix, a LinearOperator or a callable; ``order="F"`` applies to rows and columns.
    """
    setup = _setup("hessian", grad, hess, theta, args, kwargs, sparsity, order, seed, directions,
                   engine, executor, workers)
    return _run(setup)


def _setup(kind, fun, jac, x, args, kwargs, sparsity, order, seed, directions, engine, executor,
           workers) -> _Setup:
    """Everything validated, before any evaluation of ``fun``."""
    validate.callable_of("fun" if kind == "jacobian" else "grad", fun)
    args, kwargs, seed = validate.args(args), validate.kwargs(kwargs), validate.seed(seed)
    engine = validate.engine(engine)
    executor, workers = validate.executor(executor, workers)
    if order not in ("C", "F"):
        raise InputError(f"order must be 'C' or 'F', got {order!r}")
    if directions is not None:
        directions = validate.positive_int("directions", directions, minimum=0)
    layout, flat = ParameterLayout.from_theta(x)
    perm = flat_permutation(layout, order)
    square = kind == "hessian"
    if callable(jac) and not is_linear_operator(jac) and not is_sparse(jac) \
            and not isinstance(jac, np.ndarray):
        try:
            jac = jac(layout.structured(flat.copy()), *args, **kwargs)
        except Exception as error:
            raise LossError(f"the {kind} callable raised {type(error).__name__}: {describe(error)}") \
                from error
    given = parse_given(jac, layout, perm, square)
    if square and given.shape[0] != layout.size:
        raise InputError(f"the given Hessian has {given.shape[0]} rows; theta has {layout.size} coordinates")
    pattern, source = None, "dense"
    if sparsity is not None:
        pattern, source = pattern_of(sparsity, layout.size, "sparsity", perm), "sparsity"
        if square and perm is not None:
            pattern = Pattern.from_entries(pattern.shape, perm[pattern.rows], pattern.cols)
        if pattern.shape[0] != given.shape[0]:
            raise InputError(f"sparsity has {pattern.shape[0]} rows, the given Jacobian {given.shape[0]}")
        if given.kind == "sparse":
            pattern = pattern.union(pattern_of(given.matrix, layout.size, "jac"))
    elif given.kind == "sparse":
        pattern, source = pattern_of(given.matrix, layout.size, "jac"), "jac"
    if directions is None:
        directions = 0 if pattern is None else 2
    require_representable_steps(flat, CENTRAL.default_step(flat.dtype), layout.label)
    fun, _, args = validate.bind_keywords(fun, None, args, kwargs, is_compiled(fun))
    return _Setup(fun, args, layout, flat, given, pattern, source, directions, engine, executor,
                  workers, seed, kind)


def _first_value(setup: _Setup) -> tuple[np.ndarray, OutputLayout]:
    """F(x), flattened, and the output's layout (one evaluation, on a copy of x)."""
    layout, work = setup.layout, setup.flat.copy()
    view = work.reshape(layout.array_shape) if is_compiled(setup.fun) else layout.structured(work)
    try:
        value = setup.fun(view, *setup.args)
    except Exception as error:
        raise LossError(f"the function raised {type(error).__name__} at x: {describe(error)}") from error
    if setup.kind == "hessian":
        value = _in_theta_order(value, layout)
    output = OutputLayout.of(value)
    first = np.empty(output.size)
    output.flatten_output(value, first)
    if not np.all(np.isfinite(first)):
        bad = int(np.argmin(np.isfinite(first)))
        raise LossError(f"the function is not finite at x: {output.label(bad)} = {first[bad]}")
    if not np.array_equal(work, setup.flat):
        raise LossError("the function modifies its input (copy x before writing to it)")
    return first, output


def _in_theta_order(value, layout: ParameterLayout):
    """A gradient returned as a dict, in theta's key order (InputError if the keys differ)."""
    if not layout.is_dict or not isinstance(value, Mapping):
        return value
    names = [g.name for g in layout.groups]
    if set(value) != set(names):
        raise InputError(f"grad must return a dict with theta's keys {names}, got {list(value)}")
    return {name: value[name] for name in names}


@dataclass
class _Plan:
    """Rows of the engine: the column groups, then the noise direction, then the directions."""

    groups: Groups
    count: int  # column groups
    column_of: np.ndarray | None  # (count, m): the pattern's column of row i in group g, −1 none
    group_of: np.ndarray  # each column's group

    @property
    def noise_row(self) -> int:
        return self.count


def _plan(setup: _Setup, m: int, rng) -> _Plan:
    flat, n = setup.flat, setup.layout.size
    steps = nominal_steps(flat, CENTRAL.default_step(flat.dtype))
    if setup.pattern is None:
        group_of = np.arange(n, dtype=np.int64)
    else:
        group_of = group_columns(setup.pattern)
    count = int(group_of.max()) + 1
    columns = Groups.from_labels(group_of, steps)
    noise = default_step(flat.dtype) * random_direction(flat.astype(np.float64), rng)
    dense = steps * rng.standard_normal((setup.directions, n))
    extra = Groups.directions(np.vstack([noise[None, :], dense]))
    groups = Groups(np.concatenate([columns.ptr, columns.ptr[-1] + extra.ptr[1:]]),
                    np.concatenate([columns.cols, extra.cols]),
                    np.concatenate([columns.steps, extra.steps]))
    column_of = None
    if setup.pattern is not None:
        column_of = np.full((count, m), -1, dtype=np.int64)
        column_of[group_of[setup.pattern.cols], setup.pattern.rows] = setup.pattern.cols
    return _Plan(groups, count, column_of, group_of)


def _displacements(flat: np.ndarray, groups: Groups, rows: np.ndarray, t: float):
    """(cols, Δ, segments) of ``rows``: Δ_c = a₊ − a₋ of the pair at ±t, as taken."""
    cols, deltas, segments = [], [], [0]
    for r in rows:
        members, _ = groups.members(int(r))
        cols.append(members)
        deltas.append(groups.taken(flat, int(r), t) - groups.taken(flat, int(r), -t))
        segments.append(segments[-1] + members.size)
    return np.concatenate(cols), np.concatenate(deltas), np.array(segments, dtype=np.int64)


def _judge(setup: _Setup, run: Engine, plan: _Plan, rows: np.ndarray, t: float, sigma, centre,
           multiplier: float, dtype) -> tuple[_Judged, np.ndarray, np.ndarray]:
    """Evaluate ``rows`` at ±t and judge every output element: the residuals with their
    rounding-and-rounding-of-J allowance (no truncation yet), the rounding r and the
    largest Δ of each row."""
    out = run.perturbed(rows, np.tile([t, -t], (rows.size, 1)))
    measured = out[:, 0, :] - out[:, 1, :]
    cols, deltas, segments = _displacements(setup.flat, plan.groups, rows, t)
    given = setup.given
    predicted = given.products(cols, deltas, segments)
    noise = pair_noise(sigma, centre, out[:, 0, :], out[:, 1, :], float(np.finfo(dtype).eps))
    rounding = math.sqrt(2.0) * noise
    largest = np.maximum.reduceat(np.abs(deltas), segments[:-1]) if deltas.size else np.zeros(0)
    if given.kind == "operator":
        scale = np.abs(predicted)
    else:
        scale = given.products(cols, deltas, segments, absolute=True) \
            + given.row_maxima()[None, :] * largest[:, None]
    unit = multiplier * float(np.finfo(np.float64).eps)
    allowed = multiplier * rounding + unit * scale
    return _Judged(predicted - measured, allowed, predicted), rounding, largest


def _refined(setup, run, plan, rows, first: _Judged, rounding, sigma, centre, multiplier, dtype):
    """Rows with a disagreement evaluated again at ±2: Richardson's e_R = e + (e − e₂/2)/3
    and t = |e − e₂/2|/3 replace the disagreeing elements' residual and add to their allowance."""
    again = np.flatnonzero(first.disagrees.any(axis=1))
    if again.size == 0:
        return first
    second, rounding2, _ = _judge(setup, run, plan, rows[again], 2.0, sigma, centre, multiplier, dtype)
    e1, e2 = first.residual[again], second.residual
    correction = (e1 - e2 / 2.0) / 3.0
    richardson_rounding = analysis.richardson_rounding_std(rounding[again], rounding2 / 2.0)
    rounding_of_j = first.allowed[again] - multiplier * rounding[again]
    allowed = multiplier * richardson_rounding + np.abs(correction) + rounding_of_j
    bad = first.disagrees[again]
    residual, judged_allowed = first.residual.copy(), first.allowed.copy()
    residual[again] = np.where(bad, e1 + correction, e1)
    judged_allowed[again] = np.where(bad, allowed, first.allowed[again])
    return _Judged(residual, judged_allowed, first.predicted)


def _run(setup: _Setup) -> JacobianReport:
    started = time.perf_counter()
    _, rng, entropy = generators(setup.seed)
    centre, output = _first_value(setup)
    m, n = output.size, setup.layout.size
    if m != setup.given.shape[0]:
        raise InputError(f"the given {setup.kind} has {setup.given.shape[0]} rows; the function "
                         f"returns {m} values")
    plan = _plan(setup, m, rng)
    evaluator = make_vector_evaluator(setup.fun, setup.flat, setup.args, setup.layout, output,
                                      plan.groups, setup.engine_name)
    run = Engine(evaluator, setup.layout, executor_for(setup.executor, evaluator, setup.workers))
    run.evaluations = 1  # F(x)
    dtype = setup.flat.dtype
    sigma, detected, tries = _measured_noise(run, plan.noise_row, centre, dtype)
    sigma = np.maximum(sigma, conditioning_floor(setup.given, setup.flat, dtype))
    rows = np.concatenate([np.arange(plan.count), plan.count + 1 + np.arange(setup.directions)])
    multiplier = analysis.noise_multiplier(rows.size * m)
    first, rounding, largest = _judge(setup, run, plan, rows, 1.0, sigma, centre, multiplier, dtype)
    judged = _refined(setup, run, plan, rows, first, rounding, sigma, centre, multiplier, dtype)
    located = _localise(setup, run, plan, output, judged, (sigma, centre, multiplier, dtype))
    entries = _entries(setup, plan, output, judged, rows, largest, located)
    notes = list(setup.notes)
    if not detected.all():
        notes.append(f"the noise of {int((~detected).sum())} of {m} output elements was not detected "
                     f"at {tries} steps: bounded from above by ECnoise's smallest levels (a looser check)")
    if setup.source == "jac":
        notes.append("the pattern came from the sparse jac itself: an entry it dropped is judged as "
                     "a missing entry (or in its row's entry of the same group), and "
                     f"{setup.directions} random dense direction(s) guard against cancellation")
    asymmetric = 0
    if setup.kind == "hessian":
        asymmetric, note = _asymmetry(setup, entries)
        notes += note
    failing = int(judged.disagrees.sum())
    missing = 0 if plan.column_of is None else \
        int(((plan.column_of < 0) & judged.disagrees[:plan.count]).sum())
    relative = analysis.relative_error(entries.numerical, entries.analytic)
    if failing or asymmetric:
        verdict = "fail"
    elif relative > analysis.WRONG_ABOVE:
        verdict = "warn"
        notes.append(f"relative error {relative:.2e} > {analysis.WRONG_ABOVE:g}: the finite differences "
                     "are too inaccurate to confirm the Jacobian")
    else:
        verdict = "pass"
    return JacobianReport(setup.kind, verdict, run.evaluations, time.perf_counter() - started,
                          entries.worst, entropy if setup.seed is None else setup.seed, notes, (m, n),
                          plan.count, int(judged.residual.size), failing, missing, asymmetric,
                          setup.source, setup.directions, relative)


@dataclass
class _Entries:
    worst: list[EntryResult]
    numerical: np.ndarray  # pattern entries: the finite difference
    analytic: np.ndarray  # pattern entries: the given value
    rows: np.ndarray  # pattern entries' (output row, column), flat C layout
    cols: np.ndarray
    allowed: np.ndarray  # their allowed errors, units of the entry


def _entries(setup: _Setup, plan: _Plan, output: OutputLayout, judged: _Judged, rows: np.ndarray,
             largest: np.ndarray, located: dict[tuple[int, int], list[EntryResult]]) -> _Entries:
    """The worst judged differences named and in entry units (pattern entries (i, c) scaled by
    1/Δ_c, missing ones by 1/max Δ of their group, directions by 1/‖Δ‖), and every pattern
    entry's given value (P/Δ_c: row i has no other column in its group), finite difference and
    allowed error."""
    m, count, label_row = output.size, plan.count, _row_labels(setup, output)
    delta = np.empty(setup.layout.size)
    cols, deltas, _ = _displacements(setup.flat, plan.groups, np.arange(count), 1.0)
    delta[cols] = deltas
    if plan.column_of is None:  # dense: group g is column g
        column = np.broadcast_to(np.arange(count)[:, None], (count, m))
    else:
        column = plan.column_of
    in_pattern = column >= 0
    units = np.where(in_pattern, delta[np.maximum(column, 0)], largest[:count, None])
    residual, allowed = judged.residual[:count] / units, judged.allowed[:count] / units
    score = np.abs(residual) / np.maximum(allowed, np.finfo(np.float64).tiny)
    results: list[EntryResult] = []
    candidates = np.flatnonzero((in_pattern | (score > 1)).ravel())
    for flat_index in candidates[largest_first(score.ravel()[candidates], WORST)]:
        g, i = divmod(int(flat_index), m)
        if (g, i) in located:
            results += located[(g, i)]
            continue
        where = setup.layout.label(int(column[g, i])) if in_pattern[g, i] \
            else _missing_label(setup, plan, g)
        results.append(EntryResult(f"{label_row(i)} / {where}", float(residual[g, i]),
                                   float(allowed[g, i]), float(score[g, i]),
                                   "entry" if in_pattern[g, i] else "missing"))
    for k in range(setup.directions):
        d = count + k
        norm = float(np.linalg.norm(_displacements(setup.flat, plan.groups, np.array([rows[d]]), 1.0)[1]))
        res, alw = judged.residual[d] / norm, judged.allowed[d] / norm
        direction_score = np.abs(res) / np.maximum(alw, np.finfo(np.float64).tiny)
        results += [EntryResult(f"{label_row(int(i))} / random direction {k}", float(res[i]),
                                float(alw[i]), float(direction_score[i]), "direction")
                    for i in largest_first(direction_score, WORST)]
    # failing entries first (they name a column), then directions, which only confirm
    named_failure = any(e.score > 1 and e.what != "direction" for e in results)
    results.sort(key=lambda e: (named_failure and e.what == "direction", -e.score))
    groups, out_rows = np.nonzero(in_pattern)
    given = judged.predicted[groups, out_rows] / units[groups, out_rows]
    return _Entries(results[:WORST], given - residual[groups, out_rows], given, out_rows,
                    column[groups, out_rows], allowed[groups, out_rows])


def largest_first(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of the 1-D ``values``, largest first (ties in index order):
    O(size + k·log k), where a full sort of a dense Jacobian's m·n scores took most of a check."""
    if values.size > k:
        top = np.sort(np.argpartition(values, values.size - k)[values.size - k:])
    else:
        top = np.arange(values.size)
    return top[np.argsort(-values[top], kind="stable")]


def _row_labels(setup: _Setup, output: OutputLayout) -> Callable[[int], str]:
    """Names of the output elements: theta's for a Hessian, the output's otherwise."""
    return setup.layout.label if setup.kind == "hessian" else output.label


def _missing_label(setup: _Setup, plan: _Plan, group: int) -> str:
    """A group holding a missing entry, named (when it was not localised)."""
    members, _ = plan.groups.members(group)
    first = setup.layout.label(int(members[0]))
    return f"missing entry in group {group} ({members.size} column(s), first {first})"


def _asymmetry(setup: _Setup, entries: _Entries) -> tuple[int, list[str]]:
    """Pairs (c, d), c < d, of judged entries with |H_cd − H_dc| > A_cd + A_dc."""
    given = setup.given
    if given.kind == "operator":
        return 0, ["the Hessian is a LinearOperator: its asymmetry is not checked entry by entry"]
    n = setup.layout.size
    keys = entries.rows * n + entries.cols
    order = np.argsort(keys)
    keys, allowed = keys[order], entries.allowed[order]
    upper = entries.rows < entries.cols
    rows, cols = entries.rows[upper], entries.cols[upper]
    a_cd = entries.allowed[upper]
    mirror = np.searchsorted(keys, cols * n + rows)
    found = (mirror < keys.size) & (keys[np.minimum(mirror, keys.size - 1)] == cols * n + rows)
    a_dc = np.where(found, allowed[np.minimum(mirror, keys.size - 1)], a_cd)
    gap = np.abs(given.entries(rows, cols) - given.entries(cols, rows))
    bad = np.flatnonzero(gap > a_cd + a_dc)
    if bad.size == 0:
        return 0, []
    k = bad[np.argmax(gap[bad] / (a_cd + a_dc)[bad])]
    label = setup.layout.label
    return int(bad.size), [
        f"the given Hessian is asymmetric: {bad.size} pair(s); worst H[{label(int(rows[k]))}, "
        f"{label(int(cols[k]))}] − H[{label(int(cols[k]))}, {label(int(rows[k]))}] = "
        f"{float(gap[k]):.3e} > {float(a_cd[k] + a_dc[k]):.3e}, the two entries' allowed errors"]


#: Missing entries (group, output element) localised by bisection, the worst first.
LOCALISED = WORST


def _localise(setup: _Setup, run: Engine, plan: _Plan, output: OutputLayout, judged: _Judged,
              noise: tuple) -> dict[tuple[int, int], list[EntryResult]]:
    """The columns behind the worst missing entries, by bisection: each half of a group that
    holds one is evaluated at ±s (4 evaluations a split, shared by every element of the
    group), and the elements whose difference in a half exceeds z·√2·σ + a (the rule,
    without truncation: outside the pattern a half's difference is noise alone unless an
    entry is missing there) go on into that half, down to single columns, named with their
    own residual and allowance.  Returns the located entries of each (group, element)."""
    if plan.column_of is None:
        return {}
    count = plan.count
    missing = (plan.column_of < 0) & judged.disagrees[:count]
    flat_order = largest_first(np.where(missing, np.abs(judged.residual[:count]) / judged.allowed[:count],
                                        -np.inf).ravel(), LOCALISED)
    chosen = [divmod(int(k), missing.shape[1]) for k in flat_order if missing.flat[k]]
    active: dict[int, tuple[np.ndarray, list[tuple[int, int]]]] = {}
    for g, i in chosen:  # by group: the halves of a group serve all its elements
        members, _ = plan.groups.members(g)
        active.setdefault(g, (members, []))[1].append((g, i))
    work = list(active.values())
    found: dict[tuple[int, int], list[EntryResult]] = {}
    steps = np.zeros(setup.layout.size)
    steps[plan.groups.cols[: plan.groups.ptr[count]]] = plan.groups.steps[: plan.groups.ptr[count]]
    while work:
        halves = [(part, pairs) for cols, pairs in work
                  for part in np.array_split(cols, 2 if cols.size > 1 else 1)]
        groups = Groups.from_parts([part for part, _ in halves], steps)
        evaluator = make_vector_evaluator(setup.fun, setup.flat, setup.args, setup.layout, output,
                                          groups, setup.engine_name)
        sub = run.with_evaluator(evaluator)
        sub_plan = _Plan(groups, len(groups), None, plan.group_of)
        result, _, _ = _judge(setup, sub, sub_plan, np.arange(len(groups)), 1.0, *noise)
        run.evaluations += sub.evaluations
        work = []
        for r, (part, pairs) in enumerate(halves):
            kept = [(g, i) for g, i in pairs if result.disagrees[r, i]]
            if not kept:
                continue
            if part.size > 1:
                work.append((part, kept))
                continue
            c = int(part[0])
            delta = float(_displacements(setup.flat, groups, np.array([r]), 1.0)[1][0])
            label_row = _row_labels(setup, output)
            for g, i in kept:
                difference, allowed = result.residual[r, i] / delta, result.allowed[r, i] / delta
                found.setdefault((g, i), []).append(EntryResult(
                    f"{label_row(i)} / {setup.layout.label(c)}", float(difference), float(allowed),
                    float(abs(difference) / allowed), "missing"))
    return found
