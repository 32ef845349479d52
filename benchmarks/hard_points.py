"""Verdicts at the hard points of issue #11: fastgrad beside the seed recipe and SciPy's check_grad.

    python benchmarks/hard_points.py [--markdown]

On each model of tests/hard_models.py (a GP likelihood at a generic point, at its optimum
and near-singular; a logistic regression at its MLE; a spike of width 1e-12; a flat ReLU;
a jump at θ), for the correct gradient and each planted bug, prints the verdict of

* ``fastgrad.check`` (full, and with ``sample=0.1``, seed 0);
* the seed method (/work/shared/seed/gradient-checking.md): central differences with the
  absolute step ε = 1e-7, e = ‖D − g‖₂ / (‖D‖₂ + ‖g‖₂), pass if e ≤ 1e-7, fail if e > 1e-3,
  warn between;
* ``scipy.optimize.check_grad`` (forward differences, step √u ≈ 1.5e-8): its ‖D − g‖₂
  divided by ‖g‖₂ (0 when both are 0), in the same bands;

and the wanted verdict (pass or, on the spike, warn for the correct gradient; fail for a
bug).  A final table counts, per method, the correct gradients judged as wanted, the false
alarms (a correct gradient judged fail), the bugs failed, the bugs missed (judged pass), and
the models on which it tells the correct gradient from every bug.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import check_grad

import fastgrad

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hard_models import HardModel, models

#: The seed recipe's step and its bands on the relative error.
SEED_EPS = 1e-7
CORRECT_BAND, WRONG_BAND = 1e-7, 1e-3
METHODS = ("fastgrad", "fastgrad sample=0.1", "seed eps=1e-7", "scipy check_grad")


def banded(error: float) -> str:
    """The classic bands: ≤ 1e-7 pass, > 1e-3 fail, between warn."""
    if error <= CORRECT_BAND:
        return "pass"
    return "fail" if error > WRONG_BAND else "warn"


def seed_verdict(model: HardModel, grad) -> tuple[str, float]:
    """Central differences with the absolute step 1e-7 and e = ‖D − g‖/(‖D‖ + ‖g‖)."""
    theta, args = model.theta, model.args
    g = np.asarray(grad(theta, *args), dtype=np.float64)
    numerical = np.empty(theta.size)
    for i in range(theta.size):
        step = np.zeros(theta.size)
        step[i] = SEED_EPS
        numerical[i] = (model.loss(theta + step, *args) - model.loss(theta - step, *args)) / (2 * SEED_EPS)
    return banded_ratio(np.linalg.norm(numerical - g), np.linalg.norm(numerical) + np.linalg.norm(g))


def scipy_verdict(model: HardModel, grad) -> tuple[str, float]:
    """check_grad's ‖D − g‖₂ over ‖g‖₂."""
    g = np.asarray(grad(model.theta, *model.args), dtype=np.float64)
    return banded_ratio(check_grad(model.loss, grad, model.theta, *model.args), np.linalg.norm(g))


def banded_ratio(distance: float, scale: float) -> tuple[str, float]:
    """The band of distance/scale (0/0 = 0, x/0 = inf) and the ratio."""
    error = 0.0 if distance == 0.0 else (np.inf if scale == 0.0 else distance / scale)
    return banded(error), float(error)


@dataclass
class Row:
    model: str
    gradient: str
    wanted: str
    verdicts: dict[str, str]
    errors: dict[str, float]  # the relative errors behind the banded verdicts


def judge(model: HardModel, gradient: str, grad, wanted: str) -> Row:
    full = fastgrad.check(model.loss, grad, model.theta, model.args, seed=0)
    sampled = fastgrad.check(model.loss, grad, model.theta, model.args, sample=0.1, seed=0)
    seed, seed_error = seed_verdict(model, grad)
    scipy, scipy_error = scipy_verdict(model, grad)
    verdicts = dict(zip(METHODS, (full.verdict, sampled.verdict, seed, scipy), strict=True))
    return Row(model.name, gradient, wanted, verdicts,
               {"seed eps=1e-7": seed_error, "scipy check_grad": scipy_error})


def rows() -> list[Row]:
    out = []
    for model in models():
        out.append(judge(model, "correct", model.grad, model.expected))
        out.extend(judge(model, bug.name, model.buggy(bug), "fail") for bug in model.bugs)
    return out


def summary(table: list[Row]) -> list[list[str]]:
    """Per method: correct judged as wanted, false alarms, bugs failed, bugs missed, and the
    models where it tells the correct gradient from every bug (correct not failed, every bug
    failed: failing everything there tells nothing)."""
    correct = [row for row in table if row.gradient == "correct"]
    bugs = [row for row in table if row.gradient != "correct"]
    lines = []
    for method in METHODS:
        told = [row.model for row in correct if row.verdicts[method] != "fail"
                and all(bug.verdicts[method] == "fail" for bug in bugs if bug.model == row.model)]
        lines.append([
            method,
            f"{sum(row.verdicts[method] == row.wanted for row in correct)} of {len(correct)}",
            str(sum(row.verdicts[method] == "fail" for row in correct)),
            f"{sum(row.verdicts[method] == 'fail' for row in bugs)} of {len(bugs)}",
            str(sum(row.verdicts[method] == "pass" for row in bugs)),
            f"{len(told)} of {len(correct)}",
        ])
    return lines


def mark(verdict: str, wanted: str) -> str:
    return verdict if verdict == wanted else f"{verdict} ✗"


def render(header: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
                     for cells in [header, ["-" * width for width in widths], *body])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")
    markdown = parser.parse_args(argv).markdown
    table = rows()
    header = ["model", "gradient", "wanted", *METHODS]
    body = [[row.model, row.gradient, row.wanted,
             *(mark(row.verdicts[method], row.wanted)
               + (f" ({row.errors[method]:.1e})" if method in row.errors else "")
               for method in METHODS)] for row in table]
    print(render(header, body, markdown))
    print()
    print(render(["method", "correct as wanted", "false alarms", "bugs failed", "bugs missed (pass)",
                  "models told apart"], summary(table), markdown))


if __name__ == "__main__":
    main()
