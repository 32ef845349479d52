"""The interface between the check and whatever evaluates the loss.

An :class:`Evaluator` knows how to evaluate the loss at θ with one coordinate
replaced, over a chunk of (coordinate, values) rows, inside a private
:class:`Workspace` (a copy of θ that it perturbs in place and restores).  An
executor (see :mod:`fastgrad.engine.threads`) hands chunks to workspaces; a
process pool or a dask cluster can serve the same interface later, because a
chunk is self-contained: ``coords[start:stop]`` and ``values[start:stop]`` in,
``out[start:stop]`` back.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from ..errors import LossError


class Workspace:
    """One worker's private state: a flat copy of θ and the row being evaluated."""

    def __init__(self, theta: np.ndarray, view):
        self.flat = theta.copy()
        self.view = view(self.flat)  # what the loss receives: shares memory with flat
        self.cursor = np.zeros(2, dtype=np.int64)  # (row, point) of the evaluation in progress


class Evaluator(ABC):
    """Evaluates ``f(θ with θ[coords[j]] = values[j, q])`` into ``out[j, q]``."""

    #: Short name shown in the report ("numba", "python").
    name: str = ""
    #: Trailing shape of ``out`` per evaluation: () for a scalar loss, (m,) for a function
    #: whose output (flattened) has m values (:mod:`.vector`).
    output_shape: tuple[int, ...] = ()
    #: True for an evaluator that parallelises its own chunks (a framework's intra-op threads,
    #: a GPU): its batches run on the calling thread, with BLAS's threads as they are.
    own_threads: bool = False

    def __init__(self, loss, theta: np.ndarray, args: tuple):
        self.loss = loss
        self.theta = theta
        self.args = args

    @property
    @abstractmethod
    def default_workers(self) -> int:
        """How many workers to use when the user does not say."""

    @abstractmethod
    def view(self, flat: np.ndarray):
        """What the loss receives for the flat vector ``flat`` (sharing its memory)."""

    def notes(self) -> list[str]:
        """What the report should say about how the loss was evaluated (none by default)."""
        return []

    def workspace(self) -> Workspace:
        return Workspace(self.theta, self.view)

    def argument(self, workspace: Workspace):
        """What the loss is called with from ``workspace``: its view, or a new dict of the
        view's arrays when the view is a dict, so that a loss that rebinds a key
        (``p["W"] = p["W"] * 1.0``) cannot hide later perturbations from itself."""
        view = workspace.view
        return dict(view) if isinstance(view, dict) else view

    def at(self, point: np.ndarray, copy: bool = True):
        """The raw return value of the loss at the flat ``point``, and the array it was given
        (a copy of ``point``, or, with ``copy=False``, ``point`` itself in θ's dtype)."""
        work = np.array(point, dtype=self.theta.dtype, copy=copy or None)
        return self.loss(self.view(work), *self.args), work

    def at_changed(self, workspace: Workspace, indices: np.ndarray, values: np.ndarray):
        """The raw return value of the loss at θ with θ[indices] = values, evaluated in
        ``workspace`` (restored on return), and whether the loss left those entries alone.

        O(len(indices)) besides the loss itself: no copy of θ.
        """
        flat = workspace.flat
        flat[indices] = values
        try:
            value = self.loss(self.argument(workspace), *self.args)
            intact = bool(np.array_equal(flat[indices], values))
        finally:
            flat[indices] = self.theta[indices]
        return value, intact

    def out_shape(self, values: np.ndarray) -> tuple[int, ...]:
        """Shape of ``out`` for a batch of ``values`` (k × p): (k, p) + :attr:`output_shape`."""
        return tuple(values.shape) + tuple(self.output_shape)

    def row_place(self, layout, coord: int, value: float) -> tuple[str, float]:
        """(the coordinate's label, the step) of a row ``coord`` evaluated at ``value``, for an
        error message: θ[coord] = value, a step of value − θ[coord]."""
        return layout.label(int(coord)), float(value) - float(self.theta[coord])

    @abstractmethod
    def evaluate_chunk(self, workspace: Workspace, coords: np.ndarray, values: np.ndarray,
                       out: np.ndarray, start: int, stop: int) -> None:
        """Fill ``out[start:stop]``; on return ``workspace.flat`` equals θ again."""


class WrongReturn(LossError):
    """The loss returned something other than a real scalar (inside a chunk: the engine adds
    the coordinate and the step)."""


def as_scalar(value, where: str = "", complex_ok: bool = False, finite: bool = True):
    """The loss's return value as a Python float (complex with ``complex_ok``).

    Raises WrongReturn when it is not a real scalar (a bool, a string, an array), and
    LossError when it is not finite (with ``finite=False``, a non-finite value is returned
    for the caller to report).
    """
    if type(value) is float:  # what a compiled loss returns: the rest is for other types
        if math.isfinite(value) or not finite:
            return complex(value) if complex_ok else value
        raise LossError(f"the loss is {value} {where}".rstrip())
    if isinstance(value, (bool, np.bool_, str, bytes)) or (
            isinstance(value, np.ndarray) and value.dtype.kind not in "iufc"):
        raise WrongReturn(f"the loss must return a real scalar, got {type(value).__name__} "
                          f"{value!r:.40} {where}".rstrip())
    if np.ndim(value) != 0:
        hint = "; use .item() or [0] to return its single value" if np.size(value) == 1 else ""
        raise WrongReturn(f"the loss must return a scalar; it returned shape {np.shape(value)} "
                          f"{where}".rstrip() + hint)
    if np.iscomplexobj(value) and not complex_ok:
        raise WrongReturn(f"the loss returned a complex value {where}".rstrip())
    try:
        result = complex(value) if complex_ok else float(value)
    except (TypeError, ValueError):
        raise WrongReturn(f"the loss must return a real scalar, got {type(value).__name__} "
                          f"{where}".rstrip()) from None
    if finite and not np.isfinite(result):
        raise LossError(f"the loss is {result} {where}".rstrip())
    return result
