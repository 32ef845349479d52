"""A scalar built from torch calls, evaluated at batches of perturbed points on its device.

fastgrad's engine asks an :class:`~fastgrad.engine.base.Evaluator` for f(θ with θ[i] = v)
over chunks of rows (coordinate i, values v).  :class:`TorchEvaluator` builds a chunk's
points as one (B, n) tensor on the scalar's device (θ's flat tensor expanded and copied,
then one ``index_put_`` of the steps) and evaluates them with one ``torch.func.vmap`` call;
only the B float64 results come back to NumPy.  Where vmap fails on the function
(data-dependent control flow, ``.item()``, in-place writes to an input, random ops), or
gives other values than single calls, it evaluates one point per call instead; the report's
notes say which ran.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod

import numpy as np
import torch

from ..engine.base import Evaluator, Workspace
from ..engine.executors import InputModified
from ..errors import InputError, describe
from ..parameters import ParameterLayout

#: Memory a batch of points may take on the CPU: B·(bytes of a point + bytes of its outputs).
#: A batch that stays in the caches (a few MiB): one that streams through memory costs more
#: per point (tanh(x @ W + b), n = 8,256, one thread: 43 µs a point in batches of 2 MiB,
#: 78 µs in 32 MiB, 122 µs in 129 MiB; see benchmarks/torch_batching.py).
CPU_BATCH_BYTES = 4 * 2 ** 20
#: On a CUDA device a batch may take this fraction of the free memory (torch.cuda.mem_get_info).
CUDA_FREE_FRACTION = 1 / 8
#: Points in the batch that tries vmap before the check.
PROBE_POINTS = 2
#: batched="auto" times vmap on this many points (twice) against TIMED_SINGLES single calls, and
#: keeps the faster per point (vmap saves each call's overhead, but builds and streams a
#: (B, n) batch through memory: on the CPU, single calls win once a call's own work dominates).
TIMED_POINTS, TIMED_SINGLES = 32, 4


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a NumPy float32 or float64."""
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]


class TorchScalar(ABC):
    """A scalar L(θ) computed by torch from θ's flat vector, the loss fastgrad checks.

    ``value(flat, args)`` takes θ's flat tensor (n,) on :attr:`device` in θ's working dtype
    (under vmap, one point of the batch) and returns L as a 0-d float64 tensor.  The object
    is also a plain loss ``loss(theta, *args) -> float`` and makes its own evaluator
    (:meth:`fastgrad_evaluator`, the seam of :func:`fastgrad.engine.make_evaluator`).
    """

    def __init__(self, names: list[str], shapes: list[tuple[int, ...]], device: torch.device,
                 batched: bool | str = "auto"):
        self.names, self.shapes = names, shapes
        self.sizes = [math.prod(shape) for shape in shapes]
        self.device = device
        self.batched = batched  # "auto": vmap if it works and is faster; True: if it works
        #: (points per batch, why not vmap) as an evaluator planned it; a caller that checks
        #: the same function again (a Monitor) hands it on, and the plan is not made again.
        self.plan: tuple[int, str | None] | None = None

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """θ's named tensors, views of ``flat``."""
        parts = torch.split(flat, self.sizes)
        return {name: part.view(shape)
                for name, part, shape in zip(self.names, parts, self.shapes, strict=True)}

    @abstractmethod
    def value(self, flat: torch.Tensor, args: tuple) -> torch.Tensor:
        """L at the flat point ``flat``, a 0-d float64 tensor."""

    @abstractmethod
    def output_bytes(self) -> int:
        """Bytes of what one evaluation returns before it is reduced to L (memory per point)."""

    def single(self, flat: torch.Tensor, args: tuple) -> torch.Tensor:
        """L at ``flat`` in one call, outside vmap (a subclass may have a cheaper way)."""
        return self.value(flat, args)

    def changed(self, base: torch.Tensor, index: int, value: float, args: tuple) -> torch.Tensor:
        """L at ``base`` with base[index] = value, outside vmap; ``base`` is not modified."""
        point = base.clone()
        point[index] = value
        return self.single(point, args)

    def written(self, base: torch.Tensor) -> int | None:
        """The flat index of θ that the evaluations since :meth:`changed` last loaded ``base``
        wrote into, or None (a subclass that keeps state between calls says; here each call
        has its own point)."""
        return None

    def __call__(self, theta, *args) -> float:
        flat = np.concatenate([np.asarray(theta[name]).ravel() for name in self.names])
        with torch.no_grad():
            return float(self.value(torch.from_numpy(flat).to(self.device), args))

    def fastgrad_evaluator(self, theta: np.ndarray, args: tuple,
                           layout: ParameterLayout) -> TorchEvaluator:
        return TorchEvaluator(self, theta, args, layout)


class TorchEvaluator(Evaluator):
    """Evaluates a :class:`TorchScalar` at chunks of perturbed points, batched by vmap.

    A batch holds at most B points, B = cap / (bytes of a point + bytes of its outputs, and on
    CUDA the peak memory one point of the probe batch took, when the probe raised the
    process's peak: torch's peak statistics are read, never reset); the cap is CPU_BATCH_BYTES
    (4 MiB, cache-sized) on the CPU and CUDA_FREE_FRACTION (1/8) of the device's free memory
    on CUDA.
    Runs on the calling thread: torch has its own intra-op threads.
    """

    name = "torch"
    own_threads = True

    def __init__(self, loss: TorchScalar, theta: np.ndarray, args: tuple, layout: ParameterLayout):
        if theta.dtype.kind == "c":
            raise InputError("method='complex' is not available for torch functions (their "
                             "inputs are real tensors); use method='central' or 'central4'")
        super().__init__(loss, theta, args)
        self.scalar = loss
        self.layout = layout
        self.base = torch.from_numpy(theta).to(loss.device, copy=True)
        self.vmapped = torch.func.vmap(lambda point: loss.value(point, args))
        if loss.plan is None:
            loss.plan = self._plan() if loss.batched is not False else (1, "batched=False")
        self.batch, self.why_not = loss.plan

    @property
    def default_workers(self) -> int:
        return 1

    def view(self, flat: np.ndarray):
        return self.layout.structured(flat)

    def notes(self) -> list[str]:
        if self.why_not is None:
            return [f"evaluated by torch.func.vmap on {self.scalar.device}, at most "
                    f"{self.batch:,} points per call"]
        return [f"evaluated one call per point on {self.scalar.device}: {self.why_not}"]

    # ------------------------------------------------------------------ single points
    def _single(self, point: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self.scalar.single(point, self.args))

    def at(self, point: np.ndarray, copy: bool = True):
        """L at ``point``; the function receives a tensor sharing memory with the returned
        copy on the CPU, so that the engine sees a write into its input."""
        work = np.array(point, dtype=self.theta.dtype, copy=True)
        return self._single(torch.from_numpy(work).to(self.scalar.device)), work

    def at_changed(self, workspace: Workspace, indices: np.ndarray, values: np.ndarray):
        point = self.base.clone()
        point[torch.as_tensor(indices, device=point.device)] = torch.as_tensor(
            values, dtype=point.dtype, device=point.device)
        return self._single(point), True

    # ------------------------------------------------------------------ batches
    def _points(self, coords: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """θ with θ[coords[b]] = values[b], one row per b: a (B, n) tensor on the device."""
        points = self.base.expand(coords.numel(), -1).clone()
        points.index_put_((torch.arange(coords.numel(), device=points.device), coords), values)
        return points

    def _batched(self, points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vmapped(points)

    def _plan(self) -> tuple[int, str | None]:
        """(B, None) when vmap works on the function, agrees with single calls to within
        √u (u of θ's dtype) and, with batched="auto", is faster per point; else (1, why not)."""
        device = self.base.device
        cuda = device.type == "cuda"
        try:
            single = self._single(self.base.clone())
        except Exception as error:  # the engine's first call reports it as the function's failure
            return 1, f"fn raised {type(error).__name__} at the inputs"
        try:
            if cuda:
                torch.cuda.synchronize(device)
                # the process's peak is the user's statistic: read, never reset
                before = torch.cuda.memory_allocated(device)
                peak = torch.cuda.max_memory_allocated(device)
            batch = self._batched(self._repeated(PROBE_POINTS)).double().cpu().numpy()
        except Exception as error:
            return 1, f"vmap raised {type(error).__name__}: {describe(error)[:160]}"
        tolerance = math.sqrt(float(np.finfo(self.theta.dtype).eps)) * abs(single)
        if batch.shape != (PROBE_POINTS,) or np.any(np.abs(batch - single) > tolerance):
            return 1, f"vmap gave {batch.tolist()} where a single call gave {single!r}"
        per_point = self.base.numel() * self.base.element_size() + self.scalar.output_bytes()
        if cuda:
            after = torch.cuda.max_memory_allocated(device)
            if after > peak:  # the probe set a new peak: what its points took, measured
                per_point = max(per_point, (after - before) // PROBE_POINTS)
            cap = int(torch.cuda.mem_get_info(device)[0] * CUDA_FREE_FRACTION)
        else:
            cap = CPU_BATCH_BYTES
        size = max(1, cap // max(per_point, 1))
        if self.scalar.batched == "auto":
            vmapped, called = self._seconds_per_point(min(TIMED_POINTS, size))
            if called < vmapped:
                return 1, (f"one call took {called * 1e6:.3g} µs, vmap {vmapped * 1e6:.3g} µs a "
                           f"point (batched='auto'; batched=True forces vmap)")
        return size, None

    def _repeated(self, count: int) -> torch.Tensor:
        """``count`` copies of θ as a batch, made as a chunk's points are."""
        coords = torch.zeros(count, dtype=torch.int64, device=self.base.device)
        return self._points(coords, self.base[coords])

    def _seconds_per_point(self, count: int) -> tuple[float, float]:
        """Seconds per point of vmap over ``count`` points (the faster of two calls: the first
        call at a new batch size pays a one-time cost), and of a single call (the fastest of
        TIMED_SINGLES), each including the making of its points."""
        synchronize = torch.cuda.synchronize if self.base.device.type == "cuda" else lambda: None
        vmapped = called = math.inf
        for _ in range(2):
            synchronize()
            started = time.perf_counter()
            self._batched(self._repeated(count)).cpu()
            vmapped = min(vmapped, (time.perf_counter() - started) / count)
        for _ in range(TIMED_SINGLES):
            started = time.perf_counter()
            self._single(self.base.clone())
            called = min(called, time.perf_counter() - started)
        return vmapped, called

    def evaluate_chunk(self, workspace: Workspace, coords, values, out, start, stop) -> None:
        """out[j, q] = L(θ with θ[coords[j]] = values[j, q]) for j in [start, stop): batches
        of at most B points through vmap, or one call per point (which also runs a batch
        that raised, so that the failing point is the one reported)."""
        points = values.shape[1]
        device = self.base.device
        rows = np.repeat(coords[start:stop], points)
        steps = values[start:stop].reshape(-1)
        if self.why_not is None:
            try:
                results = [self._batched(self._points(
                    torch.as_tensor(rows[s:s + self.batch], device=device),
                    torch.as_tensor(steps[s:s + self.batch], device=device, dtype=self.base.dtype)))
                    for s in range(0, rows.size, self.batch)]
                out[start:stop] = torch.cat(results).double().cpu().numpy().reshape(-1, points)
                return
            except Exception:  # evaluated again point by point below, which reports it
                pass
        cursor, scalar, base = workspace.cursor, self.scalar, self.base
        with torch.no_grad():
            for j in range(start, stop):
                cursor[0] = j
                for q in range(points):
                    cursor[1] = q
                    out[j, q] = float(scalar.changed(base, int(coords[j]), float(values[j, q]),
                                                     self.args))
        written = scalar.written(base)
        if written is not None:
            raise InputModified(written)
