"""The derivative methods: one object each, and the registry every entry point reads.

A :class:`Method` holds what is particular to it: the offsets of its first pass (in
units of the step h), its default relative step per dtype, how its losses combine
into a derivative and that derivative's rounding, and how a disagreeing row is
refined at a second step (the value, its truncation estimate, and the one-sided
pairs a kink analysis reads).  :func:`fastgrad.check`, :func:`numerical_gradient`,
:func:`step_scan` and the command line's ``--method`` choices all read
:data:`METHODS`: adding a method is one object here and its tests.

* ``central``: D(h) = (f(θ+h) − f(θ−h)) / 2h, 2 evaluations, error O(h²);
* ``central4``: R = (4·D(h) − D(2h))/3, 4 evaluations, error O(h⁴);
* ``complex``: Im f(θ + i·h) / h, 1 complex evaluation, no subtractive cancellation;
* ``forward``: F = (f(θ+h) − f(θ)) / h, a screen at 1 evaluation (f(θ) is measured once):
  the rows it cannot clear, and a random few it clears, are judged by ``central``
  (:attr:`Method.confirm_with`; the rule is :func:`fastgrad.derivatives.screen_clears`).

An offset 0 in ``offsets`` stands for θ itself: f(θ), which every check measures once, is
read there instead of being evaluated again for every row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import analysis

#: rounding_of(losses, taken) -> the rounding std of a central pair (see derivatives.rounding)
RoundingOf = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: The complex step: h = COMPLEX_STEP·max(1, |θ_i|).  Any h below ~1e-8 is as good in
#: float64 (the truncation h²·f'''/6 is then below rounding), and a tiny one also keeps
#: θ + i·h within the analytic neighbourhood of θ.
COMPLEX_STEP = 1e-20


def central(losses: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """D = (f₊ − f₋)/(a₊ − a₋) of the pair in columns 0, 1, with the offsets actually taken."""
    return analysis.central_difference(losses[:, 0], losses[:, 1], taken[:, 0], taken[:, 1])


@dataclass(frozen=True)
class Refinement:
    """A disagreeing row judged again at a second step."""

    value: np.ndarray  # the extrapolated derivative
    truncation: np.ndarray  # the first value's truncation error, a bound for ``value``'s
    rounding: np.ndarray  # rounding std of ``value``
    plus: tuple  # (f(θ+a), f(θ+2a), a): the one-sided pair on the + side (kink analysis)
    minus: tuple  # the same on the − side
    outer: tuple | None = None  # (f(θ+b), f(θ+2b), f(θ−b), f(θ−2b), b) beyond a, or None


@dataclass(frozen=True)
class Method:
    """A derivative method: ``offsets`` of the first pass and ``refine_offsets`` of the
    second (units of h), h0 = u^``step_exponent`` by default."""

    name: str
    offsets: tuple[float, ...]
    refine_offsets: tuple[float, ...]
    step_exponent: float
    complex: bool = False  # evaluates f at θ + i·h (no real stencil)
    confirm_with: Method | None = None  # a screen: rows it does not clear go to this method

    def default_step(self, dtype) -> float:
        """h0 = u^p, u the machine epsilon of ``dtype``: p = 1/3 balances a second-order
        truncation against rounding, 1/5 a fourth-order one, 1/2 a first-order one
        (Nocedal & Wright §8.1)."""
        eps = float(np.finfo(dtype).eps)
        if self.step_exponent == 1.0 / 3.0:
            return float(np.cbrt(eps))
        if self.step_exponent == 0.5:
            return float(np.sqrt(eps))
        return eps ** self.step_exponent

    def probe_step(self, relative_step: float, dtype) -> float:
        """The relative step one step from θ where the noise is measured (near a zero of f): the
        first pass's, or the confirming method's default where that is larger (its points
        reach farther, and rounding grows with f away from a zero)."""
        if self.confirm_with is None:
            return relative_step
        return max(relative_step, self.confirm_with.default_step(dtype))

    def value(self, losses: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """The derivative from the first pass's losses (k × len(offsets))."""
        raise NotImplementedError

    def first_pass(self, losses: np.ndarray, taken: np.ndarray, rounding_of: RoundingOf
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(value, rounding std) of the first pass."""
        raise NotImplementedError

    def refine(self, near, near_taken, far, far_taken, first: np.ndarray,
               first_rounding: np.ndarray, rounding_of: RoundingOf) -> Refinement:
        """The rows of ``near`` (first pass) again with ``far`` (``refine_offsets``)."""
        raise NotImplementedError


class CentralMethod(Method):
    """D(h); refined by Richardson with D(2h)."""

    def value(self, losses, taken):
        return central(losses, taken)

    def first_pass(self, losses, taken, rounding_of):
        return central(losses, taken), rounding_of(losses, taken)

    def refine(self, near, near_taken, far, far_taken, first, first_rounding, rounding_of):
        better = analysis.richardson(first, central(far, far_taken))
        return Refinement(
            value=better, truncation=np.abs(first - better),
            rounding=analysis.richardson_rounding_std(first_rounding, rounding_of(far, far_taken)),
            plus=(near[:, 0], far[:, 0], near_taken[:, 0]),
            minus=(near[:, 1], far[:, 1], near_taken[:, 1]))


class Central4Method(Method):
    """R(h) = (4·D(h) − D(2h))/3; refined to sixth order with R(2h), from D(4h).  Its outer
    pair (2h, 4h) is tested for smoothness too: a kink there spoils R(2h)."""

    def value(self, losses, taken):
        return analysis.richardson(central(losses[:, :2], taken[:, :2]),
                                   central(losses[:, 2:], taken[:, 2:]))

    def first_pass(self, losses, taken, rounding_of):
        return self.value(losses, taken), analysis.richardson_rounding_std(
            rounding_of(losses[:, :2], taken[:, :2]), rounding_of(losses[:, 2:], taken[:, 2:]))

    def refine(self, near, near_taken, far, far_taken, first, first_rounding, rounding_of):
        coarse = analysis.richardson(central(near[:, 2:], near_taken[:, 2:]),
                                     central(far, far_taken))  # R(2h)
        better = analysis.richardson4(first, coarse)
        rounding = analysis.richardson4_rounding_std(first_rounding, analysis.richardson_rounding_std(
            rounding_of(near[:, 2:], near_taken[:, 2:]), rounding_of(far, far_taken)))
        return Refinement(
            value=better, truncation=np.abs(first - better), rounding=rounding,
            plus=(near[:, 0], near[:, 2], near_taken[:, 0]),
            minus=(near[:, 1], near[:, 3], near_taken[:, 1]),
            outer=(near[:, 2], far[:, 0], near[:, 3], far[:, 1], 2.0 * np.abs(near_taken[:, 0])))


class ForwardMethod(Method):
    """F = (f(θ+a) − f(θ)) / a on the step a actually taken: the pair (θ+a, θ) in the
    columns of offsets (1, 0), the central formula with a₋ = 0.

    Error: F − f' = a·f''/2 + O(a²) (truncation, first order) + (ε₊ − ε₀)/a (rounding,
    standard deviation r = √2·σ/a for two values each of noise σ).  Their sum is smallest
    at a ∝ √(σ/|f''|), hence h0 = √u.  A screen: one evaluation per row cannot bound
    a·f''/2, so it never fails a row; see :func:`fastgrad.derivatives.screen_clears`.
    """

    def value(self, losses, taken):
        return central(losses, taken)

    def first_pass(self, losses, taken, rounding_of):
        return central(losses, taken), rounding_of(losses, taken)


class ComplexMethod(Method):
    """Im f(θ + i·h·e_c) / h: see :func:`fastgrad.derivatives.complex_step`."""

    def default_step(self, dtype) -> float:
        return COMPLEX_STEP


CENTRAL = CentralMethod("central", (1.0, -1.0), (2.0, -2.0), 1.0 / 3.0)
CENTRAL4 = Central4Method("central4", (1.0, -1.0, 2.0, -2.0), (4.0, -4.0), 1.0 / 5.0)
COMPLEX = ComplexMethod("complex", (), (), 0.0, complex=True)
FORWARD = ForwardMethod("forward", (1.0, 0.0), (), 0.5, confirm_with=CENTRAL)

#: Every method by name, in the order the documentation lists them.
METHODS: dict[str, Method] = {m.name: m for m in (CENTRAL, CENTRAL4, COMPLEX, FORWARD)}


def finite_differences() -> tuple[str, ...]:
    """The registered methods that difference real points (step_scan's choices)."""
    return tuple(name for name, method in METHODS.items() if not method.complex)
