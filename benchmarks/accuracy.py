"""Accuracy of each method on a smooth float64 tanh MLP (n = 1,029), against two references.

    python benchmarks/accuracy.py

Prints, per seed, the seed's relative error ‖D − g‖/(‖D‖ + ‖g‖) of the numerical gradient
by each method with its default step, against the hand-written backprop
(``mlp.grad``) and, for the finite differences, against the complex step.
"""

from __future__ import annotations

import numpy as np

import fastgrad as fg
from fastgrad.analysis import relative_error
from fastgrad.models import mlp

SIZES = dict(d=10, h=64, c=5, m=32)
TARGETS = {"central": 1e-9, "central4": 1e-11, "complex": 1e-13}


def flat(params: dict) -> np.ndarray:
    return np.concatenate([params[k].ravel() for k in mlp.KEYS])


def main() -> None:
    print("| seed | method | rel. error vs backprop | rel. error vs complex step | target |")
    print("|---|---|---|---|---|")
    for seed in range(3):
        problem = mlp.problem(**SIZES, seed=seed)
        args = (problem.X, problem.Y)
        backprop = flat(mlp.grad(problem.params, *args))
        complex_step = flat(fg.numerical_gradient(mlp.loss, problem.params, args,
                                                  method="complex"))
        for method, target in TARGETS.items():
            numerical = flat(fg.numerical_gradient(mlp.loss, problem.params, args, method=method))
            print(f"| {seed} | {method} | {relative_error(numerical, backprop):.2e} | "
                  f"{relative_error(numerical, complex_step):.2e} | <= {target:g} |")


if __name__ == "__main__":
    main()
