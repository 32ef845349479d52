"""Plans: which coordinates to perturb, by how much, at which points.

A central difference at coordinate i evaluates the loss at θ with θ_i replaced
by θ_i ± h_i.  The default step is

    h_i = h0 · max(1, |θ_i|),     h0 = u^(1/3)

with u the machine epsilon of the working dtype (≈ 6.06e-6 for float64): it
balances the truncation error h²·|f'''|/6 against the rounding error ≈ u·|f|/h
(Nocedal & Wright, *Numerical Optimization*, §8.1).  The step actually taken,
``(θ_i + h_i) − θ_i``, can differ from h_i in its last bits; the quotient uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _validation as validate
from .errors import InputError


def directional_relative_step(dtype) -> float:
    """h0 = u^(1/5) for directional checks: the step that minimises the error of the
    Richardson value (4·D(h) − D(2h))/3, which judges a direction whenever D(h) is in doubt.

    A direction moves every coordinate at once, so its derivative is a sum of n terms
    and an error in one coordinate is a small part of it: the larger step cuts the
    rounding error σ/h by u^(-2/15) ≈ 120 in float64, where the sensitivity lies.
    """
    return float(np.finfo(dtype).eps) ** (1.0 / 5.0)


def nominal_steps(theta_at: np.ndarray, relative_step: float) -> np.ndarray:
    """h_i = h0 · max(1, |θ_i|), in the units of θ_i."""
    return relative_step * np.maximum(1.0, np.abs(theta_at.astype(np.float64)))


@dataclass(frozen=True)
class Plan:
    """Coordinates to check and their nominal steps (both of length k)."""

    coords: np.ndarray  # int64, flat indices into theta
    steps: np.ndarray  # float64, nominal h_i
    relative_step: float

    @classmethod
    def for_coords(cls, theta: np.ndarray, coords, relative_step: float) -> Plan:
        """The flat coordinates ``coords`` of ``theta``, at steps h0·max(1, |θ_i|)."""
        coords = np.asarray(coords, dtype=np.int64)
        relative_step = validate.eps(relative_step)
        return cls(coords, nominal_steps(theta[coords], relative_step), relative_step)

    def __len__(self) -> int:
        return self.coords.size

    def subset(self, rows: np.ndarray) -> Plan:
        return Plan(self.coords[rows], self.steps[rows], self.relative_step)

    def points(self, theta: np.ndarray, offsets) -> np.ndarray:
        """values[j, q] = θ_{c_j} + offsets[q]·h_j, rounded to theta's dtype: shape (k, len(offsets))."""
        base = theta[self.coords].astype(np.float64)
        values = base[:, None] + np.multiply.outer(self.steps, np.asarray(offsets, dtype=np.float64))
        values = values.astype(theta.dtype)
        unchanged = values == theta[self.coords][:, None]
        if unchanged.any():
            j = int(np.argwhere(unchanged)[0, 0])
            raise InputError(
                f"step {self.steps[j]:.3g} is too small to change coordinate {int(self.coords[j])} "
                f"(value {theta[self.coords[j]]!r}) in {theta.dtype}: use a larger eps"
            )
        return values

    def taken(self, theta: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The steps actually taken, values − θ_c, as float64 (exact in binary floating point)."""
        return values.astype(np.float64) - theta[self.coords].astype(np.float64)[:, None]


#: How far from θ a check reaches, in relative steps: central4's second step is 4h, and a
#: directional test moves θ_i by z·2h·max(1, |θ_i|), |z| < 8 for any Gaussian draw in practice.
REACH = 16.0


def require_representable_steps(theta: np.ndarray, relative_step: float, label) -> None:
    """InputError, naming the first such coordinate ``label(i)``, when θ_i ± REACH·h_i
    (h_i = relative_step·max(1, |θ_i|)) is beyond the largest value of θ's dtype.

    Such a step would give an infinite point: the loss would be blamed for a non-finite
    value that the step made.  Checked before any evaluation.
    """
    largest = float(np.finfo(theta.dtype).max)
    magnitude = np.abs(theta.astype(np.float64, copy=False))
    beyond = np.flatnonzero(magnitude > largest / (1.0 + REACH * relative_step))
    if beyond.size:
        i = int(beyond[0])
        limit = largest / (1.0 + REACH * relative_step)
        raise InputError(
            f"{label(i)} = {float(theta[i]):.6e} is too close to the largest {theta.dtype} "
            f"({largest:.6e}) for finite-difference steps of relative size {relative_step:.2e}: "
            f"the perturbed values would overflow; scale the parameter so that |{label(i)}| "
            f"<= {limit:.6e}"
        )


#: Seed of the nearby point of ``jitter=``: the same point at every check of the same θ.
JITTER_SEED = 20261205


def jittered_theta(theta, distance, dtype=None):
    """θ'_i = θ_i + r·max(1, |θ_i|)·s_i·w_i, s_i = ±1, w_i ~ U(1/2, 1), from a fixed seed, in
    θ's structure: every coordinate moves by between r/2 and r relative, so that a stationary
    point's zero gradient, which hides a factor or a sign, is left in every direction."""
    from .parameters import ParameterLayout  # parameters imports nothing of plans

    distance = validate.jitter(distance)
    layout, flat = ParameterLayout.from_theta(theta, dtype)
    rng = np.random.default_rng(JITTER_SEED)
    moves = rng.choice((-1.0, 1.0), flat.size) * rng.uniform(0.5, 1.0, flat.size)
    moved = flat.astype(np.float64) + distance * np.maximum(1.0, np.abs(flat)) * moves
    return layout.structured(moved.astype(flat.dtype))
