"""What a perturbed point costs fastgrad.jax: in a jax.vmap batch under jax.jit, or in one
jitted call per point (the fallback, and ``engine="python"``).

    python benchmarks/jax_vmap.py [--reps 5]

For y = tanh(W·x) (a jax.custom_vjp layer; x and W are the inputs, n = |x| + |W|) prints a
Markdown table: the compile time of the vmapped function (first batch of 512 points), then
the steady-state time per point of 512-point batches and of 512 single jitted calls, medians
over the repetitions, and their ratio.  Compare within one run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastgrad.jax.function import Inputs, JaxFunction, x64

POINTS = 512


def layer(x, w):
    return jnp.tanh(w @ x)


def measure(n_in: int, n_out: int, reps: int) -> list[str]:
    rng = np.random.default_rng(0)
    function = JaxFunction(layer, Inputs.of((rng.standard_normal(n_in),
                                             rng.standard_normal((n_out, n_in))), {}))
    u = rng.standard_normal(n_out)
    coords = rng.integers(0, function.layout.size, POINTS)
    values = function.x[coords] + 1e-6
    with x64():
        theta = jnp.asarray(function.x)
    started = time.perf_counter()
    function.inner_batch(theta, coords, values, u)
    compile_seconds = time.perf_counter() - started
    batched, single = [], []
    for _ in range(reps):
        started = time.perf_counter()
        function.inner_batch(theta, coords, values, u)
        batched.append((time.perf_counter() - started) / POINTS)
        point = function.x.copy()
        started = time.perf_counter()
        for coordinate, value in zip(coords, values, strict=True):
            point[coordinate] = value
            function.inner_single(point, u)
            point[coordinate] = function.x[coordinate]
        single.append((time.perf_counter() - started) / POINTS)
    b, s = statistics.median(batched), statistics.median(single)
    return [f"| {function.layout.size:,} | {compile_seconds:.2f} | {1e6 * b:.1f} | {1e6 * s:.1f} | "
            f"{s / b:.1f} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    reps = parser.parse_args().reps
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {POINTS} points per batch\n")
    print("| n | compile (s) | vmap batch (µs/point) | single jitted call (µs/point) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for n_in, n_out in ((20, 10), (100, 30), (300, 100), (1000, 300)):
        for line in measure(n_in, n_out, reps):
            print(line)


if __name__ == "__main__":
    main()
