"""Issue 10, item 1: the verdict does not depend on the scale of the loss or of theta.

The noise estimate, the allowances and the relative error are computed in scaled form,
so that f, 2^±660·f (≈ 1e±200) give the same verdict, the same worst coordinate and the
same relative error; steps that would overflow are an InputError before any evaluation.
"""

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import analysis
from fastgrad.noise import ecnoise, noise_levels

#: Powers of two: f·c is then exact, and every figure must scale exactly (or not at all).
SCALES = (1.0, 2.0 ** 660, 2.0 ** -660)  # 1, ≈ 4.8e198, ≈ 2.1e-199


def _sines(scale):
    return lambda t: scale * float(np.sum(np.sin(t)))


@pytest.mark.parametrize("scale", SCALES)
def test_wrong_gradient_fails_at_every_scale(scale):
    """The issue's reproducer: one coordinate doubled; at 1e200 it used to pass (noise inf)."""
    x = np.linspace(0.1, 1.0, 20)
    g = scale * np.cos(x)
    g[3] *= 2.0
    report = fg.check(_sines(scale), g, x, engine="python")
    assert report.verdict == "fail"
    assert report.worst_label == "theta[3]"
    assert np.isfinite(report.noise) and report.noise > 0.0
    assert np.isfinite(report.relative_error)
    reference = fg.check(_sines(1.0), np.cos(x) * np.where(np.arange(20) == 3, 2.0, 1.0), x,
                         engine="python")
    assert report.relative_error == pytest.approx(reference.relative_error, rel=1e-9)
    assert report.noise / scale == pytest.approx(reference.noise, rel=1e-9)


@pytest.mark.parametrize("scale", SCALES)
def test_correct_gradient_passes_at_every_scale(scale):
    x = np.linspace(0.1, 1.0, 20)
    report = fg.check(_sines(scale), scale * np.cos(x), x, engine="python")
    assert report.verdict == "pass"
    assert report.relative_error < 1e-8


@pytest.mark.parametrize("bug", [0.0, 1e-2])
def test_theta_near_1e300(bug):
    """f = Σ (c·θ_i)², c = 1e-150, θ ≈ 1e300 (f ≈ 1e300): a relative 1e-2 bug fails
    (it was warn: the noise overflowed), the correct gradient passes."""
    theta = 1e300 * np.linspace(0.1, 1.0, 6)
    c = 1e-150
    grad = 2.0 * c * (c * theta)
    grad[2] *= 1.0 + bug
    report = fg.check(lambda t: float(np.sum((c * t) ** 2)), grad, theta, engine="python")
    assert np.isfinite(report.noise) and np.isfinite(report.relative_error)
    if bug:
        assert report.verdict == "fail" and report.worst_label == "theta[2]"
    else:
        assert report.verdict == "pass"


@pytest.mark.parametrize("scale", [2.0 ** 800, 2.0 ** -800])
def test_ecnoise_scales_exactly(scale):
    """σ(c·f) = c·σ(f) and the same code, where squaring c·f over- or underflows."""
    rng = np.random.default_rng(3)
    values = 1.0 + 1e-13 * rng.standard_normal(9)
    sigma, code = ecnoise(values)
    scaled_sigma, scaled_code = ecnoise(scale * values)
    assert scaled_code == code == 1
    assert scaled_sigma == pytest.approx(scale * sigma, rel=1e-12)
    levels = noise_levels(scale * values)[0]
    assert np.all(np.isfinite(levels)) and np.all(levels > 0.0)


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_relative_error_scales(scale):
    rng = np.random.default_rng(4)
    d, g = rng.standard_normal(50), rng.standard_normal(50)
    assert analysis.relative_error(scale * d, scale * g) == \
        pytest.approx(analysis.relative_error(d, g), rel=1e-12)


def test_richardson_does_not_overflow():
    big = 1e308
    assert analysis.richardson(big, big) == big
    assert analysis.richardson4(big, big) == big


def test_step_that_would_overflow_is_an_input_error_naming_the_coordinate():
    """θ_i near the largest float: InputError naming b[1], before the loss is called."""
    calls = []

    def loss(p):
        calls.append(1)
        return float(np.sum(p["a"]) + np.sum(p["b"]))

    theta = {"a": np.ones(2), "b": np.array([1.0, np.finfo(np.float64).max / 1.000001])}
    grad = {"a": np.ones(2), "b": np.ones(2)}
    with pytest.raises(fg.InputError, match=r"b\[1\].*too close to the largest"):
        fg.check(loss, grad, theta, engine="python")
    assert calls == []
    theta["b"][1] = 1e307  # far enough: no error from the steps
    fg.check(loss, grad, theta, engine="python")


@pytest.mark.parametrize("options", [{"method": "central4"}, {"method": "complex"},
                                     {"directions": 4, "seed": 0}])
@pytest.mark.parametrize("scale", SCALES[1:])
def test_other_methods_give_the_same_verdicts_at_every_scale(scale, options):
    x = np.linspace(0.1, 1.0, 20)
    wrong = np.cos(x) * np.where(np.arange(20) == 3, 2.0, 1.0)
    for g, expected in ((np.cos(x), "pass"), (wrong, "fail")):
        report = fg.check(lambda t: scale * np.sum(np.sin(t)), scale * g, x, engine="python",
                          **options)  # no float(): the complex step needs a generic loss
        assert report.verdict == expected, str(report)
        if expected == "fail":
            assert report.worst_label == "theta[3]"
