"""Vector-valued functions: F(θ) an array of any shape, or a dict of arrays, m values in all.

The evaluators here fill ``out[j, q, :]`` (m values, F flattened by its :class:`OutputLayout`)
where a scalar loss fills ``out[j, q]``; the executors, which allocate ``out`` by
:meth:`~.base.Evaluator.out_shape`, run them unchanged, on threads, processes or dask.
A row is either

* a coordinate (``groups`` None): θ[coords[j]] = values[j, q], as for a scalar loss; or
* a group of columns (:class:`Groups`): row j moves every column c of group g = coords[j]
  to θ_c + values[j, q]·s_c, its own step s_c (a Curtis–Powell–Reid group, a direction).

Each worker's memory is its copy of θ and one output (O(n + m)), besides ``out``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import numba
import numpy as np

from ..errors import InputError
from ..parameters import Group, ParameterLayout
from .base import Evaluator, Workspace, WrongReturn
from .compiled import CompiledEvaluator
from .python import PythonEvaluator

#: The name of an array output's single group in labels: ``out[3]``.
OUTPUT_GROUP = "out"


@dataclass(frozen=True)
class Groups:
    """Group g moves the columns ``cols[ptr[g]:ptr[g+1]]`` by t·``steps[ptr[g]:ptr[g+1]]``
    (units of θ), t = the row's value: O(n) for groups that partition the columns."""

    ptr: np.ndarray  # int64, G + 1
    cols: np.ndarray  # int64
    steps: np.ndarray  # float64, one per entry of cols

    @classmethod
    def from_labels(cls, group_of: np.ndarray, steps: np.ndarray) -> Groups:
        """Groups from each column's group number (0..G−1) and its step."""
        order = np.argsort(group_of, kind="stable")
        counts = np.bincount(group_of, minlength=int(group_of.max(initial=-1)) + 1)
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(ptr, order.astype(np.int64), np.asarray(steps, dtype=np.float64)[order])

    @classmethod
    def directions(cls, steps: np.ndarray) -> Groups:
        """One group per row of ``steps`` (k × n), each moving every column: dense directions."""
        count, size = steps.shape
        return cls(np.arange(count + 1, dtype=np.int64) * size,
                   np.tile(np.arange(size, dtype=np.int64), count), steps.ravel().astype(np.float64))

    @classmethod
    def from_parts(cls, parts: list[np.ndarray], steps: np.ndarray) -> Groups:
        """One group per array of columns in ``parts``, each column at its step ``steps[c]``."""
        cols = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        ptr = np.concatenate([[0], np.cumsum([part.size for part in parts])]).astype(np.int64)
        return cls(ptr, cols, np.asarray(steps, dtype=np.float64)[cols])

    def __len__(self) -> int:
        return self.ptr.size - 1

    def members(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """(columns, steps) of ``group``."""
        span = slice(self.ptr[group], self.ptr[group + 1])
        return self.cols[span], self.steps[span]

    def taken(self, theta: np.ndarray, group: int, multiplier: float) -> np.ndarray:
        """The displacements actually taken by ``group`` at ``multiplier``: the point
        θ_c + t·s_c rounded to θ's dtype, less θ_c (exact), as float64."""
        cols, steps = self.members(group)
        moved = (theta[cols] + multiplier * steps).astype(theta.dtype)
        return moved.astype(np.float64) - theta[cols].astype(np.float64)


class OutputLayout(ParameterLayout):
    """The flat layout of F's output, named like θ's: ``out[3, 1]`` for an array, the keys of
    a dict (each in C order).  :meth:`flatten_output` turns one return value into m floats."""

    @classmethod
    def of(cls, value) -> OutputLayout:
        """The layout of the return value ``value`` (InputError if it is not real and finite-sized)."""
        if isinstance(value, Mapping):
            if not value:
                raise InputError("the function returned an empty dict")
            items = [(str(key), np.asarray(item)) for key, item in value.items()]
        else:
            items = [(OUTPUT_GROUP, np.asarray(value))]
        groups, offset = [], 0
        for name, array in items:
            if array.dtype.kind not in "iuf" or array.size == 0:
                raise InputError(f"the function must return a nonempty real array (or a dict of them); "
                                 f"{name} has dtype {array.dtype} and shape {array.shape}")
            groups.append(Group(name, tuple(array.shape), offset))
            offset += array.size
        layout = cls(tuple(groups), isinstance(value, Mapping), np.dtype(np.float64))
        layout.keys = tuple(key for key, _ in items) if isinstance(value, Mapping) else ()
        return layout

    keys: tuple = ()

    def flatten_output(self, value, into: np.ndarray) -> None:
        """Write the return value ``value`` into ``into`` (m floats); WrongReturn if it does not
        have this layout."""
        if self.is_dict:
            if not isinstance(value, Mapping) or len(value) != len(self.groups):
                raise WrongReturn(f"the function must return a dict with keys {list(self.keys)}")
            for key, group in zip(self.keys, self.groups, strict=True):
                _place(value[key] if key in value else None, group, into)
        else:
            _place(value, self.groups[0], into)


def _place(value, group: Group, into: np.ndarray) -> None:
    array = None if value is None else np.asarray(value)
    if array is None or array.shape != group.shape or array.dtype.kind not in "iuf":
        got = "nothing" if array is None else f"shape {array.shape}, dtype {array.dtype}"
        raise WrongReturn(f"the function's output {group.name} must keep shape {group.shape} "
                          f"(a real array), got {got}")
    into[group.offset:group.stop] = array.ravel()


_NO_GROUPS = Groups(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))


class VectorPythonEvaluator(PythonEvaluator):
    """``fun(view, *args)`` from a Python loop; out[j, q, :] = F flattened (coordinate or group
    rows, see the module docstring)."""

    def __init__(self, fun, theta: np.ndarray, args: tuple, layout: ParameterLayout,
                 output: OutputLayout, groups: Groups | None = None, receives_flat: bool = False):
        super().__init__(fun, theta, args, layout, receives_flat)
        self.output = output
        self.output_shape = (output.size,)
        self.groups = groups

    def row_place(self, layout, coord: int, value: float) -> tuple[str, float]:
        return _group_place(self.groups, layout, coord, value) or super().row_place(layout, coord, value)

    def evaluate_chunk(self, workspace: Workspace, coords, values, out, start, stop) -> None:
        fun, args, flat, view, theta = self.loss, self.args, workspace.flat, workspace.view, self.theta
        fresh = isinstance(view, dict)  # see Evaluator.argument
        cursor, groups, flatten = workspace.cursor, self.groups, self.output.flatten_output
        for j in range(start, stop):
            cursor[0] = j
            if groups is None:
                cols, steps = coords[j:j + 1], None
            else:
                cols, steps = groups.members(int(coords[j]))
            try:
                for q in range(values.shape[1]):
                    cursor[1] = q
                    flat[cols] = values[j, q] if steps is None else theta[cols] + values[j, q] * steps
                    flatten(fun(dict(view) if fresh else view, *args), out[j, q])
            finally:
                flat[cols] = theta[cols]


def _group_place(groups: Groups | None, layout, coord: int, value: float) -> tuple[str, float] | None:
    """A group row's place for an error message: its columns and multiplier (None: a coordinate row)."""
    if groups is None:
        return None
    cols, _ = groups.members(coord)
    first = layout.label(int(cols[0])) if cols.size else "none"
    return f"group {coord} ({cols.size} coordinate(s) from {first})", float(value)


#: fun -> its vector chunk kernel, for as long as fun lives.
_vector_kernels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vector_kernel(fun):
    """``kernel(flat, theta, shape, coords, values, out, start, stop, cursor, ptr, cols, steps,
    args)`` for a compiled ``fun`` returning an array: out[j, q, :] = ravel(fun(point)), the
    point θ with θ[coords[j]] = values[j, q] (``ptr`` empty) or group coords[j] moved by
    values[j, q]·steps.  Made once per function."""
    if fun not in _vector_kernels:
        _vector_kernels[fun] = _make_vector_kernel(fun)
    return _vector_kernels[fun]


def _make_vector_kernel(fun):
    @numba.njit(nogil=True)
    def evaluate_chunk(flat, theta, shape, coords, values, out, start, stop, cursor, ptr, cols,
                       steps, args):
        view = flat.reshape(shape)
        grouped = ptr.size > 0
        for j in range(start, stop):
            cursor[0] = j
            row = coords[j]
            first, last = (ptr[row], ptr[row + 1]) if grouped else (0, 1)
            for q in range(values.shape[1]):
                cursor[1] = q
                t = values[j, q]
                if grouped:
                    for k in range(first, last):
                        flat[cols[k]] = theta[cols[k]] + t * steps[k]
                else:
                    flat[row] = t
                out[j, q, :] = np.ravel(fun(view, *args))
            if grouped:
                for k in range(first, last):
                    flat[cols[k]] = theta[cols[k]]
            else:
                flat[row] = theta[row]

    return evaluate_chunk


class VectorCompiledEvaluator(CompiledEvaluator):
    """A Numba ``fun(theta, *args)`` returning an array, through its :func:`vector_kernel`."""

    def __init__(self, fun, theta: np.ndarray, args: tuple, layout: ParameterLayout,
                 output: OutputLayout, groups: Groups | None = None):
        if output.is_dict:
            raise InputError("a compiled function must return an array, not a dict")
        super().__init__(fun, theta, args, layout)
        self.output = output
        self.output_shape = (output.size,)
        self.groups = groups
        self.kernel = vector_kernel(fun)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.kernel = vector_kernel(self.loss)

    def row_place(self, layout, coord: int, value: float) -> tuple[str, float]:
        return _group_place(self.groups, layout, coord, value) or super().row_place(layout, coord, value)

    def evaluate_chunk(self, workspace: Workspace, coords, values, out, start, stop) -> None:
        groups = self.groups or _NO_GROUPS
        self.kernel(workspace.flat, self.theta, self.shape, coords, values, out, start, stop,
                    workspace.cursor, groups.ptr, groups.cols, groups.steps, self.args)


def make_vector_evaluator(fun, theta: np.ndarray, args: tuple, layout: ParameterLayout,
                          output: OutputLayout, groups: Groups | None = None,
                          engine: str = "auto") -> Evaluator:
    """How ``fun`` is evaluated: the compiled kernel for a Numba function (unless
    ``engine="python"``), Python calls otherwise."""
    from . import is_compiled  # the package's, as make_evaluator uses it

    compiled = is_compiled(fun)
    if engine == "numba" and not compiled:
        raise InputError("engine='numba' needs a Numba-compiled function (an @njit function)")
    if compiled and engine != "python":
        return VectorCompiledEvaluator(fun, theta, args, layout, output, groups)
    return VectorPythonEvaluator(fun, theta, args, layout, output, groups, receives_flat=compiled)
