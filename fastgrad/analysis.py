"""Analysis: the formulas of numerical derivatives and their estimated errors.

Every formula is a small function.  Notation: a_+ > 0 and a_- < 0 are the
offsets actually taken from θ_i (``(θ_i ± h_i) ∓ θ_i`` in floating point), f_± the
loss there, σ the noise (rounding-error level) of one loss evaluation, in the
loss's units.

The rule.  A coordinate *disagrees* when

    |D_i − g_i| > z · r_i + t_i

where D_i is the numerical derivative, g_i the analytic one, r_i the standard
deviation of D_i's rounding error, t_i an estimate of its truncation error, and
z a multiplier that keeps the chance of a false alarm over all k checked
coordinates below 1e-6 (:func:`noise_multiplier`).  What a check concludes from its
coordinates' disagreements is :mod:`.verdict`'s to say.
"""

from __future__ import annotations

import math

import numpy as np

#: Chance of at least one false alarm over a whole check, for Gaussian rounding noise.
FALSE_ALARM = 1e-6
#: Moré & Wild's noise estimate is good to about a factor of 2; the multiplier pays for it.
NOISE_ESTIMATE_FACTOR = 2.0
#: The seed's bands for its relative error.
CORRECT_BELOW = 1e-7
WRONG_ABOVE = 1e-3


def central_difference(f_plus, f_minus, offset_plus, offset_minus):
    """D = (f_+ − f_-) / (a_+ − a_-), the central difference on the steps actually taken."""
    return (f_plus - f_minus) / (offset_plus - offset_minus)


def rounding_std(sigma, offset_plus, offset_minus):
    """r = √2·σ / (a_+ − a_-): the standard deviation of D's rounding error.

    f_+ and f_- each carry independent noise of standard deviation σ.
    """
    return math.sqrt(2.0) * sigma / (offset_plus - offset_minus)


#: A line is kinked when K (see :func:`kink_allowance`) is at least this fraction of the
#: one-sided slope differences: a kink within 2t gives a ratio of 1 (δ = 0, δ ≥ t) down to 1/3
#: (δ = t/2) and 0 only near δ = 2t/3, a smooth f t²·|f⁗|/(4·|f''|), far below it at any step
#: where Richardson's extrapolation holds.
KINKED_RATIO = 0.1


def kink_allowance(bend, bend2, noise, step, multiplier):
    """The slope jumps a central difference at step t and 2t may straddle, per unit t,
    where the function is kinked along the line: max(|S(t)|/t, |S(2t)|/2t); 0 where smooth.

    S(t) = f(x+t) − 2f(x) + f(x−t) = t·(D⁺(t) − D⁻(t)), the difference of the one-sided
    slopes.  K = |S(2t)/2t − 2·S(t)/t| is t³·|f⁗|/2 on a smooth f, and about the slope jump
    |J| when a kink (ReLU, max, abs) lies within 2t; its rounding has standard deviation
    ≈ 5.05·σ/t.  The line is kinked when K exceeds z times that and KINKED_RATIO of the
    slope differences.  Then D(t) and its Richardson value average slopes from both sides:
    with one kink at distance δ < t, D(t) − f'(x) = J·(t − δ)/2t, at most |S(t)/t|/2, and for
    t ≤ δ < 2t the Richardson value errs by |J|·(2t − δ)/6t ≤ |S(2t)/2t|.  A ReLU network
    whose weight moves thousands of pre-activations has many kinks within the step: their
    sum is what the allowance measures.  NaN bends (f(x) unknown) give 0.
    """
    bend, bend2 = np.asarray(bend, dtype=float), np.asarray(bend2, dtype=float)
    slopes = np.maximum(np.abs(bend) / step, np.abs(bend2) / (2.0 * step))
    jumps = np.abs(bend2 / (2.0 * step) - 2.0 * bend / step)
    kinked = (jumps > multiplier * 5.05 * np.asarray(noise) / step) \
        & (jumps >= KINKED_RATIO * slopes)
    return np.where(kinked & np.isfinite(slopes), slopes, 0.0)


#: For an error c·s^p with 1/2 ≤ p ≤ 1 the spread of D(t), D(2t), D(4t) is (2^p + 1)·|D(t) − D(2t)|,
#: at most 3 times: a disagreement beyond that needs no third step to stand.
SPREAD_PER_STEP_CHANGE = 3.0


def may_be_unconverged(disagreement, allowed, d1, d2):
    """Whether a third step could excuse ``disagreement`` (see :func:`unconverged_allowance`):
    it exceeds ``allowed`` by no more than SPREAD_PER_STEP_CHANGE·|D(t) − D(2t)|."""
    return np.abs(disagreement) <= allowed + SPREAD_PER_STEP_CHANGE * np.abs(d1 - d2)


def unconverged_allowance(d1, d2, d4, r1, r2, r4, multiplier):
    """The spread max − min of D(t), D(2t), D(4t) where they do not converge as a
    second-order difference does; 0 where they do.

    On a smooth f, D(s) = f' + c·s² + O(s⁴), so the Richardson values R(t) = (4D(t) − D(2t))/3
    and R(2t) = (4D(2t) − D(4t))/3 agree to O(t⁴), far within |D(t) − D(2t)|/3 = |c|·t²
    (plus their rounding, z·√(r_R(t)² + r_R(2t)²)).  Where they do not, D's error is not
    c·s²: a first-order one (a jump in f'' at x: |R(2t) − R(t)| = 2|D(t) − D(2t)|/3), or the
    sum of many kinks straddled by the steps (a ReLU network's weight, float32 steps), which
    moves with the step at random.  Then Richardson's truncation estimate says nothing, and the
    error of the differences is judged by how far they move with the step: for an error
    c·s^p, p ≥ 1/2, the Richardson value R(t) is within the spread of the three.
    Arguments are D at t, 2t, 4t and their rounding standard deviations (arrays or floats).
    """
    r_t, r_2t = richardson(d1, d2), richardson(d2, d4)
    rounding = np.hypot(richardson_rounding_std(r1, r2), richardson_rounding_std(r2, r4))
    second_order = np.abs(r_2t - r_t) <= multiplier * rounding + np.abs(d1 - d2) / 3.0
    spread = np.maximum(np.maximum(d1, d2), d4) - np.minimum(np.minimum(d1, d2), d4)
    return np.where(second_order, 0.0, spread)


def richardson(d_step, d_double):
    """R = (4·D(h) − D(2h)) / 3 = D(h) + (D(h) − D(2h))/3: cancels the h² term; the 4-point
    stencil, O(h⁴).  Written as a correction, so that no intermediate exceeds |D|."""
    return d_step + (d_step - d_double) / 3.0


def richardson_rounding_std(r_step, r_double):
    """Standard deviation of R's rounding error: √((4/3)²·r(h)² + (1/3)²·r(2h)²)."""
    return np.hypot(4.0 / 3.0 * r_step, r_double / 3.0)


def richardson4(r_step, r_double):
    """R₆ = (16·R(h) − R(2h)) / 15 = R(h) + (R(h) − R(2h))/15: cancels the h⁴ term of the
    4-point values R, O(h⁶)."""
    return r_step + (r_step - r_double) / 15.0


def richardson4_rounding_std(r_step, r_double):
    """Standard deviation of R₆'s rounding error: √((16/15)²·r(h)² + (1/15)²·r(2h)²)."""
    return np.hypot(16.0 / 15.0 * r_step, r_double / 15.0)


def noise_multiplier(count: int, false_alarm: float = FALSE_ALARM) -> float:
    """z with count · P(|N(0,1)| > z/F) ≤ false_alarm, F = NOISE_ESTIMATE_FACTOR.

    The Gaussian tail P(|N| > x) ≤ exp(−x²/2) and a union bound over ``count``
    coordinates give x = √(2·ln(count/false_alarm)); z = F·x allows σ to be
    underestimated by up to F.  For count = 10⁵, z ≈ 14.
    """
    return NOISE_ESTIMATE_FACTOR * math.sqrt(2.0 * math.log(max(count, 1) / false_alarm))


def evaluation_noise(references, f_plus, f_minus, dtype) -> np.ndarray | float:
    """σ_i = max over the references (σ, f_r) of σ·max(1, G), and u·max(|f_+|, |f_-|).

    Each reference is a noise level σ measured where f = f_r (at θ; and one step away when
    θ sits near a zero of f).  Rounding errors scale with the values computed, so where f
    grows away from the reference its noise grows too: G = max(|f_+|, |f_-|)/|f_r| when
    f_+, f_r and f_- have one sign (least squares near a fit: the stencil's values can be
    100 × f(θ)), a relative noise level carried over.  Across a sign change f_r ≈ 0 says
    nothing of the noise and G = 1.  No computed value is better than correctly rounded:
    u·|f_±|.
    """
    if isinstance(f_plus, float) and isinstance(f_minus, float):  # a direction's pair
        return _evaluation_noise_scalar(references, f_plus, f_minus, dtype)
    f_plus, f_minus = np.asarray(f_plus, dtype=np.float64), np.asarray(f_minus, dtype=np.float64)
    largest = np.maximum(np.abs(f_plus), np.abs(f_minus))
    noise = float(np.finfo(dtype).eps) * largest
    for sigma, f_ref in references:
        if f_ref > 0.0:
            one_sign = (f_plus > 0.0) & (f_minus > 0.0)
        elif f_ref < 0.0:
            one_sign = (f_plus < 0.0) & (f_minus < 0.0)
        else:
            one_sign = False
        growth = np.where(one_sign, largest / (abs(f_ref) if f_ref != 0.0 else 1.0), 1.0)
        noise = np.maximum(noise, sigma * np.maximum(growth, 1.0))
    return noise


def _evaluation_noise_scalar(references, f_plus: float, f_minus: float, dtype) -> float:
    """:func:`evaluation_noise` of one pair, on Python floats (a tenth of NumPy's cost)."""
    largest = max(abs(f_plus), abs(f_minus))
    noise = float(np.finfo(dtype).eps) * largest
    for sigma, f_ref in references:
        one_sign = (f_ref > 0.0 and f_plus > 0.0 and f_minus > 0.0) \
            or (f_ref < 0.0 and f_plus < 0.0 and f_minus < 0.0)
        growth = largest / abs(f_ref) if one_sign else 1.0
        noise = max(noise, sigma * max(growth, 1.0))
    return noise


def disagreement(numerical, analytic, error):
    """score = |D − g| / (z·r + t): above 1 the coordinate disagrees."""
    tiny = np.finfo(np.float64).tiny
    return np.abs(numerical - analytic) / np.maximum(error, tiny)


def relative_error(numerical, analytic) -> float:
    """The seed's ‖D − g‖₂ / (‖D‖₂ + ‖g‖₂); 0 when both vanish.

    Computed on D/s and g/s, s = :func:`binary_scale` of max(|D|, |g|): the quotient does not
    depend on s, and the squares neither overflow (|g| ≳ 1e154) nor underflow (≲ 1e-154).
    """
    numerical, analytic = np.ravel(numerical), np.ravel(analytic)
    largest = max(float(np.abs(numerical).max(initial=0.0)), float(np.abs(analytic).max(initial=0.0)))
    if not math.isfinite(largest):
        return math.nan
    scale = binary_scale(largest)
    numerical, analytic = numerical / scale, analytic / scale
    denominator = _norm(numerical) + _norm(analytic)
    if denominator == 0.0:
        return 0.0
    return _norm(numerical - analytic) / denominator


def binary_scale(largest: float) -> float:
    """s = 2^(e−1) with largest = m·2^e, ½ ≤ m < 1 (1 for 0): largest/s lies in [1, 2).

    Dividing by a power of two is exact (short of the subnormal range), so values scaled by s
    keep every bit, and their squares and sums stay far from overflow and underflow.
    """
    if largest == 0.0 or not math.isfinite(largest):
        return 1.0
    return math.ldexp(1.0, math.frexp(largest)[1] - 1)


def _norm(vector: np.ndarray) -> float:
    """‖v‖₂ as np.linalg.norm computes it for a real vector, √(v·v), without its overhead."""
    return math.sqrt(float(np.dot(vector, vector)))


def seed_band(value: float) -> str:
    """The seed's reading of its relative error."""
    if value <= CORRECT_BELOW:
        return "correct"
    if value > WRONG_ABOVE:
        return "wrong"
    return "look closer"
