"""check_jvp and check_hvp: Jacobian-vector products, each output element judged against
the error of its own directional difference.

For a tangent v, scaled so that x moves by h0 relative per coordinate in the mean
(t = h0 / RMS(v_i / s_i), s_i = max(1, |x_i|), h0 = ∛u as for a coordinate), the points
x_± = fl(x ± t·v) are taken and the tangent given to the product is the one they really
differ by, w = (x_+ − x_-) / 2t (exact in binary floating point, and v up to rounding), so
that every output element i has the central difference

    D_i = (F_i(x_+) − F_i(x_-)) / 2t  of  (J·w)_i,

judged as a coordinate of :func:`fastgrad.check` is: it disagrees when

    |D_i − (J·w)_i| > z·r_i + t_i + a_i,   r_i = √2·σ_i / 2t,

with σ_i the noise of element i measured by ECnoise on two tables of F (9 points each along
fixed random directions at relative steps √u and 100·√u, vectorised over the elements; the
larger, see :func:`element_noise`), at least u·|F_i|, and scaled by the growth of |F_i| at
x_± as :func:`fastgrad.analysis.evaluation_noise` does); z = 2·√(2 ln(m·k / 10⁻⁶)) over
the m·k entries of k tangents; t_i = 0 unless some element disagrees: then the tangent is
taken again at 2t and every element is judged on its Richardson value (4·D(t) − D(2t))/3
against the product's own, with t_i = |e_i(t) − e_i(R)| (e = D − J·w) and the Richardson
rounding; a_i = z·u_p·(|p_i| + max|p|) allows for the rounding of the given product
p = J·w in its own precision u_p.

At a kink of F_i (ReLU, abs, max) between x_- and x_+ the central difference is a blend of
the two sides and disagrees with a correct product.  An element that still disagrees after
Richardson is therefore compared with the one-sided differences on each side,
D^±(a·t) = ±(F_i(x_±) − F_i(x)) / a·t, extrapolated as R^± = 2·D^±(t) − D^±(2t) (their
truncation is linear in t): on the side away from the kink R^s is the derivative up to
O(t²), while on the side that crosses it D^s(t) and D^s(2t) blend the two slopes with
different weights and R^s is neither.  The element agrees with side s when
|R^s − (J·w)_i| ≤ z·√8.5·σ_i/t + a_i (the rounding of R^s: √(4·2 + 2/4)·σ/t).  Such an
element is a kink, not a failure: it makes the tangent's verdict "warn" (as an unresolved
kink does in :func:`fastgrad.check`), and the report's note counts it.
Cost: 1 + 16 evaluations of F, then 2 per tangent (4 where one is refined).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .. import _validation as validate
from .. import analysis
from ..errors import LossError
from ..methods import CENTRAL
from ..noise import (
    DEFAULT_POINTS,
    STEP_FACTOR,
    default_step,
    ecnoise_columns,
    pair_noise,
    random_direction,
)
from ..parameters import ARRAY_GROUP, ParameterLayout
from ..pipeline import NOISE_SEED
from ..verdict import zero_within_error
from .common import (
    OUTPUT_GROUP,
    Clock,
    Function,
    ProductEntry,
    ProductReport,
    ProductSummary,
    entropy_of,
    flat_values,
    linearization,
    output_layout,
    require_same_value,
    top_entries,
    user_call,
    vector_count,
    vectors,
    worst_verdict,
)


def check_jvp(fun: Callable, jvp: Callable, x, args: tuple | list = (), *,
              kwargs: Mapping | None = None, tangents: int | list = 4, seed: int | None = None,
              linearized: bool = False) -> ProductReport:
    """Check a Jacobian-vector product J·v of ``fun`` at ``x``, output element by element.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args, **kwargs)`` returns an array of any shape or a dict of arrays (a
        Numba fun receives the flat vector for a dict x).
    jvp : callable
        ``jvp(x, v, *args, **kwargs)`` returns J·v in fun's output structure.  With
        ``linearized=True``, ``jvp(x, *args, **kwargs)`` returns ``(value, jvp_fn)``
        (``jax.linearize``), called once; ``value`` must be fun(x).
    tangents : int or list
        How many random tangents v = Z·max(1, |x|), Z Gaussian from ``seed``, or the
        tangents themselves in x's structure.

    Returns
    -------
    ProductReport
        Kind "jvp"; entries labelled ``"tangent 1: out[3, 2]"`` (a dict output: its keys).

    The rule (module docstring): element i of tangent k fails when |D_i − (J·w)_i| >
    z·√2·σ_i/2t + t_i + a_i.  The product is called with w = (x_+ − x_-)/2t, the tangent the
    points really differ by (v up to rounding).
    """
    return _check_products("jvp", fun, jvp, x, args, kwargs, tangents, seed, linearized)


def check_hvp(grad: Callable, hvp: Callable, theta, args: tuple | list = (), *,
              kwargs: Mapping | None = None, vectors: int | list = 4, seed: int | None = None,
              linearized: bool = False) -> ProductReport:
    """Check a Hessian-vector product H·v at ``theta``: H·v is the JVP of the gradient,
    checked as :func:`check_jvp` (``grad(theta, *args)`` for fun, ``hvp(theta, v, *args)``
    or, ``linearized=True``, ``hvp(theta, *args) -> (gradient, hvp_fn)`` as scikit-learn's
    ``gradient_hessian_product``); entries labelled ``"vector 1: W[3, 1]"``."""
    return _check_products("hvp", grad, hvp, theta, args, kwargs, vectors, seed, linearized)


#: Per kind: names of (fun, product, vectors) in messages, an entry's prefix, the output group.
_NAMES = {"jvp": ("fun", "jvp", "tangents", "tangent", OUTPUT_GROUP),
          "hvp": ("grad", "hvp", "vectors", "vector", ARRAY_GROUP)}


def _check_products(kind: str, fun, product_of, x, args, kwargs, given, seed,
                    linearized) -> ProductReport:
    clock = Clock()
    fun_name, product_name, vectors_name, entry_name, group = _NAMES[kind]
    validate.callable_of(fun_name, fun)
    validate.callable_of(product_name, product_of)
    linearized = validate.flag("linearized", linearized)
    vector_count(given, vectors_name)
    entropy = entropy_of(seed)
    user_args, user_kwargs = validate.args(args), validate.kwargs(kwargs)
    layout, x_flat = ParameterLayout.from_theta(x)
    function = Function.of(fun, layout, user_args, user_kwargs)
    value = function(x_flat, "at x")
    out_layout, f0 = output_layout(value, f"{fun_name}(x)", group)
    if kind == "hvp":
        layout.flatten_like(value, "grad(theta)")  # the gradient has theta's structure
    flat_values(out_layout, value, f"{fun_name}(x)")  # finite
    tangents = vectors(given, layout, entropy, vectors_name)
    if validate.is_integer(given):  # drawn: v = Z·s
        tangents = [v * np.maximum(1.0, np.abs(x_flat.astype(np.float64))) for v in tangents]
    if linearized:
        lin_value, product = linearization(product_of, layout.structured(x_flat.copy()),
                                           user_args, user_kwargs, product_name)
        require_same_value(out_layout.flatten_like(lin_value, f"{product_name}'s value"), f0,
                           f"{product_name}(x, *args)")
    else:
        def product(v):
            return product_of(layout.structured(x_flat.copy()), v, *user_args, **user_kwargs)

    def apply(w: np.ndarray) -> Product:
        result = user_call(product_name, product, layout.structured(w.copy()))
        return Product(out_layout.flatten_like(result, f"the {product_name}'s product"),
                       precision_of(result))

    lines = [Line(x_flat, v) for v in tangents]
    given_products = [apply(line.tangent(1.0)) for line in lines]  # InputError before any difference
    noise = element_noise(function, x_flat, out_layout, f0)
    multiplier = analysis.noise_multiplier(out_layout.size * len(lines))
    entries, summaries, notes = [], [], []
    kinks = 0
    for k, (line, analytic) in enumerate(zip(lines, given_products, strict=True), start=1):
        before = function.evaluations
        judged = judge_line(function, out_layout, line, analytic, noise, multiplier, apply)
        label = f"{entry_name} {k}"
        order = np.argsort(-judged.score, kind="stable")[:10]
        entries += [ProductEntry(f"{label}: {out_layout.label(int(i))}", float(judged.given[i]),
                                 float(judged.numerical[i]),
                                 float(judged.given[i] - judged.numerical[i]),
                                 float(judged.error[i]), float(judged.score[i])) for i in order]
        summaries.append(judged.summary(label, noise, function.evaluations - before))
        kinks += int(judged.kink.sum())
    if kinks:
        notes.append(f"{kinks} entr{'y' if kinks == 1 else 'ies'} disagree with the central difference "
                     "but agree with a one-sided one: a kink of fun (ReLU, abs, max) within the step "
                     "of x? Not counted as failures; the verdict is at best warn")
    undetected = int((~noise.detected).sum())
    if undetected:
        notes.append(f"the noise of {undetected} of {out_layout.size} output element(s) could not "
                     "be measured (ECnoise's step too large or too small there): a bound was used, "
                     "which errs large")
    return ProductReport(kind, worst_verdict(s.verdict for s in summaries), function.evaluations,
                         clock.seconds(), top_entries(entries), summaries, layout.size,
                         out_layout.size, entropy, notes)


class Line:
    """x ± a·t·v for a tangent v: t = h0 / RMS(v_i / s_i), s_i = max(1, |x_i|), h0 = ∛u."""

    def __init__(self, x: np.ndarray, v: np.ndarray):
        self.x = x
        self.v = v
        scaled = v / np.maximum(1.0, np.abs(x.astype(np.float64)))
        self.step = CENTRAL.default_step(x.dtype) / math.sqrt(float(np.mean(scaled ** 2)))

    def points(self, multiple: float) -> tuple[np.ndarray, np.ndarray]:
        move = multiple * self.step * self.v
        base = self.x.astype(np.float64)
        return (base + move).astype(self.x.dtype), (base - move).astype(self.x.dtype)

    def tangent(self, multiple: float) -> np.ndarray:
        """w = (x_+ − x_-) / 2a·t: the tangent the points at a·t really differ by."""
        plus, minus = self.points(multiple)
        return (plus.astype(np.float64) - minus.astype(np.float64)) / (2.0 * multiple * self.step)


@dataclass(frozen=True)
class Product:
    """A given product J·w, flat float64, and the machine epsilon of its coarsest array."""

    values: np.ndarray
    unit: float

    def allowance(self, multiplier: float) -> np.ndarray:
        """a_i = z·u_p·(|p_i| + max|p|): the given product is itself rounded in its dtype
        (as the analytic gradient in :func:`fastgrad.derivatives.analytic_allowance`)."""
        unit = multiplier * self.unit
        return unit * np.abs(self.values) + unit * float(np.abs(self.values).max())


def precision_of(value) -> float:
    """The machine epsilon of the coarsest float array in ``value`` (float64's for integers)."""
    arrays = value.values() if isinstance(value, Mapping) else [value]
    kinds = [np.asarray(array).dtype for array in arrays]
    return max(float(np.finfo(dtype if dtype.kind == "f" else np.float64).eps) for dtype in kinds)


@dataclass(frozen=True)
class ElementNoise:
    """σ_i of each output element at x (units of F_i), F(x), and whether ECnoise detected it."""

    sigma: np.ndarray
    f0: np.ndarray
    detected: np.ndarray
    unit: float  # u of the output's precision

    def at(self, f_plus: np.ndarray, f_minus: np.ndarray) -> np.ndarray:
        """σ_i at a pair (:func:`fastgrad.noise.pair_noise`)."""
        return pair_noise(self.sigma, self.f0, f_plus, f_minus, self.unit)


#: The second table's step, in units of the first's (ECnoise's factor between tries,
#: :data:`fastgrad.noise.STEP_FACTOR`).
SECOND_TABLE = STEP_FACTOR


def element_noise(function: Function, x: np.ndarray, out_layout: ParameterLayout,
                  f0: np.ndarray) -> ElementNoise:
    """ECnoise (:func:`fastgrad.noise.ecnoise`) on each element of two tables of F at
    x + j·δ·p, j = −4..4, δ = √u and 100·√u, p the fixed random direction of the gradient
    check's noise estimate: 16 evaluations of F for every element at once.

    Why two.  ECnoise assumes the rounding errors at the table's points are independent.
    An element of a large output need not see them so: on a tridiagonal residual at
    n = 10^5 (δ·p_i ≈ 5e-11, δ = 2^-26), some elements are exactly linear along the
    √u-table (every level from the second on exactly 0) or show only part of their noise,
    while at 100·√u, with no such alignment, their noise is detected (≈ 1e-16 where the
    √u-table gave u·|F_i| ≈ 4e-18, and false alarms).  So σ_i is the larger of the two
    tables' detected levels.  Where neither detects it, the larger of their fallbacks (the
    smallest level σ_1..σ_6, :func:`fastgrad.noise.noise_bound`; 0 where the values are too
    equal to show noise), and at least the median detected σ of its output group: on that
    residual ~0.1 % of the elements stay undetected with fallbacks of u·|F_i| (F_i ≈ 0.006
    by cancellation of terms of ~1, whose rounding is ~1e-16) and failed correct products,
    while their computation is like their neighbours' (median 3.5e-16); erring large is the
    safe side, and the report's note counts them.  Then σ_i ≥ u·|F_i(x)|."""
    step = default_step(x.dtype)
    first, first_found = ecnoise_columns(_table(function, x, out_layout, f0, step, NOISE_SEED))
    second, second_found = ecnoise_columns(_table(function, x, out_layout, f0,
                                                  SECOND_TABLE * step, NOISE_SEED + 1))
    detected = first_found | second_found
    measured = np.maximum(np.where(first_found, first, 0.0), np.where(second_found, second, 0.0))
    sigma = np.where(detected, measured, np.maximum(first, second))
    for group in out_layout.groups:  # undetected: at least the group's typical noise
        part = slice(group.offset, group.stop)
        if detected[part].any() and not detected[part].all():
            typical = float(np.median(measured[part][detected[part]]))
            sigma[part] = np.where(detected[part], sigma[part], np.maximum(sigma[part], typical))
    unit = float(np.finfo(out_layout.dtype).eps)
    return ElementNoise(np.maximum(sigma, unit * np.abs(f0)), f0, detected, unit)


def _table(function: Function, x: np.ndarray, out_layout: ParameterLayout, f0: np.ndarray,
           delta: float, seed: int) -> np.ndarray:
    """F at x + j·δ·p, j = −4..4 (rows), p the random direction of ``seed``, F(x) reused at
    j = 0: 8 evaluations."""
    center = DEFAULT_POINTS // 2
    p = random_direction(x.astype(np.float64), seed)
    rows = []
    for j in range(DEFAULT_POINTS):
        if j == center:
            rows.append(f0)
            continue
        point = (x.astype(np.float64) + (j - center) * delta * p).astype(x.dtype)
        rows.append(flat_values(out_layout, function(point, "near x (noise estimate)"),
                                "fun's value near x (noise estimate)"))
    return np.array(rows)


@dataclass(frozen=True)
class JudgedLine:
    """One tangent's elements: the product given and the difference judged (Richardson
    values where refined), the allowed error and the score."""

    given: np.ndarray
    numerical: np.ndarray
    error: np.ndarray
    score: np.ndarray
    kink: np.ndarray  # disagrees centrally, agrees with a one-sided difference

    def summary(self, label: str, noise: ElementNoise, evaluations: int) -> ProductSummary:
        failed = int(((self.score > 1.0) & ~self.kink).sum())
        relative = analysis.relative_error(self.numerical, self.given)
        flat = not self.numerical.any() and not self.given.any()
        unsure = (relative > analysis.WRONG_ABOVE and not zero_within_error(self.given, self.error)) \
            or not (noise.detected.any() or flat) or bool(self.kink.any())
        verdict = "fail" if failed else "warn" if unsure else "pass"
        return ProductSummary(label, verdict, failed, self.score.size,
                              float(self.score.max(initial=0.0)), relative, evaluations)


def judge_line(function: Function, out_layout: ParameterLayout, line: Line, product: Product,
               noise: ElementNoise, multiplier: float, apply) -> JudgedLine:
    """D at t against the given J·w, and where any element disagrees, every element again
    on the Richardson values of D and of the product at t and 2t (module docstring); the
    product's own rounding a_i is allowed on top (:meth:`Product.allowance`)."""
    first = _difference(function, out_layout, line, 1.0, noise)
    numerical, rounding = first.central, first.rounding
    given, allowance = product.values, product.allowance(multiplier)
    error = multiplier * rounding + allowance
    kink = np.zeros(given.shape, dtype=bool)
    if np.any(np.abs(numerical - given) > error):
        second = _difference(function, out_layout, line, 2.0, noise)
        given2 = apply(line.tangent(2.0)).values
        extrapolated = analysis.richardson(numerical, second.central)
        given_r = analysis.richardson(given, given2)
        truncation = np.abs((numerical - given) - (extrapolated - given_r))
        error = multiplier * analysis.richardson_rounding_std(rounding, second.rounding) \
            + truncation + allowance
        kink = (np.abs(extrapolated - given_r) > error) & _one_sided_agreement(
            first, second, noise.f0, given, multiplier, allowance)
        numerical, given = extrapolated, given_r
    return JudgedLine(given, numerical, error, analysis.disagreement(numerical, given, error), kink)


@dataclass(frozen=True)
class Difference:
    """One pair x ± a·t·v: F at both points, D = (F_+ − F_-) / 2a·t and its rounding
    r = √2·σ_± / 2a·t per element (units of F per unit t), and the half-span a·t."""

    f_plus: np.ndarray
    f_minus: np.ndarray
    central: np.ndarray
    rounding: np.ndarray
    half_span: float


def _one_sided_agreement(first: Difference, second: Difference, f0: np.ndarray, given: np.ndarray,
                         multiplier: float, allowance: np.ndarray) -> np.ndarray:
    """Per element: does the given product agree with a one-sided extrapolation
    R^± = 2·D^±(t) − D^±(2t) within z·√8.5·σ/t + a (module docstring)?  σ/t is read off the
    pair's rounding r = √2·σ/2t: σ/t = √2·r."""
    allowed = multiplier * math.sqrt(8.5) * math.sqrt(2.0) * first.rounding + allowance
    agrees = np.zeros(given.shape, dtype=bool)
    for sign, near, far in ((1.0, first.f_plus, second.f_plus), (-1.0, first.f_minus, second.f_minus)):
        extrapolated = 2.0 * sign * (near - f0) / first.half_span - sign * (far - f0) / second.half_span
        agrees |= np.abs(extrapolated - given) <= allowed
    return agrees


def _difference(function: Function, out_layout: ParameterLayout, line: Line, multiple: float,
                noise: ElementNoise) -> Difference:
    """The pair x ± a·t·v (a = ``multiple``) and its central difference, per element."""
    plus, minus = line.points(multiple)
    where = "along a tangent"
    f_plus = flat_values(out_layout, function(plus, where), f"fun's value {where}")
    f_minus = flat_values(out_layout, function(minus, where), f"fun's value {where}")
    span = 2.0 * multiple * line.step
    if not np.array_equal(plus, minus):
        return Difference(f_plus, f_minus, (f_plus - f_minus) / span,
                          math.sqrt(2.0) * noise.at(f_plus, f_minus) / span, span / 2.0)
    raise LossError("the tangent's step moves no coordinate of x")  # pragma: no cover
