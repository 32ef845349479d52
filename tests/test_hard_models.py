"""Verdicts at the hard points of issue #11 (item 7), on the models of tests/hard_models.py.

What is tested, and how each test can fail:

* the models themselves, independently of fastgrad's verdict: each correct gradient agrees
  with Richardson-extrapolated central differences at steps the loss is smooth over, within
  their error bound (rounding 6·σ/h with σ measured away from θ, plus the truncation
  estimate |R(h) − R(2h)|); each planted bug moves some coordinate by more than twice
  that bound (beyond fastgrad's allowance of ≤ 11.2 standard deviations), so a check that
  misses it has missed something finite differences resolve;
  and each point is what it claims to be (stationary, ill-conditioned, spiked, flat, jumping);
* the verdicts (issue #11, items 1–5 and 7): every correct gradient gets its verdict (pass;
  warn on the spike, where no usable step sees the loss the way θ does), every planted bug
  fails, in a full check and in a check with ``sample=0.1`` (item 6: these models are small,
  so the floor of min(n_g, 16) coordinates per group checks them whole).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hard_models import HardModel, gp_terms, models

import fastgrad
from fastgrad.noise import estimate_noise

MODELS = {model.name: model for model in models()}
BUGS = [(model.name, bug.name) for model in MODELS.values() for bug in model.bugs]
U = np.finfo(np.float64).eps / 2

#: Step of the reference differences: far above the spike's width and every rounding, small
#: enough for a 4th-order truncation of ~h⁴·|f⁽⁵⁾|; the ill-conditioned GP (σ ≈ 1e3) needs a
#: larger one.
REFERENCE_STEP = {"gp_ill": 0.05}
DEFAULT_REFERENCE_STEP = 1e-3
#: A bug is resolved when it moves a coordinate by this many times the reference's error bound
#: (6 standard deviations of rounding): beyond z = 2·√(2 ln(k/10⁻⁶)) ≤ 11.2 standard deviations
#: for k ≤ 6 coordinates, fastgrad's allowance (README, "How the verdict is made").
RESOLVED = 2.0


def _central(model: HardModel, h: float) -> np.ndarray:
    theta = model.theta
    out = np.empty(theta.size)
    for i in range(theta.size):
        step = np.zeros(theta.size)
        step[i] = h
        out[i] = (model.loss(theta + step, *model.args) - model.loss(theta - step, *model.args)) / (2 * h)
    return out


def _richardson(model: HardModel, h: float) -> np.ndarray:
    """(4·D(h) − D(2h))/3: central differences with the h² term removed (error O(h⁴))."""
    return (4.0 * _central(model, h) - _central(model, 2 * h)) / 3.0


def _reference(model: HardModel) -> tuple[np.ndarray, np.ndarray]:
    """The extrapolated differences R(h) and their error bound per coordinate: 6 standard
    deviations of R's rounding, √(2·(4/3)²/(2h)² + 2·(1/3)²/(4h)²)·σ ≤ 0.95·σ/h, with σ
    the loss's noise measured 1e-3 away from θ in every coordinate (off the spike and the
    jump), plus the truncation estimate |R(h) − R(2h)|."""
    h = REFERENCE_STEP.get(model.name, DEFAULT_REFERENCE_STEP)
    near = model.theta + 1e-3
    noise = estimate_noise(lambda point: model.loss(point, *model.args), near, rng=0)
    sigma = max(noise.sigma, U * abs(model.loss(model.theta, *model.args)))
    value = _richardson(model, h)
    bound = 6.0 * 0.95 * sigma / h + np.abs(value - _richardson(model, 2 * h))
    return value, bound


@pytest.mark.parametrize("name", MODELS)
def test_correct_gradient_matches_extrapolated_differences(name):
    model = MODELS[name]
    reference, bound = _reference(model)
    g = model.grad(model.theta, *model.args)
    assert np.all(np.abs(reference - g) <= bound), (reference, g, bound)


@pytest.mark.parametrize("name, bug", BUGS)
def test_planted_bug_is_resolved_by_finite_differences(name, bug):
    model = MODELS[name]
    _, bound = _reference(model)
    planted = next(b for b in model.bugs if b.name == bug)
    change = np.abs(model.buggy(planted)(model.theta, *model.args) - model.grad(model.theta, *model.args))
    assert np.max(change / bound) > RESOLVED, (change, bound)


def test_the_points_are_what_they_claim():
    gp, ill, logistic = MODELS["gp_optimum"], MODELS["gp_ill"], MODELS["logistic_mle"]
    # stationary: zero within any difference's error (u·|f|/h ≈ 1e-9 at h = 6e-6), and
    # each slip planted there leaves a gradient far from zero
    for model in (gp, logistic):
        assert np.abs(model.grad(model.theta, *model.args)).max() < 1e-11
        for bug in model.bugs:
            assert np.abs(model.buggy(bug)(model.theta, *model.args)).max() > 1e-4, bug.name
    fit, trace = gp_terms(gp.theta, *gp.args)
    assert np.abs(fit).min() > 0.1 and np.allclose(fit, -trace, rtol=0, atol=1e-11)
    # ill-conditioned: |f| ≈ 1e9 and its noise is a million times u·|f|
    f_ill = ill.loss(ill.theta, *ill.args)
    noise = estimate_noise(lambda point: ill.loss(point, *ill.args), ill.theta, rng=0)
    assert abs(f_ill) > 1e8 and noise.detected and noise.sigma > 1e6 * U * abs(f_ill)


def test_the_spike_is_narrower_than_any_step():
    model = MODELS["spike"]
    centre, depth, width = model.args
    at = model.loss(model.theta, *model.args)
    for h in (1e-10, 6e-6):
        for sign in (-1.0, 1.0):
            moved = model.theta.copy()
            moved[0] += sign * h
            assert math.isclose(model.loss(moved, *model.args) - at, -depth, rel_tol=1e-6)
    assert model.theta[0] == centre and width < 1e-10
    assert model.grad(model.theta, *model.args)[0] == pytest.approx(model.theta[0] - 0.3, abs=1e-15)


@pytest.mark.parametrize("h", [1e-12, 1e-8, 6e-6, 1e-3, 0.1])
def test_the_flat_loss_has_no_difference_at_any_step(h):
    model = MODELS["flat"]
    at = model.loss(model.theta, *model.args)
    for i in range(model.theta.size):
        for sign in (-1.0, 1.0):
            moved = model.theta.copy()
            moved[i] += sign * h
            assert model.loss(moved, *model.args) == at
    assert np.all(model.grad(model.theta, *model.args) == 0.0)


def test_the_jump_is_exactly_at_theta():
    model = MODELS["jump"]
    X, margin = model.args
    assert (X @ model.theta)[0] == 1.0
    at = model.loss(model.theta, *model.args)
    for h in (1e-12, 1e-8):
        moved = model.theta + h
        step = model.loss(moved, *model.args) - at
        jump = math.log1p(math.exp(margin - 1.0)) - 1.0  # the smooth branch minus the s == 1 one
        assert step == pytest.approx(jump, rel=1e-3)


# ----------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("sample", [None, 0.1])
@pytest.mark.parametrize("name", MODELS)
def test_correct_gradient_gets_its_verdict(name, sample):
    model = MODELS[name]
    report = fastgrad.check(model.loss, model.grad, model.theta, model.args, sample=sample, seed=0)
    assert report.verdict == model.expected, str(report)
    if sample is not None:  # the floor: these groups (n <= 6) are checked whole
        assert report.checked == model.theta.size


@pytest.mark.parametrize("sample", [None, 0.1])
@pytest.mark.parametrize("name, bug", BUGS)
def test_planted_bug_fails(name, bug, sample):
    model = MODELS[name]
    planted = next(b for b in model.bugs if b.name == bug)
    report = fastgrad.check(model.loss, model.buggy(planted), model.theta, model.args,
                            sample=sample, seed=0)
    assert report.verdict == "fail", str(report)


# ----------------------------------------------------------------------------- the benchmark


def _benchmark():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "hard_points.py"
    spec = importlib.util.spec_from_file_location("hard_points", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_peers_and_table(capsys):
    """The peers' bands (≤ 1e-7 pass, > 1e-3 fail) on the generic GP, whose correct gradient
    both pass and whose ×2 both fail; and one table row per gradient, one summary per method."""
    bench = _benchmark()
    assert [bench.banded(e) for e in (1e-7, 2e-7, 1e-3, 1.1e-3)] == ["pass", "warn", "warn", "fail"]
    assert bench.banded_ratio(0.0, 0.0) == ("pass", 0.0) and bench.banded_ratio(1.0, 0.0)[0] == "fail"
    model = MODELS["gp_generic"]
    doubled = model.buggy(model.bugs[0])
    assert bench.seed_verdict(model, model.grad)[0] == bench.scipy_verdict(model, model.grad)[0] == "pass"
    assert bench.seed_verdict(model, doubled)[0] == bench.scipy_verdict(model, doubled)[0] == "fail"
    bench.main(["--markdown"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(MODELS) + len(BUGS) + 1 + len(bench.METHODS)
