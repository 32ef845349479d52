"""What every comparison shares: sizes, result lines, timing helpers, subprocesses, the machine."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from fastgrad.engine import available_cores

MET, MISSED, SKIPPED, NOT_APPLICABLE = "met", "MISSED", "skipped", "n/a"
T = TypeVar("T")
#: An MLP's (d, h, c): inputs, hidden units, classes.
Shape = tuple[int, int, int]


# ------------------------------------------------------------------------------ results
@dataclass
class Line:
    """One row of the table: what was compared, the figure, and the target it is held to."""

    comparison: str
    result: str
    target: str = ""
    status: str = ""  # met, MISSED, skipped, n/a, or "" for a line without a target
    why: str = ""  # for MISSED and skipped: the reason, where it can be told

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Section:
    """One comparison family: its raw figures (for the JSON) and its table lines."""

    key: str
    title: str
    figures: dict = field(default_factory=dict)
    lines: list[Line] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"title": self.title, "figures": self.figures,
                "lines": [line.to_dict() for line in self.lines]}


def judged(comparison: str, result: str, target: str, met: bool, why: str = "") -> Line:
    """A line with a target: met, or MISSED with the reason."""
    return Line(comparison, result, target, MET if met else MISSED, "" if met else why)


def skipped(key: str, title: str, why: str) -> Section:
    """A section that could not run (a missing optional dependency), with a clear line."""
    print(f"  skipped: {why}", file=sys.stderr, flush=True)
    return Section(key, title, {"skipped": why}, [Line(title, "not run", "", SKIPPED, why)])


# ------------------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class Sizes:
    """Problem sizes and repeats of one run (MLP shapes are (d, h, c); m samples)."""

    m: int  # samples of the MLP data in every MLP comparison
    naive_shapes: tuple[Shape, ...]  # full check against the naive loops (and SciPy, torch)
    scaling_shapes: tuple[Shape, ...]  # efficiency and full-check growth (n ≈ 10^3, 10^4, 10^5)
    sampled_shapes: tuple[Shape, ...]  # sampled and directional growth (up to 10^6)
    sample_k: int
    repeats: int  # timed repeats of each check (the median is reported)
    single_calls: int  # single loss calls whose median is T_f
    startup_shape: Shape
    cold_runs: int
    warm_runs: int
    memory_sizes: tuple  # n of the memory subprocesses (sparse logistic loss, O(1) per call)
    logistic_n: int
    logistic_m: int
    logistic_k: int
    monitor_steps: int
    monitor_batch: int
    monitor_every: int
    monitor_shape: Shape
    monitor_repeats: int
    jacobian_n: int  # the sparse (tridiagonal) residual of the derivatives section
    dense_n: int  # the same residual checked column by column, and by torch's gradcheck
    opinfo_ops: int  # PyTorch OpInfo operators against gradcheck (first 3 samples of each)


FULL = Sizes(m=16, naive_shapes=((20, 40, 5), (64, 128, 10)),
             scaling_shapes=((20, 40, 5), (64, 128, 10), (512, 192, 10)),
             sampled_shapes=((20, 40, 5), (64, 128, 10), (512, 192, 10), (1024, 960, 10)),
             sample_k=256, repeats=3, single_calls=200, startup_shape=(20, 40, 5), cold_runs=2,
             warm_runs=3, memory_sizes=(100_000, 300_000, 1_000_000), logistic_n=10_000_000,
             logistic_m=5000, logistic_k=1000, monitor_steps=2000, monitor_batch=256,
             monitor_every=100, monitor_shape=(64, 128, 10), monitor_repeats=3,
             jacobian_n=100_000, dense_n=2_000, opinfo_ops=60)

QUICK = Sizes(m=8, naive_shapes=((8, 16, 4),), scaling_shapes=((8, 16, 4), (20, 40, 5)),
              sampled_shapes=((8, 16, 4), (20, 40, 5), (64, 128, 10)), sample_k=32, repeats=1,
              single_calls=20, startup_shape=(8, 16, 4), cold_runs=1, warm_runs=1,
              memory_sizes=(10_000, 100_000), logistic_n=100_000, logistic_m=500,
              logistic_k=100, monitor_steps=200, monitor_batch=32, monitor_every=100,
              monitor_shape=(20, 40, 5), monitor_repeats=1,
              jacobian_n=1_000, dense_n=100, opinfo_ops=5)


def mlp_size(shape: Shape) -> int:
    d, h, c = shape
    return d * h + h + h * c + c


# ------------------------------------------------------------------------------ timing
def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list]:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time."""
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def fmt_speedup(ratio: float) -> str:
    """'2.10× faster' for ratio = their time / our time >= 1, else '1.30× slower'."""
    return f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"


def fmt_seconds(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


# ------------------------------------------------------------------------------ subprocesses
def run_python(code: str, env: dict | None = None, timeout: float = 600) -> tuple[dict, float]:
    """Run ``python -c code`` in a fresh process; its last stdout line is JSON.

    Returns that JSON and the process's wall time, seen from here (interpreter start
    included).
    """
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          timeout=timeout, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"subprocess failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


# ------------------------------------------------------------------------------ the machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for row in info:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def versions() -> dict:
    import numba
    import numpy

    found = {"python": platform.python_version(), "numpy": numpy.__version__,
             "numba": numba.__version__}
    for name in ("scipy", "torch", "matplotlib"):
        try:
            module = __import__(name)
        except ImportError:
            found[name] = None
        else:
            found[name] = getattr(module, "__version__", "?")
    return found


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m fastgrad"
    elif argv:
        argv[0] = os.path.basename(argv[0])
    return " ".join([argv[0]] + [shlex.quote(arg) for arg in argv[1:]]) if argv else ""


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cores_available": available_cores(),
            "platform": platform.platform(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "versions": versions(), "command": command_line(), "load_average_start": load_average()}


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: other work on the machine skews every timing."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Time each of ``fns`` once per round, for ``repeats`` rounds, so that the machine's
    noise hits them alike; per name the median, every time, the cores it got (process CPU
    time / wall time) and the cores other processes used meanwhile.  Warm them up first."""
    runs: dict[str, list] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            runs[name].append(timed_cpu(fn)[1:])
    return {name: {"median_s": statistics.median(wall for wall, _, _ in values),
                   "times_s": [wall for wall, _, _ in values],
                   "cores_used": statistics.median(cpu / wall for wall, cpu, _ in values),
                   "others_cores": median_or_none([others for _, _, others in values])}
            for name, values in runs.items()}


def load_text(load: dict) -> str:
    """'1.02 cores used, others 0.95': this process's CPU time / wall time, and the cores
    that other processes used meanwhile (then the figure says little about fastgrad)."""
    others = load.get("others_cores")
    return (f"{load['cores_used']:.2f} cores used"
            + ("" if others is None else f", others {others:.2f}"))


def median_or_none(values: list):
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


# ------------------------------------------------------------------------------ machine load
def _machine_busy_seconds() -> float | None:
    """CPU seconds every CPU has been busy since boot, from /proc/stat (None elsewhere)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed_cpu(fn: Callable[[], T]) -> tuple[T, float, float, float | None]:
    """``fn()``, its wall time, this process's CPU time meanwhile (every thread), and the
    cores other processes used meanwhile (None without /proc/stat; 10 ms resolution)."""
    busy, cpu = _machine_busy_seconds(), time.process_time()
    value, wall = timed(fn)
    cpu = time.process_time() - cpu
    after = _machine_busy_seconds()
    others = None if busy is None or after is None else max(0.0, (after - busy - cpu) / wall)
    return value, wall, cpu, others


def wait_until_quiet(limit_s: float, quiet_cores: float = 0.1) -> dict:
    """Wait up to ``limit_s`` until other processes use < ``quiet_cores`` over 2 s."""
    started = time.perf_counter()
    while True:
        others = timed_cpu(lambda: time.sleep(2.0))[3]
        waited = time.perf_counter() - started
        if others is None or others < quiet_cores or waited >= limit_s:
            return {"waited_s": waited, "others_cores": others,
                    "quiet": others is not None and others < quiet_cores}
