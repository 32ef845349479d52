"""fastgrad: fast, trustworthy gradient checking.

>>> report = fastgrad.check(loss, grad, theta, args=(X, y))
>>> print(report); assert report.passed
"""

from .api import assert_gradient, check, numerical_gradient
from .errors import GradientCheckError, InputError, LossError
from .report import Report

__version__ = "0.1.0"

__all__ = [
    "check",
    "assert_gradient",
    "numerical_gradient",
    "Report",
    "GradientCheckError",
    "InputError",
    "LossError",
    "__version__",
]
