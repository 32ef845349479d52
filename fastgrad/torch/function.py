"""check_function: the VJPs autograd computes for a torch function, against finite differences.

For a cotangent u in fn's output structure, autograd's VJP Jᵀu is the gradient of
L_u(x) = ⟨u, fn(x)⟩ (float64 sum).  Each cotangent's VJP is judged by fastgrad's gradient
check of L_u (:func:`fastgrad.pipeline.run_check`, as :func:`fastgrad.check_vjp` does), with
L_u evaluated by :class:`~.evaluator.TorchEvaluator`: batches of perturbed inputs through
``torch.func.vmap`` on the inputs' device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .. import _validation as validate
from ..errors import InputError
from ..pipeline import run_check
from ..products import common
from ..products.common import ProductReport
from ..products.vjp import combined_report
from ..report import Report
from .evaluator import TorchScalar
from .tensors import (
    batched_mode,
    confirmed,
    gradients,
    noted,
    one_device,
    require_options,
    to_numpy,
    working_dtype,
)


class Call:
    """fn called with the checked inputs given by name, the other arguments as given."""

    def __init__(self, fn: Callable, positional: tuple, keywords: dict, checked: list[str]):
        self.fn, self.positional, self.keywords = fn, positional, keywords
        self.checked = set(checked)

    def __call__(self, named: Mapping[str, torch.Tensor]):
        args = [named[f"input{k}"] if f"input{k}" in self.checked else value
                for k, value in enumerate(self.positional)]
        keywords = {key: named[key] if key in self.checked else value
                    for key, value in self.keywords.items()}
        return self.fn(*args, **keywords)


def output_tensors(value, what: str = "fn(*inputs)") -> dict[str, torch.Tensor]:
    """fn's output as named tensors: ``out`` for one tensor, ``output0``, … for a tuple or
    list, the keys for a dict."""
    if isinstance(value, torch.Tensor):
        items = {"out": value}
    elif isinstance(value, Mapping):
        items = dict(value)
    elif isinstance(value, (tuple, list)):
        items = {f"output{k}": item for k, item in enumerate(value)}
    else:
        raise InputError(f"{what} must return a tensor, or a tuple or dict of tensors, got "
                         f"{type(value).__name__}")
    for key, item in items.items():
        if not isinstance(key, str) or not isinstance(item, torch.Tensor):
            raise InputError(f"{what} must return tensors under string keys, got "
                             f"{type(item).__name__} under {key!r}")
    return items


class InnerProduct(TorchScalar):
    """L_u(x) = Σ_k ⟨u_k, fn(x)_k⟩ in float64, u on fn's device."""

    def __init__(self, call: Call, u: torch.Tensor, leaves: Mapping[str, torch.Tensor],
                 out_bytes: int, batched: bool | str):
        super().__init__(list(leaves), [tuple(t.shape) for t in leaves.values()], u.device, batched)
        self.call, self.u, self.out_bytes = call, u, out_bytes

    def value(self, flat: torch.Tensor, args: tuple) -> torch.Tensor:
        outputs = output_tensors(self.call(self.split(flat)))
        return torch.dot(self.u, torch.cat([o.reshape(-1).to(torch.float64)
                                            for o in outputs.values()]))

    def output_bytes(self) -> int:
        return self.out_bytes


def check_function(fn: Callable, *inputs: Any, cotangents: int | list = 4, seed: int | None = None,
                   dtype=None, batched: bool | str = "auto", kwargs: Mapping | None = None,
                   **options: Any) -> ProductReport:
    """Check the VJPs autograd computes for ``fn`` against finite differences of fn's forward.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs, **keyword_inputs)`` returns a tensor, or a tuple, list or dict of tensors.
    *inputs
        Its positional arguments.  Floating tensors with ``requires_grad`` are checked, named
        ``input0``, ``input1``, … by position; anything else is passed as given.
    cotangents : int or list
        How many Gaussian cotangents u (from ``seed``), or the cotangents themselves in fn's
        output structure (tensors or arrays).
    seed : int, optional
        Reproduces the cotangents, the sample and the directions.
    dtype : None, "float32" or "float64"
        None: the inputs' own precision: all float64; all float32, judged with float32 steps
        and allowed errors, and, where that does not pass, with float64 differences against
        the same float32 VJPs; all bfloat16 (or float16): the VJPs computed in it, judged
        against float64 differences allowing for its rounding.  The report says which.
        "float32"/"float64": every floating tensor argument cast to it, for the VJP and the
        differences alike.
    batched : "auto", True or False
        "auto": chunks of perturbed inputs evaluated by one ``torch.func.vmap`` call each when
        vmap works on fn, agrees with single calls and is faster per point (timed once, on 32
        points); True: whenever vmap works; False: one call per point.
    kwargs : dict, optional
        More keyword arguments of fn, passed as given and not checked (``{"dim": 1}``).
    **options
        Tensors with ``requires_grad`` are keyword inputs (named by their keyword); the rest
        are fastgrad.check's method, eps, sample, detect, directions, progress.

    Returns
    -------
    ProductReport
        Kind "vjp", as :func:`fastgrad.check_vjp`: ``verdict``, ``passed``, entries labelled
        ``"cotangent 1: input0[2, 3]"``, ``reports`` with each cotangent's
        :class:`fastgrad.Report`; notes say how fn was evaluated (vmap or one call per point)
        and in which precision.

    The inputs stay on their device and are never modified; each check copies them to NumPy
    once (fastgrad's θ), and its evaluations bring back only their scalar results.
    """
    clock = common.Clock()
    validate.callable_of("fn", fn)
    keyword_inputs = {key: value for key, value in options.items() if isinstance(value, torch.Tensor)}
    options = {key: value for key, value in options.items() if key not in keyword_inputs}
    require_options(options, "check_function")
    batched = batched_mode(batched)
    common.vector_count(cotangents, "cotangents")
    entropy = common.entropy_of(seed)
    named = {**{f"input{k}": value for k, value in enumerate(inputs)}, **keyword_inputs}
    checked = {name: t for name, t in named.items()
               if isinstance(t, torch.Tensor) and t.requires_grad}
    if not checked:
        raise InputError("no input requires grad: give the tensors to check requires_grad=True")
    device = one_device(checked)
    precision = working_dtype(checked, dtype)
    working = precision.gradient
    cast = working if dtype is not None else None
    positional = tuple(_cast(value, cast) for value in inputs)
    keywords = {**validate.kwargs(kwargs),
                **{key: _cast(value, cast) for key, value in keyword_inputs.items()}}
    call = Call(fn, positional, keywords, list(checked))

    def evaluated_in(wide: torch.dtype) -> Call:
        """fn with every floating argument cast to ``wide``, for the differences."""
        return Call(fn, tuple(_cast(v, wide) for v in positional),
                    {k: _cast(v, wide) for k, v in keywords.items()}, list(checked))

    differenced = call if precision.evaluate == working else evaluated_in(precision.evaluate)
    leaves = {name: t.detach().to(working, copy=True).requires_grad_(True)
              for name, t in checked.items()}
    with torch.enable_grad():
        outputs = output_tensors(common.user_call("fn(*inputs)", call, leaves))
    out_layout, f0 = common.output_layout({k: to_numpy(o, torch.float64) for k, o in outputs.items()},
                                          "fn(*inputs)")
    common.flat_values(out_layout, out_layout.structured(f0), "fn(*inputs)")  # finite
    products = common.vectors(_as_arrays(cotangents, outputs), out_layout, entropy, "cotangents")
    theta = {name: to_numpy(leaf, precision.evaluate) for name, leaf in leaves.items()}
    out_bytes = sum(o.numel() * o.element_size() for o in outputs.values())
    reports, plan, plan64 = [], None, None
    for u in products:
        parts = _cotangent(u, outputs)
        given = _vjp(outputs, parts, leaves)
        weights = torch.cat([p.reshape(-1).to(torch.float64) for p in parts]).to(device)
        loss = InnerProduct(differenced, weights, leaves, out_bytes, batched)
        loss.plan = plan  # vmap or single calls, planned for the first cotangent: the same fn
        report = run_check(loss, given, theta, validate.check_options(
            loss, seed=entropy, gradient_eps=precision.gradient_eps, **options))
        plan = loss.plan

        def in_float64(weights=weights, given=given) -> Report:
            nonlocal plan64
            wide = InnerProduct(evaluated_in(torch.float64), weights, leaves, 2 * out_bytes,
                                batched)
            wide.plan = plan64
            theta64 = {name: value.astype(np.float64) for name, value in theta.items()}
            wide_report = run_check(wide, given, theta64, validate.check_options(
                wide, seed=entropy, gradient_eps=float(torch.finfo(working).eps), **options))
            plan64 = wide.plan
            return wide_report

        reports.append(confirmed(report, working, in_float64))
    judged_as_given = any(report.dtype == "float32" for report in reports) \
        or working != torch.float32  # the float32 note only where float32 judged
    return noted(combined_report(reports, sum(v.size for v in theta.values()),
                                 out_layout.size, 1, entropy, clock.seconds()),
                 list(precision.notes) if judged_as_given else [])


def _cast(value, dtype: torch.dtype | None):
    """A floating tensor argument in ``dtype`` (None: as given)."""
    if dtype is None or not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return value
    return value.detach().to(dtype)


def _as_arrays(cotangents, outputs: Mapping[str, torch.Tensor]):
    """Given cotangents in fn's output structure as NumPy, in the output layout's structure
    (a count as is)."""
    if validate.is_integer(cotangents):
        return cotangents
    single = list(outputs) == ["out"]

    def structured(u):
        if single:
            return to_numpy(u, torch.float64) if isinstance(u, torch.Tensor) else u
        items = u.items() if isinstance(u, Mapping) else zip(outputs, u, strict=False) \
            if isinstance(u, (tuple, list)) else None
        if items is None:
            raise InputError(f"a cotangent of fn's {len(outputs)} outputs must be a tuple or dict, "
                             f"got {type(u).__name__}")
        return {k: to_numpy(v, torch.float64) if isinstance(v, torch.Tensor) else v for k, v in items}
    return [structured(u) for u in validate.sequence("cotangents", cotangents)]


def _cotangent(u: np.ndarray, outputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The flat cotangent u split by output, each rounded to its output's dtype and device
    (the same u for autograd's VJP and for ⟨u, fn(x)⟩)."""
    parts, offset = [], 0
    for output in outputs.values():
        size = output.numel()
        parts.append(torch.from_numpy(u[offset:offset + size].copy()).view(output.shape)
                     .to(output.device, output.dtype))
        offset += size
    return parts


def _vjp(outputs: Mapping[str, torch.Tensor], parts: list[torch.Tensor],
         leaves: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """autograd's Jᵀu for every leaf (fn's backward), as NumPy arrays named like the leaves."""
    pairs = [(o, p) for o, p in zip(outputs.values(), parts, strict=True) if o.requires_grad]
    if not pairs:
        return gradients([None] * len(leaves), leaves)
    grads = common.user_call("fn's backward (torch.autograd.grad)", torch.autograd.grad,
                             [o for o, _ in pairs], list(leaves.values()),
                             grad_outputs=[p for _, p in pairs], retain_graph=True,
                             allow_unused=True)
    return gradients(grads, leaves)
