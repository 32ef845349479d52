"""Measurements that need a fresh process: the first check (cold and warm Numba cache), and
peak memory against n.

Each runs ``python -c CODE`` whose last stdout line is JSON (see :func:`.common.run_python`).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile

import numpy as np

from .common import Line, Section, Sizes, fmt_seconds, judged, run_python

TARGET_WARM_S = 2.0

FIRST_CHECK = """
import json, time
started = time.perf_counter()
import fastgrad as fg
from fastgrad.models import mlp
imported = time.perf_counter()
problem = mlp.problem({d}, {h}, {c}, m={m})
ready = time.perf_counter()
report = fg.check(mlp.loss, mlp.grad, problem.params, (problem.X, problem.Y))
done = time.perf_counter()
fg.check(mlp.loss, mlp.grad, problem.params, (problem.X, problem.Y))
again = time.perf_counter()
print(json.dumps({{"import_s": imported - started, "setup_s": ready - imported,
                  "first_check_s": done - ready, "second_check_s": again - done,
                  "import_and_first_check_s": imported - started + done - ready,
                  "verdict": report.verdict, "n": problem.n}}))
"""

MEMORY = """
import json, resource
import fastgrad as fg
from fastgrad.models import logistic as lg

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

def rss_kib(field):
    try:
        with open("/proc/self/status") as status:
            for row in status:
                if row.startswith(field + ":"):
                    return int(row.split()[1])
    except OSError:
        return None

def reset_high_water():
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False

tiny = lg.problem(m=20, n=100, per_row=3)  # compiles the loss and the kernel first
fg.check(lg.loss, lg.grad, tiny.theta, tiny.args, workers={workers})
problem = lg.problem(m={rows}, n={n}, per_row=5)
baseline = peak_kib()
held = rss_kib("VmRSS")
reset = reset_high_water()
report = fg.check(lg.loss, lg.grad, problem.theta, problem.args, workers={workers})
peak = peak_kib()
high_water = rss_kib("VmHWM") if reset else None
ru_delta = (peak - baseline) * 1024
print(json.dumps({{"n": {n}, "workers": {workers}, "ru_maxrss_before_kib": baseline,
                  "ru_maxrss_after_kib": peak, "ru_maxrss_delta_bytes": ru_delta,
                  "rss_before_kib": held, "high_water_kib": high_water,
                  "high_water_delta_bytes": (high_water - held) * 1024 if reset else None,
                  "delta_bytes": (high_water - held) * 1024 if reset else ru_delta,
                  "measure": "VmHWM after clear_refs" if reset else "ru_maxrss",
                  "evaluations": report.evaluations, "verdict": report.verdict,
                  "rows": report.checked, "chunks": report.chunks}}))
"""


# ------------------------------------------------------------------------------ first check
def measure_first_check(sizes: Sizes) -> Section:
    """The first check in a fresh process, cold Numba cache (a new NUMBA_CACHE_DIR) and warm."""
    d, h, c = sizes.startup_shape
    code = FIRST_CHECK.format(d=d, h=h, c=c, m=sizes.m)
    cold, warm, cache_dirs = [], [], []
    try:
        for _ in range(sizes.cold_runs):
            cache_dirs.append(tempfile.mkdtemp(prefix="fastgrad-bench-numba-"))
            cold.append(_first_check_run(code, cache_dirs[-1]))
        for _ in range(sizes.warm_runs):
            warm.append(_first_check_run(code, cache_dirs[0]))
    finally:
        for directory in cache_dirs:
            shutil.rmtree(directory, ignore_errors=True)
    section = Section("startup", "first check in a fresh process",
                      {"n": cold[0]["n"], "cold": cold, "warm": warm})
    for name, runs in (("cold", cold), ("warm", warm)):
        first = statistics.median(run["import_and_first_check_s"] for run in runs)
        wall = statistics.median(run["process_wall_s"] for run in runs)
        section.figures[f"{name}_import_and_first_check_s"] = first
        text = (f"{fmt_seconds(first)} import + first check (process {fmt_seconds(wall)}, "
                f"second check {fmt_seconds(statistics.median(r['second_check_s'] for r in runs))})")
        label = f"first check in a fresh process, {name} Numba cache, n = {cold[0]['n']:,}"
        if name == "warm":
            why = (f"the chunk kernel takes the loss as an argument and cannot be cached on disk: "
                   f"it is compiled in every process (first check {fmt_seconds(first)} vs second "
                   f"{fmt_seconds(statistics.median(r['second_check_s'] for r in runs))})")
            section.lines.append(judged(label, text, f"< {TARGET_WARM_S:g} s", first
                                        < TARGET_WARM_S, why))
        else:
            section.lines.append(Line(label, text))
    return section


def _first_check_run(code: str, cache_dir: str) -> dict:
    result, wall = run_python(code, env={"NUMBA_CACHE_DIR": cache_dir})
    result["process_wall_s"] = wall
    return result


# ------------------------------------------------------------------------------ memory
def measure_memory(sizes: Sizes, workers: int) -> Section:
    """Peak memory of a full check against n, with 1 and ``workers`` workers (one process each).

    The loss is the sparse logistic regression with a fixed number of rows: its cost does
    not grow with n, so full checks up to millions of parameters stay short.

    The baseline holds θ and the data (and the compiled kernel).  On Linux the peak is
    VmHWM, reset through /proc/self/clear_refs just before the check: ru_maxrss cannot be
    reset, and a child process inherits its parent's ru_maxrss across fork and exec, so
    its delta reads 0 whenever the parent (this bench) peaked higher.  ru_maxrss's delta is
    in the JSON too, and is the figure where /proc is not available.
    """
    section = Section("memory", "peak memory of a full check against n",
                      {"loss": "models.logistic, 100 rows x 5 features", "runs": []})
    counts = sorted({1, workers})
    for n in sizes.memory_sizes:
        for count in counts:
            result, wall = run_python(MEMORY.format(n=n, workers=count, rows=100))
            result["process_wall_s"] = wall
            result["bytes_per_parameter"] = result["delta_bytes"] / n
            section.figures["runs"].append(result)
    by = {(run["n"], run["workers"]): run for run in section.figures["runs"]}
    for n in sizes.memory_sizes:
        top = by[n, counts[-1]]
        extra = (top["delta_bytes"] - by[n, 1]["delta_bytes"]) / n if len(counts) > 1 else None
        section.lines.append(Line(
            f"peak memory of a full check, n = {n:,}",
            f"+{top['delta_bytes'] / 2**20:.1f} MiB = {top['bytes_per_parameter']:.0f} B/parameter "
            f"({counts[-1]} workers, {top.get('chunks', '?')} chunks)"
            + (f"; {extra:.1f} B/parameter more than 1 worker" if extra is not None else "")))
    fits = {count: _linear_fit([(n, by[n, count]["delta_bytes"]) for n in sizes.memory_sizes])
            for count in counts}
    section.figures["fit"] = {str(count): fit for count, fit in fits.items()}
    for count, fit in fits.items():
        section.lines.append(Line(
            f"  peak memory fit over n, {count} worker{'s' if count > 1 else ''}",
            f"{fit['intercept_bytes'] / 2**20:+.1f} MiB + {fit['bytes_per_parameter']:.1f} B × n"
            f" (largest residual {fit['worst_residual_bytes'] / 2**20:.1f} MiB)"))
    if len(counts) > 1:
        per_worker = (fits[counts[-1]]["bytes_per_parameter"] - fits[1]["bytes_per_parameter"]) \
            / (counts[-1] - 1)
        section.figures["bytes_per_parameter_per_extra_worker"] = per_worker
        section.lines.append(Line("  each extra worker adds", f"{per_worker:.1f} B × n "
                                  "(its private copy of θ is 8 B × n)"))
    return section


def _linear_fit(points: list[tuple[int, float]]) -> dict:
    """Least squares delta = a + b·n: b bytes per parameter, a the fixed part."""
    n = np.array([point[0] for point in points], dtype=float)
    delta = np.array([point[1] for point in points], dtype=float)
    if n.size < 2:
        return {"bytes_per_parameter": float(delta[0] / n[0]), "intercept_bytes": 0.0,
                "worst_residual_bytes": 0.0}
    slope, intercept = np.polyfit(n, delta, 1)
    residual = delta - (intercept + slope * n)
    return {"bytes_per_parameter": float(slope), "intercept_bytes": float(intercept),
            "worst_residual_bytes": float(np.max(np.abs(residual)))}
