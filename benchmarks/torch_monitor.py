"""What fastgrad.torch.Monitor costs a PyTorch training loop, at every=100.

    python benchmarks/torch_monitor.py [--steps 1000] [--reps 3] [--every 100] [--rows 8]
                                       [--threads N] [--widths 64,256]

An MLP (32 → w → w → 10, tanh, float32; w = 64: n = 7,050 parameters, w = 256: 77,066)
trained by Adam on batches of 256 rows, without and with ``Monitor(net, cross_entropy,
every, sample=64, directions=2, rows=rows)``; runs interleaved (the order alternating),
medians over the repetitions.
Prints a Markdown table: the plain loop's time, the monitor's own time (``mon.seconds``:
reading the parameters, the gradient of ``rows`` rows, the check), the overhead
``mon.seconds`` / plain loop (the target: < 5 %), and the wall-clock difference of the two
loops (which swings by several % of a loop on a shared machine).  ``--rows 0`` checks
``.grad`` itself on the whole batch.

Compare within one run: the machine may be shared, and only ratios are meaningful.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastgrad.torch import Monitor

TARGET = 0.05


def loop(steps: int, every: int, rows: int | None, monitored: bool,
         width: int = 64) -> tuple[float, float, int]:
    """(seconds of the loop, seconds of the monitor, checks run)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, width), torch.nn.Tanh(),
                              torch.nn.Linear(width, width), torch.nn.Tanh(),
                              torch.nn.Linear(width, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    X = torch.randn(steps, 256, 32)
    Y = torch.randint(0, 10, (steps, 256))
    loss_fn = torch.nn.functional.cross_entropy
    mon = Monitor(net, loss_fn, every=every, sample=64, directions=2, rows=rows) if monitored else None
    started = time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad()
        loss_fn(net(X[step]), Y[step]).backward()
        if mon is not None:
            mon.step(X[step], Y[step])
        optimizer.step()
    seconds = time.perf_counter() - started
    return seconds, (mon.seconds if mon else 0.0), (len(mon.history) if mon else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--widths", default="64,256", help="hidden widths, one row each")
    options = parser.parse_args()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    rows = options.rows or None
    loop(2 * options.every, options.every, rows, True)  # first-call costs (torch.func), not timed
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; {options.steps} "
          f"steps, every={options.every}, sample=64, directions=2, rows={rows}; "
          f"medians of {options.reps}\n")
    print("| width | parameters | plain loop s | monitor s (checks) | overhead mon.seconds / loop "
          "| target | wall-clock difference |")
    print("|---:|---:|---:|---:|---:|---|---:|")
    for width in (int(w) for w in options.widths.split(",")):
        plain, monitored, own, checks = [], [], [], 0
        for rep in range(options.reps):
            for with_monitor in ((False, True) if rep % 2 == 0 else (True, False)):
                seconds, mon_seconds, checks = loop(options.steps, options.every, rows,
                                                    with_monitor, width)
                (monitored if with_monitor else plain).append(seconds)
                if with_monitor:
                    own.append(mon_seconds)
        base, mon_time = statistics.median(plain), statistics.median(own)
        wall = statistics.median(monitored) / base - 1
        n = 32 * width + width + width * width + width + width * 10 + 10
        print(f"| {width} | {n:,} | {base:.2f} | {mon_time:.3f} ({checks}) | {mon_time / base:.1%} "
              f"| {'< 5 %: met' if mon_time / base < TARGET else '< 5 %: NOT met'} | {wall:+.1%} |")


if __name__ == "__main__":
    main()
