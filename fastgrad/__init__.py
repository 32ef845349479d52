"""fastgrad: fast, trustworthy gradient checking.

>>> report = fastgrad.check(loss, grad, theta, args=(X, y))
>>> print(report); assert report.passed
"""

from .api import assert_gradient, check, numerical_gradient
from .errors import GradientCheckError, InputError, LossError
from .monitor import GradientCheckWarning, Monitor
from .report import Report
from .sampling import Coverage, generators, sample_coordinates
from .scan import StepScan, step_scan

__version__ = "0.1.0"


def plan_sample(theta, *, sample=None, detect=None, seed=None) -> Coverage:
    """Which coordinates ``check(theta=..., sample=/detect=, seed=)`` would check, what that
    sample vouches for, and its cost in loss evaluations, without evaluating anything."""
    from .parameters import ParameterLayout

    layout, _ = ParameterLayout.from_theta(theta)
    return sample_coordinates(layout, sample=sample, detect=detect, seed=generators(seed)[0])

__all__ = [
    "Coverage",
    "GradientCheckError",
    "GradientCheckWarning",
    "InputError",
    "LossError",
    "Monitor",
    "Report",
    "StepScan",
    "__version__",
    "assert_gradient",
    "check",
    "numerical_gradient",
    "plan_sample",
    "step_scan",
]
