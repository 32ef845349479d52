"""Where the chunks run, for the loss most people write: the NumPy MLP on the calling thread,
on a process pool, and on a dask ``LocalCluster``; the compiled MLP on threads; and what
each executor costs per chunk beyond the loss's own time.

The process pool and the cluster are started and warmed with a check outside the timings
(a pool starts once per Python process, a cluster runs apart); so is each worker's first
call of the loss (~0.4 s here: its imports and Numba's cache), which a script pays once.
Parallel efficiency E = 2n·T_f / (P·T): T_f is the mean time of a NumPy loss call from
Python with BLAS held to one thread (the setting every worker runs with; the faster one on
this machine, see ``blas_oversubscription.py``), P the workers, T the check's wall time.
The mean, not the median: 2n calls take 2n times the mean of a skewed distribution (the
NumPy MLP at n = 9,610: median 38.2 µs, mean 39.6 µs over a loop of 20,000 calls, and
the median of single calls understates the serial work by 4-8 %); the median is recorded
beside it (``t_f_median_s``).  The cost per
chunk is (P·T_batches − E_evals·T_f) / chunks, where T_batches is the time the check spent
in its executor's batches and E_evals its evaluations: the seconds of a worker that a chunk
costs besides its evaluations (transfers, scheduling, dispatch, the model's first arrival).
"""

from __future__ import annotations

import time

from fastgrad.api import check
from fastgrad.engine import available_cores
from fastgrad.engine.blas import limit_blas_threads
from fastgrad.models import mlp

from .common import Line, Section, Sizes, fmt_seconds, fmt_speedup, judged, timed
from .peers import _flat_grad
from .scaling import loss_seconds

TARGET_PROCESS_SPEEDUP, TARGET_PROCESS_EFFICIENCY = 1.7, 0.85  # processes vs serial, n ≈ 10^4
TARGET_FORWARD_VS_SCIPY = 1.7  # method="forward" on processes vs scipy.optimize.check_grad
TARGET_CLUSTER_EFFICIENCY = 0.75  # a LocalCluster of 2 worker processes, n ≈ 10^5
TARGET_THREADS_EFFICIENCY = 0.85  # a compiled loss on threads, n ≈ 10^4


#: The mean time of a loss call is taken over a loop of at least this many seconds.
MEAN_OVER_SECONDS = 1.0


def numpy_loss_seconds(problem, calls: int) -> float:
    """T_f of ``mlp.loss_numpy``, BLAS on one thread: the mean time of a call over a loop of
    at least ``calls`` calls and MEAN_OVER_SECONDS, after one call to warm up."""
    theta, args = problem.theta, (problem.X, problem.Y)
    with limit_blas_threads(1):
        mlp.loss_numpy(theta, *args)
        done, started = 0, time.perf_counter()
        while done < calls or time.perf_counter() - started < MEAN_OVER_SECONDS:
            mlp.loss_numpy(theta, *args)
            done += 1
        return (time.perf_counter() - started) / done


def numpy_loss_median_seconds(problem, calls: int) -> float:
    """The median of ``calls`` single calls (see :func:`.scaling.loss_seconds`), BLAS on one thread."""
    with limit_blas_threads(1):
        return loss_seconds(problem, calls, mlp.loss_numpy)


def run_on(problem, loss, t_f: float, **options) -> dict:
    """One full check of ``problem`` with ``options``; its time, efficiency and cost per chunk."""
    report, seconds = timed(lambda: check(loss, _flat_grad(problem), problem.theta,
                                          (problem.X, problem.Y), **options))
    workers, batches = report.workers, report.timings.get("batches", 0.0)
    overhead = (workers * batches - report.evaluations * t_f) / max(report.chunks, 1)
    return {"seconds": seconds, "executor": report.executor, "workers": workers,
            "chunks": report.chunks, "evaluations": report.evaluations,
            "verdict": report.verdict, "batches_s": batches,
            "efficiency": 2 * problem.n * t_f / (workers * seconds),
            "overhead_per_chunk_s": overhead}


def _row_text(row: dict) -> str:
    return (f"{fmt_seconds(row['seconds'])}, E = {row['efficiency']:.2f}, {row['chunks']} chunks, "
            f"{fmt_seconds(row['overhead_per_chunk_s'])} a chunk beyond the loss")


def measure_executors(sizes: Sizes) -> Section:
    """Serial, processes and (with dask) a LocalCluster on the NumPy MLP at n ≈ 10^4 and
    10^5; forward differences on processes against SciPy; the compiled MLP on threads."""
    workers = available_cores()
    section = Section("executors", "executors: serial, threads, processes, a dask cluster",
                      {"workers": workers, "m": sizes.m, "sizes": []})
    shapes = sizes.scaling_shapes[-2:]
    for number, shape in enumerate(shapes):
        problem = mlp.problem(*shape, m=sizes.m)
        t_f = numpy_loss_seconds(problem, sizes.single_calls)
        row = {"n": problem.n, "shape": shape, "t_f_s": t_f,
               "t_f_median_s": numpy_loss_median_seconds(problem, sizes.single_calls)}
        if number == 0:  # start the pool; each worker's first call of the loss (its imports)
            check(mlp.loss_numpy, _flat_grad(problem), problem.theta, (problem.X, problem.Y),
                  executor="processes", workers=workers)
        row["serial"] = run_on(problem, mlp.loss_numpy, t_f, executor="serial")
        row["processes"] = run_on(problem, mlp.loss_numpy, t_f, executor="processes",
                                  workers=workers)
        speedup = row["serial"]["seconds"] / row["processes"]["seconds"]
        row["speedup"] = speedup
        section.figures["sizes"].append(row)
        n = f"n = {problem.n:,}"
        section.lines.append(Line(f"NumPy MLP on the calling thread, {n}",
                                  f"{_row_text(row['serial'])} (T_f {fmt_seconds(t_f)})"))
        label = f"processes ({workers}) vs the calling thread, {n}"
        text = f"{fmt_speedup(speedup)}; {_row_text(row['processes'])}"
        if number == 0:
            efficiency = row["processes"]["efficiency"]
            section.lines.append(judged(label, text, f"≥ {TARGET_PROCESS_SPEEDUP}×, "
                                        f"E ≥ {TARGET_PROCESS_EFFICIENCY}",
                                        speedup >= TARGET_PROCESS_SPEEDUP
                                        and efficiency >= TARGET_PROCESS_EFFICIENCY,
                                        "see the cost per chunk and the machine's load"))
            section.lines.append(_forward_vs_scipy(problem, workers, section.figures))
            section.lines.append(_threads_compiled(problem, workers, section.figures))
        else:
            section.lines.append(Line(label, text))
            section.lines.append(_cluster(problem, t_f, workers, section.figures))
    return section


def _forward_vs_scipy(problem, workers: int, figures: dict) -> Line:
    """``method="forward"`` on processes against ``scipy.optimize.check_grad`` (n + 1
    forward differences on the calling thread), same loss, same θ."""
    label = f"forward screen on processes vs scipy check_grad, n = {problem.n:,}"
    try:
        from scipy.optimize import check_grad
    except ImportError:
        return Line(label, "not run", "", "skipped", "scipy is not installed")
    grad, args = _flat_grad(problem), (problem.X, problem.Y)
    with limit_blas_threads(1):
        scipy_s = timed(lambda: check_grad(mlp.loss_numpy, grad, problem.theta, *args))[1]
    report, forward_s = timed(lambda: check(mlp.loss_numpy, grad, problem.theta, args,
                                            method="forward", executor="processes",
                                            workers=workers))
    ratio = scipy_s / forward_s
    figures["forward_vs_scipy"] = {"n": problem.n, "scipy_s": scipy_s, "forward_s": forward_s,
                                   "evaluations": report.evaluations, "ratio": ratio}
    return judged(label, f"{fmt_speedup(ratio)} ({fmt_seconds(forward_s)} vs {fmt_seconds(scipy_s)}, "
                  f"{report.evaluations:,} evaluations vs n + 1)", f"≥ {TARGET_FORWARD_VS_SCIPY}×",
                  ratio >= TARGET_FORWARD_VS_SCIPY, "see the cost per chunk")


def _threads_compiled(problem, workers: int, figures: dict) -> Line:
    """The compiled MLP (``mlp.loss``) on threads: efficiency and cost per chunk."""
    from .scaling import kernel_seconds, warm_up

    warm_up(problem.m)
    t_f = loss_seconds(problem, 200)
    row = run_on(problem, mlp.loss, t_f, executor="threads", workers=workers)
    # A compiled evaluation inside the chunk kernel is faster than a call from Python: the
    # cost per chunk is counted against the kernel's serial time per evaluation.
    t_kernel = kernel_seconds(problem, t_f)
    row["overhead_per_chunk_s"] = (workers * row["batches_s"] - row["evaluations"] * t_kernel) \
        / max(row["chunks"], 1)
    figures["threads_compiled"] = {"n": problem.n, "t_f_s": t_f, "t_f_kernel_s": t_kernel, **row}
    return judged(f"compiled MLP on threads ({workers}), n = {problem.n:,}", _row_text(row),
                  f"E ≥ {TARGET_THREADS_EFFICIENCY}", row["efficiency"] >= TARGET_THREADS_EFFICIENCY,
                  "see the efficiency section for the machine's ceiling")


def _cluster(problem, t_f: float, workers: int, figures: dict) -> Line:
    """A ``distributed.LocalCluster`` of ``workers`` worker processes (one thread each, TCP on
    localhost): efficiency of a full check, started and warmed outside the timing."""
    label = f"dask LocalCluster ({workers} worker processes), n = {problem.n:,}"
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return Line(label, "not run", "", "skipped", "dask.distributed is not installed "
                    "(pip install fastgrad[dask])")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        small = mlp.problem(4, 5, 3, m=4)
        check(mlp.loss_numpy, _flat_grad(small), small.theta, (small.X, small.Y), executor=client)
        row = run_on(problem, mlp.loss_numpy, t_f, executor=client)
    figures["cluster"] = {"n": problem.n, "t_f_s": t_f, **row}
    return judged(label, _row_text(row), f"E ≥ {TARGET_CLUSTER_EFFICIENCY}",
                  row["efficiency"] >= TARGET_CLUSTER_EFFICIENCY, "see the cost per chunk")

