"""``fastgrad bench``: fastgrad against a naive loop and its peers, on one machine, in one process.

    fastgrad bench [--quick] [--output STEM] [--plot]

Runs every comparison below on the MLP of :mod:`fastgrad.models.mlp` (and the sparse
logistic regression of :mod:`fastgrad.models.logistic`), prints a Markdown table of the
ratios with the machine, date, versions and command line, and saves ``STEM.json`` (every
raw figure, and why a target was missed where that can be told), ``STEM.md`` and, with
``--plot`` and matplotlib, ``STEM.png``.  Timings are medians of repeats, warmed up
(compilation) outside the timing; compare them as ratios within one run.

=============  ==========================================================  ================
section        what                                                         module
=============  ==========================================================  ================
efficiency     E = (2n·T_f / workers) / T_check, n ≈ 10^3, 10^4, 10^5      :mod:`.scaling`
growth         time against n: full, sampled (k fixed), directional        :mod:`.scaling`
naive          full check vs the naive loop, compiled and NumPy loss       :mod:`.peers`
scipy          vs scipy.optimize.check_grad (approx_fprime)                :mod:`.peers`
logistic       sampled check, k = 1000, 10^7-parameter logistic regression :mod:`.large`
monitor        Monitor overhead in a training loop, every=100              :mod:`.training`
startup        first check in a fresh process, cold and warm Numba cache   :mod:`.fresh`
memory         peak memory against n, 1 and all workers                    :mod:`.fresh`
executors      NumPy MLP serial/processes/dask, forward vs SciPy, per chunk :mod:`.executors`
derivatives    sparse Jacobian n = 10^5 by column groups; Taylor test       :mod:`.derivatives`
torch          vs torch.autograd.gradcheck (float64)                       :mod:`.peers`
opinfo         PyTorch's operators and samples: planted bugs vs gradcheck  :mod:`.opinfo`
=============  ==========================================================  ================

torch and opinfo run last: torch's thread pool must not disturb the other timings.  Before each
section a full run waits (up to a minute) for other processes to go quiet, and every
timing records the cores this process got and the cores others used meanwhile
(``cores_used``, ``others_cores`` in the JSON).  The exit status
is 0 when every comparison ran (a missed target is a finding, not a failure), 1 when one
raised (its error is in the table and the JSON).
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback

from fastgrad.engine import available_cores

from . import output as outputs
from .common import FULL, QUICK, Line, Section, load_average, machine, wait_until_quiet
from .derivatives import measure_derivatives
from .executors import measure_executors
from .fresh import measure_first_check, measure_memory
from .large import measure_logistic
from .opinfo import measure_opinfo
from .peers import compare_naive, compare_scipy, compare_torch
from .scaling import measure_efficiency, measure_growth
from .training import measure_monitor

__all__ = ["run_bench"]

ERROR = "error"
#: Before each section of a full run, wait up to this long for other processes to go quiet
#: (< 0.1 core over 2 s): a shared 2-core machine otherwise halves the parallel figures.
QUIET_WAIT_S = 60.0


def _plan(sizes, done: dict) -> list:
    """(key, title, measure) in running order; ``done`` holds the sections already run."""
    return [
        ("efficiency", "parallel efficiency", lambda: measure_efficiency(sizes)),
        ("growth", "growth with n", lambda: measure_growth(sizes, done["efficiency"])),
        ("naive", "naive loops", lambda: compare_naive(sizes)),
        ("scipy", "scipy check_grad", lambda: compare_scipy(sizes)),
        ("logistic", "10^7-parameter logistic regression", lambda: measure_logistic(sizes)),
        ("monitor", "Monitor overhead", lambda: measure_monitor(sizes)),
        ("startup", "first check in fresh processes", lambda: measure_first_check(sizes)),
        ("memory", "peak memory against n", lambda: measure_memory(sizes, available_cores())),
        ("executors", "executors", lambda: measure_executors(sizes)),
        ("derivatives", "derivatives", lambda: measure_derivatives(sizes)),
        ("torch", "torch gradcheck", lambda: compare_torch(sizes)),
        ("opinfo", "PyTorch OpInfo operators", lambda: measure_opinfo(sizes.opinfo_ops)),
    ]


def run_bench(quick: bool = False, output: str = "fastgrad-bench", plot: bool = False) -> int:
    """Run every comparison; print the table; save STEM.json, STEM.md (and STEM.png).

    Returns the exit status: 0 when every comparison ran, 1 when one raised.
    """
    stem = output
    sizes = QUICK if quick else FULL
    meta = machine()
    meta["mode"] = ("quick: tiny sizes and few repeats, a smoke test; the targets are stated "
                    "for the full sizes" if quick else "full")
    started = time.perf_counter()
    done: dict[str, Section] = {}
    plan = _plan(sizes, done)
    quiet = []
    for step, (key, title, measure) in enumerate(plan, 1):
        print(f"[{step}/{len(plan)}] {title} ...", file=sys.stderr, flush=True)
        machine_load: dict = {"waited_s": 0.0, "others_cores": None, "quiet": None} if quick \
            else wait_until_quiet(QUIET_WAIT_S)
        quiet.append(machine_load["quiet"])
        began = time.perf_counter()
        done[key] = _run_one(key, title, measure)
        done[key].figures["section_seconds"] = time.perf_counter() - began
        done[key].figures["machine_before"] = machine_load
    meta["sections_started_quiet"] = "not waited for (quick)" if quick \
        else f"{sum(quiet)} of {len(quiet)}"
    meta["bench_seconds"] = time.perf_counter() - started
    meta["load_average_end"] = load_average()
    sections = list(done.values())
    table = outputs.markdown(meta, sections)
    print(table)
    outputs.write(stem, table, ".md")
    outputs.write(stem, outputs.as_json(meta, dataclasses.asdict(sizes), sections), ".json")
    saved = [f"{stem}.json", f"{stem}.md"]
    if plot and outputs.plot(stem, done) is not None:
        saved.append(f"{stem}.png")
    print(f"saved {', '.join(saved)} ({meta['bench_seconds']:.0f} s)", file=sys.stderr)
    return 1 if any(line.status == ERROR for s in sections for line in s.lines) else 0


def _run_one(key: str, title: str, measure) -> Section:
    try:
        return measure()
    except Exception as error:  # one broken comparison must not lose the others' figures
        message = f"{type(error).__name__}: {error}"
        print(f"  error in {title}: {message}", file=sys.stderr, flush=True)
        return Section(key, title, {"error": message, "traceback": traceback.format_exc()},
                       [Line(title, "failed to run", "", ERROR, message)])
