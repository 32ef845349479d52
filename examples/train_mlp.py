"""Train the reference MLP by minibatch SGD while fastgrad.Monitor checks its gradient.

    python examples/train_mlp.py [--steps N] [--no-monitor] [--every 100] [--seed 0]

The model is :mod:`fastgrad.models.mlp` (tanh hidden layer, softmax, mean
cross-entropy).  The SGD updates use the hand-written NumPy backprop ``mlp.grad``;
the monitor compares that same function with finite differences of the compiled
loss ``mlp.loss`` every ``--every`` steps, on a rotating sample of 64 coordinates
and 2 random directions.  At the end the script prints the loss and the
monitor's summary: checks, seconds spent in them, verdicts.

``train()`` is also what ``benchmarks/monitor_overhead.py`` times.
"""

from __future__ import annotations

import argparse
import collections
import time
from dataclasses import dataclass

import numpy as np

import fastgrad
from fastgrad.models import mlp

#: Samples of the minibatch given to the monitor's checks (see ``train``).
CHECK_ROWS = 2


def teacher_data(m: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs X ~ N(0, 1) and one-hot labels from a random linear teacher: learnable."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, d))
    labels = np.argmax(X @ rng.standard_normal((d, c)), axis=1)
    Y = np.zeros((m, c))
    Y[np.arange(m), labels] = 1.0
    return X, Y


@dataclass
class Result:
    params: dict
    loss: float  # mean cross-entropy on the whole training set, at the end
    accuracy: float
    seconds: float  # wall time of the training loop (checks included)
    monitor: fastgrad.Monitor | None


def train(steps: int = 1000, *, monitor: bool = True, every: int = 100, sample: int = 64,
          directions: int = 2, batch: int = 256, lr: float = 0.5, d: int = 64, h: int = 128,
          c: int = 10, m: int = 4096, seed: int = 0, check_rows: int = CHECK_ROWS,
          on_fail="warn", grad=mlp.grad) -> Result:
    """SGD on the MLP (n = d·h + h + h·c + c = 9,610 by default), optionally monitored.

    ``grad(params, X, Y)`` is the backprop used for the updates and checked by the monitor.
    """
    X, Y = teacher_data(m, d, c, seed)
    params = mlp.init_params(d, h, c, seed)
    rng = np.random.default_rng(seed + 1)
    checker = (fastgrad.Monitor(mlp.loss, grad, every=every, sample=sample,
                                directions=directions, seed=seed, on_fail=on_fail)
               if monitor else None)
    started = time.perf_counter()
    for _ in range(steps):
        rows = rng.integers(0, m, size=batch)
        Xb, Yb = X[rows], Y[rows]
        gradient = grad(params, Xb, Yb)
        if checker is not None:
            # Check the gradient at the parameters it was computed at.  Its correctness
            # does not depend on the batch, so the check gets the first few samples only:
            # every loss evaluation of the check is then ~batch/check_rows times cheaper.
            checker.step(params, args=(Xb[:check_rows], Yb[:check_rows]))
        for key in params:
            params[key] -= lr * gradient[key]
    seconds = time.perf_counter() - started
    theta = mlp.flatten(params)
    probabilities = np.exp(mlp._log_softmax(np.tanh(X @ params["W1"] + params["b1"]) @ params["W2"]
                                            + params["b2"]))
    accuracy = float(np.mean(probabilities.argmax(axis=1) == Y.argmax(axis=1)))
    return Result(params, float(mlp.loss(theta, X, Y)), accuracy, seconds, checker)


def summary(result: Result) -> str:
    lines = [(f"final loss {result.loss:.4f}, training accuracy {result.accuracy:.1%}, "
              f"{result.seconds:.2f} s")]
    mon = result.monitor
    if mon is None:
        lines.append("monitor: off")
    else:
        verdicts = collections.Counter(entry["verdict"] for entry in mon.history)
        counted = ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items()))
        times = [entry["seconds"] for entry in mon.history]
        later = (f", then {np.median(times[1:]) * 1e3:.1f} ms each (median)"
                 if len(times) > 1 else "")
        first = f"the first {times[0]:.2f} s (with Numba's compile, once per process){later}" \
            if times else "none"
        lines.append(f"monitor: {len(mon.history)} checks in {mon.seconds:.3f} s, "
                     f"{mon.seconds / result.seconds:.1%} of the loop: {first}; verdicts {counted}")
        failing = [entry for entry in mon.history if entry["verdict"] == "fail"]
        for entry in failing[:5]:
            lines.append(f"  step {entry['step']}: fail, worst {entry['worst']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="SGD steps (default 1000)")
    parser.add_argument("--no-monitor", action="store_true", help="train without the monitor")
    parser.add_argument("--every", type=int, default=100, help="check every N steps (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buggy", action="store_true",
                        help="train with mlp.grad_buggy, to see the monitor complain")
    args = parser.parse_args(argv)
    result = train(args.steps, monitor=not args.no_monitor, every=args.every, seed=args.seed,
                   grad=mlp.grad_buggy if args.buggy else mlp.grad)
    print(summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
