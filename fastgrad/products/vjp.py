"""check_vjp: vector-Jacobian products, each checked as the gradient of a scalar loss.

For a cotangent u in fun's output structure, Jᵀu is the gradient of L_u(x) = ⟨u, fun(x)⟩.
Each cotangent's given product is judged by :func:`fastgrad.check` on L_u: the same
per-coordinate rule |D_i − g_i| > z·r_i + t_i, with σ the measured noise of L_u itself
(so a fun whose outputs are large while ⟨u, fun⟩ cancels is judged by the rounding it
really carries), and sample=/detect=/directions=/method=/executor= as for a gradient.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numba
import numpy as np

from .. import _validation as validate
from ..parameters import ParameterLayout
from ..pipeline import run_check
from ..report import Report
from . import common
from .common import ProductEntry, ProductReport, ProductSummary

#: The options of fastgrad.check that check_vjp passes to each cotangent's check.
CHECK_OPTIONS = ("method", "eps", "dtype", "workers", "engine", "executor", "sample", "detect",
                 "directions", "progress")


def check_vjp(fun: Callable, vjp: Callable, x, args: tuple | list = (), *,
              kwargs: Mapping | None = None, cotangents: int | list = 4, seed: int | None = None,
              linearized: bool = False, **check_options: Any) -> ProductReport:
    """Check a vector-Jacobian product Jᵀu of ``fun`` at ``x``, cotangent by cotangent.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args, **kwargs)`` returns an array of any shape, or a dict of arrays.
        A Numba ``@njit`` fun (array output) is checked through a compiled loss
        ⟨u, fun(x)⟩ on fastgrad's compiled engine, and receives the flat vector for a dict x;
        any other fun is wrapped in a Python loss.
    vjp : callable
        ``vjp(x, u, *args, **kwargs)`` returns Jᵀu in x's structure.  With
        ``linearized=True``, ``vjp(x, *args, **kwargs)`` returns ``(value, vjp_fn)`` with
        ``vjp_fn(u)`` = Jᵀu (``torch.func.vjp``, ``jax.vjp``): called once, and ``value``
        must be fun(x).
    x : float array or dict of float arrays
        The point, as ``theta`` of :func:`fastgrad.check`.  Never modified.
    cotangents : int or list
        How many Gaussian cotangents u (drawn from ``seed``), or the cotangents themselves
        in fun's output structure.
    seed : int, optional
        Reproduces the cotangents, and the sample and directions of each check.
    **check_options
        method, eps, dtype, workers, engine, executor, sample, detect, directions, progress:
        as for :func:`fastgrad.check`, applied to each cotangent's check.

    Returns
    -------
    ProductReport
        Kind "vjp": the worst verdict of the cotangents' checks; entries labelled
        ``"cotangent k: W[3, 1]"``, allowed error z·r_i + t_i as in fastgrad.check;
        ``report.reports`` holds each cotangent's :class:`fastgrad.Report`.

    fun(x) is evaluated once first, to learn its output structure; every input (cotangents,
    the products' shapes) is then validated before any finite difference is taken.
    """
    clock = common.Clock()
    validate.callable_of("fun", fun)
    validate.callable_of("vjp", vjp)
    linearized = validate.flag("linearized", linearized)
    validate.known_options(check_options, CHECK_OPTIONS, "check_vjp")
    common.vector_count(cotangents, "cotangents")
    entropy = common.entropy_of(seed)
    validate.check_options(fun, args=args, kwargs=kwargs, seed=entropy, **check_options)
    layout, x_flat = ParameterLayout.from_theta(x, check_options.get("dtype"))
    function = common.Function.of(fun, layout, args, kwargs)
    user_args, user_kwargs = validate.args(args), validate.kwargs(kwargs)
    out_layout, f0 = common.output_layout(function(x_flat, "at x"), "fun(x)")
    common.flat_values(out_layout, out_layout.structured(f0), "fun(x)")  # finite
    products = common.vectors(cotangents, out_layout, entropy, "cotangents")
    if linearized:
        value, product = common.linearization(vjp, layout.structured(x_flat.copy()), user_args,
                                       user_kwargs, "vjp")
        common.require_same_value(out_layout.flatten_like(value, "vjp's value"), f0, "vjp(x, *args)")
    else:
        def product(u):
            return vjp(layout.structured(x_flat.copy()), u, *user_args, **user_kwargs)
    given = [layout.flatten_like(common.user_call("vjp", product, out_layout.structured(u.copy())),
                                 "the vjp's Jᵀu") for u in products]
    reports = [run_check(_scalar_loss(function, out_layout, u), layout.structured(g), x,
                         validate.check_options(fun, seed=entropy, **_loss_args(function, u),
                                                **check_options))
               for u, g in zip(products, given, strict=True)]
    return combined_report(reports, layout.size, out_layout.size, function.evaluations, entropy,
                     clock.seconds())


def _loss_args(function: common.Function, u: np.ndarray) -> dict:
    """args= of the scalar loss: (u, *args) for the compiled loss, the user's for a Python one."""
    return {"args": (u, *function.args) if function.compiled else function.args}


def _scalar_loss(function: common.Function, out_layout: ParameterLayout, u: np.ndarray):
    """The loss L_u(x) = ⟨u, fun(x)⟩: a compiled loss(x, u, *args) for a Numba fun
    (u travels as an argument, so one compiled loss serves every cotangent), the fun's own
    when it offers one (``fun.fastgrad_inner_product(u)``: :mod:`fastgrad.jax`), else a
    Python loss with u, fun's layout and keywords bound."""
    if function.compiled:
        return compiled_inner(function.fun)
    offered = getattr(function.fun, "fastgrad_inner_product", None)
    if offered is not None:
        return offered(u)
    fun, kwargs = function.fun, function.kwargs

    def loss(point, *args):
        return float(np.dot(u, common.flat_values(out_layout, fun(point, *args, **kwargs), "fun(x)")))
    return loss


#: fun -> its compiled ⟨u, fun(x)⟩, for as long as fun lives (one compilation per fun).
_inner_products: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_inner(fun):
    """``loss(x, u, *args) = Σ_j u_j·fun(x, *args).ravel()[j]``, compiled with Numba."""
    loss = _inner_products.get(fun)
    if loss is None:
        loss = _inner_products[fun] = _make_inner(fun)
    return loss


def _make_inner(fun):
    @numba.njit
    def inner(x, u, *args):
        return np.sum(u * np.ravel(np.asarray(fun(x, *args))))
    return inner


def combined_report(reports: list[Report], size: int, outputs: int, evaluations: int, entropy: int,
              seconds: float) -> ProductReport:
    """The report of every cotangent's check: the worst verdict, the worst entries."""
    entries, summaries, notes = [], [], []
    for k, report in enumerate(reports, start=1):
        label = f"cotangent {k}"
        entries += [ProductEntry(f"{label}: {c.label}", c.analytic, c.numerical, -c.difference,
                                 c.error_estimate, c.score) for c in report.worst]
        entries += [ProductEntry(f"{label}: {d.label}", d.analytic, d.numerical,
                                 d.analytic - d.numerical, d.error_estimate, d.score)
                    for d in report.directions]
        scores = [e.score for e in entries if e.label.startswith(f"{label}:")]
        summaries.append(ProductSummary(label, report.verdict, report.failed, report.checked,
                                        max(scores, default=0.0), report.relative_error,
                                        report.evaluations))
        notes += [(label, note) for note in report.notes]
        evaluations += report.evaluations
    return ProductReport("vjp", common.worst_verdict(r.verdict for r in reports), evaluations, seconds,
                         common.top_entries(entries), summaries, size, outputs, entropy,
                         common.merged_notes(notes), reports)


