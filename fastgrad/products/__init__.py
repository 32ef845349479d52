"""Checks of derivative products: vector-Jacobian (check_vjp), Jacobian-vector (check_jvp)
and Hessian-vector (check_hvp) products, with one report shape (:class:`ProductReport`)."""

from .common import ProductEntry, ProductReport, ProductSummary
from .jvp import check_hvp, check_jvp
from .vjp import check_vjp

__all__ = ["ProductEntry", "ProductReport", "ProductSummary", "check_hvp", "check_jvp", "check_vjp"]
