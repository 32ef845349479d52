"""One loss evaluation of a torch module at a perturbed point, three ways, per point.

    python benchmarks/torch_single_points.py [--threads 1] [--reps 15]

An MLP 32 → w → w → 10 (tanh, float64 through check_module's working copy), cross_entropy
on 8 rows, at 64 points θ with one coordinate changed:

* ``replica``: ModuleLoss.changed, the module's private copy with its parameters as views
  of one flat tensor (the coordinate written in place and restored);
* ``functional_call``: ModuleLoss.value on a fresh copy of the flat point, through
  torch.func.functional_call (each call swaps every tensor into the module and back);
* ``plain net``: the module's own forward at its own parameters (no perturbation): the
  floor.

Prints the best of ``reps`` runs, µs per point.  Compare within one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fastgrad.torch.module import _module_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=15)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; best of "
          f"{options.reps}, µs per point\n")
    print("| width | parameters | replica | functional_call | plain net |")
    print("|---:|---:|---:|---:|---:|")
    for width in (64, 256):
        parameters, best = measure(width, options.reps)
        print(f"| {width} | {parameters:,} | " + " | ".join(f"{best[k] * 1e6:.0f}" for k in best) + " |")


def measure(width: int, reps: int) -> tuple[int, dict[str, float]]:
    """(parameters, the best seconds per point of each way) at hidden width ``width``."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, width), torch.nn.Tanh(),
                              torch.nn.Linear(width, width), torch.nn.Tanh(),
                              torch.nn.Linear(width, 10))
    X, Y = torch.randn(8, 32), torch.randint(0, 10, (8,))
    loss, theta, args, _ = _module_loss(net, torch.nn.functional.cross_entropy, X, (Y,),
                                        None, False, [])
    base = torch.cat([torch.as_tensor(v).ravel() for v in theta.values()])
    coords = np.random.default_rng(0).integers(0, base.numel(), 64).tolist()

    def replica():
        for i in coords:
            loss.changed(base, i, 0.1, args)

    def functional_call():
        for i in coords:
            point = base.clone()
            point[i] = 0.1
            loss.value(point, args)

    def plain():
        for _ in coords:
            torch.nn.functional.cross_entropy(net(X), Y)

    ways = {"replica": replica, "functional_call": functional_call, "plain net": plain}
    best = dict.fromkeys(ways, float("inf"))
    with torch.no_grad():
        for _ in range(reps):
            for name, way in ways.items():
                started = time.perf_counter()
                way()
                best[name] = min(best[name], (time.perf_counter() - started) / len(coords))
    return base.numel(), best

if __name__ == "__main__":
    main()
