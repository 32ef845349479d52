"""Exceptions raised by fastgrad."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import CheckReport


class GradientCheckError(Exception):
    """Base class of fastgrad's own errors."""


class InputError(GradientCheckError, ValueError):
    """theta, grad, args or an option is not usable; raised before any loss evaluation."""


class LossError(GradientCheckError, RuntimeError):
    """The loss raised, or returned a non-finite or non-scalar value, during a check."""

    def __init__(self, message: str, *, coordinate: str | None = None, step: float | None = None) -> None:
        super().__init__(message)
        self.coordinate = coordinate
        self.step = step


class GradientMismatch(AssertionError):
    """An assert helper found the derivative wrong; ``.report`` says how.

    Raised by :func:`fastgrad.assert_gradient` and the helpers of :mod:`fastgrad.testing`.
    """

    def __init__(self, report: CheckReport) -> None:
        # The report's first line is its verdict: pytest's one-line summary shows it.
        super().__init__(str(report))
        self.report = report


def describe(error: BaseException) -> str:
    """``error``'s message, even when its ``__str__`` itself raises."""
    try:
        return str(error)
    except Exception:  # a broken __str__ must not hide the original error
        return f"(the {type(error).__name__}'s message could not be formatted)"
