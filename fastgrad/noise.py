"""The computational noise of a loss: Moré & Wild's ECnoise.

J. J. Moré and S. M. Wild, "Estimating computational noise", SIAM J. Sci.
Comput. 33(3):1292–1314, 2011.

A computed loss is f(x) = f_s(x) + ε(x): a smooth part plus rounding error ε
that, sampled at nearby points, behaves like independent noise of standard
deviation σ (the *noise level*, in the loss's units).  Along a direction p,
with equally spaced values f_j = f(x + (j − m)·δ·p), j = 0..nf−1, m = ⌊nf/2⌋,
the k-th forward difference of the noise has variance σ²·C(2k, k), while the
smooth part's is O(δ^k).  Once δ^k is small, every order k estimates σ:

    σ_k = √(γ_k · mean_i (Δ^k f_i)²),   γ_k = (k!)² / (2k)! = 1 / C(2k, k).

The central difference's rounding error is about σ/h, so the derivative checks
in :mod:`.analysis` use σ rather than u·|f|, which for a loss summed over many
samples is far too small.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .analysis import binary_scale
from .errors import InputError, LossError

#: ECnoise's return codes (its ``inform``).
NOISE_DETECTED = 1
STEP_TOO_SMALL = 2
STEP_TOO_LARGE = 3

#: Values in the stencil: 9 gives orders k = 1..6 a chance to start the three-level
#: agreement test, each level averaged over ≥ 3 differences (7 points give k ≤ 4),
#: for 8 extra loss evaluations per try, nothing next to a check's 2n.
DEFAULT_POINTS = 9
#: ECnoise gives up when the values spread by more than this fraction of the largest.
MAX_SPREAD = 0.1
#: Three consecutive levels agree when the largest is at most this times the smallest.
AGREEMENT = 4.0
#: The step is multiplied (code 2) or divided (code 3) by this between tries.
STEP_FACTOR = 100.0


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise level of f at x.

    sigma : absolute noise level σ of one evaluation of f (units of f), at least u·|f0|.
    f0 : f(x).
    evaluations : calls of f made by the estimate.
    code : ECnoise's code of the last try (1 detected, 2 step too small, 3 step too large).
    detected : whether ECnoise detected the noise (code 1); if not, sigma is a fallback.
    step : relative step δ of the last try (the points are x + j·δ·p, see :func:`estimate_noise`).
    values_dtype : the precision of the values f returns (:func:`values_dtype`); σ is at least
        its u·|f0|.
    """

    sigma: float
    f0: float
    evaluations: int
    code: int
    detected: bool
    step: float
    values_dtype: np.dtype = np.dtype(np.float64)


def values_dtype(values) -> np.dtype:
    """float32 when every value is a float32 number (the loss rounds its result to float32),
    else float64.

    The floor of a loss's noise is the spacing of the numbers it returns, u·|f|, with u
    of *their* precision, not θ's: a loss of float32 θ may compute in float64 (float64
    data and weights, float64 sums) and return values far finer than float32's spacing,
    and a loss of float64 θ may return float32.  A float64 result of float64 arithmetic
    is a float32 number with probability about 2⁻²⁹ per value (its last 29 bits zero),
    unless it is a small integer or a short binary fraction, where the float32 floor
    errs large (a looser verdict, never a false alarm).
    """
    with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf: not float32
        is_float32 = all(not math.isfinite(v) or float(np.float32(v)) == v for v in values)
    return np.dtype(np.float32) if is_float32 else np.dtype(np.float64)


def noise_levels(fvals) -> tuple[np.ndarray, np.ndarray]:
    """σ_k = √(γ_k · mean((Δ^k f)²)), γ_k = 1/C(2k, k), and whether Δ^k f changes sign.

    Returns two arrays of length nf − 1, entry k − 1 for order k = 1..nf−1:
    the levels σ_k (units of f) and ``min(Δ^k f) · max(Δ^k f) < 0``.
    """
    pairs = list(_levels([float(value) for value in np.ravel(fvals)]))
    return np.array([level for level, _ in pairs]), np.array([sign for _, sign in pairs], dtype=bool)


def _levels(values: list[float]) -> Iterator[tuple[float, bool]]:
    """(σ_k, Δ^k f changes sign) for k = 1, 2, ..., computed as they are asked for, on
    Python floats: for 9 values these are ten times faster than NumPy's per-call overhead,
    and every check estimates the noise (a Monitor's checks are a few milliseconds).

    Scale-safe: the differences are taken of f/s, s = :func:`analysis.binary_scale` of
    max|f| (exact), and σ_k = s·σ_k(f/s); squaring f itself would overflow for |f| ≳ 1e154
    (every level inf) and underflow for |f| ≲ 1e-154 (every level 0).
    """
    scale = binary_scale(max(map(abs, values)))
    values = [value / scale for value in values]
    for order in range(1, len(values)):
        values = [right - left for left, right in itertools.pairwise(values)]
        gamma = 1.0 / math.comb(2 * order, order)
        yield (scale * math.sqrt(gamma * sum(value * value for value in values) / len(values)),
               min(values) * max(values) < 0.0)


def ecnoise(fvals) -> tuple[float, int]:
    """Moré & Wild's ECnoise: (σ, code) from nf ≥ 4 equally spaced values of f.

    ``fvals[j] = f(x + (j − ⌊nf/2⌋)·δ·p)``.  In the order of the original:

    * code 3, σ = 0: a value is not finite, or the spread
      (max f − min f) / max(|max f|, |min f|) exceeds 0.1 — δ is too large;
    * code 2, σ = 0: at least half of the nf − 1 first differences are exactly 0
      (so also when all values are equal) — δ is too small to see the noise;
    * code 1, σ = σ_k for the first k ≤ nf − 3 with max(σ_k, σ_k+1, σ_k+2) ≤
      4·min(σ_k, σ_k+1, σ_k+2) and Δ^k f changing sign (:func:`noise_levels`);
    * code 3, σ = 0 when no order qualifies: the smooth part still shows, δ is too large.

    σ is 0 unless the code is 1; :func:`estimate_noise` builds its fallback from
    :func:`noise_levels` instead.
    """
    fvals = np.asarray(fvals, dtype=np.float64)
    if fvals.ndim != 1 or fvals.size < 4:
        raise InputError(f"ecnoise needs a 1-D array of at least 4 values, got shape {fvals.shape}")
    values = fvals.tolist()
    if not all(map(math.isfinite, values)):
        return 0.0, STEP_TOO_LARGE
    scale = binary_scale(max(map(abs, values)))
    largest, smallest = max(values) / scale, min(values) / scale  # no overflow in the spread
    if largest - smallest > MAX_SPREAD * max(abs(largest), abs(smallest)):
        return 0.0, STEP_TOO_LARGE
    if 2 * sum(left == right for left, right in itertools.pairwise(values)) >= len(values):
        return 0.0, STEP_TOO_SMALL
    levels, changes_sign = [], []
    for level, sign_change in _levels(values):  # stops at the first order that qualifies
        levels.append(level)
        changes_sign.append(sign_change)
        if len(levels) >= 3:
            window = levels[-3:]
            if changes_sign[-3] and max(window) <= AGREEMENT * min(window):
                return levels[-3], NOISE_DETECTED
    return 0.0, STEP_TOO_LARGE


def noise_bound(fvals: np.ndarray) -> float:
    """min(σ_1, …, σ_{nf−3}): the fallback noise level when ECnoise detects none.

    γ_k·E[(Δ^k f)²] = σ² + γ_k·(Δ^k f_s)², so every level is, in expectation, at
    least σ, and the smallest one is the tightest such bound.  Only levels that
    average at least 3 differences count, so that one lucky small difference
    cannot pull the bound far below σ.  The values must be finite.
    """
    levels, _ = noise_levels(fvals)
    return float(levels[: fvals.size - 3].min())


def ecnoise_columns(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(σ, detected) of each column of a finite (nf, m) table, by ECnoise's rules
    (:func:`fastgrad.noise.ecnoise`), vectorised; undetected: the bound of
    :func:`fastgrad.noise.noise_bound` (spread or no agreement, code 3), 0 (code 2).
    Scale-safe as :func:`fastgrad.noise.noise_levels`: differences of F/s, s a power of 2."""
    count = table.shape[0]
    largest = np.abs(table).max(axis=0)
    _, exponent = np.frexp(largest)
    scale = np.where(largest > 0, np.ldexp(1.0, exponent - 1), 1.0)
    values = table / scale
    high, low = values.max(axis=0), values.min(axis=0)
    spread = high - low > MAX_SPREAD * np.maximum(np.abs(high), np.abs(low))
    too_small = 2 * (values[1:] == values[:-1]).sum(axis=0) >= count
    levels, changes = [], []
    differences = values
    for order in range(1, count):
        differences = np.diff(differences, axis=0)
        levels.append(np.sqrt((differences ** 2).mean(axis=0) / math.comb(2 * order, order)))
        changes.append(differences.min(axis=0) * differences.max(axis=0) < 0)
    level, change = np.array(levels), np.array(changes)
    sigma = np.zeros(table.shape[1])
    found = np.zeros(table.shape[1], dtype=bool)
    for k in range(count - 3):
        window = level[k:k + 3]
        agrees = change[k] & (window.max(axis=0) <= AGREEMENT * window.min(axis=0)) & ~found
        sigma[agrees] = level[k][agrees]
        found |= agrees
    detected = found & ~spread & ~too_small
    bound = level[: count - 3].min(axis=0)
    sigma = np.where(detected, sigma, np.where(too_small & ~spread, 0.0, bound))
    return sigma * scale, detected


def pair_noise(sigma: np.ndarray, centre: np.ndarray, plus: np.ndarray, minus: np.ndarray,
               unit: float) -> np.ndarray:
    """Noise of each element of a pair F(x ± t): max(u·max|F±|, σ·max(1, G)) (units of F),
    G = max|F±| / |F(x)| where F+, F(x), F− share a sign: per element, what
    :func:`fastgrad.analysis.evaluation_noise` is for a scalar (noise that scales with |F|)."""
    largest = np.maximum(np.abs(plus), np.abs(minus))
    one_sign = ((plus > 0) & (minus > 0) & (centre > 0)) | ((plus < 0) & (minus < 0) & (centre < 0))
    growth = np.where(one_sign, largest / np.where(centre != 0, np.abs(centre), 1.0), 1.0)
    return np.maximum(unit * largest, sigma * np.maximum(growth, 1.0))


def default_step(dtype) -> float:
    """δ = √u for the working dtype: 1.5e-8 in float64, 3.5e-4 in float32.

    On a function that varies on a scale L (relative to max(1, |x_i|)), the
    smooth part of Δ^k f is about (δ/L)^k·|f|: with δ = √u it is at most
    u^{3/2}·|f| for k ≥ 3 when L ≳ 1, below the smallest possible noise u·|f|,
    so σ_3, σ_4, σ_5 measure noise alone; this holds for L down to about u^{1/6}
    (1/400 in float64, 1/14 in float32), and a code 3 divides δ by 100 below that.
    The first difference, δ·|p·∇f| (≈ √u·|f| when |x|·|∇f| ≈ |f|), stays far above
    one unit in the last place of f, so code 2 (too small) needs a loss flat to
    about √u relative.
    """
    return math.sqrt(float(np.finfo(dtype).eps))


def random_direction(x: np.ndarray, rng, direction: np.ndarray | None = None) -> np.ndarray:
    """p_i = g_i / ‖g‖₂ · max(1, |x_i|), g Gaussian from ``rng`` (or the given direction).

    The scaling makes a step δ relative to x's magnitude, coordinate by coordinate,
    like the checker's own steps h_i = h0·max(1, |θ_i|).  ``rng`` is a Generator, or
    a seed: then g is that of ``default_rng(seed)``, and g/‖g‖₂ is kept for small sizes
    (:func:`seeded_unit_gaussian`).
    """
    if direction is not None:
        g = np.array(direction, dtype=np.float64)
        if g.shape != x.shape or not np.all(np.isfinite(g)) or not np.any(g):
            raise InputError(f"direction must be a finite, nonzero array of shape {x.shape}")
        unit = g / np.linalg.norm(g)
    elif isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        unit = seeded_unit_gaussian(x.size, int(rng))
    else:
        unit = _unit_gaussian(x.size, np.random.default_rng(rng))
    return unit * np.maximum(1.0, np.abs(x))


#: :func:`seeded_unit_gaussian` keeps directions of up to this many values (2 MB each).
SEEDED_CACHE_SIZE = 2**18


def seeded_unit_gaussian(size: int, seed: int) -> np.ndarray:
    """g/‖g‖₂ with g = default_rng(seed).standard_normal(size), read-only.

    Drawing n Gaussians costs ~10 ns each, a tenth of a millisecond at n = 10^4: a
    large part of a small check, repeated by every check of a Monitor.  The direction
    of a fixed seed is therefore kept, for sizes up to :data:`SEEDED_CACHE_SIZE`.
    """
    if size <= SEEDED_CACHE_SIZE:
        return _cached_unit_gaussian(size, seed)
    return _unit_gaussian(size, np.random.default_rng(seed))


@functools.lru_cache(maxsize=4)
def _cached_unit_gaussian(size: int, seed: int) -> np.ndarray:
    unit = _unit_gaussian(size, np.random.default_rng(seed))
    unit.setflags(write=False)
    return unit


def _unit_gaussian(size: int, rng: np.random.Generator) -> np.ndarray:
    g = rng.standard_normal(size)
    return g / np.linalg.norm(g)


def stencil_values(line: Callable[[float], float], step: float, f0: float, count: int
                   ) -> np.ndarray:
    """f_j = line((j − ⌊count/2⌋)·step), j = 0..count−1, with f_{⌊count/2⌋} = f0 reused.

    ``line(t)`` is f at x + t·p (see :func:`estimate_noise`).  Makes count − 1 calls.
    """
    center = count // 2
    return np.array([f0 if j == center else float(line((j - center) * step))
                     for j in range(count)])


def next_step(step: float, factor: float, code: int, previous_code: int | None
              ) -> tuple[float, float]:
    """(δ·F, F) after code 2, (δ/F, F) after code 3; F → √F first when the code flipped.

    Moré & Wild move δ by F = 100; square-rooting F when a too-small step is
    followed by a too-large one (or back) bisects log δ instead of revisiting a step.
    """
    if previous_code is not None and previous_code != code:
        factor = math.sqrt(factor)
    return (step * factor if code == STEP_TOO_SMALL else step / factor), factor


def working_dtype(x: np.ndarray) -> np.dtype:
    """float32 for float32 x, float64 for anything else."""
    return np.dtype(np.float32) if x.dtype == np.float32 else np.dtype(np.float64)


def estimate_noise(f: Callable, x, *, direction=None, rng=None, nf: int = DEFAULT_POINTS,
                   step: float | None = None, max_tries: int = 4) -> NoiseEstimate:
    """The noise level σ of f at x, by ECnoise along one direction, adapting the step.

    Parameters
    ----------
    f : callable
        ``f(point) -> float`` (a Python float, NumPy scalar or 0-d array); ``point``
        is a fresh 1-D array of x's working dtype (float32 for float32 x, else
        float64).  x itself is never passed nor modified.
    x : 1-D array
        The point.
    direction : array, optional
        Direction g before normalisation and scaling (default Gaussian from ``rng``);
        the points are x + (j − ⌊nf/2⌋)·δ·p with p_i = g_i/‖g‖₂·max(1, |x_i|).
    rng : numpy Generator or seed, optional
        Draws g; pass a seeded one for a reproducible estimate.
    nf : int
        Values per try (≥ 4); the default 9 is explained at :data:`DEFAULT_POINTS`.
        The centre value f(x) is computed once: a try costs nf − 1 calls.
    step : float, optional
        Initial relative step δ (default √u, :func:`default_step`).
    max_tries : int
        ECnoise is repeated with δ·100 after code 2 and δ/100 after code 3; when the
        code flips between 2 and 3 the factor is square-rooted (100 → 10 → √10), so
        that no step is tried twice.

    Returns
    -------
    NoiseEstimate
        When detected, σ = max(σ_k, u·|f0|).  Otherwise σ = max(B, u·|f0|) with B the
        smallest :func:`noise_bound` of the tries that ended with code 3 on finite
        values (0 if none, e.g. for a constant f): an estimate that errs large, by
        the smooth part of f.
        Erring large makes the checker's tolerance looser, so a wrong gradient may
        be reported later (only when its error is near the noise-induced one),
        while erring small, e.g. falling back to u·|f0| for a loss summed over
        1e5 terms whose noise is ~100·u·|f0|, would report correct gradients as
        wrong.  The checker also warns whenever the noise was not detected.
    """
    x, base, dtype, step = _validated(x, nf, max_tries, step)
    p = random_direction(base, rng, direction)
    return _ecnoise_along(lambda t: f(_along(base, p, t, dtype)), f(x.astype(dtype)), dtype,
                          step, nf, max_tries)


def estimate_noise_on(f_changed: Callable, x, support, *, rng=None, nf: int = DEFAULT_POINTS,
                      step: float | None = None, max_tries: int = 4) -> NoiseEstimate:
    """:func:`estimate_noise` along a random direction that moves only x[support].

    ``f_changed(values)`` is f at x with x[support] replaced by ``values`` (a fresh array
    of x's working dtype): a caller that keeps a copy of x can evaluate it in
    O(len(support)), not O(n), and for a sampled check of a large θ the noise estimate
    then costs what its evaluations cost.

    What it measures: moving x[support] changes every computation that depends on any
    of those coordinates, hence at least the computations that moving one of them
    changes.  So σ along such a direction bounds the noise of a difference in any
    single coordinate of the support, as a dense direction's σ does, only less
    loosely: in a sum Σ t_i accumulated left to right, the roundings of unchanged
    terms do not change, and σ grows like √(len(support)) rather than √n.
    """
    x, base, dtype, step = _validated(x, nf, max_tries, step)
    support = np.asarray(support, dtype=np.int64)
    if support.ndim != 1 or support.size == 0:
        raise InputError("support must be a nonempty 1-D array of indices")
    moved = base[support]
    p = random_direction(moved, rng)
    return _ecnoise_along(lambda t: f_changed(_along(moved, p, t, dtype)),
                          f_changed(x[support].astype(dtype)), dtype, step, nf, max_tries)


def _along(base: np.ndarray, p: np.ndarray, t: float, dtype) -> np.ndarray:
    """A new array fl(base + t·p) in ``dtype``, in two passes over n (the noise estimate
    makes 8 such points, and a small check is a few milliseconds)."""
    point = p * t
    point += base
    return point.astype(dtype, copy=False)


def _validated(x, nf: int, max_tries: int, step: float | None):
    """(x, x in float64, working dtype, initial step), or InputError."""
    x = np.asarray(x)
    if x.ndim != 1 or x.size == 0:
        raise InputError(f"x must be a nonempty 1-D array, got shape {x.shape}")
    if nf < 4 or max_tries < 1:
        raise InputError(f"need nf >= 4 and max_tries >= 1, got nf={nf}, max_tries={max_tries}")
    dtype = working_dtype(x)
    base = x.astype(np.float64, copy=False)  # only read
    if not (math.isfinite(base.sum()) or np.all(np.isfinite(base))):  # a sum may overflow
        raise InputError("x must be finite")
    step = default_step(dtype) if step is None else float(step)
    if not (math.isfinite(step) and step > 0.0):
        raise InputError(f"step must be positive and finite, got {step}")
    return x, base, dtype, step


def _ecnoise_along(line: Callable[[float], float], f0, dtype, step: float, nf: int,
                   max_tries: int) -> NoiseEstimate:
    """ECnoise on ``line(t)`` = f(x + t·p), with f0 = f(x), adapting the step δ."""
    f0 = float(f0)
    if not math.isfinite(f0):
        raise LossError(f"f(x) = {f0} is not finite")
    evaluations = 1
    bounds = []
    seen = [f0]  # every value, for the precision they are returned in
    factor, code, previous_code = STEP_FACTOR, None, None
    for _ in range(max_tries):
        if code is not None:
            step, factor = next_step(step, factor, code, previous_code)
            previous_code = code
        fvals = stencil_values(line, step, f0, nf)
        seen.extend(fvals.tolist())
        evaluations += nf - 1
        sigma, code = ecnoise(fvals)
        if code == NOISE_DETECTED:
            break
        if code == STEP_TOO_LARGE and np.all(np.isfinite(fvals)):
            bounds.append(noise_bound(fvals))
    else:
        sigma = min(bounds, default=0.0)
    assert code is not None  # max_tries >= 1: ECnoise ran at least once
    returned = values_dtype(seen) if dtype == np.float32 else np.dtype(np.float64)
    floor = float(np.finfo(returned).eps) * abs(f0)
    return NoiseEstimate(sigma=max(sigma, floor), f0=f0, evaluations=evaluations, code=code,
                         detected=code == NOISE_DETECTED, step=step, values_dtype=returned)
