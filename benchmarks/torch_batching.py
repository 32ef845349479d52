"""What a perturbed evaluation costs fastgrad.torch: one torch.func.vmap call per chunk against
one call per point, and fastgrad against torch.autograd.gradcheck on the same function.

    python benchmarks/torch_batching.py [--sizes 16,32,64] [--rows 512] [--reps 5] [--threads 1]

The function is an MLP layer, fn(x, W, b) = tanh(x @ W + b), x (B × d), W (d × d), b (d),
every input checked: n = B·d + d² + d coordinates (d = B: 16 → 528, 32 → 2,080,
64 → 8,256).  Prints two Markdown tables:

1. the per-point cost of the torch evaluator (:class:`fastgrad.torch.evaluator.TorchEvaluator`)
   on one chunk of ``rows`` coordinates × 2 points, batched by vmap and one call per point:
   the fastest of ``reps`` runs, µs per point, and their ratio;
2. whole checks on the CPU: ``check_function`` (vmap, one call per point, and "auto"; 1
   cotangent, every coordinate) and ``torch.autograd.gradcheck`` (full, and fast_mode), seconds each;
   then the same on CUDA, or a line saying why not (no CUDA GPU).

Compare within one run: the machine may be shared, and only ratios are meaningful.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fastgrad.parameters import ParameterLayout
from fastgrad.torch import check_function
from fastgrad.torch.evaluator import TorchEvaluator
from fastgrad.torch.function import Call, InnerProduct


def layer(x, w, b):
    return torch.tanh(x @ w + b)


def inputs(size: int, device: str) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(size)
    shapes = [(size, size), (size, size), (size,)]
    return tuple((torch.randn(*shape, generator=generator, dtype=torch.float64) / size ** 0.5)
                 .to(device).requires_grad_(True) for shape in shapes)


def evaluator(size: int, batched: bool, device: str) -> TorchEvaluator:
    """The evaluator check_function builds for one cotangent of the layer."""
    tensors = inputs(size, device)
    leaves = {f"input{k}": t for k, t in enumerate(tensors)}
    u = torch.randn(size * size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scalar = InnerProduct(Call(layer, tensors, {}, list(leaves)), u.to(device), leaves,
                          size * size * 8, batched)
    theta = {name: t.detach().cpu().numpy() for name, t in leaves.items()}
    layout, flat = ParameterLayout.from_theta(theta)
    return TorchEvaluator(scalar, flat, (), layout)


def per_point(size: int, rows: int, reps: int, device: str) -> dict:
    """Fastest µs per point over ``reps`` runs of one chunk, vmap and one call per point."""
    result = {}
    for batched in (True, False):
        run = evaluator(size, batched, device)
        n = run.theta.size
        coords = np.random.default_rng(0).choice(n, min(rows, n), replace=False).astype(np.int64)
        values = run.theta[coords, None] + np.array([[1e-6, -1e-6]])
        out = np.empty(values.shape)
        best = np.inf
        for _ in range(reps):
            started = time.perf_counter()
            run.evaluate_chunk(run.workspace(), coords, values, out, 0, coords.size)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
        result[batched] = (n, 1e6 * best / values.size, run.notes()[0])
    return result


def timed(function, *args, **keywords) -> tuple[float, object]:
    started = time.perf_counter()
    value = function(*args, **keywords)
    return time.perf_counter() - started, value


def whole_checks(size: int, device: str) -> list[tuple[str, float, str]]:
    """(what, seconds, verdict) of fastgrad and gradcheck on the same layer."""
    tensors = inputs(size, device)
    rows = []
    for batched, what in ((True, "vmap"), (False, "one call per point"), ("auto", "auto")):
        seconds, report = timed(check_function, layer, *tensors, cotangents=1, seed=0,
                                batched=batched)
        rows.append((f"fastgrad check_function (batched={batched!r}: {what}, 1 cotangent)",
                     seconds, report.verdict))
    for fast in (False, True):
        seconds, passed = timed(torch.autograd.gradcheck, layer, tensors, fast_mode=fast,
                                raise_exception=False)
        rows.append((f"torch.autograd.gradcheck{' fast_mode' if fast else ''}", seconds,
                     "pass" if passed else "fail"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,32,64")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's intra-op threads (default: torch's own choice)")
    options = parser.parse_args()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    sizes = [int(s) for s in options.sizes.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads\n")
    print(f"## Per perturbed point, one chunk of {options.rows} rows x 2 points (CPU)\n")
    print("| n | vmap µs/point | one call per point µs/point | ratio | vmap batch |")
    print("|---:|---:|---:|---:|---|")
    for size in sizes:
        cost = per_point(size, options.rows, options.reps, "cpu")
        n, fast, note = cost[True]
        print(f"| {n:,} | {fast:.1f} | {cost[False][1]:.1f} | {cost[False][1] / fast:.1f}x | {note} |")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:  # torch.func's and the device's first-call costs, not timed
        whole_checks(4, device)
    for device in devices:
        print(f"\n## Whole checks on {device} (seconds, one run)\n")
        print("| n | check | seconds | verdict |")
        print("|---:|---|---:|---|")
        for size in sizes:
            n = 2 * size * size + size
            for what, seconds, verdict in whole_checks(size, device):
                print(f"| {n:,} | {what} | {seconds:.2f} | {verdict} |")
    if "cuda" not in devices:
        print("\nCUDA comparison skipped: no CUDA GPU (torch.cuda.is_available() is false)")


if __name__ == "__main__":
    main()
