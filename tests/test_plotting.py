"""Pictures: a report's per-group panels, a step scan's V, and ``fastgrad check --plot``, drawn
with the headless Agg backend; skipped cleanly without matplotlib."""

from __future__ import annotations

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.cli import FAILED, main
from fastgrad.models import mlp

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


@pytest.fixture(scope="module")
def small_mlp():
    problem = mlp.problem(4, 6, 3, m=16, seed=1)
    args = (problem.X, problem.Y)
    return problem.params, args, mlp.grad(problem.params, *args)


def test_a_failing_report_draws_its_failing_group_first_with_band_and_heat_map(small_mlp):
    params, args, grad = small_mlp
    report = fg.check(mlp.loss_params, {**grad, "W2": -grad["W2"]}, params, args)
    figure = report.plot()
    axes = figure.get_axes()
    titles = [axis.get_title() for axis in axes]
    assert titles[0] == "W2: analytic against numerical"  # the failing group first
    assert titles[1].startswith("W2: score")  # 2-D: a heat map, with its colour bar
    assert any(axis.get_ylabel().startswith("log10 score") for axis in axes)
    assert len([t for t in titles if "analytic against numerical" in t]) == 4  # every group
    legend = [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert "allowed: D ± a" in legend and "disagrees" in legend
    bias = titles.index("b2: score of each coordinate")
    assert axes[bias].get_lines()[-1].get_ydata()[0] == 1.0  # the threshold line
    matplotlib.pyplot.close(figure)


def test_plot_names_groups_and_refuses_unknown_ones(small_mlp):
    params, args, grad = small_mlp
    report = fg.check(mlp.loss_params, grad, params, args)
    figure = report.plot(groups=["b1"])
    assert [axis.get_title() for axis in figure.get_axes()][:1] == ["b1: analytic against numerical"]
    assert "disagrees" not in [t.get_text() for t in figure.get_axes()[0].get_legend().get_texts()]
    matplotlib.pyplot.close(figure)
    with pytest.raises(fg.InputError, match="no group 'W9'"):
        report.plot(groups=["W9"])


def test_a_step_scan_draws_its_v_with_the_default_step():
    theta = np.array([0.7, -1.3])
    scan = fg.step_scan(lambda t: float(np.sum(np.sin(t))), theta, [0, 1], grad=np.cos(theta))
    figure = scan.plot()
    (axis,) = figure.get_axes()
    assert axis.get_xscale() == "log" and axis.get_yscale() == "log"
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert labels[:2] == scan.labels and labels[-1].startswith("default step")
    assert axis.get_lines()[-1].get_xdata()[0] == scan.default_step
    matplotlib.pyplot.close(figure)


def test_fastgrad_check_plot_saves_a_png(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("import numpy as np\ntheta = np.array([[0.5, -1.0], [2.0, 0.3]])\n"
                     "def loss(t):\n    return float(np.sum(t ** 3))\n"
                     "def grad(t):\n    return 2 * t ** 2\n")
    out = tmp_path / "check.png"
    assert main(["check", str(model), "--plot", str(out)]) == FAILED
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
