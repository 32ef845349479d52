"""Every option of every entry point, checked once, before any evaluation.

Each function takes what the user passed and returns it in the form the pipeline uses, or
raises :class:`~fastgrad.errors.InputError` saying what was wrong and what would do.  Integer
options never accept a bool (``True`` is an ``int`` in Python, and ``every=True`` is a slip).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np

from .errors import InputError
from .methods import CENTRAL, METHODS, Method, finite_differences


def is_integer(value) -> bool:
    """An int or NumPy integer, and not a bool."""
    return isinstance(value, (Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (1: a positive integer; 0: non-negative)."""
    if not is_integer(value) or value < minimum:
        kind = "a positive" if minimum == 1 else f"an integer >= {minimum}:"
        raise InputError(f"{name} must be {kind} integer, got {value!r}")
    return int(value)


def optional_positive_int(name: str, value, *, minimum: int = 1) -> int | None:
    return None if value is None else positive_int(name, value, minimum=minimum)


def seed(value) -> int | None:
    """None (fresh entropy) or a non-negative integer."""
    if value is None:
        return None
    if not is_integer(value) or value < 0:
        raise InputError(f"seed must be None or a non-negative integer, got {value!r}")
    return int(value)


def dtype(value) -> np.dtype | None:
    """None (theta's own precision), or float32/float64 in any spelling NumPy accepts."""
    if value is None:
        return None
    try:
        resolved = np.dtype(value)
    except (TypeError, ValueError):
        resolved = None
    if resolved is None or resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InputError(f"dtype must be None, 'float32' or 'float64', got {value!r}")
    return resolved


def args(value) -> tuple:
    """The extra positional arguments, as a tuple (a list is accepted)."""
    if isinstance(value, tuple):
        return value
    if isinstance(value, list):
        return tuple(value)
    hint = ""
    if isinstance(value, np.ndarray) or not isinstance(value, (str, bytes, Mapping)):
        hint = "; for a single argument write args=(x,), with the trailing comma"
    raise InputError(f"args must be a tuple of extra loss arguments, got "
                     f"{type(value).__name__}{hint}")


def kwargs(value) -> dict:
    """The keyword arguments of loss and grad, as a dict with string keys."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InputError(f"kwargs must be a dict of keyword arguments with string keys, got "
                         f"{type(value).__name__}")
    return dict(value)


def progress(value) -> Callable[[int, int], None] | bool | None:
    """None or False (no progress), True (a bar on stderr), or ``callable(coordinates, evaluations)``."""
    if value is None or value is False:
        return None
    if value is True or callable(value):
        return value
    raise InputError(f"progress must be True, False, None or a callable "
                     f"progress(coordinates, evaluations), got {value!r}")


def flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def sample(value):
    """None, a positive int, a fraction in (0, 1], or a 1-D sequence of flat indices."""
    if value is None or isinstance(value, (np.ndarray, list, tuple)):
        return value  # indices are checked against theta's size by the sampler
    if is_integer(value):
        return positive_int("sample", value)
    if isinstance(value, Real) and not isinstance(value, (bool, np.bool_)) \
            and 0.0 < float(value) <= 1.0:
        return float(value)
    raise InputError(f"sample must be a positive int, a fraction in (0, 1] or an array of "
                     f"flat indices, got {value!r}")


def detect(value) -> tuple[float, float] | None:
    """None or a pair (p, alpha) with 0 < p <= 1 and 0 < alpha < 1."""
    if value is None:
        return None
    try:
        fraction, alpha = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"detect must be a pair (p, alpha), got {value!r}") from None
    if not (0.0 < fraction <= 1.0 and 0.0 < alpha < 1.0):
        raise InputError(f"detect=(p, alpha) needs 0 < p <= 1 and 0 < alpha < 1, got {value!r}")
    return fraction, alpha


def relative_steps(value) -> np.ndarray:
    """A non-empty 1-D sequence of relative steps, each in (0, 1), as float64."""
    try:
        steps = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        steps = None
    if steps is None or steps.ndim != 1 or steps.size == 0 \
            or not np.all((steps > 0.0) & (steps < 1.0)):
        raise InputError(f"steps must be a non-empty 1-D sequence of relative steps in (0, 1), "
                         f"got {value!r}")
    return steps


def sequence(name: str, value) -> list:
    """A non-empty list, tuple or 1-D array, as a list (a bare string or number is refused)."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"{name} must be a non-empty list, got {value!r}")
    return list(value)


def method(value, *, finite_difference: bool = False) -> Method:
    """The registered method called ``value`` (:data:`fastgrad.methods.METHODS`; a Method
    is returned as is); ``finite_difference``: one that differences real points."""
    if isinstance(value, Method):
        return value
    names = finite_differences() if finite_difference else tuple(METHODS)
    if not isinstance(value, str) or value not in names:
        raise InputError(f"method must be one of {names}, got {value!r}")
    return METHODS[value]


def eps(value) -> float:
    """A relative step h0 in (0, 1)."""
    try:
        step = float(value)
    except (TypeError, ValueError):
        raise InputError(f"eps must be a positive number, got {value!r}") from None
    if isinstance(value, (bool, np.bool_)) or not (np.isfinite(step) and 0.0 < step < 1.0):
        raise InputError(f"eps must be a number in (0, 1), got {value!r}")
    return step


def jitter(value) -> float:
    """A relative distance in (0, 1]."""
    try:
        distance = float(value)
    except (TypeError, ValueError):
        raise InputError(f"jitter must be a relative distance in (0, 1], got {value!r}") from None
    if isinstance(value, (bool, np.bool_)) or not (np.isfinite(distance) and 0.0 < distance <= 1.0):
        raise InputError(f"jitter must be a relative distance in (0, 1], got {value!r}")
    return distance


def engine(value) -> str:
    """One of :data:`fastgrad.engine.ENGINES`."""
    from .engine import ENGINES

    if not isinstance(value, str) or value not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}, got {value!r}")
    return value


#: The executors named by a string (see :func:`fastgrad.engine.executor_for`).
EXECUTORS = ("threads", "processes", "serial")


def executor(value, workers) -> tuple[object, int | None]:
    """(executor, workers) as the engine takes them: ``value`` None (the default), one of
    :data:`EXECUTORS`, a :class:`fastgrad.engine.Executor`, a ``concurrent.futures.Executor``
    or a ``distributed.Client``; ``workers`` None, a positive int, or a map-like callable
    (``workers=pool.map``, which becomes the executor)."""
    import concurrent.futures

    from .engine import Executor

    if callable(workers) and not is_integer(workers):
        if value is not None:
            raise InputError("give executor= or a map-like workers= (such as pool.map), not both")
        return workers, None
    count = optional_positive_int("workers", workers)
    if value is None or (isinstance(value, str) and value in EXECUTORS):
        if value == "serial" and count is not None and count > 1:
            raise InputError(f"executor='serial' runs on one worker, got workers={count}")
        return value, count
    if isinstance(value, (Executor, concurrent.futures.Executor)) or is_dask_client(value):
        if count is not None:
            raise InputError("workers= cannot be given with an executor object: its workers are its own")
        return value, None
    raise InputError(f"executor must be None, one of {EXECUTORS}, a fastgrad Executor, a "
                     f"concurrent.futures.Executor or a dask.distributed Client, got {value!r}")


def is_dask_client(value) -> bool:
    """Whether ``value`` is a ``distributed.Client``, told without importing dask."""
    return type(value).__module__.partition(".")[0] == "distributed" and all(
        callable(getattr(value, name, None)) for name in ("scatter", "submit", "nthreads"))


def sample_indices(value, size: int) -> np.ndarray:
    """Flat indices given as the sample: distinct, in [0, size), as sorted int64."""
    array = np.asarray(value)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
        raise InputError("sample given as coordinates must be a non-empty 1-D array of ints")
    ordered = np.sort(array).astype(np.int64, copy=False)
    if ordered[0] < 0 or ordered[-1] >= size or not (ordered[1:] != ordered[:-1]).all():
        raise InputError(f"sample coordinates must be distinct flat indices in [0, {size})")
    return ordered


def coordinate(layout, value) -> int:
    """A flat index of ``layout``, given as one or as a label like ``"W1[0, 3]"``."""
    if is_integer(value):
        if not 0 <= value < layout.size:
            raise InputError(f"coordinate {value} is outside [0, {layout.size})")
        return int(value)
    if isinstance(value, str):
        return layout.index_of(value)
    raise InputError(f"coordinates are flat indices or labels like 'W1[0, 3]', got {value!r}")


def on_fail(value):
    """'warn', 'raise' or a callable receiving the report."""
    if not (isinstance(value, str) and value in ("warn", "raise")) and not callable(value):
        raise InputError(f"on_fail must be 'warn', 'raise' or a callable, got {value!r}")
    return value


def known_options(options: Mapping, known: tuple[str, ...], owner: str) -> None:
    """InputError naming the options not in ``known``."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(f"{owner} got unexpected option(s) {unknown}: it passes only "
                         f"{list(known)} to each check")


def callable_of(name: str, value) -> Callable:
    if not callable(value):
        raise InputError(f"{name} must be callable, got {type(value).__name__}")
    return value


def bind_keywords(loss: Callable, grad, positional: tuple, keywords: dict, compiled: bool):
    """(loss, grad, args) such that ``loss(theta, *args)`` is the user's
    ``loss(theta, *positional, **keywords)``, and likewise a callable grad.

    A Python loss and a callable grad are wrapped; a compiled (Numba) loss, which a chunk
    kernel can only call positionally, gets the keywords in their positions of its signature.
    """
    if not keywords:
        return loss, grad, positional
    if callable(grad) and not isinstance(grad, (np.ndarray, Mapping)):
        user_grad = grad

        def grad(theta, *_):
            return user_grad(theta, *positional, **keywords)
    if compiled:
        return loss, grad, _in_positions(loss, positional, keywords)

    def keyword_loss(theta, *_):
        return loss(theta, *positional, **keywords)
    return keyword_loss, grad, positional


def _in_positions(function: Any, positional: tuple, keywords: dict) -> tuple:
    """A compiled function's extra arguments with ``keywords`` placed by its signature.

    ``function`` is a Numba dispatcher (its signature is its ``py_func``'s, reached through
    ``__wrapped__``) or, with ``NUMBA_DISABLE_JIT=1``, the Python function itself.
    """
    signature = inspect.signature(function)
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in signature.parameters.values()):
        raise InputError("kwargs= cannot be given to a compiled loss with *args or **kwargs: "
                         "pass them in args")
    try:
        bound = signature.bind(None, *positional, **keywords)
    except TypeError as error:
        raise InputError(f"kwargs do not fit the compiled loss's signature: {error}") from None
    bound.apply_defaults()
    return tuple(bound.args[1:])


@dataclass(frozen=True)
class CheckOptions:
    """The options of a check, validated and in the form the pipeline uses."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    method: Method = CENTRAL
    eps: float | None = None
    dtype: np.dtype | None = None
    workers: int | None = None
    engine: str = "auto"
    executor: object = None  # None, a name in EXECUTORS, an executor or a map-like callable
    sample: object = None
    detect: tuple[float, float] | None = None
    directions: int = 0
    seed: int | None = None
    progress: Callable[[int, int], None] | bool | None = None
    #: the machine epsilon of the precision the gradient was computed in, where its arrays do
    #: not show it (a bfloat16 gradient held in float64); None: its arrays' dtypes say
    gradient_eps: float | None = None


def check_options(loss, *, args=(), kwargs=None, method="central", eps=None, dtype=None,
                  workers=None, engine="auto", sample=None, detect=None, directions=None,
                  seed=None, progress=None, executor=None, gradient_eps=None,
                  directions_minimum: int = 1) -> CheckOptions:
    """Every option of :func:`fastgrad.check` (and of the entry points built on it), checked
    before any work; ``directions`` None becomes 0 (none)."""
    callable_of("loss", loss)
    if sample is not None and detect is not None:
        raise InputError("give sample= or detect=, not both")
    this = sys.modules[__name__]  # the validators, which the parameters' names shadow
    executor, workers = this.executor(executor, workers)
    return CheckOptions(
        args=this.args(args), kwargs=this.kwargs(kwargs), method=this.method(method),
        eps=None if eps is None else this.eps(eps), dtype=this.dtype(dtype),
        workers=workers, engine=this.engine(engine), executor=executor,
        sample=this.sample(sample), detect=this.detect(detect),
        directions=optional_positive_int("directions", directions,
                                         minimum=directions_minimum) or 0,
        seed=this.seed(seed), progress=this.progress(progress),
        gradient_eps=None if gradient_eps is None else this.eps(gradient_eps))
