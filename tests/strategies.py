"""Hypothesis strategies for tests/test_properties.py: theta structures, problems with a known
gradient, and sets of options.

A strategy draws a small description (a frozen dataclass whose repr is one line of Python) and
the test builds the arrays from it, so that a falsifying example prints as a reproducer, e.g.
``ThetaSpec(groups=(GroupSpec('W', (3, 2), 'float32', 'F', True),), is_dict=True, seed=7)``.

The problem is f(θ) = scale · Σ_i [w_i·sin(unit·θ_i) + c_i·unit·θ_i], whose gradient
g_i = scale·unit·(w_i·cos(unit·θ_i) + c_i) is known exactly and never small: |w_i| ≤ 0.5 and
1 ≤ |c_i| ≤ 2 give |g_i| ≥ 0.5·scale·unit, so a relative error of 1e-2 in g_i is an absolute
one of at least 5e-3·scale·unit. Its third derivative is nonzero (f''' = −scale·unit³·w·cos),
so the central difference has a truncation error to estimate, and f is analytic, so the
complex step applies. One Python function and one ``@njit`` function compute it; the data
(w, c, scale, unit, repeats) travel in ``args``, so that Numba compiles the njit loss once per
dtype and rank of θ, not once per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from hypothesis import strategies as st

#: Layouts of a group's array: C order, Fortran order, every other element of a wider array,
#: and a view with a negative stride along axis 0.
LAYOUTS = ("C", "F", "strided", "reversed")
DTYPES = ("float32", "float64")
#: Group names of a dict theta, in the order drawn.
NAMES = ("W", "b", "W2", "b2", "lr", "gamma")
#: Largest θ: a few hundred coordinates keep an example to milliseconds.
MAX_SIZE = 300
#: A float32 working vector makes a loss of |f| ~ F carry rounding u32·F/h ≈ 2.5e-5·F in each
#: central difference: a planted error of 5e-3 stands out of it only while F is small, hence
#: fewer coordinates when a group is float32 (|f| <= 6·n).
MAX_SIZE_FLOAT32 = 24


@dataclass(frozen=True)
class GroupSpec:
    """One group of theta: its name, shape, dtype, memory layout and writeability."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: str = "C"
    readonly: bool = False

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return (f"GroupSpec({self.name!r}, {self.shape!r}, {self.dtype!r}, {self.layout!r}, "
                f"{self.readonly!r})")


@dataclass(frozen=True)
class ThetaSpec:
    """theta: one array (``is_dict=False``, a single group) or a dict of groups; values drawn
    from ``seed``, magnitude · (uniform in ±[low, 2])."""

    groups: tuple[GroupSpec, ...]
    is_dict: bool
    seed: int
    low: float = 0.0
    magnitude: float = 1.0

    @property
    def size(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def float32(self) -> bool:
        """True when the working vector is float32 (every group is)."""
        return all(g.dtype == "float32" for g in self.groups)

    def build(self):
        """theta as the check receives it (fresh arrays on every call)."""
        rng = np.random.default_rng(self.seed)
        arrays = {}
        for group in self.groups:
            size = self.magnitude * rng.uniform(self.low, 2.0, group.shape)
            values = np.where(rng.random(group.shape) < 0.5, -size, size)
            arrays[group.name] = lay_out(np.asarray(values, dtype=group.dtype), group.layout,
                                         group.readonly)
        return arrays if self.is_dict else arrays[self.groups[0].name]

    def labels(self) -> list[str]:
        """Every coordinate's label, in flat (C) order: ``W[1, 0]``, ``theta[3]``, ``lr``."""
        out = []
        for group in self.groups:
            name = group.name if self.is_dict else "theta"
            for index in np.ndindex(*group.shape):
                out.append(f"{name}[{', '.join(map(str, index))}]" if index else name)
        return out


def lay_out(values: np.ndarray, layout: str, readonly: bool) -> np.ndarray:
    """An array equal to ``values`` with the given memory layout."""
    if values.ndim == 0 or layout == "C":
        array = np.array(values, order="C")
    elif layout == "F":
        array = np.asfortranarray(values)
    elif layout == "strided":
        wide = np.zeros((*values.shape[:-1], 2 * values.shape[-1]), dtype=values.dtype)
        wide[..., ::2] = values
        array = wide[..., ::2]
    else:  # "reversed": a view with a negative stride along axis 0
        array = values[::-1].copy()[::-1]
    if readonly:
        array.flags.writeable = False
    return array


def flat_values(theta) -> np.ndarray:
    """theta's values as one vector, groups concatenated in order (each in C order)."""
    if isinstance(theta, dict):
        return np.concatenate([np.ravel(v) for v in theta.values()])
    return np.ravel(theta)


# ----------------------------------------------------------------------------- the problem
def sine_loss(theta, w, c, scale, unit, repeats):
    """scale · Σ_i [w_i·sin(unit·θ_i) + c_i·unit·θ_i], on theta's structure (array or dict of
    arrays, real or complex), computed ``repeats`` times (to make the loss slow)."""
    x = unit * flat_values(theta)
    total = 0.0
    for _ in range(repeats):
        total = np.sum(w * np.sin(x) + c * x)
    return scale * total


@numba.njit(nogil=True)
def sine_loss_compiled(x, w, c, scale, unit, repeats):
    """:func:`sine_loss` of an array of any rank (a dict theta arrives as its flat vector)."""
    flat = x.reshape(x.size)
    total = 0.0 * flat[0]
    for _ in range(repeats):
        total = 0.0 * flat[0]
        for i in range(flat.size):
            total += w[i] * np.sin(unit * flat[i]) + c[i] * (unit * flat[i])
    return scale * total


@dataclass(frozen=True)
class Problem:
    """theta (from ``spec``), the data of :func:`sine_loss` (from ``spec.seed``), and which
    loss computes it: "numpy" (:func:`sine_loss`) or "numba" (:func:`sine_loss_compiled`)."""

    spec: ThetaSpec
    kind: str = "numpy"
    scale: float = 1.0
    unit: float = 1.0
    repeats: int = 1

    @property
    def loss(self):
        return sine_loss_compiled if self.kind == "numba" else sine_loss

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """(w, c): |w_i| <= 0.5, 1 <= |c_i| <= 2."""
        rng = np.random.default_rng([self.spec.seed, 1])
        n = self.spec.size
        w = rng.uniform(-0.5, 0.5, n)
        c = rng.uniform(1.0, 2.0, n) * np.where(rng.random(n) < 0.5, -1.0, 1.0)
        return w, c

    def args(self) -> tuple:
        w, c = self.data()
        return (w, c, float(self.scale), float(self.unit), np.int64(self.repeats))

    def gradient_flat(self, theta) -> np.ndarray:
        """The exact gradient at theta's values, as a float64 vector."""
        w, c = self.data()
        x = flat_values(theta).astype(np.float64)
        return self.scale * self.unit * (w * np.cos(self.unit * x) + c)

    def structured(self, flat: np.ndarray):
        """A float64 vector in theta's structure (fresh arrays)."""
        out, offset = {}, 0
        for group in self.spec.groups:
            out[group.name] = flat[offset:offset + group.size].reshape(group.shape).copy()
            offset += group.size
        return out if self.spec.is_dict else out[self.spec.groups[0].name]

    def gradient(self, theta, bug: int | None = None):
        """The gradient in theta's structure; with ``bug``, coordinate ``bug`` is off by a
        relative 1e-2."""
        flat = self.gradient_flat(theta)
        if bug is not None:
            flat[bug] += 1e-2 * abs(flat[bug])
        return self.structured(flat)


# ----------------------------------------------------------------------------- strategies
@st.composite
def group_specs(draw, name: str, max_size: int, ranks=(0, 1, 2, 3), dtypes=DTYPES,
                float32_size: int = MAX_SIZE_FLOAT32):
    """A group of rank in ``ranks`` and at most ``max_size`` elements (``float32_size`` if
    float32)."""
    rank = draw(st.sampled_from(ranks))
    dtype = draw(st.sampled_from(dtypes))
    limit = min(max_size, float32_size) if dtype == "float32" else max_size
    shape = []
    for axis in range(rank):
        room = limit // max(1, math.prod(shape))
        shape.append(draw(st.integers(1, max(1, min(room, 40 if axis == rank - 1 else 8)))))
    layout = "C" if rank == 0 else draw(st.sampled_from(LAYOUTS))
    return GroupSpec(name, tuple(shape), dtype, layout, draw(st.booleans()))


@st.composite
def theta_specs(draw, *, max_size: int = MAX_SIZE, ranks=(0, 1, 2, 3), dtypes=DTYPES,
                dicts: bool | None = None, low: float = 0.0, magnitude: float = 1.0):
    """theta: an array, or a dict of 1-6 groups, of at most ``max_size`` coordinates."""
    is_dict = draw(st.booleans()) if dicts is None else dicts
    count = draw(st.integers(1, len(NAMES))) if is_dict else 1
    groups, room = [], max_size
    for name in NAMES[:count]:
        share = max(1, room // (count - len(groups)))
        group = draw(group_specs(name, share, ranks, dtypes, max(1, MAX_SIZE_FLOAT32 // count)))
        groups.append(group)
        room = max(1, room - group.size)
    return ThetaSpec(tuple(groups), is_dict, draw(st.integers(0, 2**32 - 1)), low, magnitude)


def problems(kinds=("numpy", "numba"), **spec_options):
    """A :class:`Problem` of either kind. A compiled loss gets arrays of rank 1 or 2 (a dict
    arrives flat): each dtype and rank costs a Numba compilation of the loss and its kernel."""
    return st.sampled_from(kinds).flatmap(lambda kind: st.builds(
        Problem,
        theta_specs(**({"ranks": (1, 2)} if kind == "numba" else {}), **spec_options),
        st.just(kind)))


@dataclass(frozen=True)
class Counted:
    """A loss that counts its calls (thread-safe: ``calls`` is read after the check)."""

    loss: object
    calls: list

    def __call__(self, theta, *args):
        self.calls.append(1)  # list.append is atomic under the GIL
        return self.loss(theta, *args)


def counted(loss) -> Counted:
    return Counted(loss, [])


#: Seeds as a Python int (up to 128 bits) or a NumPy integer. Never None (fresh entropy): an
#: example must repeat itself for hypothesis to shrink it.
SEEDS = st.one_of(st.integers(0, 2**128), st.integers(0, 2**31).map(np.int64))


@st.composite
def check_options(draw, problem: Problem):
    """Valid options of fastgrad.check for ``problem``: every method, step, dtype, engine,
    worker count, sample form, detect, directions, seed and progress."""
    size = problem.spec.size
    options = {}
    method = draw(st.sampled_from(("central", "central4", "complex")))
    if method != "central":
        options["method"] = method
    dtype = draw(st.sampled_from((None, "float64", np.float64)))
    if dtype is not None:
        options["dtype"] = dtype
    # A step 1/4 to 4 times the default one, in float64: the rounding error σ/h (σ ≈ 1e-16·|f|)
    # then stays far below a planted 5e-3. In float32 the noise seen through θ's rounding is
    # σ ≈ 1e-6, and σ/h at a quarter of the default step is already of the planted error's
    # size: a check may then rightly call it inconclusive, so float32 keeps the default step.
    if method != "complex" and (dtype is not None or not problem.spec.float32) \
            and draw(st.booleans()):
        default = (float(np.cbrt(np.finfo(np.float64).eps)) if method == "central"
                   else float(np.finfo(np.float64).eps) ** 0.2)
        options["eps"] = default * draw(st.sampled_from((0.25, 0.5, 2.0, 4.0)))
    workers = draw(st.sampled_from((None, 1, 2)))
    if workers is not None:
        options["workers"] = workers
    engines = ("auto", "python", "numba") if problem.kind == "numba" else ("auto", "python")
    options["engine"] = draw(st.sampled_from(engines))
    form = draw(st.sampled_from(("all", "count", "fraction", "indices", "detect")))
    if form == "count":
        options["sample"] = draw(st.integers(1, size + 2))
    elif form == "fraction":
        options["sample"] = draw(st.sampled_from((0.1, 0.5, 1.0)))
    elif form == "indices":
        chosen = draw(st.sets(st.integers(0, size - 1), min_size=1, max_size=min(size, 20)))
        container = draw(st.sampled_from((list, tuple, np.array)))
        options["sample"] = container(sorted(chosen))
    elif form == "detect":
        options["detect"] = (draw(st.sampled_from((0.05, 0.3, 1.0))),
                             draw(st.sampled_from((0.01, 0.05, 0.2))))
    directions = draw(st.sampled_from((None, 1, 3)))
    if directions is not None:
        options["directions"] = directions
    if "sample" in options or "detect" in options or directions:
        options["seed"] = draw(SEEDS)
    if draw(st.booleans()):  # progress=True: see test_progress_true_is_a_progress_bar
        options["progress"] = ProgressRecord()
    return options


class ProgressRecord:
    """A progress callback that adds up what it is told."""

    def __init__(self):
        self.coordinates = 0
        self.evaluations = 0

    def __call__(self, coordinates: int, evaluations: int) -> None:
        self.coordinates += coordinates
        self.evaluations += evaluations

    def __repr__(self) -> str:
        return "ProgressRecord()"
