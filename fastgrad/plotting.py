"""Pictures of a check (matplotlib, the ``fastgrad[plot]`` extra, imported only here).

:func:`plot_report`: per group, the analytic against the numerical derivative with the
allowed band D ± a, and the score |D − g| / a of every checked coordinate against the
threshold 1 (a heat map for a 2-D group).  :func:`plot_step_scan`: the error of the
difference against the relative step, the V of truncation (∝ h² for central differences)
against rounding (∝ σ/h), the default step marked.  Each returns its figure.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

#: Groups drawn at most (the failing ones first, then the worst-scoring).
GROUPS_SHOWN = 8


def pyplot():
    """matplotlib.pyplot, or an InputError saying how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plotting needs matplotlib: pip install 'fastgrad[plot]'") from None
    return plt


def plot_report(report, groups: list[str] | None = None):
    """Two panels per group (rows): g against D with the allowed band, and the scores."""
    plt = pyplot()
    details = report.details
    layout = details.layout
    which = layout.group_index(details.coords) if details.coords.size else np.empty(0, dtype=int)
    results = {result.name: result for result in report.groups}
    names = groups if groups is not None else _groups_to_show(report.groups)
    unknown = [name for name in names if name not in results]
    if unknown:
        raise InputError(f"no group {unknown[0]!r} in this report (groups: {', '.join(results)})")
    if not names:
        raise InputError("nothing to plot: the check judged no coordinate one by one")
    figure, axes = plt.subplots(len(names), 2, figsize=(10, 3.2 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        index = next(k for k, group in enumerate(layout.groups) if group.name == name)
        rows = which == index
        _agreement(axes[row, 0], name, details.numerical[rows], details.analytic[rows],
                   details.error[rows])
        _scores(figure, axes[row, 1], layout.groups[index], details.coords[rows],
                details.score[rows])
    causes = "".join(f"\n{cause.sentence}" for cause in report.causes[:3])
    figure.suptitle(f"{report.verdict.upper()}: {report.checked:,} of {report.size:,} coordinates "
                    f"checked, {report.failed:,} disagree{causes}")
    figure.tight_layout()
    return figure


def _groups_to_show(results) -> list[str]:
    checked = [result for result in results if result.checked]
    ordered = sorted(checked, key=lambda result: (result.failed == 0, -result.max_score))
    return [result.name for result in ordered[:GROUPS_SHOWN]]


def _agreement(axis, name: str, numerical, analytic, allowed) -> None:
    """g against D; the band D ± a around the diagonal; disagreeing points in red."""
    order = np.argsort(numerical)
    d, a = numerical[order], allowed[order]
    axis.fill_between(d, d - a, d + a, color="tab:green", alpha=0.25, label="allowed: D ± a")
    axis.plot(d, d, color="tab:green", linewidth=0.8)
    bad = np.abs(numerical - analytic) > allowed
    axis.scatter(numerical[~bad], analytic[~bad], s=8, color="tab:blue", label="agrees")
    if bad.any():
        axis.scatter(numerical[bad], analytic[bad], s=12, color="tab:red", label="disagrees")
    axis.set_xlabel("numerical D")
    axis.set_ylabel("analytic g")
    axis.set_title(f"{name}: analytic against numerical")
    axis.legend(loc="best", fontsize="small")


def _scores(figure, axis, group, coords, score) -> None:
    """Each checked coordinate's score; a heat map on the group's grid for a 2-D group."""
    if len(group.shape) == 2:
        grid = np.full(group.size, np.nan)
        grid[coords - group.offset] = score
        image = axis.imshow(np.log10(np.maximum(grid.reshape(group.shape), 1e-3)), cmap="RdYlGn_r",
                            vmin=-3, vmax=3, aspect="auto", interpolation="nearest")
        colorbar = figure.colorbar(image, ax=axis)
        colorbar.set_label("log10 score (> 0 disagrees)")
        axis.set_xlabel("column")
        axis.set_ylabel("row")
        axis.set_title(f"{group.name}: score |D - g| / a (threshold 1)")
        return
    axis.semilogy(coords - group.offset, np.maximum(score, 1e-3), ".", color="tab:blue")
    axis.axhline(1.0, color="tab:red", linestyle="--", label="threshold: score 1")
    axis.set_xlabel(f"flat index in {group.name}")
    axis.set_ylabel("score |D - g| / a")
    axis.set_title(f"{group.name}: score of each coordinate")
    axis.legend(loc="best", fontsize="small")


def plot_step_scan(scan):
    """The scan's errors against the relative step, log-log, one line per coordinate, with
    the default step and each coordinate's best step marked."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    tiny = np.finfo(np.float64).tiny
    for j, label in enumerate(scan.labels):
        line, = axis.loglog(scan.steps, np.maximum(scan.errors[j], tiny), marker=".", label=label)
        best = int(np.argmin(scan.errors[j]))
        axis.plot(scan.steps[best], max(scan.errors[j, best], tiny), "o", markerfacecolor="none",
                  color=line.get_color())
    axis.axvline(scan.default_step, color="black", linestyle="--",
                 label=f"default step {scan.default_step:.1e}")
    axis.set_xlabel("relative step h0 (h = h0 max(1, |theta_i|))")
    axis.set_ylabel(f"|{scan.method} difference - {scan.reference_name}|")
    axis.set_title("error against step: rounding (falls as 1/h) against truncation (rises)")
    axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure
