"""fastgrad.jax: the derivative rules of JAX functions checked against finite differences.

>>> from fastgrad.jax import check_function
>>> report = check_function(f, x, w)   # f's jax.custom_vjp / custom_jvp rules, or JAX's own
>>> print(report); assert report.passed

Imports JAX (``import fastgrad`` does not).  See :func:`check_function`.
"""

from .check import FunctionReport, check_function

__all__ = ["FunctionReport", "check_function"]
