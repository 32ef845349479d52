"""The bench's outputs: the Markdown table, the JSON of every figure, the optional plot."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from .common import MISSED, Section

HEADER = "| comparison | result | target | status |"


def markdown(meta: dict, sections: list[Section]) -> str:
    """The header (machine, date, versions, command) and one table of every line."""
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items()
                         if version)
    lines = [
        "# fastgrad bench", "",
        (f"- machine: {meta['cpu']}, {meta['cores']} cores ({meta['cores_available']} available "
         f"to this process), {meta['platform']}"),
        (f"- date: {meta['date']}; load average (1, 5, 15 min) {meta.get('load_average_start')} "
         f"at the start, {meta.get('load_average_end')} at the end"),
        f"- versions: {versions}",
        f"- command: `{meta['command']}`",
        f"- mode: {meta['mode']}",
        (f"- machine load: sections started with other processes quiet (< 0.1 core): "
         f"{meta.get('sections_started_quiet', '?')}; each timing's own figures are in the JSON "
         "(cores_used: this process; others_cores: everyone else)"), "",
        HEADER, "|---|---|---|---|",
    ]
    for section in sections:
        lines.append(f"| **{_cell(section.title)}** | | | |")
        for line in section.lines:
            status = f"**{line.status}**" if line.status == MISSED else line.status
            lines.append(f"| {_cell(line.comparison)} | {_cell(line.result)} | "
                         f"{_cell(line.target)} | {status} |")
    notes = [(section, line) for section in sections for line in section.lines if line.why]
    if notes:
        lines += ["", "Why (missed or skipped):", ""]
        lines += [f"- {line.comparison}: {line.why}" for _, line in notes]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def as_json(meta: dict, sizes: dict, sections: list[Section]) -> str:
    targets = [{"section": section.key, **line.to_dict()}
               for section in sections for line in section.lines if line.target or line.status]
    document = {"machine": meta, "sizes": sizes,
                "comparisons": {section.key: section.to_dict() for section in sections},
                "targets": targets}
    return json.dumps(_plain(document), indent=2, allow_nan=False)


def _plain(value):
    """JSON-safe: tuples to lists, NumPy scalars to Python, NaN and inf to None."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write(stem: str, text: str, suffix: str) -> Path:
    path = Path(f"{stem}{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ plot
def plot(stem: str, sections: dict[str, Section]) -> Path | None:
    """Time and memory against n, four panels; None (with a line on stderr) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("fastgrad bench: --plot needs matplotlib (pip install 'fastgrad[plot]'); "
              "no plot saved", file=sys.stderr)
        return None
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    growth = sections.get("growth")
    _plot_versus_peers(axes[0, 0], sections)
    if growth is not None:
        _plot_sampled(axes[0, 1], growth.figures["sampled"], growth.figures["sample_k"])
        _plot_directional(axes[1, 0], growth.figures["directional"])
    memory = sections.get("memory")
    if memory is not None and "runs" in memory.figures:
        _plot_memory(axes[1, 1], memory.figures["runs"])
    figure.tight_layout()
    path = Path(f"{stem}.png")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


#: (section, timing name, label, style) of the curves of time against n.
PEER_CURVES = (("naive", "check", "fastgrad full check", "o-"),
               ("naive", "naive_compiled", "naive loop, compiled loss", "s--"),
               ("naive", "naive_numpy", "naive loop, NumPy loss", "^--"),
               ("scipy", "scipy_check_grad", "scipy check_grad", "d:"),
               ("torch", "gradcheck", "torch gradcheck", "v:"))


def _rows_by_n(section: Section | None) -> list[dict]:
    """A comparison's per-size figures (dicts with "n" and "times"), smallest n first."""
    if section is None:
        return []
    rows = [value for value in section.figures.values()
            if isinstance(value, dict) and "n" in value and "times" in value]
    return sorted(rows, key=lambda row: row["n"])


def _plot_versus_peers(ax, sections: dict[str, Section]) -> None:
    """Wall time of a full check against n: fastgrad, the naive loops and SciPy, same loss."""
    for key, name, label, style in PEER_CURVES:
        rows = [row for row in _rows_by_n(sections.get(key)) if name in row["times"]]
        if rows:
            ax.loglog([row["n"] for row in rows], [row["times"][name]["median_s"] for row in rows],
                      style, label=label)
    growth = sections.get("growth")
    if growth is not None and "full" in growth.figures:
        rows = growth.figures["full"]
        ax.loglog([row["n"] for row in rows], [row["t_check_s"] for row in rows], "o-",
                  color="C0", alpha=0.4, label="fastgrad full check (growth section)")
    ax.set(xlabel="n", ylabel="seconds", title="full check of the MLP: time against n")
    ax.legend(fontsize="small")


def _plot_sampled(ax, rows, k):
    n = [row["n"] for row in rows]
    ax.loglog(n, [row["t_check_s"] for row in rows], "o-", label=f"sampled check, k = {k}")
    ax.loglog(n, [2 * row["k"] * row["t_f_s"] for row in rows], "k--", label="2k·T_f (serial)")
    ax.set(xlabel="n", ylabel="seconds", title="sampled check: time ∝ k·T_f, not n")
    ax.legend()


def _plot_directional(ax, rows):
    n = np.array([row["n"] for row in rows], dtype=float)
    ax.semilogx(n, [row["evaluations"] for row in rows], "o-", label="evaluations")
    constant = float(np.median([row["constant"] for row in rows]))
    ax.semilogx(n, 2 * np.log2(n) + constant, "k--", label=f"2·log2 n + {constant:.0f}")
    ax.set(xlabel="n", ylabel="loss evaluations",
           title="directional check, one planted error localised")
    ax.legend()


def _plot_memory(ax, runs):
    for workers in sorted({run["workers"] for run in runs}):
        mine = [run for run in runs if run["workers"] == workers]
        ax.loglog([run["n"] for run in mine], [run["delta_bytes"] / 2**20 for run in mine], "o-",
                  label=f"{workers} worker{'s' if workers > 1 else ''}")
    n = np.array(sorted({run["n"] for run in runs}), dtype=float)
    ax.loglog(n, 8 * n / 2**20, "k:", label="8 B × n (one copy of θ)")
    ax.set(xlabel="n", ylabel="peak extra memory, MiB", title="memory of a full check: O(n)")
    ax.legend()
