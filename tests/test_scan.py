"""step_scan: the error of a finite difference against its step (issue #4)."""

from __future__ import annotations

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.models import mlp

COORDS = [5, "W1[0, 3]", "b2[1]"]


@pytest.fixture(scope="module")
def problem():
    return mlp.problem(d=10, h=64, c=5, m=32, seed=0)


@pytest.fixture(scope="module")
def scan(problem):
    p = problem
    return fg.step_scan(mlp.loss, p.params, COORDS, (p.X, p.Y))


def error_at(scan, step):
    return scan.errors[:, int(np.argmin(np.abs(np.log(scan.steps / step))))]


def test_shape_labels_and_reference(scan, problem):
    p = problem
    steps = scan.steps
    assert scan.errors.shape == (3, len(steps)) == scan.numerical.shape
    assert scan.labels == ["W1[0, 5]", "W1[0, 3]", "b2[1]"]
    assert scan.reference_name == "complex step"
    assert scan.method == "central"
    assert scan.default_step == pytest.approx(np.finfo(np.float64).eps ** (1 / 3))
    # The reference is the derivative: it matches backprop.
    g = mlp.grad(p.params, p.X, p.Y)
    np.testing.assert_allclose(scan.reference, [g["W1"][0, 5], g["W1"][0, 3], g["b2"][1]],
                               rtol=1e-12)
    np.testing.assert_array_equal(scan.errors,
                                  np.abs(scan.numerical - scan.reference[:, None]))


def test_the_error_curve_is_v_shaped(scan):
    best = scan.errors.min(axis=1)
    print("\nbest steps", scan.best_steps, "errors there", best)
    # Smallest somewhere in 1e-7..1e-3 (around the default ∛u ≈ 6e-6)...
    assert np.all((scan.best_steps >= 1e-7) & (scan.best_steps <= 1e-3))
    assert np.all(best < 1e-9)
    # ...large at both ends: rounding σ/h at 1e-13, truncation h²·f'''/6 at 1e-1.
    small, large = error_at(scan, 1e-13), error_at(scan, 1e-1)
    assert np.all(small > 1e3 * best) and np.all(small > 1e-5)
    assert np.all(large > 1e3 * best) and np.all(large > 1e-7)
    # Truncation side: the error grows like h² (two decades of error per decade of step).
    ratio = error_at(scan, 1e-1) / error_at(scan, 1e-2)
    assert np.all((ratio > 30) & (ratio < 300))
    # The default step is within 100 of the best error.
    assert np.all(error_at(scan, scan.default_step) < 100 * best + 1e-12)


def test_flat_indices_and_labels_agree(problem):
    p = problem
    a = fg.step_scan(mlp.loss, p.theta, [5, 3], (p.X, p.Y), steps=[1e-4, 1e-6])
    b = fg.step_scan(mlp.loss, p.params, ["W1[0, 5]", "W1[0, 3]"], (p.X, p.Y),
                     steps=[1e-4, 1e-6])
    np.testing.assert_array_equal(a.numerical, b.numerical)
    assert a.labels == ["theta[5]", "theta[3]"]
    assert a.errors.shape == (2, 2)


def test_with_grad_the_reference_is_analytic(problem):
    p = problem
    g = mlp.grad(p.params, p.X, p.Y)
    scan = fg.step_scan(mlp.loss, p.params, COORDS, (p.X, p.Y), grad=g, steps=[1e-5, 1e-1])
    assert scan.reference_name == "analytic"
    np.testing.assert_array_equal(scan.reference, [g["W1"][0, 5], g["W1"][0, 3], g["b2"][1]])
    assert "analytic" in str(scan)
    # A wrong grad shows as an error that no reasonable step removes.
    wrong = {k: 2 * v for k, v in g.items()}
    bad = fg.step_scan(mlp.loss, p.params, COORDS, (p.X, p.Y), grad=wrong)
    usable = (bad.steps >= 1e-8) & (bad.steps <= 1e-2)
    assert np.all(bad.errors[:, usable].min(axis=1) > 0.9 * np.abs(bad.reference) / 2)


def test_central4_has_its_own_default(problem):
    p = problem
    scan = fg.step_scan(mlp.loss, p.params, COORDS, (p.X, p.Y), method="central4")
    assert scan.default_step == pytest.approx(np.finfo(np.float64).eps ** (1 / 5))
    assert np.all((scan.best_steps >= 1e-5) & (scan.best_steps <= 1e-2))
    assert scan.errors.min(axis=1).max() < 1e-10


def test_a_loss_without_complex_support_falls_back_to_central4():
    def loss(theta):
        return float(np.sum(np.abs(theta) ** 3))

    theta = np.linspace(0.2, 1.4, 6)
    scan = fg.step_scan(loss, theta, [0, 5])
    assert scan.reference_name == "central4"
    np.testing.assert_allclose(scan.reference, 3 * theta[[0, 5]] ** 2, rtol=1e-9)


@pytest.mark.parametrize("bad", ["W9[0]", "W1[99, 0]", "W1[0]", "W1[a, b]", 5000, -1, 2.5])
def test_a_bad_coordinate_raises(problem, bad):
    p = problem
    with pytest.raises(fg.InputError):
        fg.step_scan(mlp.loss, p.params, [0, bad], (p.X, p.Y))


def test_complex_method_is_refused(problem):
    p = problem
    with pytest.raises(fg.InputError, match="central"):
        fg.step_scan(mlp.loss, p.params, [0], (p.X, p.Y), method="complex")


def test_str_marks_the_default_and_the_best(scan):
    text = str(scan)
    assert "<- default" in text
    assert text.count("<- default") == 1
    lines = text.splitlines()
    assert lines[0].startswith("|central difference - complex step|")
    assert len(lines) == 2 + len(scan.steps)
    default_line = next(line for line in lines if "<- default" in line)
    assert default_line.split()[0] == "5.6e-06"
    assert text.count("*") - lines[0].count("*") == len(scan.labels)
