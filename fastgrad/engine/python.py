"""The plain-Python engine: any callable, perturbed in place from a Python loop."""

from __future__ import annotations

import numpy as np

from ..parameters import ParameterLayout
from .base import Evaluator, Workspace, as_scalar


class PythonEvaluator(Evaluator):
    """Calls ``loss(view, *args)``, where ``view`` is theta's structure over the workspace.

    A dict theta gives a dict of views; perturbing ``flat[i]`` is seen by the loss
    through them, so no coordinate ever costs a copy of θ.  A compiled loss run on
    this path receives what the compiled engine would give it (theta's array, or
    the flat vector for a dict).
    """

    name = "python"

    def __init__(self, loss, theta: np.ndarray, args: tuple, layout: ParameterLayout,
                 receives_flat: bool = False):
        super().__init__(loss, theta, args)
        self.layout = layout
        self.receives_flat = receives_flat  # a compiled loss run from Python: as in the kernel

    @property
    def default_workers(self) -> int:
        return 1  # a Python loss holds the GIL and may not be thread-safe

    def view(self, flat: np.ndarray):
        if self.receives_flat:
            return flat.reshape(self.layout.array_shape)
        return self.layout.structured(flat)

    def evaluate_chunk(self, workspace: Workspace, coords, values, out, start, stop) -> None:
        loss, args, flat, view = self.loss, self.args, workspace.flat, workspace.view
        fresh = isinstance(view, dict)  # see Evaluator.argument
        complex_ok = out.dtype.kind == "c"
        cursor = workspace.cursor
        for j in range(start, stop):
            cursor[0] = j
            i = coords[j]
            saved = flat[i]
            try:
                for q in range(values.shape[1]):
                    cursor[1] = q
                    flat[i] = values[j, q]
                    value = loss(dict(view) if fresh else view, *args)
                    # float (np.float64 too) goes straight in; a bool or a string would be
                    # converted silently by the assignment
                    if not isinstance(value, float):
                        value = as_scalar(value, complex_ok=complex_ok, finite=False)
                    out[j, q] = value
            finally:
                flat[i] = saved
