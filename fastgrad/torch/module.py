"""check_module and Monitor: the gradients ``loss_fn(module(x), *targets).backward()`` puts
in a module's parameters, against finite differences of the loss over the parameters.

The loss at perturbed parameters is ``loss_fn(functional_call(module, parameters, (x,)),
*targets)`` (:func:`torch.func.functional_call`) in batches under vmap, and
``loss_fn(replica(x), *targets)`` one point at a time, on a private copy of the module
(:class:`Replica`): the module's own parameters, buffers, ``.grad`` and mode are never
written.  Buffers are restored (or copied) for each evaluation (BatchNorm in train mode
updates its running statistics in them, not in the module), and parameters without
``requires_grad`` are passed as they are.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .. import _validation as validate
from ..errors import InputError
from ..monitor import Monitor as ArrayMonitor
from ..monitor import act_on_failure
from ..pipeline import run_check
from ..products import common
from ..report import Report
from . import tensors
from .evaluator import TorchScalar
from .tensors import (
    batched_mode,
    confirmed,
    gradients,
    noted,
    require_options,
    to_numpy,
)

#: Modules whose train mode draws random numbers at each forward.
RANDOM_IN_TRAINING = (torch.nn.modules.dropout._DropoutNd,)


class Replica:
    """A private deep copy of a module in the working dtype, whose checked parameters are
    views of one flat tensor :attr:`flat`: a point is loaded by one copy, a coordinate is
    changed in place and restored.

    One call of the replica costs about what the module's forward costs: functional_call's
    swap of every tensor in and out of the module is spent once, here (47 against 103 µs a
    point for a 5-layer MLP on 8 rows, own forward 39 µs: benchmarks/torch_single_points.py).
    A Monitor keeps its replica from check to check (a deep copy of that MLP costs ~0.6 ms)
    while :meth:`fits` the module.
    """

    def __init__(self, module: torch.nn.Module, names: list[str], dtype: torch.dtype):
        self.signature = state_signature(module)
        self.names, self.dtype = names, dtype
        self.module = copy.deepcopy(module).to(dtype)
        parameters = dict(self.module.named_parameters())
        for parameter in parameters.values():
            parameter.requires_grad_(False)
            parameter.grad = None
        sizes = [parameters[name].numel() for name in names]
        self.flat = torch.empty(sum(sizes), dtype=dtype, device=parameters[names[0]].device)
        for name, part in zip(names, torch.split(self.flat, sizes), strict=True):
            view = part.view(parameters[name].shape)
            view.copy_(parameters[name])
            parameters[name].data = view
        #: the flat tensor's memory as NumPy on the CPU: a coordinate is written in 0.1 µs, not 5
        self.host = self.flat.numpy() if self.flat.device.type == "cpu" else None
        self.frozen = {name: p for name, p in parameters.items() if name not in set(names)}
        self.buffers = dict(self.module.named_buffers())
        self.holds: torch.Tensor | None = None  # the flat point loaded, when it is one kept

    def fits(self, module: torch.nn.Module, names: list[str], dtype: torch.dtype) -> bool:
        """Whether this replica still copies ``module`` (same attributes, submodules and
        tensor objects: :func:`state_signature`) for the same checked names and dtype."""
        return names == self.names and dtype == self.dtype \
            and state_signature(module) == self.signature

    def refresh(self, frozen: Mapping[str, torch.Tensor]) -> None:
        """The parameters without grad, as they are now (a model's EMA may move them)."""
        with torch.no_grad():
            for name, value in frozen.items():
                self.frozen[name].copy_(value)
        self.holds = None


def state_signature(module: torch.nn.Module) -> list:
    """What a deep copy of ``module`` copied besides tensor values: every submodule's
    attributes by identity (dicts, such as hooks and tensors, item by item), so that a
    replaced parameter, a new hook, a changed mode or a reassigned hyper-parameter
    (``model.temperature = 0.5``) tells a kept replica is stale.  An attribute mutated in
    place (a list appended to) is not seen."""
    signature: list = []
    for submodule in module.modules():
        for key, value in submodule.__dict__.items():
            if isinstance(value, dict):
                signature.append((key, tuple((k, id(v)) for k, v in value.items())))
            else:
                signature.append((key, id(value)))
    return signature


def replica_of(module: torch.nn.Module, names: list[str], dtype: torch.dtype,
               kept: Replica | None = None) -> Replica | None:
    """``kept`` if it still fits the module, else a new :class:`Replica`, or None for a
    module that cannot be deep-copied (then every evaluation goes through functional_call)."""
    if kept is not None and kept.fits(module, names, dtype):
        return kept
    try:
        return Replica(module, names, dtype)
    except Exception:
        return None


class ModuleLoss(TorchScalar):
    """L(θ) = loss_fn(functional_call(module, θ's parameters + the rest, (x,)), *targets),
    with args = (x, *targets); a 0-d float64 tensor."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable, checked: Mapping[str, torch.Tensor],
                 dtype: torch.dtype, device: torch.device, batched: bool | str,
                 replica: Replica | None = None, copied: bool = True):
        super().__init__(list(checked), [tuple(p.shape) for p in checked.values()], device, batched)
        self.module, self.loss_fn, self.dtype = module, loss_fn, dtype
        self.frozen = {name: p.detach().to(dtype) if p.is_floating_point() else p.detach()
                       for name, p in module.named_parameters() if name not in checked}
        self.buffers = {name: b.detach().to(dtype) if b.is_floating_point() else b.detach().clone()
                        for name, b in module.named_buffers()}
        # functional_call's untying of shared tensors costs ~15 % of a small module's call:
        # only for a module that registers one tensor under several names
        self.tied = len(list(module.named_parameters(remove_duplicate=False))) > len(
            list(module.named_parameters())) or len(list(module.named_buffers(
                remove_duplicate=False))) > len(self.buffers)
        #: single points are evaluated on it (``replica``: one kept from an earlier check)
        self.replica = replica_of(module, list(checked), dtype, replica) if copied else None
        if self.replica is not None and self.replica is replica:
            self.replica.refresh(self.frozen)

    def forward(self, parameters: Mapping[str, torch.Tensor], args: tuple) -> torch.Tensor:
        x, *targets = args
        state = {**self.frozen, **{name: b.clone() for name, b in self.buffers.items()},
                 **parameters}
        output = torch.func.functional_call(self.module, state, (x,), tie_weights=self.tied)
        return self.loss_fn(output, *targets)

    def value(self, flat: torch.Tensor, args: tuple) -> torch.Tensor:
        return self.forward(self.split(flat), args).to(torch.float64).reshape(())

    def output_bytes(self) -> int:
        return 8  # one scalar; the activations are not counted on the CPU (measured on CUDA)

    def single(self, flat: torch.Tensor, args: tuple) -> torch.Tensor:
        """L at ``flat`` on the replica; a write by the module into its parameters is copied
        back into ``flat``, where the engine looks for it."""
        replica = self.replica
        if replica is None:
            return self.value(flat, args)
        replica.holds = None
        replica.flat.copy_(flat)
        value = self._on_replica(replica, args)
        flat.copy_(replica.flat)
        return value

    def changed(self, base: torch.Tensor, index: int, value: float, args: tuple) -> torch.Tensor:
        """L at base with base[index] = value, on the replica holding ``base``."""
        replica = self.replica
        if replica is None:
            return super().changed(base, index, value, args)
        if replica.holds is not base:
            replica.flat.copy_(base)
            replica.holds = base
        flat = replica.flat if replica.host is None else replica.host
        kept = flat[index]
        flat[index] = value
        try:
            return self._on_replica(replica, args)
        finally:
            flat[index] = kept

    def written(self, base: torch.Tensor) -> int | None:
        replica = self.replica
        if replica is None or replica.holds is not base:
            return None
        differs = torch.nonzero(replica.flat != base)
        if differs.numel() == 0:
            return None
        replica.holds = None
        return int(differs[0, 0])

    def _on_replica(self, replica: Replica, args: tuple) -> torch.Tensor:
        for name, buffer in self.buffers.items():
            replica.buffers[name].copy_(buffer)
        x, *targets = args
        return self.loss_fn(replica.module(x), *targets).to(torch.float64).reshape(())


def check_module(module: torch.nn.Module, loss_fn: Callable, x: torch.Tensor, *targets: Any,
                 seed: int | None = None, dtype=None, batched: bool | str = "auto",
                 **options: Any) -> Report:
    """Check the gradients ``loss_fn(module(x), *targets).backward()`` puts in the parameters.

    Parameters
    ----------
    module : torch.nn.Module
        Its parameters with ``requires_grad`` are checked, named as ``named_parameters``
        names them (``layer1.weight[3, 2]``).  Left bit-identical: parameters, buffers,
        ``.grad`` (None stays None), train/eval mode, ``requires_grad``.
    loss_fn : callable
        ``loss_fn(module(x), *targets)`` returns a scalar tensor
        (``torch.nn.functional.mse_loss``).
    x, *targets
        The batch; floating tensors are cast with the parameters under ``dtype``.
    seed : int, optional
        Reproduces the sample and the directions.
    dtype : None, "float32" or "float64"
        None: the parameters' own precision, as :func:`check_function` treats its inputs'
        (float32 judged in float32, and in float64 where that does not pass; bfloat16's
        gradient judged against float64 differences); else the module evaluated in it.
    batched : "auto", True or False
        Batches of perturbed parameters through ``torch.func.vmap``, as for
        :func:`check_function` (vmap fails on BatchNorm in train mode: one call per point).
    **options
        fastgrad.check's method, eps, sample, detect, directions, progress.

    Returns
    -------
    fastgrad.Report
        The gradient check of the loss over the parameters; ``report.passed``.

    The gradient is autograd's, by ``torch.autograd.grad`` of the same functional call at
    copies of the parameters: what ``backward()`` would add to a zero ``.grad`` (hooks
    registered on the module's own parameter tensors are not run).  A module with Dropout in
    train mode is refused (InputError): its loss is random, so no finite difference is
    meaningful; call ``module.eval()`` or check a function without it.  Randomness inside
    ``forward`` (``F.dropout``) is caught as a loss that does not repeat itself (LossError).
    """
    require_options(options, "check_module")
    notes: list[str] = []
    loss, theta, args, precision = _module_loss(module, loss_fn, x, targets, dtype, batched, notes)
    grad = _gradient(loss, args, precision)
    entropy = common.entropy_of(seed)  # the same sample and directions if confirmed

    def in_float64() -> Report:
        wide, theta64, args64, _ = _module_loss(module, loss_fn, x, targets, "float64", batched, [])
        return run_check(wide, grad, theta64, validate.check_options(
            wide, args=args64, seed=entropy, gradient_eps=float(torch.finfo(loss.dtype).eps),
            **options))

    report = run_check(loss, grad, theta, validate.check_options(
        loss, args=args, seed=entropy, gradient_eps=precision.gradient_eps, **options))
    return confirmed(noted(report, notes), loss.dtype, in_float64)


def _module_loss(module, loss_fn, x, targets, dtype, batched, notes: list[str],
                 replica: Replica | None = None):
    """(ModuleLoss, θ as NumPy arrays by parameter name, the args cast to the working dtype);
    ``replica``: one kept from an earlier check, used if it still fits."""
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    validate.callable_of("loss_fn", loss_fn)
    batched = batched_mode(batched)
    random = [name or type(module).__name__ for name, m in module.named_modules()
              if m.training and isinstance(m, RANDOM_IN_TRAINING) and getattr(m, "p", 0) > 0]
    if random:
        raise InputError(f"{random[0]} is {type(module.get_submodule(random[0])).__name__} in "
                         "train mode: the loss is random at every call, and finite differences of "
                         "it measure the noise; call module.eval() (or set p=0) for the check")
    checked = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if not checked:
        raise InputError("no parameter of the module requires grad: there is nothing to check")
    device = tensors.one_device(checked)
    precision = tensors.working_dtype(checked, dtype)
    working = precision.evaluate
    notes += precision.notes
    if not isinstance(x, torch.Tensor):
        raise InputError(f"x must be a tensor, got {type(x).__name__}")
    args = tuple(a.detach().to(working) if isinstance(a, torch.Tensor) and a.is_floating_point()
                 else a for a in (x, *targets))
    loss = ModuleLoss(module, loss_fn, checked, working, device, batched, replica)
    theta = {name: to_numpy(p, working) for name, p in checked.items()}
    return loss, theta, args, precision


def _gradient(loss: ModuleLoss, args: tuple, precision: tensors.Precision) -> dict[str, np.ndarray]:
    """autograd's gradient of the loss in the precision's gradient dtype (a bfloat16 module's
    in bfloat16), at copies of the parameters."""
    if precision.gradient == loss.dtype:
        return _autograd_gradient(loss, args)
    narrow = ModuleLoss(loss.module, loss.loss_fn, dict(zip(loss.names, _parameters(loss), strict=True)),
                        precision.gradient, loss.device, False, copied=False)
    return _autograd_gradient(narrow, tuple(
        a.to(precision.gradient) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in args))


def _autograd_gradient(loss: ModuleLoss, args: tuple) -> dict[str, np.ndarray]:
    """autograd's gradient of the loss over the checked parameters, at copies of them."""
    leaves = {name: p.detach().to(loss.dtype, copy=True).requires_grad_(True)
              for name, p in zip(loss.names, _parameters(loss), strict=True)}
    with torch.enable_grad():
        value = common.user_call("loss_fn(module(x), *targets)", loss.forward, leaves, args)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise InputError("loss_fn(module(x), *targets) must return a scalar tensor, got "
                             f"{type(value).__name__} of shape {tuple(getattr(value, 'shape', ()))}")
        if not value.requires_grad:
            return gradients([None] * len(leaves), leaves)
        grads = common.user_call("the loss's backward (torch.autograd.grad)", torch.autograd.grad,
                                 value.reshape(()), list(leaves.values()), allow_unused=True)
    return gradients(grads, leaves)


def _parameters(loss: ModuleLoss) -> list[torch.Tensor]:
    named = dict(loss.module.named_parameters())
    return [named[name] for name in loss.names]


class _CurrentLoss:
    """The loss of a Monitor's current check (a ModuleLoss made at each check, with the
    buffers and frozen parameters of that step), as fastgrad.Monitor calls it."""

    def __init__(self) -> None:
        self.loss: ModuleLoss | None = None

    def __call__(self, theta, *args) -> float:
        assert self.loss is not None, "set before each check"
        return self.loss(theta, *args)

    def fastgrad_evaluator(self, theta, args, layout):
        assert self.loss is not None, "set before each check"
        return self.loss.fastgrad_evaluator(theta, args, layout)


class Monitor:
    """Checks a module's gradient every ``every`` training steps, on a rotating sample of
    its parameters (:class:`fastgrad.Monitor`'s rotation and schedule).

    >>> mon = fastgrad.torch.Monitor(net, torch.nn.functional.mse_loss, every=100)
    >>> loss = loss_fn(net(x), y); loss.backward()
    >>> mon.step(x, y)          # before optimizer.step(): checks on schedule
    >>> optimizer.step(); optimizer.zero_grad()

    Parameters
    ----------
    module, loss_fn
        As for :func:`check_module`.
    every, sample, directions, seed, on_fail
        As for :class:`fastgrad.Monitor`.
    rows : int, optional
        None: each check reads the parameters' ``.grad`` and compares it with differences of
        the loss on the whole batch given to :meth:`step` (the batch ``.grad`` was computed
        on; a ``.grad`` accumulated over several batches fails).  k: each check compares
        autograd's gradient of the loss on the batch's first k rows (``x[:k]``, each
        target's ``[:k]``), computed at copies of the parameters, with differences on those
        rows: the same backward code at a cost in proportion to k (``.grad`` is not read).
    dtype, batched, method, eps, progress
        As for :func:`check_module`.

    It never writes the module, its ``.grad`` or an optimizer; off schedule :meth:`step` only
    counts the call.  ``seconds`` is its time in scheduled steps, ``history`` one summary per
    check (as :class:`fastgrad.Monitor`).
    """

    def __init__(self, module: torch.nn.Module, loss_fn: Callable, every: int = 100, sample: int = 64,
                 directions: int = 2, seed: int | None = 0, on_fail: str | Callable = "warn",
                 rows: int | None = None, dtype=None, batched: bool | str = "auto", **options: Any):
        validate.known_options(options, ("method", "eps", "progress"), "Monitor")
        require_options(options, "Monitor")
        if not isinstance(module, torch.nn.Module):
            raise InputError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        validate.callable_of("loss_fn", loss_fn)
        validate.dtype(dtype)
        self.module, self.loss_fn = module, loss_fn
        self.rows = None if rows is None else validate.positive_int("rows", rows)
        self.dtype, self.batched = dtype, batched_mode(batched)
        self._current = _CurrentLoss()
        self._gradient: dict[str, np.ndarray] | None = None  # of the check in progress
        self._plan: tuple[int, str | None] | None = None  # TorchScalar.plan
        self._replica: Replica | None = None  # the module's copy for single points, kept
        self.seconds = 0.0  # in scheduled steps: reading the module's state and the check
        self.on_fail = validate.on_fail(on_fail)
        self.options = options
        self.precision = tensors.working_dtype(
            {name: p for name, p in module.named_parameters() if p.requires_grad}, dtype)
        # failures are acted on here, once a float32 one is confirmed in float64 (step)
        self.monitor = ArrayMonitor(self._current, self._current_gradient, every=every,
                                    sample=sample, directions=directions, seed=seed,
                                    on_fail=lambda report: None,
                                    gradient_eps=self.precision.gradient_eps, **options)

    @property
    def history(self) -> list[dict]:
        return self.monitor.history

    def _current_gradient(self, theta, *args) -> dict[str, np.ndarray]:
        assert self._gradient is not None, "set before each check"
        return self._gradient

    def step(self, x: torch.Tensor, *targets: Any) -> Report | None:
        """Check on schedule (and return the report); else do nothing and return None."""
        monitor = self.monitor
        if monitor.calls % monitor.every:
            return monitor.step({})  # off schedule: counts the call, reads nothing
        started = time.perf_counter()
        notes: list[str] = []
        if self.rows is not None:
            x, targets = x[:self.rows], tuple(t[:self.rows] if isinstance(t, torch.Tensor)
                                              and t.dim() else t for t in targets)
        loss, theta, args, precision = _module_loss(self.module, self.loss_fn, x, targets,
                                                    self.dtype, self.batched, notes, self._replica)
        if precision != self.precision:
            raise InputError(f"the module's parameters are now {precision.gradient}, they were "
                             f"{self.precision.gradient} when the Monitor was made: make a new one")
        self._replica = loss.replica
        loss.plan = self._plan  # the batching planned at the first check
        self._current.loss = loss
        try:
            gradient = _grads_of(loss) if self.rows is None else _gradient(loss, args, precision)
            self._gradient = gradient
            report = monitor.step(theta, args=args)
            assert report is not None  # on schedule
            report = confirmed(noted(report, notes), loss.dtype,
                               lambda: self._in_float64(report, gradient, x, targets))
        finally:
            self._plan = loss.plan
            self._current.loss, self._gradient = None, None
            elapsed = time.perf_counter() - started
            self.seconds += elapsed
        summary = monitor.history[-1]  # of the float32 check, if it was confirmed
        monitor.history[-1] = ArrayMonitor.summary(summary["step"], report, elapsed)
        if not report.passed:
            act_on_failure(self.on_fail, report, summary["step"])
        return report

    def _in_float64(self, report: Report, gradient: dict[str, np.ndarray], x, targets) -> Report:
        """The check of ``report`` again, on the same coordinates, with float64 differences
        against the same float32 gradient (see :func:`.tensors.confirmed`)."""
        wide, theta64, args64, _ = _module_loss(self.module, self.loss_fn, x, targets, "float64",
                                                self.batched, [])
        options = validate.check_options(
            wide, args=args64, seed=report.details.coords.size + self.monitor.calls,
            sample=report.details.coords, directions=self.monitor.directions,
            gradient_eps=float(torch.finfo(torch.float32).eps), **self.options)
        return run_check(wide, gradient, theta64, options)


def _grads_of(loss: ModuleLoss) -> dict[str, np.ndarray]:
    """The checked parameters' ``.grad`` as float64 arrays (read, never written)."""
    grads = {}
    for name, parameter in zip(loss.names, _parameters(loss), strict=True):
        if parameter.grad is None:
            raise InputError(f"{name}.grad is None: call loss.backward() before mon.step()")
        grads[name] = to_numpy(parameter.grad, torch.float64)
    return grads
