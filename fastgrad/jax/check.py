"""check_function: a JAX function's derivative rules (``jax.custom_vjp``, ``jax.custom_jvp``, or
whatever JAX differentiates) against finite differences of its forward, in float64."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import _validation as validate
from ..errors import InputError, describe
from ..products import ProductReport, check_jvp, check_vjp
from ..products.common import entropy_of, top_entries, worst_verdict
from ..products.vjp import CHECK_OPTIONS
from ..report import CheckReport, strict_dict
from .function import Inputs, JaxFunction, x64

#: The options of check_vjp that reach each cotangent's check (float64 always: no dtype=).
OPTIONS = tuple(name for name in CHECK_OPTIONS if name != "dtype")


def check_function(fun: Callable, *args: Any, cotangents: int | list = 4, tangents: int | list = 4,
                   jvp: bool | None = None, seed: int | None = None, **keywords: Any) -> FunctionReport:
    """Check the VJPs (``jax.vjp``) and JVPs (``jax.jvp``) of ``fun(*args, **kwargs)`` at its
    arguments, in float64, against finite differences of its forward.

    Parameters
    ----------
    fun : callable
        A JAX function: ``jax.custom_vjp``/``jax.custom_jvp`` rules inside are what is
        checked (or JAX's own derivatives).  Its output is an array or a pytree of float arrays.
    *args, **keywords
        fun's arguments: every float array (or float leaf of a pytree, e.g. a dict of
        weights) is an input, named ``input0``, ``input1`` … by position, by its keyword, and
        a pytree's leaves by their path (``input0['W'][3, 1]``); integer and boolean leaves
        are held fixed.  Keywords that are not options below go to fun.  Never modified.
    cotangents : int or list
        Cotangents u of :func:`fastgrad.check_vjp`: Jᵀu = ``jax.vjp``'s pullback of u is
        checked as the gradient of L_u(x) = ⟨u, fun(x)⟩, coordinate by coordinate.
    tangents : int or list
        Tangents v of :func:`fastgrad.check_jvp`: ``jax.jvp``'s J·v, output element by
        element (each output element's own error).
    jvp : bool, optional
        Check the JVPs too.  Default: where JAX defines them (not for a ``jax.custom_vjp``
        function, the report says so).
    seed : int, optional
        Reproduces the cotangents, tangents, samples and directions.
    method, eps, workers, engine, executor, sample, detect, directions, progress
        As for :func:`fastgrad.check`, for each cotangent's check.  ``engine="python"``
        evaluates one point per call instead of jax.vmap batches.

    Returns
    -------
    FunctionReport
        The worse verdict of the VJP and JVP checks; ``report.vjp``, ``report.jvp`` their
        :class:`fastgrad.ProductReport`; ``report.vmapped`` whether jax.vmap evaluated the
        perturbed points.

    ``jax_enable_x64`` holds inside the check only (``jax.enable_x64``, thread-local): the
    user's global setting is never changed.  Inputs given in float32 are checked at their
    values in float64.
    """
    validate.callable_of("fun", fun)
    options = {name: keywords.pop(name) for name in OPTIONS if name in keywords}
    if options.get("method") == "complex":
        raise InputError("method='complex' is not offered by fastgrad.jax: the complex step "
                         "would run fun on complex inputs; use 'central' or 'central4'")
    jvp = None if jvp is None else validate.flag("jvp", jvp)
    entropy = entropy_of(seed)
    with x64():
        function = JaxFunction(fun, Inputs.of(args, keywords))
        x = function.layout.structured(function.x.copy())
        vjp_report = check_vjp(function, function.vjp, x, cotangents=cotangents, seed=entropy,
                               linearized=True, **options)
        jvp_report, skipped = None, None
        if jvp is not False:
            try:
                function.jvp(x)
            except Exception as error:
                if jvp:
                    raise InputError(f"jax.jvp of fun raised {type(error).__name__}: "
                                     f"{describe(error)}") from error
                skipped = f"JVPs not checked: jax.jvp raised {type(error).__name__} ({describe(error)[:160]})"
            else:
                jvp_report = check_jvp(function, function.jvp, x, tangents=tangents, seed=entropy,
                                       linearized=True)
    return FunctionReport.of(vjp_report, jvp_report, function, skipped, entropy)


@dataclass(frozen=True)
class FunctionReport(CheckReport):
    """:func:`fastgrad.jax.check_function`'s outcome: the VJP check and the JVP check (None
    where not run), the worse verdict of the two, and how the perturbed points were evaluated
    (``vmapped``: by jax.vmap batches)."""

    kind: str
    verdict: str
    evaluations: int
    seconds: float
    worst: list
    vjp: ProductReport
    jvp: ProductReport | None
    vmapped: bool
    inputs: dict[str, tuple]  # name -> shape
    seed: int | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, vjp: ProductReport, jvp: ProductReport | None, function: JaxFunction,
           skipped: str | None, seed: int) -> FunctionReport:
        reports = [vjp] if jvp is None else [vjp, jvp]
        notes = [function.evaluations.note()]
        if skipped:
            notes.append(skipped)
        lower = sorted(function.inputs.precisions - {"float64"})
        if lower:
            notes.append(f"inputs given in {', '.join(lower)}: checked at their values in float64")
        return cls("jax function", worst_verdict(r.verdict for r in reports),
                   sum(r.evaluations for r in reports), sum(r.seconds for r in reports),
                   top_entries([e for r in reports for e in r.worst]), vjp, jvp,
                   function.evaluations.vmap_failure is None and function.evaluations.batched > 0,
                   {g.name: g.shape for g in function.layout.groups}, seed, notes)

    def summary(self) -> str:
        return (f"jax function: VJPs{' and JVPs' if self.jvp else ''} of {len(self.inputs)} "
                f"input(s), {self.evaluations:,} evaluations, {self.seconds:.2f} s, seed={self.seed}")

    def to_dict(self) -> dict:
        """Strict-JSON types (as :meth:`fastgrad.Report.to_dict`)."""
        return strict_dict({
            "kind": self.kind, "verdict": self.verdict, "passed": self.passed,
            "evaluations": self.evaluations, "seconds": self.seconds, "seed": self.seed,
            "vmapped": self.vmapped, "inputs": {k: list(v) for k, v in self.inputs.items()},
            "notes": list(self.notes), "worst": [entry.to_dict() for entry in self.worst],
            "vjp": self.vjp.to_dict(), "jvp": None if self.jvp is None else self.jvp.to_dict(),
        })

    def __str__(self) -> str:
        lines = [f"{self.verdict.upper()}  {self.summary()}"]
        lines += [f"note            {note}" for note in self.notes]
        lines += ["", "VJPs by jax.vjp", str(self.vjp)]
        if self.jvp is not None:
            lines += ["", "JVPs by jax.jvp", str(self.jvp)]
        return "\n".join(lines)

