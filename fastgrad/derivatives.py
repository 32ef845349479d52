"""Numerical derivatives of single coordinates, by method, each with its error estimate.

The methods (:mod:`.methods`) say how their losses combine into a derivative; this
module measures and judges.  Every value carries an allowed error z·r + t + a (rounding
r, truncation t, and the analytic gradient's own rounding a; see :mod:`.analysis`).  A coordinate that
disagrees at the first pass is evaluated at a second step: its truncation error
is then estimated from the two, and the one-sided differences on either side
tell a kink (ReLU, max, abs, hinge) from a wrong gradient.  A screening method
(``forward``) clears what it can at one evaluation a row and hands the rest to its
confirming method (:func:`screen_clears`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import analysis
from .engine import Engine
from .errors import LossError
from .methods import CENTRAL, Method, central
from .noise import NoiseEstimate
from .plan import Plan
from .sampling import ALPHA, FLOOR, smallest_caught

#: Statuses of a checked coordinate.
OK, FAIL, KINK = "ok", "fail", "kink"


@dataclass
class CoordinateChecks:
    """Numerical derivatives at a plan's coordinates and their allowed errors."""

    numerical: np.ndarray
    error: np.ndarray
    refined: np.ndarray  # rows evaluated at a second step
    kink: np.ndarray  # bool: a kink explains the central difference's disagreement
    unresolved: np.ndarray  # bool: a one-sided value agrees, but no kink is resolved
    rough: np.ndarray | None = None  # bool: not smooth at any usable step (also unresolved)
    steps: np.ndarray | None = None  # step judged at, where moved to a balanced one (else 0)
    screen: Screen | None = None  # what a screening method's first pass left to its confirmer


@dataclass(frozen=True)
class Screen:
    """A screen's first pass over ``size`` rows: ``screened`` of them evaluated (those it could
    clear at all), ``cleared`` cleared; every other row, and ``audited`` cleared ones drawn at
    random, judged by ``confirmed_by`` at its relative step ``confirm_step``.  A bug that the
    screen clears at ``caught_from`` or more rows is caught w.p. ≥ 1 − ``alpha``
    (:func:`audit_rows`)."""

    size: int
    screened: int
    cleared: int
    audited: int
    confirmed_by: str
    confirm_step: float
    caught_from: int
    alpha: float


@dataclass(frozen=True)
class Context:
    """What every method needs besides the plan: engine, point, gradient, noise."""

    run: Engine
    theta: np.ndarray
    analytic: np.ndarray  # flat, every coordinate
    sigma: float  # noise level of one loss evaluation
    f0: float  # f(θ)
    dtype: np.dtype  # working dtype of θ
    analytic_eps: float  # machine epsilon of the analytic gradient's dtype
    analytic_scale: float  # max |g| over all coordinates
    complex_run: Engine | None = None  # evaluates at complex θ (method "complex")
    values_dtype: np.dtype = np.dtype(np.float64)  # precision of f's values (NoiseEstimate)
    displaced: NoiseEstimate | None = None  # one step from θ (near a zero of f, or where σ
    # at θ is far above rounding)

    @property
    def theta_outlier(self) -> bool:
        """f(θ) is off the loss around it: σ at θ exceeds σ₁ one step away by more than
        NOISE_ESTIMATE_FACTOR² (each estimate is good to a factor F), so the stencil through θ
        measured a jump or a spike at θ, not noise: a branch taken only at θ, a dip narrower
        than any step.  The central differences never evaluate θ, and their noise is σ₁."""
        if self.displaced is None:
            return False
        return self.sigma > analysis.NOISE_ESTIMATE_FACTOR ** 2 * self.displaced.sigma

    @property
    def noise_references(self) -> tuple[tuple[float, float], ...]:
        """(σ, f) where the noise was measured: see :func:`analysis.evaluation_noise`."""
        away = ((self.displaced.sigma, self.displaced.f0),) if self.displaced else ()
        return away if self.theta_outlier else ((self.sigma, self.f0), *away)

    def judged_noise(self, noise: NoiseEstimate) -> NoiseEstimate:
        """The estimate the differences are judged with: ``noise`` (at θ), or the one a step
        away when f(θ) is an outlier."""
        if self.displaced is not None and self.theta_outlier:
            return self.displaced
        return noise

    def noise_notes(self) -> list[str]:
        """What the report says about where the noise was measured."""
        if self.displaced is None or not self.theta_outlier:
            return []
        return [f"f(theta) is off the loss around it (a jump or a spike exactly at theta): the noise "
                f"measured through theta ({self.sigma:.2e}) is that jump; the differences, which "
                f"never evaluate theta, are judged with the noise one step away "
                f"({self.displaced.sigma:.2e})"]


def stencil(run: Engine, plan: Plan, theta: np.ndarray, offsets, centre: float | None = None):
    """Losses at θ_c + offsets·h (k × len(offsets)) and the offsets actually taken.

    An offset 0 is θ itself: its column is f(θ) = ``centre`` (evaluated once here when None),
    taken 0, not one evaluation per row.
    """
    values, taken, moving = _points(plan, theta, offsets)
    if moving.all():
        return run.perturbed(plan.coords, values), taken
    losses = np.empty(taken.shape)
    losses[:, moving] = run.perturbed(plan.coords, values)
    losses[:, ~moving] = run.at(theta) if centre is None else centre
    return losses, taken


def _points(plan: Plan, theta: np.ndarray, offsets):
    """(the points of the offsets other than 0, every offset taken, which offsets move θ)."""
    offsets = np.asarray(offsets, dtype=np.float64)
    moving = offsets != 0.0
    values = plan.points(theta, offsets[moving])
    taken = np.zeros((len(plan), offsets.size))
    taken[:, moving] = plan.taken(theta, values)
    return values, taken, moving


def rounding(context: Context, losses: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """r = √2·σ_i / (a₊ − a₋) for a central pair."""
    noise = analysis.evaluation_noise(context.noise_references, losses[:, 0], losses[:, 1],
                                      context.values_dtype)
    return analysis.rounding_std(noise, taken[:, 0], taken[:, 1])


def analytic_allowance(context: Context, analytic: np.ndarray, multiplier: float) -> np.ndarray:
    """a = z·u_g·(|g_i| + max|g|): the analytic gradient is itself rounded in its dtype."""
    unit = multiplier * context.analytic_eps  # times each term: |g| + max|g| may overflow
    return unit * np.abs(analytic) + unit * context.analytic_scale


def coordinate_derivatives(context: Context, plan: Plan, method: Method,
                           multiplier: float | None = None) -> CoordinateChecks:
    """Numerical derivatives at the plan's coordinates by ``method``, with allowed errors;
    ``multiplier``: z, by default that of the plan's size (:func:`analysis.noise_multiplier`)."""
    if multiplier is None:
        multiplier = analysis.noise_multiplier(len(plan))
    analytic = context.analytic[plan.coords]
    allowance = analytic_allowance(context, analytic, multiplier)
    if method.complex:
        return _complex(context, plan, multiplier, allowance)
    if method.confirm_with is not None:
        return _screened(context, plan, method, multiplier, allowance)
    near, near_taken = stencil(context.run, plan, context.theta, method.offsets)
    numerical, rounding_std = method.first_pass(near, near_taken, _rounding_of(context))
    error = multiplier * rounding_std + allowance
    rough = _rough(context, plan, near, multiplier) if context.theta_outlier else None
    unresolved = np.zeros(len(plan), dtype=bool) if rough is None else rough.copy()
    if rough is not None:  # nothing to confirm, nothing to blame: a warning, never a failure
        error[rough] = np.maximum(error[rough], np.abs(numerical[rough] - analytic[rough]))
    refined = np.flatnonzero(np.abs(numerical - analytic) > error)
    kink = np.zeros(len(plan), dtype=bool)
    if refined.size:
        unconverged = _refine(context, plan.subset(refined), method, refined, analytic[refined],
                              near[refined], near_taken[refined], numerical, rounding_std, error,
                              (kink, unresolved), multiplier, allowance[refined])
        if unconverged.size:  # not smooth at the step scale, as a rough row is
            rough = np.zeros(len(plan), dtype=bool) if rough is None else rough
            rough[unconverged] = True
    checks = CoordinateChecks(numerical, error, refined, kink, unresolved, rough)
    if method is CENTRAL and noise_far_above_rounding(context):
        _rebalance(context, plan, analytic, checks, multiplier, allowance)
    return checks


def screen_clears(numerical, analytic, error) -> np.ndarray:
    """Which rows a screen clears; the others go to its confirming method (it fails none).

    The forward difference F = (f(θ+a) − f(θ))/a = f' + τ + ρ has truncation
    τ = a·f''/2 + O(a²) and rounding ρ of standard deviation r = √2·σ/a (f(θ+a) and f(θ)
    each carry noise σ).  One evaluation a row cannot bound τ, so the rule has no truncation
    term and is one-sided: with A = z·r + a_g (``error``; a_g the analytic gradient's own
    rounding) and W = WRONG_ABOVE = 1e-3,

        cleared  ⇔  |F − g| ≤ A   and   2·A ≤ W · max(|F|, |g|).

    A correct gradient has |F − g| = |τ + ρ|: where the truncation shows above the rounding
    allowance the row goes to the confirming method, so a truncation never fails it.  The
    second condition keeps the screen to rows it resolves to the seed's "wrong" bar: a
    gradient error |δ| ≥ W·max(|F|, |g|) ≥ 2A, less a rounding |ρ| ≤ z·r ≤ A, leaves
    |F − g| > A (not cleared, unless τ cancels it).  A cleared row vouches for
    |δ − τ| ≤ A + |ρ| ≤ 2A, δ = g − f'.

    What would make it wrong: (1) δ within 2A of τ = a·f''/2, a set of measure zero for an
    error drawn at random, but exactly what a gradient computed by forward differences itself
    carries (δ = a'·f''/2 at the user's step a' ≈ a); (2) an error below 2A but above the
    confirming method's resolution (central's rounding at ∛u is 2·u^(-1/6) ≈ 800 times finer
    than the screen's in float64, 28 times in float32).  Both are cleared; the audit
    (:func:`audit_rows`) catches them where they touch a fraction of the rows.
    """
    scale = np.maximum(np.abs(numerical), np.abs(analytic))
    return (np.abs(numerical - analytic) <= error) & (2.0 * error <= analysis.WRONG_ABOVE * scale)


def screenable(least_error, analytic) -> np.ndarray:
    """Rows a screen could clear at all, before any evaluation: (2 − W)·A_min ≤ W·|g|.

    A cleared row has |F| ≤ |g| + A, so 2A ≤ W·max(|F|, |g|) needs (2 − W)·A ≤ W·|g|, and
    A ≥ A_min = z·r_min + a_g, r_min the pair's rounding at the least noise either value
    can carry (:func:`least_noise`).  The others (g = 0 among them) go to the confirming
    method without a screen evaluation.
    """
    wrong = analysis.WRONG_ABOVE
    return (2.0 - wrong) * least_error <= wrong * np.abs(analytic)


def least_noise(context: Context) -> float:
    """The least noise :func:`analysis.evaluation_noise` gives a pair that holds f(θ): the
    largest reference σ (growth ≥ 1), and never less than u·|f(θ)|."""
    return max(float(np.finfo(context.values_dtype).eps) * abs(context.f0),
               *(sigma for sigma, _ in context.noise_references))


#: Cleared rows judged again by the confirming method, drawn at random: a sampled check's floor
#: (:data:`fastgrad.sampling.FLOOR`), on which a bug touching ≥ 17% of the rows is caught w.p. ≥ 95%.
AUDIT_ROWS = FLOOR
#: Fixed seed of the audit: a check of the same θ audits the same rows.
AUDIT_SEED = 20261205


def audit_rows(cleared: np.ndarray) -> np.ndarray:
    """m = min(AUDIT_ROWS, N) of the N ``cleared`` rows, drawn without replacement (fixed seed),
    sorted.  A bug that the screen clears at K of them escapes the audit with probability
    C(N − K, m)/C(N, m) ≤ (1 − m/N)^K (:func:`fastgrad.sampling.smallest_caught`)."""
    count = min(AUDIT_ROWS, cleared.size)
    return np.sort(np.random.default_rng(AUDIT_SEED).choice(cleared, count, replace=False))


def _screened(context: Context, plan: Plan, method: Method, multiplier: float,
              allowance) -> CoordinateChecks:
    """A screen's first pass on the rows it could clear (:func:`screenable`; one evaluation
    each, its offset 0 read from f(θ)), then ``method.confirm_with``, at its own default step
    and with the same z, on every row it did not clear and on an audit of those it did:
    those rows get the very values, errors and marks the confirming method gives them.
    Where f(θ) is off the loss around it (a jump at θ), a difference from f(θ) says nothing
    and no row is screened."""
    confirm = method.confirm_with
    assert confirm is not None and len(method.offsets) == 2  # a pair: (θ + a, θ)
    analytic = context.analytic[plan.coords]
    _, taken, _ = _points(plan, context.theta, method.offsets)
    least = multiplier * analysis.rounding_std(least_noise(context), taken[:, 0], taken[:, 1])
    screened = np.flatnonzero(screenable(least + allowance, analytic)
                              & (not context.theta_outlier))
    near, near_taken = stencil(context.run, plan.subset(screened), context.theta,
                               method.offsets, context.f0)
    forward, rounding_std = method.first_pass(near, near_taken, _rounding_of(context))
    numerical, error = np.zeros(len(plan)), np.zeros(len(plan))
    numerical[screened] = forward
    error[screened] = multiplier * rounding_std + allowance[screened]
    cleared = screened[screen_clears(numerical[screened], analytic[screened], error[screened])]
    audited = audit_rows(cleared)
    again = np.union1d(np.setdiff1d(np.arange(len(plan)), cleared), audited)
    step = confirm.default_step(context.dtype)
    judged = coordinate_derivatives(context, Plan.for_coords(context.theta, plan.coords[again],
                                                             step), confirm, multiplier)
    numerical[again], error[again] = judged.numerical, judged.error
    size = len(plan)
    screen = Screen(size, screened.size, cleared.size, audited.size, confirm.name, step,
                    smallest_caught(cleared.size, audited.size, ALPHA) if cleared.size else 0, ALPHA)
    return CoordinateChecks(numerical, error, again[judged.refined],
                            _scatter(size, again, judged.kink), _scatter(size, again, judged.unresolved),
                            None if judged.rough is None else _scatter(size, again, judged.rough),
                            None if judged.steps is None else _scatter(size, again, judged.steps),
                            screen)


def _scatter(size: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` at ``rows`` of a zero (False) array of ``size``."""
    full = np.zeros(size, dtype=values.dtype)
    full[rows] = values
    return full


#: The ladder of steps h·2^j, j = 1..LADDER_LEVELS, searched for the balanced step.
LADDER_LEVELS = 16


def noise_far_above_rounding(context: Context) -> bool:
    """σ > √u·|f(θ)|: more than rounding can do (the determinism test's bound, see
    :func:`fastgrad.api.require_same`): cancellation in an ill-conditioned computation."""
    return context.sigma > np.sqrt(float(np.finfo(context.dtype).eps)) * abs(context.f0)


def _rebalance(context: Context, plan: Plan, analytic, checks: CoordinateChecks, multiplier: float,
               allowance) -> None:
    """Coordinates left unresolved by a noise σ far above rounding, judged at the step that
    balances the noise against the truncation (in place; ``checks.steps`` records it).

    Unresolved: allowed error > WRONG_ABOVE·max(|D|, |g|), i.e. the check cannot tell this
    coordinate's derivative to the seed's 1e-3.  Along the ladder h_j = h·2^j the Richardson
    value R_j = (4·D(h_j) − D(h_{j+1}))/3 has rounding r_j ∝ σ/h_j and truncation
    t_j ≈ |f⁽³⁾|·h_j²/2, estimated by max(|D_j − R_j|, |D_{j+1} − R_{j+1}|/4) (D's truncation
    grows like h²: two estimates of it, the larger kept); the total z·r_j + t_j is smallest
    at the balanced h* ∝ (σ/|f⁽³⁾|)^(1/3), the level judged.  Costs 2·(LADDER_LEVELS + 1)
    evaluations a coordinate, only where σ > √u·|f|.
    """
    numerical, error = checks.numerical, checks.error
    scale = np.maximum(np.abs(numerical), np.abs(analytic))
    settled = checks.kink | checks.unresolved
    rows = np.flatnonzero((error > analysis.WRONG_ABOVE * scale) & ~settled)
    if rows.size == 0:
        return
    subset = plan.subset(rows)
    for levels in range(LADDER_LEVELS, 2, -3):  # shorter ladders where a long one leaves the
        offsets = [sign * 2.0 ** j for j in range(levels + 1) for sign in (1.0, -1.0)]
        try:                                    # loss's domain (a NaN, a raise)
            losses, taken = stencil(context.run, subset, context.theta, offsets)
            break
        except LossError:
            continue
    else:
        return  # no ladder the loss accepts: the coordinates stay as they were (warn)
    pairs = [slice(2 * j, 2 * j + 2) for j in range(levels + 1)]
    d = np.stack([central(losses[:, pair], taken[:, pair]) for pair in pairs], axis=1)
    r = np.stack([rounding(context, losses[:, pair], taken[:, pair]) for pair in pairs], axis=1)
    values = analysis.richardson(d[:, :-1], d[:, 1:])
    estimate = np.abs(d[:, :-1] - values)
    next_estimate = np.concatenate([estimate[:, 1:], estimate[:, -1:] * 4.0], axis=1)
    truncation = np.maximum(estimate, next_estimate / 4.0)
    totals = multiplier * analysis.richardson_rounding_std(r[:, :-1], r[:, 1:]) + truncation
    best = np.argmin(totals, axis=1)
    pick = np.arange(rows.size)
    numerical[rows] = values[pick, best]
    error[rows] = totals[pick, best] + allowance[rows]
    checks.steps = np.zeros(len(plan))
    checks.steps[rows] = subset.steps * 2.0 ** best


#: The smallest step of the convergence test at an outlying f(θ), in units of u·max(1, |θ_i|):
#: 64 ulps of max(1, |θ_i|), a step that still moves θ_i by a well-represented amount.
SMALLEST_STEP_ULPS = 64.0


def _rough(context: Context, plan: Plan, near: np.ndarray, multiplier: float) -> np.ndarray:
    """Which coordinates are not smooth at any usable step, when f(θ) is off the loss around
    it (:attr:`Context.theta_outlier`).

    Convergence test of T(a) = (f(θ+a) − f(θ)) + (f(θ−a) − f(θ)) at a = h, m = √(h·s) and
    s = SMALLEST_STEP_ULPS·u·max(1, |θ_i|).  A loss smooth on either side of θ, whatever its
    value at θ (a jump, a branch taken only at θ), has T(a) = 2J + f''·a² + noise, so
    |T(m) − T(s)| ≤ |f''|·m² + noise, and |f''|·m² ≤ |T(h) − T(m)|·m²/(h² − m²), far below
    |T(h) − T(m)| (m/h = √(s/h) ≈ 5e-5): the coordinate is *rough* when

        |T(m) − T(s)| > z·2σ + |T(h) − T(m)|

    (2σ: the standard deviation of the four values' noise).  A spike or dip wider than s but
    narrower than m does that; the central differences at h, which straddle it, say nothing of
    f'(θ) then, and the coordinate is left unresolved (warn).  Costs 4 evaluations a coordinate.
    """
    ratio = SMALLEST_STEP_ULPS * float(np.finfo(context.dtype).eps) / plan.relative_step
    ratio = min(ratio, 1.0)
    small, _ = stencil(context.run, plan, context.theta,
                       (np.sqrt(ratio), -np.sqrt(ratio), ratio, -ratio))
    f0 = context.f0

    def twice_jump(plus, minus):
        return (plus - f0) + (minus - f0)

    at_step = twice_jump(near[:, 0], near[:, 1])
    at_middle = twice_jump(small[:, 0], small[:, 1])
    at_smallest = twice_jump(small[:, 2], small[:, 3])
    noise = analysis.evaluation_noise(context.noise_references, small[:, 0], small[:, 1],
                                      context.values_dtype)
    return np.abs(at_middle - at_smallest) > multiplier * 2.0 * noise + np.abs(at_step - at_middle)


def _rounding_of(context: Context):
    """rounding(losses, taken) in this context: see :func:`rounding`."""
    return lambda losses, taken: rounding(context, losses, taken)


def _refine(context: Context, again: Plan, method: Method, rows, analytic, near, near_taken,
            numerical, rounding_std, error, marks: tuple[np.ndarray, np.ndarray], multiplier,
            allowance) -> np.ndarray:
    """Second step for the disagreeing rows: truncation estimate, then kinks, then (central)
    a third step for the rows that still disagree (in place); returns the rows whose
    differences do not converge (unresolved, see :func:`_unconverged`)."""
    far, far_taken = stencil(context.run, again, context.theta, method.refine_offsets)
    refined = method.refine(near, near_taken, far, far_taken, numerical[rows],
                            rounding_std[rows], _rounding_of(context))
    numerical[rows] = refined.value
    error[rows] = multiplier * refined.rounding + refined.truncation + allowance
    kink, unresolved = marks
    rough = _kinks(context, rows, analytic, refined.plus, refined.minus, numerical, error,
                   kink, unresolved, multiplier, allowance)
    if refined.outer is not None:
        # A kink within the outer pair's reach spoils the refinement without showing in the
        # inner smoothness test: the same test on the outer pair.
        f_plus, f_plus2, f_minus, f_minus2, step = refined.outer
        rough |= _not_smooth(context, f_plus, f_plus2, f_minus, f_minus2, step, multiplier) \
            & (np.abs(numerical[rows] - analytic) > error[rows])
    if refined.outer is not None and rough.any():
        _narrow(context, again.subset(np.flatnonzero(rough)), rows[rough], analytic[rough],
                numerical, error, marks)
    elif method is CENTRAL and rough.any() \
            and again.relative_step >= CENTRAL.default_step(context.dtype):
        _narrower(context, again.subset(np.flatnonzero(rough)), rows[rough], analytic[rough],
                  numerical, error, unresolved)
    still = (np.abs(numerical[rows] - analytic) > error[rows]) & analysis.may_be_unconverged(
        numerical[rows] - analytic, error[rows], central(near, near_taken), central(far, far_taken))
    if method is not CENTRAL or not still.any():
        return np.empty(0, dtype=np.int64)
    return _unconverged(context, again.subset(np.flatnonzero(still)), rows[still], analytic[still],
                        (near[still], near_taken[still]), (far[still], far_taken[still]),
                        numerical, error, unresolved, multiplier)


def _unconverged(context: Context, plan: Plan, rows, g, near, far, numerical, error, unresolved,
                 multiplier) -> np.ndarray:
    """Rows that still disagree after Richardson and the kink analysis, at D(4h) too: where
    D(h), D(2h), D(4h) do not converge as a second-order difference's do, the disagreement
    is judged against their spread (:func:`analysis.unconverged_allowance`) and, within it,
    the row is unresolved (warn), not a failure.  2 evaluations a row (in place); returns the
    rows so excused."""
    wide = stencil(context.run, plan, context.theta, (4.0, -4.0))
    rounding_of = _rounding_of(context)
    spread = analysis.unconverged_allowance(central(*near), central(*far), central(*wide),
                                            rounding_of(*near), rounding_of(*far),
                                            rounding_of(*wide), multiplier)
    explained = (spread > 0.0) & (np.abs(numerical[rows] - g) <= error[rows] + spread)
    error[rows[explained]] += spread[explained]
    unresolved[rows[explained]] = True
    return rows[explained]


def _narrow(context: Context, plan: Plan, rows, g, numerical, error, marks) -> None:
    """Rows of a 4-point stencil that still disagree where the loss is not smooth: kinks
    on both sides within its reach (±4h, h = u^(1/5)) leave no one-sided value clean.  The
    central method at its own step ∛u, about 120 times narrower (second step and kink
    analysis included), settles them: where it agrees, its value and error replace the
    stencil's, and the row is a kink (or unresolved, if the central method says so)."""
    narrow = coordinate_derivatives(
        context, Plan.for_coords(context.theta, plan.coords, CENTRAL.default_step(context.dtype)),
        CENTRAL)
    agrees = np.abs(narrow.numerical - g) <= narrow.error
    settled = rows[agrees]
    kink, unresolved = marks
    numerical[settled] = narrow.numerical[agrees]
    error[settled] = narrow.error[agrees]
    unresolved[settled] = narrow.unresolved[agrees]
    kink[settled] = ~narrow.unresolved[agrees]


#: A central difference that still disagrees at a kink on both sides is taken again at a
#: step this many times narrower (see _narrower).
NARROWING = 16


def _narrower(context: Context, plan: Plan, rows, g, numerical, error, unresolved) -> None:
    """Rows of the central method that still disagree where the loss is not smooth, with no
    clean one-sided value: kinks on both sides within 2h (a first-layer weight of a ReLU CNN
    moves thousands of pre-activations).  The central difference at h/NARROWING (second step
    and kink analysis included) crosses fewer of them; where it agrees, within its larger
    rounding allowance (NARROWING times), the row is unresolved (warn), never passed: an
    error below that allowance cannot be told from the kinks (in place)."""
    narrow = coordinate_derivatives(
        context, Plan.for_coords(context.theta, plan.coords, plan.relative_step / NARROWING),
        CENTRAL)
    agrees = np.abs(narrow.numerical - g) <= narrow.error
    settled = rows[agrees]
    numerical[settled] = narrow.numerical[agrees]
    error[settled] = narrow.error[agrees]
    unresolved[settled] = True


def _not_smooth(context: Context, f_plus, f_plus2, f_minus, f_minus2, step, multiplier):
    """K = |S(2h)/2h − 2·S(h)/h| beyond its rounding (≈ 5σ/h, times z), with
    S(a) = f(θ+a) − 2f(θ) + f(θ−a): see :func:`_kinks`."""
    f0 = context.f0
    sigma = analysis.evaluation_noise(context.noise_references, f_plus, f_minus,
                                      context.values_dtype)
    near = (f_plus - f0) + (f_minus - f0)  # S(h) without 2f(θ), which overflows near 1e308
    far = (f_plus2 - f0) + (f_minus2 - f0)
    return np.abs(far / (2.0 * step) - 2.0 * near / step) > multiplier * 5.05 * sigma / step


def one_sided(f0, f_near, f_far, offset):
    """D = (−f(θ+2a) + 4·f(θ+a) − 3·f(θ)) / 2a
    = (4·(f(θ+a) − f(θ)) − (f(θ+2a) − f(θ))) / 2a, second order, on one side (a signed);
    in differences, which do not overflow."""
    return (4.0 * (f_near - f0) - (f_far - f0)) / (2.0 * offset)


def _kinks(context: Context, rows, g, plus, minus, numerical, error, kink, unresolved,
           multiplier, allowance) -> np.ndarray:
    """Sort out rows that still disagree: a kink (excused), unresolved (warn), or a failure;
    returns which rows still fail where the loss is not smooth.

    One-sided value on each side: D = (−f(θ+2a) + 4f(θ+a) − 3f(θ)) / 2a, with allowed
    error z·√26·σ/2|a| (its weights −1, 4, −3) plus the analytic rounding: its
    truncation a²·f'''/3 is left out, so a side whose points straddle the kink, and
    whose value is therefore off, cannot vouch for the analytic value.

    Smoothness test.  With S(a) = f(θ+a) − 2f(θ) + f(θ−a), a smooth f has
    K = |S(2h)/2h − 2·S(h)/h| = h³·|f⁗|/2, next to nothing; a kink of slope jump J
    at distance δ < 2h gives K ≈ |J|·|1 − 3δ/2h| (δ < h) or |J|·(1 − δ/2h)
    (h ≤ δ < 2h); K's rounding has standard deviation √(6/4 + 4·6)·σ/h ≈ 5σ/h.

    A row whose analytic value matches a one-sided value is a *kink* when K shows the
    loss is not smooth there; when K cannot tell (a kink too small for K to resolve,
    or at δ ≈ 2h/3, but equally a gradient error at the level of the noise), it is
    *unresolved*: not a failure, but the verdict becomes "warn".
    """
    (f_plus, f_plus2, step), (f_minus, f_minus2, _) = plus, minus
    f0 = context.f0
    not_smooth = _not_smooth(context, f_plus, f_plus2, f_minus, f_minus2, np.abs(step), multiplier)
    still_failing = np.abs(numerical[rows] - g) > error[rows]
    for f_near, f_far, offset in (plus, minus):
        value = one_sided(f0, f_near, f_far, offset)
        noise = analysis.evaluation_noise(context.noise_references, f_near, f_far,
                                          context.values_dtype)
        allowed = multiplier * np.sqrt(26.0) * noise / (2.0 * np.abs(offset)) + allowance
        explained = still_failing & (np.abs(value - g) <= allowed)
        numerical[rows[explained]] = value[explained]
        error[rows[explained]] = allowed[explained]
        kink[rows[explained & not_smooth]] = True
        unresolved[rows[explained & ~not_smooth]] = True
        still_failing &= ~explained
    return still_failing & not_smooth


def complex_step(complex_run: Engine, plan: Plan, theta: np.ndarray) -> np.ndarray:
    """D = Im f(θ + i·h·e_c) / h at the plan's coordinates (an engine over complex θ)."""
    values = theta[plan.coords] + 1j * plan.steps
    return complex_run.perturbed(plan.coords, values[:, None])[:, 0].imag / plan.steps


def _complex(context: Context, plan: Plan, multiplier: float, allowance) -> CoordinateChecks:
    """D = Im f(θ + i·h·e_c) / h, allowed error z·(ρ·|D| + u·max|g|) + a, ρ = σ/|f(θ)|.

    The complex step has no cancellation: its error is that of computing the
    derivative itself, about the loss's relative noise ρ times the derivative.
    """
    assert context.complex_run is not None  # built for method "complex" (pipeline stage 2)
    numerical = complex_step(context.complex_run, plan, context.theta)
    relative_noise = max(context.sigma / max(abs(context.f0), np.finfo(float).tiny),
                         float(np.finfo(np.float64).eps))
    rounding_std = (relative_noise * np.abs(numerical)
                    + float(np.finfo(np.float64).eps) * context.analytic_scale)
    error = multiplier * rounding_std + allowance
    empty = np.empty(0, dtype=np.int64)
    none = np.zeros(len(plan), dtype=bool)
    return CoordinateChecks(numerical, error, empty, none, none.copy())
