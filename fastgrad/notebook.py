"""Reports as HTML for Jupyter (``_repr_html_``): the verdict, the causes, the group table and
the worst coordinates, colour-coded.

Well-formed XHTML (every tag closed, only numeric entities) with inline styles only, so that
it renders the same in a notebook, a browser and an e-mail, and any XML parser reads it.
"""

from __future__ import annotations

from html import escape

#: Background of a verdict (and of a row with that status): green, amber, red, grey.
COLOURS = {"pass": "#d4edda", "ok": "#d4edda", "warn": "#fff3cd", "kink": "#fff3cd",
           "unresolved": "#fff3cd", "fail": "#f8d7da", "unchecked": "#eeeeee"}
#: The verdict's words in the badge.
HEADLINES = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}

_TABLE = "border-collapse:collapse;margin:4px 0;font-size:90%"
_CELL = "border:1px solid #ccc;padding:2px 6px;text-align:right"
_HEAD = "border:1px solid #ccc;padding:2px 6px;background:#f4f4f4;text-align:center"


def table(header: list[str], rows: list[list[str]], statuses: list[str] | None = None) -> str:
    """An HTML table; row k coloured by ``statuses[k]`` (see :data:`COLOURS`)."""
    head = "".join(f'<th style="{_HEAD}">{escape(cell)}</th>' for cell in header)
    body = []
    for k, row in enumerate(rows):
        colour = COLOURS.get(statuses[k], "") if statuses else ""
        style = f' style="background:{colour}"' if colour else ""
        cells = "".join(f'<td style="{_CELL}">{escape(cell)}</td>' for cell in row)
        body.append(f"<tr{style}>{cells}</tr>")
    return _table_markup(head, body)


def _table_markup(head: str, body: list[str]) -> str:
    """A table from its header cells and its rows, already marked up."""
    return f'<table style="{_TABLE}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def badge(verdict: str, text: str) -> str:
    """The verdict in a coloured box, then ``text``."""
    colour = COLOURS.get(verdict, "#eeeeee")
    return (f'<div style="background:{colour};padding:4px 8px;border-radius:4px;margin:2px 0">'
            f"<b>{escape(HEADLINES.get(verdict, verdict.upper()))}</b> {escape(text)}</div>")


def lines(items: list[str], title: str) -> str:
    """A titled bullet list (nothing when ``items`` is empty)."""
    if not items:
        return ""
    entries = "".join(f"<li>{escape(item)}</li>" for item in items)
    return f'<div style="margin:4px 0"><b>{escape(title)}</b><ul style="margin:2px 0">{entries}</ul></div>'


def block(*parts: str) -> str:
    """The parts inside one container div."""
    return ('<div class="fastgrad" style="font-family:sans-serif;font-size:13px">'
            + "".join(parts) + "</div>")


def report_html(report) -> str:
    """A gradient check's :class:`~fastgrad.Report` as HTML."""
    summary = (f"relative error {report.relative_error:.3e} ({report.band}); "
               f"{report.checked:,} of {report.size:,} coordinates checked, {report.failed:,} "
               f"disagree; {report.evaluations:,} loss evaluations in {report.seconds:.2f} s "
               f"({report.engine}, {report.workers} worker{'s' if report.workers != 1 else ''}, "
               f"{report.dtype})")
    groups = table(["group", "shape", "checked", "failed", "max |D - g|", "max score", "rel. error",
                    "verdict"],
                   [[g.name, str(g.shape), f"{g.checked:,}", f"{g.failed:,}", f"{g.max_difference:.2e}",
                     f"{g.max_score:.3g}", f"{g.relative_error:.2e}", g.verdict] for g in report.groups],
                   [g.verdict for g in report.groups])
    worst = table(["coordinate", "analytic", "numerical", "D - g", "allowed", "score", "status"],
                  [[c.label, f"{c.analytic:.6e}", f"{c.numerical:.6e}", f"{c.difference:+.2e}",
                    f"{c.error_estimate:.2e}", f"{c.score:.3g}", c.status] for c in report.worst],
                  [c.status for c in report.worst])
    return block(badge(report.verdict, summary),
                 lines([cause.sentence for cause in report.causes], "likely causes"),
                 (groups + '<div style="margin-top:4px"><b>worst coordinates</b></div>' + worst)
                 if report.checked else "",
                 lines(list(report.notes), "notes"))


def step_scan_html(scan) -> str:
    """A :class:`~fastgrad.StepScan` as an HTML table: the error per step and coordinate, each
    coordinate's smallest error in bold, the default step's row highlighted."""
    import numpy as np

    default_row = int(np.argmin(np.abs(np.log(scan.steps / scan.default_step))))
    best = np.argmin(scan.errors, axis=1)
    head = "".join(f'<th style="{_HEAD}">{escape(label)}</th>' for label in ["h0", *scan.labels])
    body = []
    for s, step in enumerate(scan.steps):
        cells = [f'<td style="{_CELL}">{step:.1e}</td>']
        for j in range(len(scan.labels)):
            text = f"{scan.errors[j, s]:.2e}"
            cells.append(f'<td style="{_CELL}">' + (f"<b>{text}</b>" if best[j] == s else text) + "</td>")
        style = ' style="background:#cfe2ff"' if s == default_row else ""
        body.append(f"<tr{style}>{''.join(cells)}</tr>")
    caption = (f"|{scan.method} difference - {scan.reference_name}| against the relative step h0: "
               f"smallest error per coordinate in bold, the default step {scan.default_step:.1e} "
               "highlighted")
    return block(f"<div>{escape(caption)}</div>", _table_markup(head, body))


def check_html(report, *tables: str, worst: bool = True) -> str:
    """Any :class:`~fastgrad.report.CheckReport` as HTML: the verdict with its summary, the
    given ``tables`` (already marked up), the worst entries (each row red when its score
    exceeds 1) unless ``worst=False``, and the notes."""
    entries = report.worst if worst else []
    kinds = [getattr(entry, "what", "") for entry in entries]
    rows = table(["entry", *(["kind"] if any(kinds) else []), "difference", "allowed", "score"],
                 [[e.label, *([kind] if any(kinds) else []), f"{e.difference:+.3e}", f"{e.allowed:.3e}",
                   f"{e.score:.3g}"] for e, kind in zip(entries, kinds, strict=True)],
                 ["fail" if e.score > 1 else "ok" for e in entries])
    return block(badge(report.verdict, report.summary()), *tables,
                 ('<div style="margin-top:4px"><b>worst entries</b></div>' + rows) if entries else "",
                 lines(list(report.notes), "notes"))
