"""The Taylor test: the remainder of a first- (or second-) order expansion along a direction.

Along h, φ(ε) = f(θ + εh).  With a gradient g whose directional derivative is off by
δ = ⟨g − ∇f, h⟩, the first-order remainder is

    R(ε) = |φ(ε) − φ(0) − ⟨g, Δ(ε)⟩| = |−δ·ε + C·ε² + O(ε³) ± e(ε)|,   C = ½·hᵀ∇²f·h,

where Δ(ε) = fl(θ + εh) − θ is the step actually taken (exact in float64) and e(ε) is
the rounding noise of φ(ε) − φ(0), of standard deviation s(ε) = √(σ₀² + σ_ε²) with σ
the noise level ECnoise measures along h.  A correct gradient (δ = 0) gives rate 2 as
ε → 0, a wrong one rate 1 below ε = |δ|/|C|.  With ``hvp=`` the term ½ε²⟨h, H h⟩ is
subtracted too: rate 3 when g and H are right, 2 when only H is wrong, 1 when g is.

The remainder is trusted only where it is well above its noise, R ≥ 2·z·s (then the
noise moves log₂ R by at most 1), z = 2·√(2 ln(k/10⁻⁶)) for k remainders as in
:mod:`fastgrad.verdict`.  The linear term shows only where |δ|·ε ≥ 2zs and
|δ|·ε ≳ |C|·ε², i.e. when |δ| ≳ √(2zs·|C|): the test resolves directional errors down
to about R(ε₀)/ε₀ at the smallest trusted ε₀, and says so in its notes.  fastgrad
therefore chooses ε itself: it walks down from ε = 2⁻⁵ (relative to θ's size) by
factors of 8 until the remainder is in the noise twice in a row, and fits the rate on
the lowest run of 3 or 4 trusted ε spaced by factors of 2 (the smallest ε is where a
linear term dominates).  A fail is confirmed at −ε, which tells a wrong term from a kink of f
at θ (:func:`_other_side`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import _validation as validate
from . import analysis
from .analysis import WRONG_ABOVE
from .engine.compiled import is_compiled
from .errors import InputError, LossError, describe
from .noise import (
    DEFAULT_POINTS,
    NOISE_DETECTED,
    default_step,
    ecnoise,
    estimate_noise,
    noise_bound,
    random_direction,
)
from .parameters import ParameterLayout, Theta
from .plotting import pyplot
from .report import CheckReport, strict_dict
from .sampling import generators

#: The first ε, relative to θ's size (‖ε·h‖₂ = ε·rms(max(1, |θ_i|))), and the largest at which a
#: lower rate fails: beyond it (reached when the remainder is in the noise at START) higher-order
#: terms of a smooth f with a scale of variation like θ's can bend the rate by as much as a
#: wrong derivative term, and only a warning is given.
START = 2.0**-5
#: The largest relative ε tried when the remainder is in the noise at START.
LARGEST = 1.0
#: The walk down multiplies ε by 1/8 (a rate-2 remainder drops 64× a step).
COARSE = 8.0
#: Walk steps at most (2⁻⁵ · 8⁻²⁰ ≈ 1e-20: below any representable step of a θ of size 1).
MAX_STEPS = 20
#: Points of the fitted window (factor 2 apart) at most, and at least.
WINDOW, MIN_WINDOW = 4, 3


class _Record:
    """A flat record: ``to_dict()`` is its fields."""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TaylorRow(_Record):
    """One ε: ``remainder`` R(ε) (units of f), ``noise`` its noise bound z·s(ε), ``rate`` the
    local rate log(R_k/R_{k−1}) / log(ε_k/ε_{k−1}) against the next smaller ε (NaN for the
    first), ``trusted`` R ≥ 2·z·s, ``fitted`` whether the rate fit used it."""

    epsilon: float
    remainder: float
    noise: float
    rate: float
    trusted: bool
    fitted: bool


@dataclass(frozen=True)
class RateEntry(_Record):
    """The report core's worst entry: the fitted rate against the expected one,
    ``difference`` = rate − expected, ``allowed`` = the rate's uncertainty."""

    label: str
    difference: float
    allowed: float
    score: float


@dataclass(frozen=True)
class TaylorReport(CheckReport):
    """The outcome of :func:`taylor_test`.

    ``rate`` is the log-log least-squares slope over the fitted window, ``rate_uncertainty``
    its bound (noise + higher-order drift, see :func:`fit_rate`), ``expected_rate`` 2 (3 with
    ``hvp=``); ``resolution`` the smallest error of the derivative term that would have shown
    (units of f per unit ε); ``noise`` σ of one evaluation (‖σ_j‖₂ over the outputs with jvp=);
    ``evaluations`` counts the calls of ``loss`` (grad, hvp or jvp are called once each).
    """

    kind: str
    verdict: str
    evaluations: int
    seconds: float
    worst: list[RateEntry]
    seed: int | None
    notes: list[str]
    table: list[TaylorRow]
    rate: float
    rate_uncertainty: float
    expected_rate: int
    checked: str  # "gradient", "gradient and hvp" or "jvp"
    directional_derivative: float  # ⟨g, h⟩ (or ‖J·h‖₂ with jvp=)
    resolution: float
    noise: float
    norm: str | None = None  # the norm of the output's remainder with jvp=
    direction_norm: float = field(default=float("nan"))  # ‖h‖₂

    def to_dict(self) -> dict:
        """Every field in strict JSON types; a ``"non_finite"`` map as :meth:`Report.to_dict`."""
        return strict_dict({**{k: v for k, v in self.__dict__.items() if k not in ("worst", "table")},
                            "passed": self.passed, "worst": [e.to_dict() for e in self.worst],
                            "table": [row.to_dict() for row in self.table]})

    def summary(self) -> str:
        return (f"{self.checked} along a direction of norm {self.direction_norm:.3g}: rate "
                f"{self.rate:.3f} ± {self.rate_uncertainty:.3f} (expected {self.expected_rate}), "
                f"{self.evaluations} evaluations in {self.seconds:.3g} s, noise σ = {self.noise:.3g}")

    def _repr_html_(self) -> str:
        """The verdict, the fitted rate, and the table of ε, remainder, noise bound and local
        rate: the fitted rows in the verdict's colour, rows in the noise grey."""
        from .notebook import check_html, table

        return check_html(self, table(
            ["epsilon", "remainder", "noise bound", "local rate", ""],
            [[f"{r.epsilon:.3e}", f"{r.remainder:.3e}", f"{r.noise:.2e}",
              f"{r.rate:.3f}" if math.isfinite(r.rate) else "",
              "fitted" if r.fitted else ("" if r.trusted else "in noise")] for r in self.table],
            [self.verdict if r.fitted else ("" if r.trusted else "unchecked") for r in self.table]),
            worst=False)

    def __str__(self) -> str:
        lines = [f"taylor check: {self.verdict.upper()}", self.summary()]
        lines += [f"note: {note}" for note in self.notes]
        header = ["epsilon", "remainder", "noise", "rate", ""]
        rows = [[f"{r.epsilon:.3e}", f"{r.remainder:.3e}", f"{r.noise:.2e}", f"{r.rate:.3f}",
                 "fitted" if r.fitted else ("" if r.trusted else "in noise")] for r in self.table]
        widths = [max(len(r[k]) for r in [header, *rows]) for k in range(5)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in [header, *rows]]
        return "\n".join(lines)

    def plot(self, ax=None):
        """The log-log plot of R(ε), fitted points marked, the noise bound dashed; returns the Axes.

        Needs matplotlib (imported here, not by ``import fastgrad``)."""
        plt = pyplot()
        if ax is None:
            _, ax = plt.subplots()
        eps = np.array([r.epsilon for r in self.table])
        rem = np.array([r.remainder for r in self.table])
        fitted = np.array([r.fitted for r in self.table])
        shown = rem > 0
        ax.loglog(eps[shown], rem[shown], "o-", color="0.5", label="remainder R(ε)")
        ax.loglog(eps[fitted], rem[fitted], "o", color="C0",
                  label=f"fitted: rate {self.rate:.2f} ± {self.rate_uncertainty:.2f}")
        ax.loglog(eps, [r.noise for r in self.table], "--", color="C3", label="noise bound z·s(ε)")
        ax.set_xlabel("ε")
        ax.set_ylabel("R(ε)")
        ax.set_title(f"Taylor test ({self.checked}): {self.verdict}, expected rate {self.expected_rate}")
        ax.legend()
        return ax


# ----------------------------------------------------------------------------- the fit
def fit_rate(eps: np.ndarray, remainder: np.ndarray, noise: np.ndarray) -> tuple[float, float]:
    """(rate, uncertainty) of R ∝ ε^rate over the window (R > noise everywhere).

    rate = the least-squares slope of y = log₂ R on x = log₂ ε, i.e. Σ w_k·y_k with
    w_k = (x_k − x̄)/Σ(x − x̄)².  A noise |e_k| ≤ noise_k moves y_k by at most
    Δy_k = −log₂(1 − noise_k/R_k), hence the slope by at most B = Σ|w_k|·Δy_k.  Higher-order
    terms bend the curve: the change of the local rates from the window's first pair to its
    last, beyond the Δy_k that noise alone can cause, bounds their effect on the slope (for
    a correction ∝ ε^q the local rate moves monotonically toward the asymptotic one as ε → 0).
    The uncertainty is B plus that excess drift.
    """
    x, y = np.log2(eps), np.log2(remainder)
    centred = x - x.mean()
    weights = centred / np.sum(centred**2)
    rate = float(weights @ y)
    shift = -np.log2(1.0 - noise / remainder)
    bound = float(np.abs(weights) @ shift)
    local = np.diff(y) / np.diff(x)
    drift = max(0.0, abs(float(local[-1] - local[0])) - float(shift.sum()))
    return rate, bound + drift


def judge_rate(rate: float, uncertainty: float, expected: int) -> tuple[str, str | None]:
    """(verdict, reason): pass when |rate − expected| ≤ U and the rate is not also within U of
    expected − 1; fail when it is within U of an order 1..expected−1 (a wrong derivative term)
    and not of the expected one; warn otherwise.  A rate within U of expected + 1 or + 2 also
    passes (with a note): the ε^expected term vanishes along h (C = 0, e.g. at an inflection),
    which a wrong lower term could only lower."""
    near_expected = abs(rate - expected) <= uncertainty
    lower = [order for order in range(1, expected) if abs(rate - order) <= uncertainty]
    higher = [order for order in (expected + 1, expected + 2) if abs(rate - order) <= uncertainty]
    if near_expected and not lower:
        return "pass", None
    if higher and not lower:
        return "pass", (f"the rate is {higher[0]}, not {expected}: the ε^{expected} term of f vanishes "
                        f"along h, and no lower term shows")
    if lower and not near_expected:
        return "fail", None
    if near_expected:
        return "warn", (f"the rate's uncertainty ±{uncertainty:.2f} cannot tell {expected} from "
                        f"{expected - 1}: the remainder is too close to the noise")
    if expected - 1 < rate < expected:
        return "warn", (f"the rate {rate:.2f} ± {uncertainty:.2f} lies between {expected - 1} and "
                        f"{expected}: an error of the derivative term near the resolution below (its term "
                        f"and the next comparable over the window), or higher-order terms")
    return "warn", (f"the rate {rate:.2f} ± {uncertainty:.2f} is neither {expected} nor lower by an "
                    f"integer: two terms cancel near the window, or f is not smooth there (a kink)")


def fitted_window(trusted: np.ndarray) -> np.ndarray | None:
    """Indices of the lowest run of at least MIN_WINDOW consecutive trusted points (sorted by
    ε, factor 2 apart), cut to its WINDOW smallest; None if there is no such run."""
    run: list[int] = []
    for index, ok in enumerate(trusted):
        if ok:
            run.append(index)
            if len(run) == WINDOW:
                break
        elif len(run) >= MIN_WINDOW:
            break
        else:
            run = []
    return np.array(run) if len(run) >= MIN_WINDOW else None


# ----------------------------------------------------------------------------- evaluation
class _Line:
    """f (or F) at θ + εh, counting the calls: the user's function gets a fresh array in θ's
    structure (a compiled function of a dict θ: the flat vector)."""

    def __init__(self, fun: Callable, args: tuple, layout: ParameterLayout, theta: np.ndarray,
                 h: np.ndarray, vector: bool, compiled: bool):
        self.fun, self.args, self.layout, self.h = fun, args, layout, h
        self.flat_call = compiled and layout.is_dict
        self.vector = vector
        self.evaluations = 0
        self.base = theta.astype(np.float64)

    def at(self, point: np.ndarray):
        """f(point) (a float, or a flat float64 vector), point in the working dtype."""
        self.evaluations += 1
        argument = point if self.flat_call else self.layout.structured(point)
        try:
            value = self.fun(argument, *self.args)
        except Exception as error:
            raise LossError(f"the function raised {type(error).__name__}: {describe(error)}") from error
        return flat_output(value, "the function's value") if self.vector else _scalar(value)

    def step(self, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """(point fl(θ + εh) in the working dtype, the step Δ = point − θ taken, in float64)."""
        point = self.point(eps, self.h)
        return point, point.astype(np.float64) - self.base

    def point(self, eps: float, direction: np.ndarray) -> np.ndarray:
        """A fresh fl(θ + ε·direction) in the working dtype."""
        return (self.base + eps * direction).astype(self.layout.dtype)


def _scalar(value) -> float:
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iuf":
        raise LossError(f"the loss must return a real scalar, got {type(value).__name__} "
                        f"of shape {array.shape}")
    return float(array.reshape(()))


def flat_output(value, what: str) -> np.ndarray:
    """An array or dict of arrays (keys in sorted order) as one flat float64 vector."""
    if isinstance(value, Mapping):
        parts = [np.asarray(value[key], dtype=np.float64).ravel() for key in sorted(value)]
        return np.concatenate(parts) if parts else np.zeros(0)
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise LossError(f"{what} must be a real array or dict of arrays, got dtype {array.dtype}")
    return array.astype(np.float64).ravel()


def vector_noise(line: _Line, f0: np.ndarray, h_unit: np.ndarray) -> np.ndarray:
    """σ_j of each output element by ECnoise on the 9 values along h (one try at δ = √u);
    where it detects none, its bound min_k σ_k (errs large), never below u·|F_j(θ)|."""
    dtype = line.layout.dtype
    step = default_step(dtype)
    centre = DEFAULT_POINTS // 2
    values = np.array([f0 if j == centre else line.at(line.point((j - centre) * step, h_unit))
                       for j in range(DEFAULT_POINTS)])
    floor = np.finfo(dtype).eps * np.abs(f0)
    sigma = np.empty(f0.size)
    for j in range(f0.size):
        column = values[:, j]
        level, code = ecnoise(column)
        if code != NOISE_DETECTED:
            level = noise_bound(column) if np.all(np.isfinite(column)) else 0.0
        sigma[j] = max(level, floor[j])
    return sigma


# ----------------------------------------------------------------------------- the test
#: Remainders a test computes at most (the walk and the window's points): sets z.
MAX_REMAINDERS = MAX_STEPS + 2 * WINDOW


@dataclass
class _Ladder:
    """The remainders computed so far, by relative ε t."""

    remainder: Callable[[float], tuple[float, float, np.ndarray]]  # t -> (R, z·s, signed residual)
    points: dict[float, tuple[float, float, np.ndarray]] = field(default_factory=dict)

    def trusted(self, t: float) -> bool:
        if t not in self.points:
            self.points[t] = self.remainder(t)
        value, noise, _ = self.points[t]
        return bool(math.isfinite(value) and value > 0.0 and value >= 2.0 * noise)

    def finite(self, t: float) -> bool:
        """Whether f was finite (and did not raise) at relative ε t, already evaluated."""
        return math.isfinite(self.points[t][0])


def _lowest_trusted(ladder: _Ladder) -> float | None:
    """Walk down from START by 1/COARSE until the remainder is in the noise twice in a row
    (once may be a cancellation of two terms; a non-finite value, f outside its domain at a
    large step, does not count); if it is finite but in the noise at START, walk up by
    COARSE/2 to LARGEST.  The smallest relative ε with a trusted remainder, or None."""
    if not ladder.trusted(START) and ladder.finite(START):
        t = START
        while t * COARSE / 2 <= LARGEST:
            t *= COARSE / 2
            if ladder.trusted(t):
                return t
            if not ladder.finite(t):
                return None
        return None
    lowest, t, in_noise = START if ladder.trusted(START) else None, START, 0
    for _ in range(MAX_STEPS):
        t /= COARSE
        if ladder.trusted(t):
            lowest, in_noise = t, 0
        elif ladder.finite(t):
            in_noise += 1
            if in_noise == 2:
                break
    return lowest


def taylor_test(loss: Callable, grad, theta: Theta, args: tuple | list = (), *,
                kwargs: Mapping | None = None, direction=None, hvp: Callable | None = None,
                jvp: Callable | None = None, seed: int | None = None) -> TaylorReport:
    """The Taylor test of ``grad`` (and ``hvp``), or of ``jvp``, along one direction h.

    R(ε) = |f(θ+εh) − f(θ) − ε⟨g, h⟩| must fall at rate 2 as ε → 0; with
    ``hvp(theta, v, *args)`` (H·v in θ's structure) R(ε) − ½ε²⟨h, Hh⟩ at rate 3.  With
    ``jvp(theta, v, *args)`` (J·v in the output's structure; ``grad`` None) ``loss`` may be
    vector-valued (an array or dict of arrays) and R(ε) = ‖F(θ+εh) − F(θ) − ε·J h‖₂, the
    Euclidean norm over every output element, at rate 2.  The linear term uses the step
    actually taken, fl(θ+εh) − θ (not with jvp=, whose J·h is one call).

    ε is chosen here (see the module's docstring): only remainders R ≥ 2·z·s(ε) above their
    noise are trusted, s(ε) the standard deviation of f(θ+εh) − f(θ) from ECnoise's σ, and
    the rate is the log-log slope over the lowest 3 or 4 trusted ε (factor 2 apart), with
    the uncertainty U of :func:`fit_rate`.  Verdict (:func:`judge_rate`): pass when the rate is
    within U of 2 (3) and not of 1 (2); fail when within U of a lower order and not of the
    expected one; warn otherwise, and when no 3 consecutive ε have a trusted remainder.

    direction : None (a seeded Gaussian g, h_i = g_i/‖g‖₂·max(1, |θ_i|), so that ε is the
        step relative to θ's size) or an array/dict in θ's structure, finite and nonzero; ε
        is then in its units, the walk starting at 2⁻⁵·rms(max(1, |θ_i|))/‖h‖₂.
    Cost: about 9 evaluations for the noise, one per ε of the walk (a factor 8 apart) and
    up to 4 for the window, 5 or 6 more to confirm a fail at −ε: 17 to 40 in all; grad (or
    jvp) once and hvp once.
    """
    started = time.perf_counter()
    setup = _setup(loss, grad, theta, args, kwargs, direction, hvp, jvp, seed)
    line, h = setup.line, setup.line.h
    size = _rms(np.maximum(1.0, np.abs(line.base)))  # rms(max(1, |θ_i|))
    scale = size / float(np.linalg.norm(h))  # ε per unit of relative ε
    derivative = setup.derivative()
    if jvp is None:
        estimate = estimate_noise(line.at, setup.flat, direction=h / np.maximum(1.0, np.abs(line.base)))
        f0, sigma = np.array([estimate.f0]), np.array([estimate.sigma])
        detected, unit = estimate.detected, float(np.finfo(estimate.values_dtype).eps)
    else:
        f0 = line.at(setup.flat.copy())
        given = derivative.linear(np.zeros(0), 1.0).size  # J·h: the step is not used
        if given != f0.size:
            raise LossError(f"jvp returned {given} values, the function {f0.size}: J·v must have the "
                            f"function's output structure")
        sigma = vector_noise(line, f0, h * scale)
        detected, unit = True, float(np.finfo(setup.layout.dtype).eps)
    z = analysis.noise_multiplier(MAX_REMAINDERS)

    def remainder(t: float) -> tuple[float, float, np.ndarray]:
        eps = t * scale
        point, taken = line.step(eps)
        try:
            value = np.atleast_1d(line.at(point))
        except LossError:  # f raised at θ + εh (it did not at θ): outside its domain, as a NaN
            return math.nan, math.nan, np.full(f0.size, math.nan)
        if value.size != f0.size:
            raise LossError(f"the function returned {value.size} values at θ + εh, {f0.size} at θ")
        residual = value - f0 - derivative.linear(taken, eps) - derivative.quadratic * eps**2
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            grown = np.maximum(np.where(f0 != 0, sigma * np.maximum(1.0, np.abs(value / f0)), sigma),
                               unit * np.abs(value))  # never below the spacing u·|f(θ+εh)|
            noise = z * float(np.linalg.norm(np.hypot(sigma, grown)))
            return float(np.linalg.norm(residual)), noise, residual

    ladder = _Ladder(remainder)
    lowest = _lowest_trusted(ladder)
    if lowest is not None:
        for power in range(-2, WINDOW):
            if lowest * 2.0**power <= LARGEST:
                ladder.trusted(lowest * 2.0**power)
    return _report(setup, ladder, scale, derivative, float(np.linalg.norm(sigma)), detected, started)


def _rms(values: np.ndarray) -> float:
    """√(mean(v²)), scaled so that no square overflows."""
    largest = float(np.max(np.abs(values)))
    return largest * float(np.sqrt(np.mean((values / largest) ** 2))) if largest > 0 else 0.0


@dataclass(frozen=True)
class _Derivative:
    """The given terms along h: ``linear(Δ, ε)`` (⟨g, Δ⟩, or ε·J h), the coefficient
    ``quadratic`` of ε² (½⟨h, H h⟩, or 0), ⟨g, h⟩ (or ‖J h‖₂), the expected rate."""

    linear: Callable[[np.ndarray, float], np.ndarray]
    quadratic: float
    directional: float
    expected: int
    checked: str


@dataclass(frozen=True)
class _Setup:
    layout: ParameterLayout
    flat: np.ndarray
    line: _Line
    derivative: Callable[[], _Derivative]
    seed: int | None


def _setup(loss, grad, theta, args, kwargs, direction, hvp, jvp, seed) -> _Setup:
    """Every input validated (InputError) before any call of the user's functions."""
    validate.callable_of("loss", loss)
    if jvp is not None:
        validate.callable_of("jvp", jvp)
        if grad is not None or hvp is not None:
            raise InputError("with jvp= give grad=None and no hvp=: the Taylor test then checks J·h of a "
                             "vector-valued function")
    elif grad is None:
        raise InputError("grad is None: give the gradient (a callable or an array), or jvp= for a "
                         "vector-valued function")
    if hvp is not None:
        validate.callable_of("hvp", hvp)
    positional, keywords, seed = validate.args(args), validate.kwargs(kwargs), validate.seed(seed)
    layout, flat = ParameterLayout.from_theta(theta)
    if direction is None:
        _, rng, entropy = generators(seed)
        h = random_direction(flat.astype(np.float64), rng)
    else:
        h = layout.flatten_like(direction, "direction")
        if not np.any(h):
            raise InputError("direction is zero: give a nonzero direction")
        entropy = seed
    static_grad = None
    if grad is not None and not callable(grad):
        static_grad = layout.flatten_like(grad, "grad")
    loss_bound = _with_keywords(loss, keywords)
    line = _Line(loss_bound, positional, layout, flat, h, vector=jvp is not None,
                 compiled=is_compiled(loss))

    def at_theta():
        return layout.structured(flat.copy())

    def derivative() -> _Derivative:
        if jvp is not None:
            value = flat_output(_call("jvp", _with_keywords(jvp, keywords), at_theta(),
                                      layout.structured(h.copy()), *positional), "jvp's value")
            return _Derivative(lambda taken, eps: eps * value, 0.0, float(np.linalg.norm(value)), 2, "jvp")
        g = static_grad if static_grad is not None else layout.flatten_like(
            _call("grad", _with_keywords(grad, keywords), at_theta(), *positional), "grad's value")
        curvature = 0.0
        if hvp is not None:
            product = layout.flatten_like(_call("hvp", _with_keywords(hvp, keywords), at_theta(),
                                                layout.structured(h.copy()), *positional), "hvp's value")
            curvature = 0.5 * float(h @ product)
        return _Derivative(lambda taken, eps: np.array([g @ taken]), curvature, float(g @ h),
                           3 if hvp is not None else 2, "gradient and hvp" if hvp is not None else "gradient")

    return _Setup(layout, flat, line, derivative, entropy)


def _with_keywords(function: Callable, keywords: dict) -> Callable:
    """``function`` with the keyword arguments bound (itself when there are none)."""
    if not keywords:
        return function
    return lambda *positional: function(*positional, **keywords)


def _call(name: str, function: Callable, *arguments):
    try:
        return function(*arguments)
    except Exception as error:
        raise LossError(f"{name} raised {type(error).__name__}: {describe(error)}") from error


def _report(setup: _Setup, ladder: _Ladder, scale: float, derivative: _Derivative, sigma: float,
            detected: bool, started: float) -> TaylorReport:
    """The table sorted by ε, the rate fitted on the window, the verdict and its notes."""
    ts = sorted(ladder.points)
    trusted = np.array([ladder.trusted(t) for t in ts])
    eps = np.array(ts) * scale
    remainder = np.array([ladder.points[t][0] for t in ts])
    noise = np.array([ladder.points[t][1] for t in ts])
    window = fitted_window(trusted)
    expected, notes = derivative.expected, []
    if not detected:
        notes.append("ECnoise detected no noise along h: σ is its upper bound, so fewer ε are trusted")
    if window is None:
        rate, uncertainty = math.nan, math.nan
        verdict, resolution, note = _without_rate(trusted, eps, remainder, noise, derivative)
        notes.append(note)
    else:
        rate, uncertainty = fit_rate(eps[window], remainder[window], noise[window])
        verdict, reason = judge_rate(rate, uncertainty, expected)
        if verdict == "fail" and eps[window[-1]] > START * scale:
            verdict, reason = "warn", (
                f"the rate {rate:.2f} ± {uncertainty:.2f} is lower than {expected}, but the remainder is "
                f"above its noise only at steps beyond {START:g} of θ's size, where higher-order terms "
                f"can bend it as much: too noisy to tell")
        if verdict == "fail":
            verdict, reason = _other_side(ladder, [ts[k] for k in window], scale, expected)
        if reason:
            notes.append(reason)
        notes += _resolution_notes(verdict, eps[window[0]], remainder[window[0]], derivative)
        resolution = remainder[window[0]] / eps[window[0]]
    with np.errstate(divide="ignore", invalid="ignore"):
        local = np.concatenate([[math.nan], np.diff(np.log(remainder)) / np.diff(np.log(eps))])
    fitted = np.zeros(len(ts), dtype=bool)
    if window is not None:
        fitted[window] = True
    table = [TaylorRow(float(e), float(r), float(n), float(q), bool(ok), bool(f))
             for e, r, n, q, ok, f in zip(eps, remainder, noise, local, trusted, fitted, strict=True)]
    difference = rate - expected
    worst = [RateEntry("rate of the remainder", difference, uncertainty,
                       abs(difference) / uncertainty if uncertainty > 0 else math.inf)]
    return TaylorReport("taylor", verdict, setup.line.evaluations, time.perf_counter() - started, worst,
                        setup.seed, notes, table, rate, uncertainty, expected, derivative.checked,
                        derivative.directional, resolution, sigma,
                        "2 (Euclidean, over every output element)" if derivative.checked == "jvp" else None,
                        float(np.linalg.norm(setup.line.h)))


def _resolution_notes(verdict: str, eps: float, remainder: float, derivative: _Derivative) -> list[str]:
    """What the smallest trusted ε₀ can resolve: a linear term δ·ε equals R(ε₀) when
    |δ| = R(ε₀)/ε₀, so smaller errors of ⟨g, h⟩ (of J·h) cannot show; on a fail, R ≈ |δ|·ε
    estimates the error itself."""
    error = remainder / eps
    relative = error / abs(derivative.directional) if derivative.directional else math.inf
    term = "J·h" if derivative.checked == "jvp" else "⟨g, h⟩"
    if verdict == "fail":
        return [f"the remainder falls like a first-order term: {term} = {derivative.directional:.6g} "
                f"is off by about {error:.3g} ({relative:.2g} relative) along h"
                + (", or ⟨h, H h⟩ is wrong" if derivative.expected == 3 else "")]
    return [f"errors of {term} below about {error:.2g} ({relative:.2g} relative) cannot show at this "
            f"noise level: their linear term stays below the remainder at every trusted ε "
            f"(smallest {eps:.3g})"]


def _without_rate(trusted: np.ndarray, eps: np.ndarray, remainder: np.ndarray, noise: np.ndarray,
                  derivative: _Derivative) -> tuple[str, float, str]:
    """(verdict, resolution, note) when no window has a trusted remainder.

    If no ε at all has one, up to the largest ε₁ (relative 1/2 unless f turned non-finite),
    the given terms reproduce f to within its noise there: |δ|·ε₁ ≤ R(ε₁) + z·s(ε₁) (a
    cancellation with the next order at every ε of the walk is not possible), so
    |δ| ≤ (R + z·s)/ε₁.  That passes when the bound is at most 10⁻³·|⟨g, h⟩| (the classic
    "wrong" band of :mod:`fastgrad.analysis`), and warns otherwise; a window broken by
    remainders in the noise between trusted ones warns.
    """
    if trusted.any():
        return "warn", math.nan, (f"no {MIN_WINDOW} consecutive ε (factor 2 apart) have a remainder above "
                                  f"twice its noise bound: no rate can be measured")
    finite = np.isfinite(remainder)
    last = int(np.flatnonzero(finite)[-1]) if finite.any() else len(eps) - 1
    bound = (remainder[last] + noise[last]) / eps[last]
    relative = bound / abs(derivative.directional) if derivative.directional else math.inf
    verdict = "pass" if relative <= WRONG_ABOVE else "warn"
    order = "quadratic" if derivative.expected == 3 else "affine"
    return verdict, bound, (f"the remainder is in the noise at every ε up to {eps[last]:.3g}: f is {order} "
                            f"along h to within its noise, no rate can be measured, and the error of the "
                            f"derivative term is at most {bound:.2g} ({relative:.2g} relative"
                            + ("" if verdict == "pass" else f", above the {WRONG_ABOVE:g} needed to pass")
                            + ")")


def _other_side(ladder: _Ladder, window: list[float], scale: float, expected: int) -> tuple[str, str | None]:
    """A fail is confirmed at −ε (the window's points and two above it again: 5 or 6 evaluations).

    For a smooth f with a wrong term δ, r(ε)/ε = −δ + C·ε and r(−ε)/(−ε) = −δ − C·ε: the rate
    is lower at −ε too, and both slopes have the sign of −δ while |C·ε| < |δ| (where the rate
    is near 1); likewise r(±ε)/(±ε)^p for a wrong term of order p (p = 2: a wrong hvp).  At a
    kink of f at θ along h they are φ'₊ − ⟨g, h⟩ and φ'₋ − ⟨g, h⟩: of opposite signs when g lies
    between the one-sided derivatives (a subgradient), and one of them ~0 (rate 2 on that side)
    when g is one of them.  The fail stands only when the rate at −ε is not the expected one
    either (it may be lower than p where −δε and Cε² cancel) and the two slopes point the same
    way (g is then wrong on both sides, kink or not); otherwise the verdict is warn.
    """
    ts = [*window, 2.0 * window[-1], 4.0 * window[-1]]  # two more, should the lowest be in the noise
    minus = [ladder.remainder(-t) for t in ts]
    remainder = np.array([value for value, _, _ in minus])
    noise = np.array([bound for _, bound, _ in minus])
    kept = fitted_window(np.isfinite(remainder) & (remainder >= 2.0 * noise) & (remainder > 0))
    if kept is None:
        return "warn", ("the remainder falls at a lower rate for ε > 0 but is in the noise at −ε: f may "
                        "not be smooth at θ along h")
    eps = np.array(ts)[kept] * scale
    rate, uncertainty = fit_rate(eps, remainder[kept], noise[kept])
    lowest = ts[kept[0]]
    if lowest not in ladder.points:
        ladder.trusted(lowest)
    order = min(range(1, expected), key=lambda p: abs(rate - p))  # the lower order it falls at
    slope_plus = ladder.points[lowest][2] / eps[0] ** order
    slope_minus = minus[kept[0]][2] / (-eps[0]) ** order
    if abs(rate - expected) > uncertainty and float(slope_plus @ slope_minus) > 0:
        return "fail", None
    signs = "opposite" if slope_plus @ slope_minus <= 0 else "the same"
    return "warn", (f"the remainder falls at a lower rate for ε > 0, but at −ε at rate {rate:.2f} ± "
                    f"{uncertainty:.2f} with slopes r(±ε)/±ε of {signs} signs: f has a kink at θ along h "
                    f"(the one-sided derivatives differ) and no gradient exists there")
