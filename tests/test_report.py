"""The report as text and as a dict; report.numerical; assert_gradient."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.directions import DirectionResult
from fastgrad.models import mlp

# W2 has shape (5, 18), so that W2[3, 17] exists: n = 3*5 + 5 + 5*18 + 18 = 128
SIZES = dict(d=3, h=5, c=18, m=12)


@pytest.fixture(scope="module")
def wide():
    problem = mlp.problem(**SIZES, seed=2)
    args = (problem.X, problem.Y)
    return problem, args, mlp.grad(problem.params, *args)


@pytest.fixture(scope="module")
def planted(wide):
    """A check of the wide MLP with one bug at W2[3, 17]."""
    problem, args, grad = wide
    wrong = {k: v.copy() for k, v in grad.items()}
    wrong["W2"][3, 17] += 0.01
    return fg.check(mlp.loss, wrong, problem.params, args)


def test_text_of_a_failing_report(planted, wide, record_score):
    problem = wide[0]
    record_score("report: W2[3, 17] += 0.01", planted, "bug")
    text = str(planted)
    assert planted.verdict == "fail"
    assert text.startswith("FAIL")
    assert f"{planted.relative_error:.3e}" in text
    assert f"({planted.band}:" in text
    assert f"checked         {problem.n} of {problem.n} coordinates" in text
    assert f"{planted.evaluations:,} loss evaluations" in text
    assert planted.evaluations >= 2 * problem.n
    # the per-group table: every group with its shape
    table = {line.split()[0]: line for line in text.splitlines()
             if line.split() and line.split()[0] in mlp.KEYS}
    assert set(table) == set(mlp.KEYS)
    for key, shape in mlp.layout(SIZES["d"], SIZES["h"], SIZES["c"]).items():
        assert f"({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})" in table[key]
    assert table["W2"].rstrip().endswith("fail")
    assert table["W1"].rstrip().endswith("ok")
    # the worst coordinates, named like W2[3, 17], the planted one first
    assert planted.worst[0].label == "W2[3, 17]" == planted.worst_label
    assert (planted.worst[0].group, planted.worst[0].index) == ("W2", (3, 17))
    worst_block = text.split("worst coordinates")[1]
    first_row = worst_block.splitlines()[2]
    assert first_row.startswith("W2[3, 17]") and first_row.rstrip().endswith("fail")
    assert all(re.fullmatch(r"(W1|W2)\[\d+, \d+\]|(b1|b2)\[\d+\]", c.label) for c in planted.worst)


def test_text_of_a_passing_report(wide):
    problem, args, grad = wide
    report = fg.check(mlp.loss, grad, problem.params, args)
    text = str(report)
    assert report.verdict == "pass" and text.startswith("PASS")
    assert "correct" in text and report.band == "correct"
    assert f"checked         {problem.n} of {problem.n} coordinates" in text
    assert f"{report.evaluations:,} loss evaluations" in text
    assert "(numba, " in text
    assert re.search(r"W2\[\d+, \d+\]", text.split("worst coordinates")[1])


def test_to_dict_survives_json(planted):
    data = planted.to_dict()
    back = json.loads(json.dumps(data))
    for key in ("verdict", "passed", "relative_error", "band", "groups", "worst"):
        assert key in back
    assert back["verdict"] == "fail" and back["passed"] is False
    assert back["relative_error"] == planted.relative_error
    assert back["band"] == planted.band
    assert [g["name"] for g in back["groups"]] == list(mlp.KEYS)
    assert back["groups"][2]["shape"] == [SIZES["h"], SIZES["c"]]
    assert back["groups"][2]["verdict"] == "fail"
    assert back["worst"][0]["label"] == "W2[3, 17]"
    assert back["worst"][0]["index"] == [3, 17]


def test_to_dict_is_strict_json_and_names_what_was_not_finite(planted):
    """json.dumps(allow_nan=False) accepts every report; a NaN or inf becomes None, and
    "non_finite" names where it was and what it was."""
    assert planted.to_dict()["non_finite"] == {}
    json.dumps(planted.to_dict(), allow_nan=False)
    infinite = DirectionResult("direction 1", math.inf, 1.0, 1e-9, math.inf, 2)
    broken = dataclasses.replace(planted, relative_error=math.nan, noise=math.inf,
                                 sensitivity=-math.inf, directions=[infinite])
    data = json.loads(json.dumps(broken.to_dict(), allow_nan=False))
    assert data["non_finite"] == {"relative_error": "nan", "noise": "inf", "sensitivity": "-inf",
                                  "directions[0].numerical": "inf", "directions[0].score": "inf"}
    assert data["relative_error"] is data["noise"] is data["sensitivity"] is None
    assert data["directions"][0]["numerical"] is None and data["directions"][0]["analytic"] == 1.0
    assert data["worst"] == json.loads(json.dumps(planted.to_dict()))["worst"]


def test_to_dict_seed_is_an_integer(wide):
    problem, args, grad = wide
    given = fg.check(mlp.loss, grad, problem.params, args, sample=5, seed=11).to_dict()
    assert given["seed"] == 11 and isinstance(given["seed"], int)
    drawn = fg.check(mlp.loss, grad, problem.params, args, sample=5)
    assert drawn.to_dict()["seed"] == drawn.seed and isinstance(drawn.to_dict()["seed"], int)


def test_to_dict_of_a_huge_loss_is_strict_json():
    """|f| ~ 1e200: whatever the figures (issue 10, item 1), the dict is strict JSON."""
    x = np.linspace(0.1, 1.0, 20)
    report = fg.check(lambda t: 1e200 * float(np.sum(np.sin(t))), 1e200 * np.cos(x), x)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    for path, value in data["non_finite"].items():
        assert value in ("nan", "inf", "-inf") and path.split(".")[0].split("[")[0] in data


# ----------------------------------------------------------------- what the text states
def _percentages(text: str) -> list[float]:
    return [float(p) for p in re.findall(r"\((\d+(?:\.\d+)?)%\)", text)]


def test_directions_only_text_states_the_directions_their_steps_and_evaluations(wide):
    problem, args, grad = wide
    report = fg.check(mlp.loss, grad, problem.params, args, directions=3, seed=2)
    text = str(report)
    assert report.checked == 0 and report.coverage is None
    assert "0 of" not in text.splitlines()[2]
    assert f"checked         3 random directions through all {problem.n:,} coordinates" in text
    method = next(line for line in text.splitlines() if line.startswith("method"))
    assert f"{report.relative_step:.2e}" not in method  # no coordinate was differenced
    assert "along each direction" in method
    directions = next(line for line in text.splitlines() if line.startswith("directions"))
    steps = sorted({d.step for d in report.directions})
    assert f"h = {steps[0]:.2e}" in directions and f"{steps[-1]:.2e} *" in directions
    assert f"({sum(d.evaluations for d in report.directions):,} loss evaluations" in directions


def test_seed_line_is_true_whether_the_seed_was_given_or_drawn(wide):
    problem, args, grad = wide
    given = fg.check(mlp.loss, grad, problem.params, args, sample=5, seed=5)
    drawn = fg.check(mlp.loss, grad, problem.params, args, sample=5, directions=1)
    for report, what in ((given, "the sample"), (drawn, "the sample and directions")):
        seed_line = next(line for line in str(report).splitlines() if line.startswith("seed"))
        assert seed_line == f"seed            {report.seed} (seed={report.seed} repeats {what})"
        cli_line = next(line for line in report.format(command_line=True).splitlines()
                        if line.startswith("seed"))
        assert cli_line == f"seed            {report.seed} (--seed {report.seed} repeats {what})"


def test_one_group_states_its_guarantee_once():
    x = np.linspace(0.1, 1.0, 2000)
    report = fg.check(lambda t: float(np.sum(np.sin(t))), np.cos(x), x, detect=(0.01, 0.05), seed=0)
    text = str(report)
    guarantees = [line for line in text.splitlines() if "a bug touching" in line]
    assert len(guarantees) == 1
    group = report.coverage.groups[0]
    assert f">= {group.caught_from:,} ({group.caught_fraction:.2%}) of them" in guarantees[0]


@pytest.mark.parametrize("sample", [1, 2, 3])
def test_a_guarantee_never_names_more_coordinates_than_there_are(sample, wide):
    x = np.linspace(0.1, 1.0, 4)
    one_group = fg.check(lambda t: float(np.sum(np.sin(t))), np.cos(x), x, sample=sample, seed=1)
    problem, args, grad = wide
    groups = fg.check(mlp.loss, grad, problem.params, args, sample=len(mlp.KEYS) * sample, seed=1)
    assert "checked whole" in str(one_group)  # the floor of min(4, 16) checks all 4
    assert "a bug touching" in str(groups)
    for report in (one_group, groups):
        text = str(report)
        assert max(_percentages(text), default=0.0) <= 100.0, text


def test_numerical_has_thetas_structure_and_equals_numerical_gradient(wide):
    problem, args, grad = wide
    report = fg.check(mlp.loss, grad, problem.params, args)
    expected = fg.numerical_gradient(mlp.loss, problem.params, args)
    assert isinstance(report.numerical, dict) and list(report.numerical) == list(mlp.KEYS)
    assert isinstance(expected, dict) and list(expected) == list(mlp.KEYS)
    for key in mlp.KEYS:
        assert report.numerical[key].shape == problem.params[key].shape
        assert np.array_equal(report.numerical[key], expected[key])
        assert np.array_equal(report.analytic[key], grad[key])
        np.testing.assert_allclose(report.numerical[key], grad[key], rtol=1e-5, atol=1e-9)


def test_numerical_of_an_array_theta_has_its_shape():
    x = np.linspace(1.1, 3.0, 24).reshape(2, 3, 4)
    report = fg.check(lambda t: float(np.sum(np.sin(t) * t)), np.sin(x) + x * np.cos(x), x)
    expected = fg.numerical_gradient(lambda t: float(np.sum(np.sin(t) * t)), x)
    assert report.numerical.shape == expected.shape == (2, 3, 4)
    assert np.array_equal(report.numerical, expected)


# ----------------------------------------------------------------- assert_gradient
def test_assert_gradient_returns_the_report_on_success(wide):
    problem, args, grad = wide
    report = fg.assert_gradient(mlp.loss, grad, problem.params, args)
    assert isinstance(report, fg.Report) and report.passed


def test_assert_gradient_raises_with_the_report_as_message(wide):
    problem, args, _ = wide
    with pytest.raises(AssertionError) as caught:
        fg.assert_gradient(mlp.loss, mlp.grad_buggy, problem.params, args)
    message = str(caught.value)
    assert "FAIL" in message
    assert "worst coordinates" in message and "W1" in message
    assert f"checked         {problem.n} of {problem.n}" in message
