"""The compiled engine: a Numba chunk kernel that calls a Numba-compiled loss.

The kernel is serial and releases the GIL (``nogil=True``); the thread executor
runs one per core, each on its own copy of θ.  Each loss gets its own kernel
(:func:`chunk_kernel`), which calls it as a compile-time constant: a kernel that
took the loss as an argument would be compiled per loss all the same (the
argument's type is the loss), and every call would pay for typing that argument
(6 µs, 30 µs when the caches are cold: as much as a small batch).  Numba compiles
a kernel once per loss and argument types in a process (one that calls a given
function cannot be cached on disk), and the loss's own ``cache=True`` still applies.
"""

from __future__ import annotations

import inspect
import os
import weakref

import numba
import numpy as np
from numba.core.dispatcher import Dispatcher

from ..parameters import ParameterLayout
from .base import Evaluator, Workspace

#: loss -> its chunk kernel, for as long as the loss lives.
_kernels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: Functions that Numba's ``jit``/``njit`` returned as they were (``NUMBA_DISABLE_JIT=1``).
_jitted_as_python: weakref.WeakSet = weakref.WeakSet()


def is_compiled(loss) -> bool:
    """True for a Numba ``@njit`` dispatcher, and, with ``NUMBA_DISABLE_JIT=1``, for a
    function given to ``numba.jit``/``njit`` since fastgrad was imported (which Numba then
    returns unchanged)."""
    if isinstance(loss, Dispatcher):
        return True
    return inspect.isfunction(loss) and loss in _jitted_as_python


def _record_jit_decorations() -> None:
    """With ``NUMBA_DISABLE_JIT=1``, wrap Numba's decorator factory
    (``numba.core.decorators._jit``, behind ``jit`` and ``njit``) so that every function it
    returns unchanged joins :data:`_jitted_as_python`; what it returns is left as is.
    Nothing is wrapped when the JIT is on, or when Numba has no such factory."""
    from numba.core import decorators

    make_decorator = getattr(decorators, "_jit", None)
    if not getattr(numba.config, "DISABLE_JIT", False) or make_decorator is None \
            or make_decorator in _recording_factories:
        return

    def recording_jit(*args, **kwargs):
        decorate = make_decorator(*args, **kwargs)

        def decorate_and_record(function):
            decorated = decorate(function)
            if decorated is function:
                _jitted_as_python.add(function)
            return decorated
        return decorate_and_record

    _recording_factories.add(recording_jit)
    setattr(decorators, "_jit", recording_jit)  # noqa: B010 -- a private name mypy cannot see


#: The factories installed by :func:`_record_jit_decorations` (so that none is wrapped twice).
_recording_factories: weakref.WeakSet = weakref.WeakSet()

_record_jit_decorations()


def chunk_kernel(loss):
    """``kernel(flat, shape, coords, values, out, start, stop, cursor, args)`` for ``loss``:
    out[j, q] = loss(θ with θ[coords[j]] = values[j, q]) for start <= j < stop.

    ``flat`` is the worker's copy of θ, perturbed in place and restored; the loss
    sees it reshaped to ``shape``.  ``cursor`` holds the (row, point) in progress so that
    an exception can be traced to its coordinate.  Made once per loss.
    """
    kernel = _kernels.get(loss)
    if kernel is None:
        kernel = _kernels[loss] = _make_chunk_kernel(loss)
    return kernel


def _make_chunk_kernel(loss):
    @numba.njit(nogil=True)
    def evaluate_chunk(flat, shape, coords, values, out, start, stop, cursor, args):
        view = flat.reshape(shape)
        for j in range(start, stop):
            cursor[0] = j
            i = coords[j]
            saved = flat[i]
            for q in range(values.shape[1]):
                cursor[1] = q
                flat[i] = values[j, q]
                out[j, q] = loss(view, *args)
            flat[i] = saved

    return evaluate_chunk


class CompiledEvaluator(Evaluator):
    """Evaluates a Numba loss ``loss(theta, *args)`` through its :func:`chunk_kernel`.

    The loss receives theta's own shape for an array theta, and the flat vector for
    a dict theta.
    """

    name = "numba"

    def __init__(self, loss, theta: np.ndarray, args: tuple, layout: ParameterLayout):
        super().__init__(loss, theta, args)
        self.shape = layout.array_shape
        self.kernel = chunk_kernel(loss)

    def __getstate__(self) -> dict:
        """Pickled without its kernel (a closure over the loss): rebuilt on unpickling, and
        compiled once per process by :func:`chunk_kernel`."""
        state = self.__dict__.copy()
        del state["kernel"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.kernel = chunk_kernel(self.loss)

    @property
    def default_workers(self) -> int:
        return available_cores()

    def view(self, flat: np.ndarray):
        return flat.reshape(self.shape)

    def evaluate_chunk(self, workspace: Workspace, coords, values, out, start, stop) -> None:
        self.kernel(workspace.flat, self.shape, coords, values, out, start, stop,
                    workspace.cursor, self.args)


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
