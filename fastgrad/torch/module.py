"""check_module and Monitor: the gradients ``loss_fn(module(x), *targets).backward()`` puts
in a module's parameters, against finite differences of the loss over the parameters.

The loss at perturbed parameters is ``loss_fn(functional_call(module, parameters, (x,)),
*targets)`` (:func:`torch.func.functional_call`), batched by vmap where it works: the
module's own parameters, buffers, ``.grad`` and mode are never written.  Buffers are passed
as copies made for each evaluation (BatchNorm in train mode updates its running statistics
in them, not in the module), and parameters without ``requires_grad`` as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .. import _validation as validate
from ..errors import InputError
from ..monitor import Monitor as ArrayMonitor
from ..pipeline import run_check
from ..products import common
from ..report import Report
from . import tensors
from .evaluator import TorchScalar
from .tensors import batched_mode, gradients, noted, require_options, to_numpy

#: Modules whose train mode draws random numbers at each forward.
RANDOM_IN_TRAINING = (torch.nn.modules.dropout._DropoutNd,)


class ModuleLoss(TorchScalar):
    """L(θ) = loss_fn(functional_call(module, θ's parameters + the rest, (x,)), *targets),
    with args = (x, *targets); a 0-d float64 tensor."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable, checked: Mapping[str, torch.Tensor],
                 dtype: torch.dtype, device: torch.device, batched: bool | str):
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
        None: the parameters' own precision (float32 judged with float32's steps and allowed
        errors); else the module evaluated in it.
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
    loss, theta, args = _module_loss(module, loss_fn, x, targets, dtype, batched, notes)
    grad = _autograd_gradient(loss, args)
    return noted(run_check(loss, grad, theta, validate.check_options(loss, args=args, seed=seed,
                                                                     **options)), notes)


def _module_loss(module, loss_fn, x, targets, dtype, batched, notes: list[str]):
    """(ModuleLoss, θ as NumPy arrays by parameter name, the args cast to the working dtype)."""
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
    working, precision = tensors.working_dtype(checked, dtype)
    notes += precision
    if not isinstance(x, torch.Tensor):
        raise InputError(f"x must be a tensor, got {type(x).__name__}")
    args = tuple(a.detach().to(working) if isinstance(a, torch.Tensor) and a.is_floating_point()
                 else a for a in (x, *targets))
    loss = ModuleLoss(module, loss_fn, checked, working, device, batched)
    theta = {name: to_numpy(p, working) for name, p in checked.items()}
    return loss, theta, args


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
        self.seconds = 0.0  # in scheduled steps: reading the module's state and the check
        self.monitor = ArrayMonitor(self._current, self._current_gradient, every=every,
                                    sample=sample, directions=directions, seed=seed,
                                    on_fail=on_fail, **options)

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
        loss, theta, args = _module_loss(self.module, self.loss_fn, x, targets, self.dtype,
                                         self.batched, notes)
        loss.plan = self._plan  # the batching planned at the first check
        self._current.loss = loss
        try:
            self._gradient = _grads_of(loss) if self.rows is None \
                else _autograd_gradient(loss, args)
            report = monitor.step(theta, args=args)
        finally:
            self._plan = loss.plan
            self._current.loss, self._gradient = None, None
            self.seconds += time.perf_counter() - started
        return None if report is None else noted(report, notes)


def _grads_of(loss: ModuleLoss) -> dict[str, np.ndarray]:
    """The checked parameters' ``.grad`` as float64 arrays (read, never written)."""
    grads = {}
    for name, parameter in zip(loss.names, _parameters(loss), strict=True):
        if parameter.grad is None:
            raise InputError(f"{name}.grad is None: call loss.backward() before mon.step()")
        grads[name] = to_numpy(parameter.grad, torch.float64)
    return grads
