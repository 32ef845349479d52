"""Parallel efficiency of a full fastgrad check of the Numba MLP loss (n = 14,218).

    python benchmarks/efficiency.py [--quick] [--rounds R] [--wait S]

For the MLP with d = 100, h = 128, c = 10 and m = 128 samples (n = 14,218 parameters)
it prints Markdown tables of

    E = (2n·T_f / workers) / T_check

for workers = 1 and every core, where T_check is the wall time of a warm
``fastgrad.check`` (the chunk kernel's compilation is timed separately) and T_f is one
loss evaluation, measured two ways:

* **Python** (used for E, the issue's definition): the median of single calls of
  ``mlp.loss(theta, X, Y)`` from Python, dispatch included, taken just before and just
  after each check (their mean is that check's T_f);
* **kernel**: the time per evaluation of fastgrad's own chunk kernel run on one thread
  over a block of rows (no Python between evaluations).

fastgrad.check makes more than 2n evaluations (f(θ) twice, the noise estimate, re-checks
of disagreeing coordinates), so E is also given on ``report.evaluations``.  Speed-ups are
against the seed's naive loop (copy θ, move coordinate i by ±eps, evaluate, for each i,
in Python) with the same compiled loss and with the NumPy loss ``mlp.loss_numpy``.

The machine may be shared.  Every timed interval records the cores used meanwhile by
this process and by all others (from /proc/stat); a check counts as *quiet* when others
used < 0.1 core during it and its two T_f measurements, and those two agree within 10 %.
The summary uses quiet checks only (all checks, flagged, when none was quiet).  The
machine's own speed also drifts (from outside a VM, invisible to /proc/stat), so a
last section times short runs back to back in alternating order: sampled checks on 1
and on all workers, and the "machine ceiling", the same bare loss calls from 1 and from
all nogil threads without fastgrad (a compiled loop: no chunks, no Python).
``--quick``: one round; naive loops and kernel on a sample of coordinates (extrapolated).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import threading
import time

import numba
import numpy as np
from fastgrad_bench.peers import naive_gradient

import fastgrad as fg
import fastgrad.engine as engine_module
from fastgrad.analysis import relative_error
from fastgrad.engine import Engine, available_cores
from fastgrad.engine.compiled import chunk_kernel
from fastgrad.models import mlp

D, H, C, M = 100, 128, 10, 128
TARGET = 0.85
#: Step of the naive loop: the classic recipe (see fastgrad.check's ``eps``).
NAIVE_EPS = 1e-7
#: A measurement is quiet when other processes used less than this many cores meanwhile.
QUIET_CORES = 0.1
#: ... and a check's T_f before and after it agree within this fraction.
T_F_AGREEMENT = 0.10


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_description() -> str:
    try:
        import threadpoolctl
    except ImportError:
        return "threadpoolctl not installed"
    return "; ".join(f"{i['internal_api']} {i.get('version', '')} ({i['num_threads']} threads)"
                     for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas") or "none"


def _machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class Timed:
    """Wall time of a block, and the cores used meanwhile by this process and by others
    (others: None where /proc/stat is missing; resolution one clock tick, 10 ms)."""

    def __enter__(self):
        self._busy, self._own, self._wall = (_machine_busy_seconds(), _own_cpu_seconds(),
                                             time.perf_counter())
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._wall
        own = _own_cpu_seconds() - self._own
        busy = _machine_busy_seconds()
        self.own_cores = own / self.seconds
        self.other_cores = (None if busy is None or self._busy is None
                            else max(0.0, (busy - self._busy - own) / self.seconds))
        return False

    @property
    def others(self) -> float:
        return self.other_cores or 0.0


def wait_until_quiet(limit_s: float) -> str:
    """Wait (up to limit_s) until other processes use less than QUIET_CORES for 2 s."""
    started = time.perf_counter()
    while True:
        with Timed() as timed:
            time.sleep(2.0)
        if timed.other_cores is None:
            return "n/a"
        waited = time.perf_counter() - started
        if timed.others < QUIET_CORES or waited >= limit_s:
            return f"{timed.others:.2f} after {waited:.0f} s"


# ----------------------------------------------------------------------------- measurements
def python_t_f(theta, args, calls: int) -> tuple[float, Timed]:
    """Median wall time of one call of mlp.loss from Python."""
    times = []
    with Timed() as timed:
        for _ in range(calls):
            started = time.perf_counter()
            mlp.loss(theta, *args)
            times.append(time.perf_counter() - started)
    return statistics.median(times), timed


def kernel_t_f(theta, args, rows: np.ndarray) -> tuple[float, Timed]:
    """Seconds per evaluation of fastgrad's chunk kernel, one call over ``rows``, one thread."""
    steps = 6.06e-6 * np.maximum(1.0, np.abs(theta[rows]))
    values = np.stack([theta[rows] + steps, theta[rows] - steps], axis=1)
    out = np.empty(values.shape)
    with Timed() as timed:
        chunk_kernel(mlp.loss)(theta.copy(), theta.shape, rows, values, out, 0, rows.size,
                               np.zeros(2, dtype=np.int64), args)
    return timed.seconds / values.size, timed


@numba.njit(nogil=True)
def _repeat_loss(theta, X, Y, count):
    total = 0.0
    for _ in range(count):
        total += mlp.loss(theta, X, Y)
    return total


def bare_loss_run(theta, args, evaluations: int, threads: int) -> None:
    """``evaluations`` bare loss calls split over ``threads`` nogil threads (no fastgrad)."""
    share = evaluations // threads
    pool = [threading.Thread(target=_repeat_loss, args=(theta.copy(), *args, share))
            for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def paired_efficiency(workloads: dict, workers: int, pairs: int) -> dict:
    """name -> [(T_serial / (workers·T_parallel), others' cores)] for ``pairs`` back-to-back
    runs of each workload's ``(serial, parallel)`` callables: workloads interleaved, order
    alternating (ABBA), so that the machine's drift mostly cancels."""
    results = {name: [] for name in workloads}
    for pair in range(pairs):
        for name, (serial, parallel) in workloads.items():
            timed = {}
            for label, run in ([("serial", serial), ("parallel", parallel)] if pair % 2 == 0
                               else [("parallel", parallel), ("serial", serial)]):
                with Timed() as timed[label]:
                    run()
            results[name].append((timed["serial"].seconds / (workers * timed["parallel"].seconds),
                                  max(timed["serial"].others, timed["parallel"].others)))
    return results


@contextlib.contextmanager
def engine_probe():
    """Time spent in Engine.perturbed (the parallel region) and Engine.at (single calls),
    and the chunk sizes chosen, during the block."""
    spent = {"perturbed": 0.0, "at": 0.0, "at_calls": 0, "chunks": []}
    perturbed, at, chunk_size = Engine.perturbed, Engine.at, engine_module.chunk_size

    def timed_perturbed(self, coords, values):
        started = time.perf_counter()
        try:
            return perturbed(self, coords, values)
        finally:
            spent["perturbed"] += time.perf_counter() - started

    def timed_at(self, *a, **k):
        started = time.perf_counter()
        try:
            return at(self, *a, **k)
        finally:
            spent["at"] += time.perf_counter() - started
            spent["at_calls"] += 1

    def logged_chunk_size(rows, points, workers, seconds_per_evaluation):
        size = chunk_size(rows, points, workers, seconds_per_evaluation)
        spent["chunks"].append((rows, size))
        return size

    Engine.perturbed, Engine.at, engine_module.chunk_size = (timed_perturbed, timed_at,
                                                             logged_chunk_size)
    try:
        yield spent
    finally:
        Engine.perturbed, Engine.at, engine_module.chunk_size = perturbed, at, chunk_size


def measured_check(problem, args, workers: int, t_f_calls: int, t_kernel: float) -> dict:
    """One warm check, bracketed by T_f measurements, with its efficiencies."""
    theta = problem.theta
    with Timed() as span:
        before, _ = python_t_f(theta, args, t_f_calls)
        with engine_probe() as probe, Timed() as timed:
            report = fg.check(mlp.loss, mlp.grad, problem.params, args, workers=workers)
        after, _ = python_t_f(theta, args, t_f_calls)
    if not report.passed or report.checked != problem.n:
        raise SystemExit(f"the check did not pass on the correct gradient:\n{report}")
    t_f = (before + after) / 2
    others = span.others
    n, seconds = problem.n, timed.seconds
    return {
        "workers": workers, "seconds": seconds, "evaluations": report.evaluations,
        "t_f": t_f, "t_f_before": before, "t_f_after": after, "t_kernel": t_kernel,
        "own_cores": timed.own_cores, "others": others,
        "quiet": others < QUIET_CORES and abs(before - after) <= T_F_AGREEMENT * t_f,
        "e_2n": 2 * n * t_f / workers / seconds,
        "e_evals": report.evaluations * t_f / workers / seconds,
        "e_2n_kernel": 2 * n * t_kernel / workers / seconds,
        "e_evals_kernel": report.evaluations * t_kernel / workers / seconds,
        "parallel": probe["perturbed"], "single": probe["at"], "single_calls": probe["at_calls"],
        "chunks": probe["chunks"],
        "e_parallel_kernel": report.evaluations * t_kernel / workers / probe["perturbed"],
    }


# ----------------------------------------------------------------------------- output
def spread(values, fmt: str) -> str:
    """median, with [min–max] when there are several values."""
    text = format(statistics.median(values), fmt)
    if len(values) > 1:
        text += f" [{min(values):{fmt}}–{max(values):{fmt}}]"
    return text


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _column(runs: list[dict], key: str, fmt: str = ".3f") -> str:
    return spread([run[key] for run in runs], fmt)


def summary_runs(runs: list[dict]) -> tuple[list[dict], str]:
    quiet = [run for run in runs if run["quiet"]]
    if quiet:
        return quiet, f"{len(quiet)} quiet of {len(runs)}"
    return runs, f"**none quiet**: all {len(runs)}, contended"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one round; naive loops and kernel on a sample of coordinates")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument("--wait", type=float, default=None,
                        help="before each round, wait up to this many seconds for other "
                             "processes to go quiet (default 120, quick 0)")
    opts = parser.parse_args()
    rounds = opts.rounds or (1 if opts.quick else 3)
    wait = opts.wait if opts.wait is not None else (0.0 if opts.quick else 120.0)
    cores = available_cores()
    worker_counts = sorted({1, min(2, cores), cores})
    t_f_calls = 300 if opts.quick else 500
    paired_rows, pairs = (1000, 4) if opts.quick else (1500, 12)

    problem = mlp.problem(d=D, h=H, c=C, m=M)
    n, theta, args = problem.n, problem.theta, (problem.X, problem.Y)
    naive_coords = (np.linspace(0, n - 1, 1500).astype(np.int64) if opts.quick
                    else np.arange(n, dtype=np.int64))
    kernel_rows = np.linspace(0, n - 1, 1500 if opts.quick else 2500).astype(np.int64)
    analytic = mlp.flatten(mlp.grad(problem.params, *args))

    print("# fastgrad parallel efficiency: full check of the Numba MLP loss\n")
    print(f"- command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {cores} available "
          f"to this process; {platform.system()} {platform.release()}")
    print(f"- python {platform.python_version()}, numpy {np.__version__}, "
          f"numba {numba.__version__}, fastgrad {getattr(fg, '__version__', '?')}; "
          f"BLAS: {blas_description()}")
    print(f"- problem: MLP d={D}, h={H}, c={C}, m={M}: n = {n:,}, 2n = {2 * n:,}")
    print(f"- {rounds} round(s){', quick' if opts.quick else ''}; a cell is the median "
          "[min–max] over the checks it covers")

    # ---- first calls, compiled outside the timed rounds
    with Timed() as first_loss:
        mlp.loss(theta, *args)
    with Timed() as cold:
        fg.check(mlp.loss, mlp.grad, problem.params, args, sample=16, seed=0)
    with Timed() as warm:
        fg.check(mlp.loss, mlp.grad, problem.params, args, sample=16, seed=0)
    mlp.loss_numpy(theta, *args)
    _repeat_loss(theta, *args, 1)

    runs: list[dict] = []
    extra = {key: [] for key in ("naive_numba", "naive_numpy", "waited", "kernel_others")}
    for round_ in range(rounds):
        extra["waited"].append(wait_until_quiet(wait) if wait else "not waited")
        t_kernel, kernel_timed = kernel_t_f(theta, args, kernel_rows)
        extra["kernel_others"].append(kernel_timed.others)
        for w in worker_counts:
            runs.append(dict(measured_check(problem, args, w, t_f_calls, t_kernel),
                             round=round_ + 1))
        for name, loss in (("naive_numba", mlp.loss), ("naive_numpy", mlp.loss_numpy)):
            with Timed() as timed:
                numerical = naive_gradient(loss, theta, args, NAIVE_EPS, naive_coords)
            if relative_error(numerical, analytic[naive_coords]) > 1e-6:
                raise SystemExit(f"the naive loop with {name} is wrong")
            extra[name].append(timed.seconds * n / naive_coords.size)
    paired = {}
    if cores > 1:
        coords = np.linspace(0, n - 1, paired_rows).astype(np.int64)

        def sampled_check(workers: int) -> None:
            fg.check(mlp.loss, mlp.grad, problem.params, args, sample=coords, workers=workers)

        evaluations = 2 * paired_rows
        extra["waited"].append(wait_until_quiet(wait) + " (paired runs)" if wait
                               else "not waited")
        paired = paired_efficiency({
            f"fastgrad.check, sample of {paired_rows:,} coordinates":
                (lambda: sampled_check(1), lambda: sampled_check(cores)),
            f"machine ceiling: {evaluations:,} bare loss calls, no fastgrad":
                (lambda: bare_loss_run(theta, args, evaluations, 1),
                 lambda: bare_loss_run(theta, args, evaluations, cores)),
        }, cores, pairs)
    print(f"- waited for others' load < {QUIET_CORES} core before each round: "
          + "; ".join(extra["waited"]) + "\n")

    by_workers = {w: [run for run in runs if run["workers"] == w] for w in worker_counts}
    all_t_f = [run["t_f"] for run in runs]
    all_kernel = [run["t_kernel"] for run in runs if run["workers"] == 1]
    print("## Compilation and one loss evaluation\n")
    print(table(["quantity", "value"], [
        ["first call of mlp.loss (Numba cache=True: disk cache load, or compile)",
         f"{first_loss.seconds * 1e3:.0f} ms"],
        ["first fastgrad.check (sample=16): chunk-kernel compile + check",
         f"{cold.seconds:.2f} s"],
        ["same check, warm", f"{warm.seconds * 1e3:.0f} ms"],
        ["→ compile / first-call overhead (excluded from T_check)",
         f"{cold.seconds - warm.seconds:.2f} s"],
        [(f"T_f, Python: median of {t_f_calls} single calls of mlp.loss, before and after "
          "each check  (**used for E**)"), f"{spread([t * 1e6 for t in all_t_f], '.1f')} µs"],
        [(f"T_f, kernel: per evaluation, one kernel call over {2 * kernel_rows.size:,} "
          "evaluations, 1 thread, each round"),
         f"{spread([t * 1e6 for t in all_kernel], '.1f')} µs"],
        ["T_f kernel / T_f Python (same round)",
         spread([run["t_kernel"] / run["t_f"] for run in runs if run["workers"] == 1], ".3f")],
    ]))

    print("\n## Parallel efficiency E = (evaluations·T_f / workers) / T_check\n")
    best_t_f = min(min(run["t_f_before"], run["t_f_after"]) for run in runs)
    rows = []
    for w in worker_counts:
        chosen, which = summary_runs(by_workers[w])
        rows.append([str(w), which, _column(chosen, "seconds", ".2f"),
                     f"{statistics.median(run['evaluations'] for run in chosen):,.0f}",
                     f"**{_column(chosen, 'e_2n')}**", _column(chosen, "e_evals"),
                     _column(chosen, "e_2n_kernel"), _column(chosen, "e_evals_kernel"),
                     _column(chosen, "own_cores", ".2f"), _column(chosen, "others", ".2f"),
                     f"{2 * n * best_t_f / w / min(run['seconds'] for run in by_workers[w]):.3f}"])
    print(table(["workers", "checks", "T_check s", "report.evaluations",
                 "**E (2n, T_f Python)**", "E (evaluations, T_f Python)", "E (2n, T_f kernel)",
                 "E (evaluations, T_f kernel)", "cores used by the check",
                 "cores used by others", "E best-of (2n, min T_f Python, min T_check)"], rows))
    print(f"\nBest-of: the fastest T_f seen ({best_t_f * 1e6:.1f} µs) and the fastest check of "
          "all rounds, i.e. the machine at its fast speed (it switches between speeds).")
    best = worker_counts[-1]
    chosen, which = summary_runs(by_workers[best])
    e_best = statistics.median(run["e_2n"] for run in chosen)
    print(f"\nTarget E ≥ {TARGET} with {best} workers (E on 2n, T_f Python, {which} checks): "
          f"**{'met' if e_best >= TARGET else 'NOT met'}** ({e_best:.3f}).")
    scaling = [(one["seconds"] / (best * many["seconds"]), one["quiet"] and many["quiet"])
               for one, many in zip(by_workers[1], by_workers[best], strict=True)]
    shown = [e for e, quiet in scaling if quiet] or [e for e, _ in scaling]
    print(f"Without T_f: T_check(1) / ({best}·T_check({best})), same round: "
          f"{spread(shown, '.3f')} ({sum(quiet for _, quiet in scaling)} rounds with both "
          "checks quiet).")
    if paired:
        print(f"\n## Paired short runs: E = T_1 / ({cores}·T_{cores}), back to back, "
              f"alternating order ({pairs} pairs)\n")
        print("Full checks last 7-15 s, and this machine's speed drifts by ±25 % over such "
              "times (from outside this VM: steal time stays near 0), so E from T_f measured "
              "at another moment is rough. Short back-to-back pairs cancel most of the drift; "
              f"pairs where others used ≥ {QUIET_CORES} core are left out.\n")
        rows = []
        for name, results in paired.items():
            quiet = [e for e, others in results if others < QUIET_CORES]
            shown = quiet or [e for e, _ in results]
            rows.append([name, f"{len(quiet)} of {len(results)}", spread(shown, ".3f")])
        print(table(["work", "quiet pairs", f"E with {cores} workers/threads"], rows))
        (_, checked), (_, bare) = paired.items()
        check_e = statistics.median([e for e, o in checked if o < QUIET_CORES]
                                    or [e for e, _ in checked])
        bare_e = statistics.median([e for e, o in bare if o < QUIET_CORES] or [e for e, _ in bare])
        print(f"\nfastgrad's paired E / machine ceiling = {check_e / bare_e:.3f}.")

    print("\n## Every check (others' cores in parentheses; * = quiet)\n")
    rows = []
    for run in runs:
        rows.append([str(run["round"]), str(run["workers"]) + ("*" if run["quiet"] else ""),
                     f"{run['t_f_before'] * 1e6:.0f} / {run['t_f_after'] * 1e6:.0f}",
                     f"{run['t_kernel'] * 1e6:.0f}",
                     f"{run['seconds']:.2f} ({run['others']:.2f})", f"{run['own_cores']:.2f}",
                     f"{run['e_2n']:.3f}", f"{run['e_2n_kernel']:.3f}"])
    print(table(["round", "workers", "T_f Python before / after µs", "T_f kernel µs",
                 "T_check s", "cores used by the check", "E (2n, T_f Python)",
                 "E (2n, T_f kernel)"], rows))
    print("\n## Where a warm check's time goes\n")
    rows = []
    for w in worker_counts:
        chosen, which = summary_runs(by_workers[w])
        total = statistics.median(run["seconds"] for run in chosen)
        parallel = statistics.median(run["parallel"] for run in chosen)
        single = statistics.median(run["single"] for run in chosen)
        calls = chosen[0]["single_calls"]
        chunks = ", ".join(f"{size} rows of {r:,}" for r, size in chosen[0]["chunks"])
        rows.append([str(w), which, f"{total:.3f}", f"{parallel:.3f}",
                     f"{single * 1e3:.1f} ({calls} calls)",
                     f"{(total - parallel - single) * 1e3:.1f}", chunks,
                     spread([run["e_parallel_kernel"] for run in chosen], ".3f")])
    print(table(["workers", "checks", "T_check s", "parallel region s (Engine.perturbed)",
                 "single evaluations ms (f(θ) ×2, noise estimate)", "rest ms",
                 "chunk size", "E of the parallel region alone (evaluations, T_f kernel)"],
                rows))

    print("\n## Speed-up of the check over the naive loop (T_naive / T_check)\n")
    naive_note = ("" if naive_coords.size == n else
                  f" (timed on {naive_coords.size:,} coordinates, scaled to n)")
    t_numba = statistics.median(extra["naive_numba"])
    t_numpy = statistics.median(extra["naive_numpy"])
    rows = [[f"naive loop, compiled mlp.loss{naive_note}", spread(extra["naive_numba"], ".2f"),
             f"{1e6 * t_numba / (2 * n):.1f}", "", ""],
            [f"naive loop, NumPy mlp.loss_numpy{naive_note}",
             spread(extra["naive_numpy"], ".2f"), f"{1e6 * t_numpy / (2 * n):.1f}", "", ""]]
    for w in worker_counts:
        seconds = statistics.median(run["seconds"] for run in by_workers[w])
        rows.append([f"fastgrad.check, {w} worker{'s' if w > 1 else ''} (all checks)",
                     f"{seconds:.2f}", f"{1e6 * seconds / (2 * n):.1f}",
                     f"{t_numba / seconds:.2f}×", f"{t_numpy / seconds:.2f}×"])
    print(table(["", "seconds", "µs per evaluation (of 2n)", "vs naive compiled",
                 "vs naive NumPy"], rows))
    print("\nThe naive loops are timed once a round, not bracketed: on a busy machine "
          "these ratios are rough.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
