"""A JAX function as fastgrad's checks see it: ``fun(x) -> outputs`` on a dict x of float64
NumPy arrays, its derivative rules by ``jax.vjp`` and ``jax.jvp``, and ⟨u, fun(x)⟩ evaluated
on a whole chunk of perturbed points in one ``jax.jit(jax.vmap(...))`` call.

Inputs: every float leaf of ``fun``'s args and kwargs, named ``input0``, ``input1`` … by
position and by its keyword otherwise, a pytree's leaves by their path (``input0['W']``,
``input1[2]``); other leaves (integers, booleans) are held fixed.  Outputs: one array, or a
dict of ``fun``'s output leaves named by their path (``out['loss']``, ``out[1]``).
Every JAX call runs inside ``jax.enable_x64(True)`` (thread-local): float64 for the check,
the user's global setting untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.base import Evaluator, Workspace
from ..errors import InputError, LossError, describe
from ..parameters import ParameterLayout

#: The output's group name in labels when fun returns a single array.
OUTPUT = "out"
#: Batch sizes the vmapped function is compiled for; a chunk's points are padded up to the
#: next one (with θ itself), so that jit compiles at most len(BATCH_SIZES) shapes.
BATCH_SIZES = (8, 64, 512)
#: Cap on one batch's perturbed points, in bytes (B·n float64 values): the batch is cut to
#: stay below it (the function's own intermediates scale with B too).
BATCH_BYTES = 64 * 2 ** 20


#: What jax.jit raises for a function it cannot trace (Python control flow or conversions
#: on traced values): such a fun is evaluated eagerly.
UNTRACEABLE = (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError)


def x64():
    """float64 inside the block only: ``jax.enable_x64(True)`` (thread-local), or
    ``jax.experimental.enable_x64()`` on JAX releases without it."""
    scoped = getattr(jax, "enable_x64", None)
    if scoped is not None:
        return scoped(True)
    from jax.experimental import enable_x64  # type: ignore[attr-defined, unused-ignore]  # older JAX

    return enable_x64()


def _name(root: str, path: tuple) -> str:
    return root + jax.tree_util.keystr(path)


@dataclass(frozen=True)
class Inputs:
    """fun's args and kwargs as one pytree's leaves, and which of them are x's arrays."""

    tree: object  # the treedef of (args, kwargs)
    leaves: list
    names: dict[int, str]  # leaf index -> input name, for the float leaves (x's groups)
    precisions: set[str]  # the float dtypes given, e.g. {"float32"}

    @classmethod
    def of(cls, args: tuple, kwargs: dict) -> Inputs:
        flat, tree = jax.tree_util.tree_flatten_with_path((tuple(args), dict(kwargs)))
        names, precisions = {}, set()
        for index, (path, leaf) in enumerate(flat):
            dtype = np.result_type(leaf) if isinstance(leaf, (float, np.ndarray, jax.Array, np.generic)) \
                else None
            if dtype is None or dtype.kind not in "fc":
                continue
            first, rest = path[0], path[1:]  # (args, kwargs) index, then the argument
            argument = rest[0]
            root = f"input{argument.idx}" if first.idx == 0 else str(argument.key)
            names[index] = _name(root, rest[1:])
            if dtype.kind == "c":
                raise InputError(f"{names[index]} is complex ({dtype}); fastgrad.jax checks "
                                 "real inputs")
            precisions.add(str(dtype))
        if not names:
            raise InputError("fun's arguments have no float array (or float pytree leaf) to "
                             "differentiate")
        return cls(tree, [leaf for _, leaf in flat], names, precisions)

    def x(self) -> dict[str, np.ndarray]:
        """The inputs as float64 NumPy arrays: the point of the check."""
        return {name: np.array(self.leaves[i], dtype=np.float64) for i, name in self.names.items()}

    def call(self, fun: Callable, arrays):
        """fun(*args, **kwargs) with x's leaves replaced by ``arrays`` (in x's order)."""
        leaves = list(self.leaves)
        for index, array in zip(self.names, arrays, strict=True):
            leaves[index] = array
        args, kwargs = jax.tree_util.tree_unflatten(self.tree, leaves)
        return fun(*args, **kwargs)


class JaxFunction:
    """``fun`` on x (a dict of arrays, or the flat vector inside JAX), with its products.

    ``__call__(x)`` gives fun's outputs as NumPy (one array or a dict, see the module
    docstring); :meth:`vjp` and :meth:`jvp` are the linearized forms that
    :func:`fastgrad.check_vjp` and :func:`fastgrad.check_jvp` take;
    :meth:`fastgrad_inner_product` is the scalar loss L_u(x) = ⟨u, fun(x)⟩ that check_vjp
    checks, which evaluates chunks of points with ``jax.vmap`` (:class:`JaxEvaluator`).
    """

    def __init__(self, fun: Callable, inputs: Inputs):
        self.fun = fun
        self.inputs = inputs
        self.layout, self.x = ParameterLayout.from_theta(inputs.x())
        self.evaluations = Evaluations()
        structure = self._output_structure()
        self.output_names = [OUTPUT] if len(structure) == 1 and not structure[0][0] \
            else [_name(OUTPUT, path) for path, _ in structure]
        self.output_shapes = [tuple(shape.shape) for _, shape in structure]
        for name, (_, shape) in zip(self.output_names, structure, strict=True):
            if np.dtype(shape.dtype).kind != "f":
                raise InputError(f"fun's output {name} has dtype {shape.dtype}: fastgrad.jax checks "
                                 "float outputs")
        eager = self.evaluations.calls == "eager"
        self._single = self._flat_outputs if eager else jax.jit(self._flat_outputs)
        self._inner = self._inner_at if eager else jax.jit(self._inner_at)
        self._batch = jax.jit(jax.vmap(self._inner_moved, in_axes=(None, 0, 0, None)))
        self._compiled: set[int] = set()  # batch sizes _batch has run at

    def _output_structure(self) -> list:
        """(path, shape and dtype) of each output leaf, by tracing fun (``jax.eval_shape``);
        a fun that jax.jit cannot trace (Python control flow on values) is called instead,
        and runs eagerly from then on, one call per point (:class:`Evaluations` says why)."""
        with x64():
            arrays = self._arrays(jnp.asarray(self.x))
        try:
            try:
                with x64():
                    return jax.tree_util.tree_flatten_with_path(jax.eval_shape(
                        lambda *a: self.inputs.call(self.fun, a), *arrays))[0]
            except UNTRACEABLE as error:
                self.evaluations.calls = "eager"
                self.evaluations.vmap_failure = (f"jax.jit cannot trace fun, {type(error).__name__}: "
                                                 f"{describe(error).splitlines()[0][:160]}")
                with x64():
                    return jax.tree_util.tree_flatten_with_path(self.inputs.call(self.fun, arrays))[0]
        except Exception as error:
            raise LossError(f"fun raised {type(error).__name__} at its arguments: "
                            f"{describe(error)}") from error

    # ------------------------------------------------------------ inside JAX
    def _arrays(self, flat):
        """x's arrays (in x's order) from its flat vector."""
        return [flat[g.offset:g.stop].reshape(g.shape) for g in self.layout.groups]

    def _outputs(self, *arrays) -> list:
        """fun's output leaves at x's ``arrays``, in the output's flattening order."""
        return jax.tree_util.tree_leaves(self.inputs.call(self.fun, arrays))

    def _flat_outputs(self, flat):
        return self._outputs(*self._arrays(flat))

    def _inner_at(self, flat, u):
        return jnp.vdot(u, jnp.concatenate([jnp.ravel(leaf) for leaf in self._flat_outputs(flat)]))

    def _inner_moved(self, theta, coordinate, value, u):
        """⟨u, fun(θ with θ[coordinate] = value)⟩: the point is made on the device."""
        return self._inner_at(theta.at[coordinate].set(value), u)

    # ------------------------------------------------------------ NumPy in and out
    def structured(self, leaves) -> np.ndarray | dict[str, np.ndarray]:
        """fun's output leaves as NumPy: one array, or a dict named by their paths."""
        arrays = [np.asarray(leaf, dtype=np.float64) for leaf in leaves]
        return arrays[0] if self.output_names == [OUTPUT] else dict(zip(self.output_names, arrays,
                                                                         strict=True))

    def output_leaves(self, value) -> tuple:
        """A value in the output's structure (a cotangent u) as a tuple of its leaves."""
        arrays = [value[name] for name in self.output_names] if isinstance(value, Mapping) else [value]
        return tuple(jnp.asarray(np.asarray(a, dtype=np.float64).reshape(shape))
                     for a, shape in zip(arrays, self.output_shapes, strict=True))

    def input_arrays(self, x: Mapping) -> list:
        return [jnp.asarray(np.asarray(x[g.name], dtype=np.float64)) for g in self.layout.groups]

    def flat(self, x: Mapping) -> np.ndarray:
        return np.concatenate([np.asarray(x[g.name], dtype=np.float64).ravel()
                               for g in self.layout.groups])

    def __call__(self, x: Mapping):
        """fun(x) as NumPy (one jitted call)."""
        with x64():
            return self.structured(self._single(self.flat(x)))

    def vjp(self, x: Mapping):
        """(fun(x), u ↦ Jᵀu in x's structure) by ``jax.vjp``: check_vjp's ``linearized`` form."""
        with x64():
            value, pull = jax.vjp(self._outputs, *self.input_arrays(x))

        def pullback(u):
            with x64():
                grads = pull(list(self.output_leaves(u)))
            return {g.name: np.asarray(grad, dtype=np.float64)
                    for g, grad in zip(self.layout.groups, grads, strict=True)}
        return self.structured(value), pullback

    def jvp(self, x: Mapping):
        """(fun(x), v ↦ J·v in the output's structure) by ``jax.jvp``: check_jvp's
        ``linearized`` form.  Raises what ``jax.jvp`` raises where forward mode is undefined
        (a ``jax.custom_vjp`` function)."""
        primals = self.input_arrays(x)

        def push(v):
            with x64():
                return self.structured(jax.jvp(self._outputs, primals, self.input_arrays(v))[1])
        with x64():
            value = self.structured(jax.jvp(self._outputs, primals,
                                            [jnp.zeros_like(p) for p in primals])[0])
        return value, push

    def fastgrad_inner_product(self, u: np.ndarray) -> InnerProduct:
        """L_u(x) = ⟨u, fun(x)⟩ for a flat cotangent u (the seam check_vjp looks for)."""
        return InnerProduct(self, u)

    # ------------------------------------------------------------ batches
    def inner_batch(self, theta, coords: np.ndarray, values: np.ndarray, u: np.ndarray) -> np.ndarray:
        """⟨u, fun(θ with θ[coords[k]] = values[k])⟩ for each k, by the jitted vmapped
        function on ``theta`` (a device array): only the coordinates and values travel.
        Batches are cut to :func:`batch_points` and padded up to :data:`BATCH_SIZES` (with
        θ itself), so that jit compiles a few shapes only; a batch of a shape already
        compiled is timed (:class:`Evaluations`)."""
        count = coords.size
        largest = batch_points(self.layout.size)
        sizes = [b for b in BATCH_SIZES if b < largest] + [largest]
        results = np.empty(count)
        with x64():
            for start in range(0, count, largest):
                part, moved = coords[start:start + largest], values[start:start + largest]
                taken = part.size
                padded = next(b for b in sizes if b >= taken)
                if padded > taken:  # θ itself: coordinate 0 at its own value
                    part = np.concatenate([part, np.zeros(padded - taken, dtype=part.dtype)])
                    moved = np.concatenate([moved, np.full(padded - taken, float(theta[0]))])
                started = time.perf_counter()
                results[start:start + taken] = np.asarray(self._batch(theta, part, moved, u))[:taken]
                if padded in self._compiled:
                    self.evaluations.timed_batch(time.perf_counter() - started, taken)
                self._compiled.add(padded)
        self.evaluations.batched += count
        return results

    def inner_single(self, point: np.ndarray, u: np.ndarray) -> float:
        started = time.perf_counter()
        with x64():
            value = float(self._inner(point, u))
        self.evaluations.timed_single(time.perf_counter() - started)
        return value


@dataclass
class Evaluations:
    """How the perturbed points were evaluated: in vmapped batches or one jitted call each,
    and why vmap was given up (None: it was not).

    Batches pay when a point costs less in them than in a call of its own: the fastest time
    per point of a batch already compiled, against the fastest single call (the fastest of
    several is the one least disturbed by the rest of the machine).  On a CPU a function
    whose batch is B copies of a large θ (and, for a matrix input, B different matrices)
    can cost more per point batched than alone; on a GPU batches are what pays.
    """

    batched: int = 0
    single: int = 0
    vmap_failure: str | None = None
    calls: str = "jitted"  # the single calls: "jitted", or "eager" for a fun jit cannot trace
    batch_seconds: float = math.inf  # per point, fastest warm batch
    single_seconds: float = math.inf  # fastest single call

    def timed_batch(self, seconds: float, points: int) -> None:
        self.batch_seconds = min(self.batch_seconds, seconds / points)

    def timed_single(self, seconds: float) -> None:
        self.single += 1
        self.single_seconds = min(self.single_seconds, seconds)

    @property
    def batching(self) -> bool:
        """Whether the next chunk goes to a vmapped batch."""
        return self.vmap_failure is None and (math.isinf(self.batch_seconds)
                                              or self.batch_seconds <= self.single_seconds)

    def note(self) -> str:
        if self.vmap_failure is not None:
            return (f"evaluations: no batch ({self.vmap_failure}); one {self.calls} call per "
                    f"point instead ({self.single:,} calls, {self.batched:,} points batched before)")
        if not self.batched:
            return f"evaluations: one {self.calls} call per point ({self.single:,} calls), no batch"
        timing = "" if math.isinf(self.batch_seconds) else (
            f"; {1e6 * self.batch_seconds:.3g} µs per point batched, {1e6 * self.single_seconds:.3g} µs "
            "per single call" + (": single calls from then on" if not self.batching else ""))
        return (f"evaluations: {self.batched:,} perturbed points in jax.vmap batches under "
                f"jax.jit (padded to {', '.join(map(str, BATCH_SIZES))} points), "
                f"{self.single:,} single jitted calls{timing}")


class InnerProduct:
    """The scalar loss L_u(x) = ⟨u, fun(x)⟩ of :func:`fastgrad.check_vjp`, called with x's
    dict; ``fastgrad_evaluator`` gives fastgrad's engine its batched evaluator."""

    def __init__(self, function: JaxFunction, u: np.ndarray):
        self.function = function
        self.u = np.asarray(u, dtype=np.float64)

    def __call__(self, x: Mapping) -> float:
        return self.function.inner_single(self.function.flat(x), self.u)

    def fastgrad_evaluator(self, theta: np.ndarray, args: tuple, layout: ParameterLayout) -> JaxEvaluator:
        return JaxEvaluator(self, theta, args, layout)


class JaxEvaluator(Evaluator):
    """Evaluates a chunk's rows (θ with θ[coords[j]] = values[j, q]) as one batch of points
    by ``jax.vmap`` under ``jax.jit``; if vmap fails (a function that cannot be batched),
    one jitted call per point from then on, as :class:`Evaluations` records.  It stays in
    this process and thread (XLA runs its own threads): it does not pickle."""

    def __init__(self, loss: InnerProduct, theta: np.ndarray, args: tuple, layout: ParameterLayout):
        super().__init__(loss, theta, args)
        self.layout = layout
        self.inner = loss
        self._device_theta: jax.Array | None = None

    def on_device(self):
        """θ as a float64 JAX array on the default device, made once."""
        if self._device_theta is None:
            with x64():
                self._device_theta = jnp.asarray(self.theta, dtype=jnp.float64)
        return self._device_theta

    @property
    def name(self) -> str:  # type: ignore[override]
        return "jax.vmap" if self.inner.function.evaluations.batching else "jax"

    @property
    def default_workers(self) -> int:
        return 1

    def view(self, flat: np.ndarray):
        return self.layout.structured(flat)

    def __reduce__(self):
        raise TypeError("a JAX evaluator runs in the process that traced it")

    def evaluate_chunk(self, workspace: Workspace, coords, values, out, start, stop) -> None:
        function, u = self.inner.function, self.inner.u
        points = values.shape[1]
        if function.evaluations.batching:
            workspace.cursor[:] = (start, 0)
            try:
                out[start:stop] = function.inner_batch(
                    self.on_device(), np.repeat(coords[start:stop], points),
                    values[start:stop].ravel(), u).reshape(stop - start, points)
                return
            except Exception as error:  # not batchable: one call per point (its errors are the loss's)
                function.evaluations.vmap_failure = \
                    f"jax.vmap failed, {type(error).__name__}: {describe(error)[:200]}"
        flat, cursor = workspace.flat, workspace.cursor
        for j in range(start, stop):
            cursor[0] = j
            i = coords[j]
            try:
                for q in range(points):
                    cursor[1] = q
                    flat[i] = values[j, q]
                    out[j, q] = function.inner_single(flat, u)
            finally:
                flat[i] = self.theta[i]


def batch_points(size: int) -> int:
    """The largest batch for x of ``size`` values (:data:`BATCH_BYTES`, :data:`BATCH_SIZES`)."""
    return max(1, min(BATCH_SIZES[-1], BATCH_BYTES // (8 * max(size, 1))))
