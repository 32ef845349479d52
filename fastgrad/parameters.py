"""Parameters: named groups of float arrays <-> one flat working vector.

The seed's recipe ("reshape the weights and biases into a big vector theta")
lives here.  A :class:`ParameterLayout` records, for each named group, its
shape and its offset in the flat vector; it validates user input, flattens
``theta`` and ``grad`` into fresh copies (the user's arrays are never written),
builds the structured views a Python loss receives, and names flat coordinates
as ``W2[3, 17]``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike

from .errors import InputError

#: Name of the single group when ``theta`` is a bare array.
ARRAY_GROUP = "theta"

#: What ``theta`` may be: one float array (any shape), or a dict of named float arrays.
Theta: TypeAlias = ArrayLike | Mapping[str, ArrayLike]
#: An analytic gradient: ``grad(theta, *args)`` giving theta's structure, or that value itself.
Gradient: TypeAlias = Callable[..., Any] | ArrayLike | Mapping[str, ArrayLike]
#: ``sample=``: a number of coordinates, a fraction of them, or flat indices.
Sample: TypeAlias = int | float | Sequence[int] | np.ndarray


@dataclass(frozen=True)
class Group:
    """One named parameter array, stored at ``flat[offset:offset + size]``."""

    name: str
    shape: tuple[int, ...]
    offset: int
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "size", math.prod(self.shape))

    @property
    def stop(self) -> int:
        return self.offset + self.size


def _as_array(value, what: str) -> np.ndarray:
    """np.asarray(value), with NumPy's errors for ragged sequences as InputError."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as error:
        raise InputError(f"{what} cannot be read as one array: {error}") from None


def _sequence_of_arrays(theta) -> bool:
    """A list or tuple of which some item is not a number (an array, a list)."""
    return isinstance(theta, (list, tuple)) and any(np.ndim(item) > 0 or isinstance(item, (
        list, tuple, Mapping)) for item in theta)


def _as_float_array(value, what: str) -> np.ndarray:
    """``value`` as a real floating array, or an InputError saying why not."""
    array = _as_array(value, what)
    if array.dtype == object:
        raise InputError(f"{what} must be a numeric array, got an object array")
    if array.dtype.kind == "c":
        raise InputError(f"{what} is complex ({array.dtype}); fastgrad checks real gradients")
    if array.dtype.kind != "f":
        raise InputError(
            f"{what} has dtype {array.dtype}; it must be a floating array "
            f"(an integer theta cannot be perturbed by a small step: use .astype(float))"
        )
    return array


def _working_dtype(dtypes) -> np.dtype:
    """float32 when every group is float32 (or narrower), else float64."""
    if all(np.dtype(d).itemsize <= 4 for d in dtypes):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


class ParameterLayout:
    """How a structured ``theta`` (array or dict of arrays) maps to a flat vector."""

    def __init__(self, groups: tuple[Group, ...], is_dict: bool, dtype: np.dtype,
                 source: tuple | None = None):
        self.groups = groups
        self.is_dict = is_dict
        self.dtype = np.dtype(dtype)
        self.size = groups[-1].stop
        self._source = source  # (dtype asked for, theta's dtypes): see flatten_theta
        self._offset_list = [g.offset for g in groups]
        self._offsets = np.array(self._offset_list, dtype=np.int64)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_theta(cls, theta, dtype=None) -> tuple[ParameterLayout, np.ndarray]:
        """Validate ``theta`` and return its layout and a flat working copy.

        ``theta`` is an array (a list or tuple of numbers is read as one, and the loss then
        receives an array), or a dict of named arrays.  A list or tuple of arrays is
        refused: stacking would lose the names (or fail on unequal shapes), so a dict is
        asked for.  The working dtype is float32 when every group is float32, else
        float64; ``dtype`` ("float32" or "float64") overrides it.
        """
        if isinstance(theta, Mapping):
            if not theta:
                raise InputError("theta is an empty dict: there is nothing to check")
            items = []
            for name, value in theta.items():
                if not isinstance(name, str):
                    raise InputError(f"theta's keys must be strings, got {name!r}")
                items.append((name, _as_float_array(value, f"theta[{name!r}]")))
            is_dict = True
        elif _sequence_of_arrays(theta):
            raise InputError(
                f"theta is a {type(theta).__name__} of arrays (or of sequences); give a dict of named "
                "arrays, e.g. {'W': W, 'b': b} (each array is a group, named in the report), or one "
                "array (np.concatenate or np.stack them)")
        else:
            items = [(ARRAY_GROUP, _as_float_array(theta, "theta"))]
            is_dict = False
        groups, offset = [], 0
        for name, array in items:
            if array.size == 0:
                what = f"theta[{name!r}]" if is_dict else "theta"
                raise InputError(f"{what} is empty (shape {array.shape}): there is nothing to check")
            groups.append(Group(name, tuple(array.shape), offset))
            offset += array.size
        if dtype is None:
            working = _working_dtype(a.dtype for _, a in items)
        elif np.dtype(dtype) in (np.float32, np.float64):
            working = np.dtype(dtype)
        else:
            raise InputError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
        layout = cls(tuple(groups), is_dict, working, (dtype, tuple(a.dtype for _, a in items)))
        flat = layout._concatenate([a for _, a in items])
        layout.require_finite(flat, "theta")
        return layout, flat

    def flatten_theta(self, theta, dtype=None) -> tuple[ParameterLayout, np.ndarray]:
        """:meth:`from_theta` for a theta expected to have this layout (the same names,
        shapes and dtypes, as a Monitor's theta from check to check): this layout and a flat
        working copy, without building a new layout; any other theta goes through
        :meth:`from_theta`."""
        if self.is_dict and isinstance(theta, Mapping) \
                and list(theta) == [g.name for g in self.groups]:
            arrays = [np.asarray(theta[g.name]) for g in self.groups]
        elif not self.is_dict and not isinstance(theta, Mapping):
            arrays = [np.asarray(theta)]
        else:
            return self.from_theta(theta, dtype)
        if not all(a.shape == g.shape for a, g in zip(arrays, self.groups, strict=True)) \
                or self._source != (dtype, tuple(a.dtype for a in arrays)):
            return self.from_theta(theta, dtype)
        flat = self._concatenate(arrays)
        self.require_finite(flat, "theta")
        return self, flat

    def flatten_like(self, value, what: str) -> np.ndarray:
        """Flatten ``value`` (structured like theta) into a new float64 vector."""
        if self.is_dict:
            if not isinstance(value, Mapping):
                raise InputError(f"{what} must be a dict with theta's keys, got {type(value).__name__}")
            missing = [g.name for g in self.groups if g.name not in value]
            extra = [k for k in value if k not in {g.name for g in self.groups}]
            if missing or extra:
                raise InputError(
                    f"{what}'s keys do not match theta's: missing {missing}, unexpected {extra}"
                )
            arrays = [_as_real_array(value[g.name], f"{what}[{g.name!r}]") for g in self.groups]
        else:
            if isinstance(value, Mapping):
                raise InputError(f"{what} is a dict but theta is an array")
            arrays = [_as_real_array(value, what)]
        for group, array in zip(self.groups, arrays, strict=True):
            if tuple(array.shape) != group.shape:
                label = f"{what}[{group.name!r}]" if self.is_dict else what
                raise InputError(f"{label} has shape {array.shape}, theta's is {group.shape}")
        flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
        self.require_finite(flat, what)
        return flat

    def _concatenate(self, arrays) -> np.ndarray:
        # np.concatenate always makes a new array: it is the working copy when dtypes match
        return np.concatenate([np.asarray(a).ravel() for a in arrays]).astype(self.dtype,
                                                                              copy=False)

    def require_finite(self, flat: np.ndarray, what: str) -> None:
        if math.isfinite(flat.sum()):  # one pass, no temporary: the usual case
            return
        bad = np.flatnonzero(~np.isfinite(flat))  # or a sum that overflowed: then none
        if bad.size:
            first = int(bad[0])
            raise InputError(
                f"{what} has {bad.size} non-finite value(s); first: {self.label(first)} = {flat[first]}"
            )

    # ------------------------------------------------------------------ views
    def structured(self, flat: np.ndarray):
        """``flat`` in theta's structure: views (no copy) into ``flat``."""
        if not self.is_dict:
            return flat.reshape(self.groups[0].shape)
        return {g.name: flat[g.offset : g.stop].reshape(g.shape) for g in self.groups}

    @property
    def array_shape(self) -> tuple[int, ...]:
        """Shape a compiled loss receives: theta's own shape, or flat for a dict."""
        return (self.size,) if self.is_dict else self.groups[0].shape

    # ------------------------------------------------------------------ naming
    def group_index(self, flat_index) -> np.ndarray:
        """Index into :attr:`groups` of each flat coordinate."""
        return np.searchsorted(self._offsets, flat_index, side="right") - 1

    def multi_index(self, flat_index: int) -> tuple[Group, tuple[int, ...]]:
        """The group of a flat coordinate and its index in the group's shape (C order)."""
        flat_index = int(flat_index)
        if not 0 <= flat_index < self.size:
            raise IndexError(f"flat index {flat_index} is out of range for {self.size} coordinates")
        group = self.groups[bisect.bisect_right(self._offset_list, flat_index) - 1]
        local, index = flat_index - group.offset, []
        for extent in reversed(group.shape):  # np.unravel_index, at a tenth of its cost
            local, position = divmod(local, extent)
            index.append(position)
        return group, tuple(reversed(index))

    def index_of(self, label: str) -> int:
        """The flat index of a label such as ``W2[3, 17]`` (inverse of :meth:`label`)."""
        name, _, rest = label.partition("[")
        name = name.strip()
        groups = {g.name: g for g in self.groups}
        if name not in groups or (rest and not rest.endswith("]")):
            raise InputError(f"no coordinate {label!r}: groups are {list(groups)}")
        group = groups[name]
        try:
            index = tuple(int(k) for k in rest[:-1].split(",")) if rest else ()
            local = int(np.ravel_multi_index(index, group.shape)) if group.shape else 0
        except ValueError:
            raise InputError(f"no coordinate {label!r} in {name} of shape {group.shape}") from None
        return group.offset + local

    def label(self, flat_index: int) -> str:
        """A coordinate's name: ``W2[3, 17]``, ``theta[5]``, or ``lr`` for a 0-d group."""
        return format_label(*self.multi_index(flat_index))


def format_label(group: Group, index: tuple[int, ...]) -> str:
    """``W2[3, 17]`` for group W2 and multi-index (3, 17); the bare name for a 0-d group."""
    return f"{group.name}[{', '.join(map(str, index))}]" if index else group.name


def _as_real_array(value, what: str) -> np.ndarray:
    """A gradient may be any real numeric array (ints allowed), but not complex or bool."""
    array = _as_array(value, what)
    if array.dtype == object or array.dtype == bool or array.dtype.kind in "USVMm":
        raise InputError(f"{what} must be a numeric array, got dtype {array.dtype}")
    if array.dtype.kind == "c":
        raise InputError(f"{what} is complex ({array.dtype}); fastgrad checks real gradients")
    return array
