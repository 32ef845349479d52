"""fastgrad: fast, trustworthy gradient checking.

>>> report = fastgrad.check(loss, grad, theta, args=(X, y))
>>> print(report); assert report.passed
"""

from .api import assert_gradient, check, numerical_gradient
from .errors import GradientCheckError, GradientMismatch, InputError, LossError
from .jacobian import JacobianReport, check_hessian, check_jacobian
from .monitor import GradientCheckWarning, Monitor
from .parameters import Sample, Theta
from .products import ProductReport, check_hvp, check_jvp, check_vjp
from .report import CheckReport, Report
from .sampling import Coverage, generators, sample_coordinates
from .scan import StepScan, step_scan
from .taylor import TaylorReport, taylor_test

__version__ = "0.1.0"


def plan_sample(theta: Theta, *, sample: Sample | None = None,
                detect: tuple[float, float] | None = None, seed: int | None = None) -> Coverage:
    """Plan a sampled check without evaluating anything.

    Which coordinates ``check(theta=..., sample=/detect=, seed=)`` would check, what that
    sample vouches for, and its cost in loss evaluations.
    """
    from . import _validation as validate
    from .parameters import ParameterLayout

    sample, detect, seed = validate.sample(sample), validate.detect(detect), validate.seed(seed)
    layout, _ = ParameterLayout.from_theta(theta)
    return sample_coordinates(layout, sample=sample, detect=detect, seed=generators(seed)[0])

__all__ = [
    "CheckReport",
    "Coverage",
    "GradientCheckError",
    "GradientCheckWarning",
    "GradientMismatch",
    "InputError",
    "JacobianReport",
    "LossError",
    "Monitor",
    "ProductReport",
    "Report",
    "StepScan",
    "TaylorReport",
    "__version__",
    "assert_gradient",
    "check",
    "check_hessian",
    "check_hvp",
    "check_jacobian",
    "check_jvp",
    "check_vjp",
    "numerical_gradient",
    "plan_sample",
    "step_scan",
    "taylor_test",
]
