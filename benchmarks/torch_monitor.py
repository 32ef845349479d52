"""What fastgrad.torch.Monitor costs a PyTorch training loop, at every=100.

    python benchmarks/torch_monitor.py [--steps 1000] [--reps 3] [--every 100]
                                       [--rows 4,8] [--threads 1] [--models mlp64,mlp256,cnn]

Three training loops, Adam, float32, each without and with
``Monitor(net, cross_entropy, every, sample=64, directions=2, rows=k)``:

* ``mlp64``, ``mlp256``: an MLP 32 → w → w → 10 (tanh; n = 6,922 and 76,810 parameters) on
  batches of 256 rows: toy steps of about a millisecond;
* ``cnn``: a LeNet-style CNN (conv 5×5 ×16, ReLU, max-pool, conv 5×5 ×32, ReLU, max-pool,
  linear 512 → 10; n = 18,378) on batches of 128 images 28 × 28.

A check makes about 2·sample + 17 evaluations of the loss on k rows (and a float32 check that
does not pass is judged again in float64), so its share of a loop is about
(2·64 + 17)·k / (every · 3 · batch) in forward passes, times how much less efficient a
forward pass on k rows is than the training step's on a whole batch; plus what a check costs
besides (O(n) Gaussian directions, the noise estimate, the analysis: about a millisecond).

Runs are interleaved (the order alternating), medians over the repetitions.  Prints a
Markdown table: the plain loop's time, the monitor's own time (``mon.seconds``: reading the
parameters, the gradient on k rows, the check), the overhead ``mon.seconds`` / plain loop
(the target: < 5 %), the checks' verdicts, and the wall-clock difference of the two loops
(which swings by several % of a loop on a shared machine).

Compare within one run: the machine may be shared, and only ratios are meaningful.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastgrad.torch import Monitor

TARGET = 0.05


def model(name: str) -> tuple[torch.nn.Module, tuple[int, ...], int]:
    """(the network, one input's shape, the batch size)."""
    torch.manual_seed(0)
    if name == "cnn":
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                  torch.nn.Conv2d(16, 32, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                  torch.nn.Flatten(), torch.nn.Linear(512, 10))
        return net, (1, 28, 28), 128
    width = int(name.removeprefix("mlp"))
    net = torch.nn.Sequential(torch.nn.Linear(32, width), torch.nn.Tanh(),
                              torch.nn.Linear(width, width), torch.nn.Tanh(),
                              torch.nn.Linear(width, 10))
    return net, (32,), 256


def loop(name: str, steps: int, every: int, rows: int | None,
         monitored: bool) -> tuple[float, float, list[str]]:
    """(seconds of the loop, seconds of the monitor, the checks' verdicts)."""
    net, shape, batch = model(name)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(steps, batch, *shape, generator=generator)
    Y = torch.randint(0, 10, (steps, batch), generator=generator)
    loss_fn = torch.nn.functional.cross_entropy
    mon = Monitor(net, loss_fn, every=every, sample=64, directions=2, rows=rows,
                  on_fail=lambda report: None) if monitored else None
    started = time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad()
        loss_fn(net(X[step]), Y[step]).backward()
        if mon is not None:
            mon.step(X[step], Y[step])
        optimizer.step()
    seconds = time.perf_counter() - started
    return seconds, (mon.seconds if mon else 0.0), ([h["verdict"] for h in mon.history] if mon else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--rows", default="4,8", help="rows of the batch a check uses, one row each")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default="mlp64,mlp256,cnn")
    options = parser.parse_args()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    loop("mlp64", 2 * options.every, options.every, 8, True)  # first-call costs, not timed
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; {options.steps} "
          f"steps, every={options.every}, sample=64, directions=2; medians of {options.reps}\n")
    print("| loop | parameters | rows | plain loop s | monitor s (checks) | overhead mon.seconds / loop "
          "| target | verdicts | wall-clock difference |")
    print("|---|---:|---:|---:|---:|---:|---|---|---:|")
    for name in options.models.split(","):
        n = sum(p.numel() for p in model(name)[0].parameters())
        for rows in (int(k) for k in options.rows.split(",")):
            plain, monitored, own, verdicts = [], [], [], []
            for rep in range(options.reps):
                for with_monitor in ((False, True) if rep % 2 == 0 else (True, False)):
                    seconds, mon_seconds, judged = loop(name, options.steps, options.every, rows,
                                                        with_monitor)
                    (monitored if with_monitor else plain).append(seconds)
                    if with_monitor:
                        own.append(mon_seconds)
                        verdicts += judged
            base, mon_time = statistics.median(plain), statistics.median(own)
            wall = statistics.median(monitored) / base - 1
            counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("pass", "warn", "fail")
                               if verdicts.count(v))
            met = "< 5 %: met" if mon_time / base < TARGET else "< 5 %: NOT met"
            print(f"| {name} | {n:,} | {rows} | {base:.2f} | {mon_time:.3f} "
                  f"({len(verdicts) // options.reps}) | {mon_time / base:.1%} | {met} | {counts} "
                  f"| {wall:+.1%} |")


if __name__ == "__main__":
    main()
