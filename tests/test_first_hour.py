"""Issue 10: one explicit test for each defect found by fuzzing and by a newcomer's first
hour that the property suite (tests/test_properties.py) does not already pin down by name."""

from __future__ import annotations

import traceback

import numba
import numpy as np
import pytest
from conftest import needs_jit

import fastgrad as fg


def sine(theta, *args, scale=1.0):
    return scale * float(np.sum(np.sin(theta)))


def sine_grad(theta, *args, scale=1.0):
    return scale * np.cos(theta)


THETA = np.linspace(0.1, 1.0, 12)


# 5, 11: a loss returning shape (1,) is told to return its single value
def test_a_loss_returning_shape_1_gets_the_item_hint():
    with pytest.raises(fg.LossError, match=r"use \.item\(\) or \[0\]"):
        fg.check(lambda t: np.array([sine(t)]), sine_grad, THETA)


@pytest.mark.parametrize("value", [True, "1.0", np.bool_(False)])
def test_a_loss_returning_a_bool_or_string_is_refused(value):
    with pytest.raises(fg.LossError, match="real scalar"):
        fg.check(lambda t: value, sine_grad, THETA)


# 6: an exception whose message cannot be formatted does not hide the failure
class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("this message cannot be printed")


def test_an_unprintable_exception_from_the_loss_is_still_reported():
    def loss(theta):
        raise Unprintable()

    with pytest.raises(fg.LossError, match="Unprintable") as caught:
        fg.check(loss, sine_grad, THETA)
    assert "could not be formatted" in str(caught.value)
    assert isinstance(caught.value.__cause__, Unprintable)


# 8: a list or tuple: of numbers, one array; of arrays, refused with a dict suggested
@pytest.mark.parametrize("kind", [list, tuple])
def test_a_sequence_of_numbers_is_one_array(kind):
    received = []

    def loss(theta):
        received.append(type(theta))
        return sine(theta)

    report = fg.check(loss, lambda t: np.cos(t), kind(THETA.tolist()))
    assert report.passed and report.checked == THETA.size
    assert set(received) == {np.ndarray}


@pytest.mark.parametrize("theta", [[np.ones(3), np.ones(3)], (np.ones(3), np.ones(2)),
                                   [[1.0, 2.0], [3.0, 4.0]]])
def test_a_sequence_of_arrays_is_refused_with_a_dict_suggested(theta):
    calls = []
    with pytest.raises(fg.InputError, match="dict of named arrays"):
        fg.check(lambda t: calls.append(1) or 0.0, np.zeros(6), theta)
    with pytest.raises(fg.InputError, match="dict of named arrays"):
        fg.numerical_gradient(lambda t: calls.append(1) or 0.0, theta)
    assert not calls


# 9: a callable grad that raises, or has the wrong signature
def test_a_grad_with_the_wrong_signature_is_an_input_error_with_the_cause():
    with pytest.raises(fg.InputError, match=r"grad\(theta, \*args\) raised TypeError") as caught:
        fg.check(sine, lambda t: np.cos(t), THETA, args=(1.0,))
    assert isinstance(caught.value.__cause__, TypeError)


def test_a_grad_that_raises_is_an_input_error_with_the_cause():
    def grad(theta):
        raise KeyError("W9")

    with pytest.raises(fg.InputError, match="raised KeyError") as caught:
        fg.check(sine, grad, THETA)
    assert isinstance(caught.value.__cause__, KeyError)


# 10: a compiled loss that does not compile: two lines, Numba's text as the cause
@numba.njit
def indexes_a_dict(theta):
    return np.sum(theta["W"])


@numba.njit
def undefined_name(theta):
    return np.sum(theta) * not_defined  # noqa: F821 -- the planted error


@needs_jit
@pytest.mark.parametrize("loss, theta, says", [
    (indexes_a_dict, {"W": np.ones(3), "b": np.ones(2)}, "one flat float64 vector"),
    (undefined_name, np.ones(3), "float64 array of shape (3,)"),
])
def test_a_compiled_loss_that_fails_to_compile_is_explained_in_two_lines(loss, theta, says):
    with pytest.raises(fg.InputError) as caught:
        fg.check(loss, {k: np.ones_like(v) for k, v in theta.items()}
                 if isinstance(theta, dict) else np.ones_like(theta), theta)
    message = str(caught.value)
    assert "failed to compile" in message and says in message
    assert len(message.splitlines()) <= 2
    assert isinstance(caught.value.__cause__, Exception)
    assert len(str(caught.value.__cause__).splitlines()) > 2  # Numba's full text is kept


# 16: a compiled loss that needs SciPy says to install it
@numba.njit
def needs_scipy(theta):
    if theta[0] > -1e300:
        raise ImportError("scipy 0.16+ is required for linear algebra")
    return 0.0


def test_a_compiled_loss_that_needs_scipy_says_install_scipy():
    with pytest.raises(fg.LossError, match=r"install scipy \(Numba's @ and np.dot need it\)"):
        fg.check(needs_scipy, np.ones(3), np.ones(3))


# 11: kwargs= reach the loss and a callable grad, Python or compiled
def test_kwargs_reach_a_python_loss_and_grad():
    report = fg.check(sine, sine_grad, THETA, kwargs={"scale": 3.0})
    assert report.passed
    wrong = fg.check(sine, lambda t, scale: np.cos(t), THETA, kwargs={"scale": 3.0})
    assert wrong.verdict == "fail"  # the loss saw scale = 3, the grad ignored it


@numba.njit
def scaled_sine(theta, offset, scale=1.0):
    return scale * np.sum(np.sin(theta + offset))


def test_kwargs_are_placed_by_the_signature_of_a_compiled_loss():
    grad = lambda t, offset, scale=1.0: scale * np.cos(t + offset)  # noqa: E731
    assert fg.check(scaled_sine, grad, THETA, args=(0.5,), kwargs={"scale": 2.0}).passed
    assert fg.check(scaled_sine, grad, THETA, kwargs={"offset": 0.5, "scale": 2.0}).passed
    with pytest.raises(fg.InputError, match="signature"):
        fg.check(scaled_sine, grad, THETA, kwargs={"nope": 1.0})


# 19: assert_gradient: strict, GradientMismatch, and no fastgrad frames in pytest
def test_assert_gradient_raises_gradient_mismatch_carrying_the_report():
    wrong = lambda t: 1.01 * np.cos(t)  # noqa: E731
    with pytest.raises(fg.GradientMismatch) as caught:
        fg.assert_gradient(sine, wrong, THETA)
    assert isinstance(caught.value, AssertionError)
    assert caught.value.report.verdict == "fail"
    assert str(caught.value.report) in str(caught.value)


def test_assert_gradient_strict_treats_warn_as_failure():
    """A spike narrower than the step, off centre: its exact gradient (~2e12) is invisible
    to every difference, so the verdict is warn (see tests/test_hard_verdicts.py)."""
    import math

    theta = np.array([0.3, -0.7, 1.1, 0.2])
    args = (0.3 - 0.3e-12, -3.2, 1e-12)

    def loss(t, centre, depth, width):
        return float(50.0 + 0.5 * np.sum(t ** 2)
                     + depth * math.exp(-(((t[0] - centre) / width) ** 2)))

    def grad(t, centre, depth, width):
        g = np.array(t, dtype=np.float64)
        x = (t[0] - centre) / width
        g[0] += -2.0 * depth * x / width * math.exp(-x * x)
        return g

    report = fg.assert_gradient(loss, grad, theta, args, engine="python")  # warn: no raise
    assert report.verdict == "warn", str(report)
    with pytest.raises(fg.GradientMismatch):
        fg.assert_gradient(loss, grad, theta, args, engine="python", strict=True)
    with pytest.raises(fg.InputError):
        fg.assert_gradient(loss, grad, theta, args, strict="yes")


def test_assert_gradient_hides_its_own_frame_from_pytest():
    with pytest.raises(fg.GradientMismatch) as caught:
        fg.assert_gradient(sine, lambda t: 2.0 * np.cos(t), THETA)
    frames = [entry for entry in caught.traceback if entry.frame.code.name == "assert_gradient"]
    assert frames and all(entry.ishidden(caught) if _takes_excinfo(entry) else entry.ishidden()
                          for entry in frames)
    assert traceback.format_exception(caught.value)  # an ordinary exception otherwise


def _takes_excinfo(entry) -> bool:
    import inspect
    return len(inspect.signature(entry.ishidden).parameters) == 1


# 7: the Monitor raises GradientMismatch too, and checks its options when built
def test_monitor_on_fail_raise_is_a_gradient_mismatch():
    monitor = fg.Monitor(sine, lambda t: 2.0 * np.cos(t), every=1, sample=4, directions=0,
                         seed=0, on_fail="raise")
    with pytest.raises(fg.GradientMismatch):
        monitor.step(THETA)


@pytest.mark.parametrize("options", [{"every": True}, {"sample": True}, {"seed": -1},
                                     {"dtype": "nonsense"}, {"progress": 5},
                                     {"detect": (0.1, 0.05)}, {"eps": 0.0}])
def test_monitor_options_are_checked_when_it_is_built(options):
    with pytest.raises(fg.InputError):
        fg.Monitor(sine, sine_grad, **options)


def test_kwargs_reach_the_loss_of_numerical_gradient():
    np.testing.assert_allclose(fg.numerical_gradient(sine, THETA, kwargs={"scale": 3.0}),
                               sine_grad(THETA, scale=3.0), rtol=1e-8)
