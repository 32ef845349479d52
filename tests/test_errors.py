"""Bad input and failing losses give clear errors: InputError (before any loss
evaluation where possible) and LossError (naming the coordinate and the step)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastgrad as fg

RNG = np.random.default_rng(0)
THETA = {"A": RNG.standard_normal((3, 4)), "b": RNG.standard_normal(5)}


def _value(p):
    return float(np.sum(p["A"] ** 2) + np.sum(np.sin(p["b"])))


def _grad(p):
    return {"A": 2 * p["A"], "b": np.cos(p["b"])}


GRAD = _grad(THETA)


class Counting:
    """A correct loss over THETA that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, p):
        self.calls += 1
        return _value(p)


def _raises_before_any_evaluation(error, match, grad, theta=THETA, **options):
    loss = Counting()
    with pytest.raises(error, match=match):
        fg.check(loss, grad, theta, **options)
    assert loss.calls == 0


# ----------------------------------------------------------------- grad structure
def test_grad_shape_mismatch():
    grad = {"A": GRAD["A"].T, "b": GRAD["b"]}
    _raises_before_any_evaluation(fg.InputError, r"grad\['A'\] has shape \(4, 3\), theta's is "
                                  r"\(3, 4\)", grad)
    x = np.ones((2, 3))
    loss = Counting()
    with pytest.raises(fg.InputError, match=r"grad has shape \(6,\), theta's is \(2, 3\)"):
        fg.check(loss, np.ones(6), x)
    assert loss.calls == 0


def test_grad_keys_missing_and_extra():
    _raises_before_any_evaluation(fg.InputError, r"keys do not match.*missing \['b'\]",
                                  {"A": GRAD["A"]})
    _raises_before_any_evaluation(fg.InputError, r"keys do not match.*unexpected \['c'\]",
                                  {**GRAD, "c": np.ones(2)})
    _raises_before_any_evaluation(fg.InputError, r"must be a dict with theta's keys", GRAD["A"])
    _raises_before_any_evaluation(fg.InputError, r"dict but theta is an array",
                                  {"theta": np.ones(3)}, theta=np.ones(3))


def test_grad_callable_with_the_wrong_keys():
    _raises_before_any_evaluation(fg.InputError, r"grad\(theta, \*args\)'s keys.*missing \['b'\]",
                                  lambda p: {"A": 2 * p["A"]})


# ----------------------------------------------------------------- theta
@pytest.mark.parametrize("theta, fragment", [
    (np.arange(3), "dtype int64; it must be a floating array"),
    ({"a": np.arange(3), "b": np.ones(2)}, r"theta\['a'\] has dtype int64"),
    (np.ones(3, dtype=complex), "complex"),
    ({"a": np.ones(2, dtype=np.complex64)}, "complex"),
    (np.zeros(0), r"theta is empty \(shape \(0,\)\)"),
    (np.zeros((2, 0)), r"theta is empty"),
    ({}, "theta is an empty dict"),
    ({"a": np.ones(2), "b": np.zeros((0, 3))}, r"theta\['b'\] is empty"),
    (np.array([1.0, np.nan, 2.0]), r"non-finite.*theta\[1\] = nan"),
    ({"A": np.ones((2, 3)), "b": np.array([0.0, np.inf])}, r"non-finite.*b\[1\] = inf"),
    ({"W": np.where(np.arange(6).reshape(2, 3) == 5, -np.inf, 1.0)}, r"W\[1, 2\] = -inf"),
])
def test_bad_theta(theta, fragment):
    loss = Counting()
    with pytest.raises(fg.InputError, match=fragment):
        fg.check(loss, lambda p: p, theta)
    assert loss.calls == 0


def test_non_finite_grad_names_the_coordinate():
    grad = {"A": GRAD["A"].copy(), "b": GRAD["b"].copy()}
    grad["A"][2, 1] = np.nan
    _raises_before_any_evaluation(fg.InputError, r"grad has 1 non-finite.*A\[2, 1\] = nan", grad)
    grad["A"][2, 1] = 0.0
    grad["b"][4] = np.inf
    _raises_before_any_evaluation(fg.InputError, r"grad has 1 non-finite.*b\[4\] = inf", grad)


# ----------------------------------------------------------------- options
@pytest.mark.parametrize("workers", [0, -1, 2.5, True, "2"])
def test_bad_workers(workers):
    _raises_before_any_evaluation(fg.InputError, "workers must be a positive integer", GRAD,
                                  workers=workers)


@pytest.mark.parametrize("eps, fragment", [
    (0, r"eps must be a number in \(0, 1\), got 0"),
    (-1, r"eps must be a number in \(0, 1\), got -1"),
    (float("nan"), r"in \(0, 1\), got nan"),
    (float("inf"), r"in \(0, 1\), got inf"),
    ("x", "eps must be a positive number, got 'x'"),
    (None, None),  # the default: no error
])
def test_bad_eps(eps, fragment):
    if fragment is None:
        assert fg.check(_value, GRAD, THETA, eps=eps).passed
        return
    with pytest.raises(fg.InputError, match=fragment):
        fg.check(_value, GRAD, THETA, eps=eps)
    with pytest.raises(fg.InputError, match=fragment):
        fg.numerical_gradient(_value, THETA, eps=eps)


def test_bad_eps_is_caught_before_any_evaluation():
    _raises_before_any_evaluation(fg.InputError, "eps", GRAD, eps=0)


@pytest.mark.parametrize("args", [np.ones(3), "ab", 3.0, {"X": 1}])
def test_args_must_be_a_tuple(args):
    _raises_before_any_evaluation(fg.InputError, "args must be a tuple", GRAD, args=args)


def test_non_callable_loss():
    with pytest.raises(fg.InputError, match="loss must be callable, got float"):
        fg.check(3.0, GRAD, THETA)
    with pytest.raises(fg.InputError, match="loss must be callable"):
        fg.numerical_gradient(None, THETA)


@pytest.mark.parametrize("options, fragment", [
    (dict(engine="gpu"), "engine must be one of"),
    (dict(method="backward"), "method must be one of"),
    (dict(dtype="int8"), "dtype must be"),
])
def test_other_bad_options(options, fragment):
    _raises_before_any_evaluation(fg.InputError, fragment, GRAD, **options)


# ----------------------------------------------------------------- the loss at theta
@pytest.mark.parametrize("value, fragment", [
    (np.ones(3), r"must return a scalar; it returned shape \(3,\) at theta"),
    (np.ones((1, 1)), r"must return a scalar; it returned shape \(1, 1\)"),
    (float("nan"), "the loss is nan at theta"),
    (float("inf"), "the loss is inf at theta"),
    (-np.inf, "the loss is -inf at theta"),
    (None, "must return a real scalar, got NoneType"),
])
def test_unusable_loss_value_at_theta(value, fragment):
    with pytest.raises(fg.LossError, match=fragment):
        fg.check(lambda p: value, GRAD, THETA)


def test_loss_raising_at_theta():
    def loss(p):
        raise RuntimeError("cannot evaluate")

    with pytest.raises(fg.LossError, match="raised RuntimeError at theta: cannot evaluate"):
        fg.check(loss, GRAD, THETA)


# ----------------------------------------------------------------- the loss during the check
FLAT = np.concatenate([THETA["A"].ravel(), THETA["b"]])


def _perturbed_coordinate(p):
    """The flat index perturbed in p, if exactly one differs from THETA, else None."""
    flat = np.concatenate([p["A"].ravel(), p["b"]])
    changed = np.flatnonzero(flat != FLAT)
    return int(changed[0]) if changed.size == 1 else None


@pytest.mark.parametrize("upward", [True, False])
def test_loss_raising_during_the_check_names_coordinate_and_step(upward):
    target = 12 + 3  # b[3]
    seen = []

    def loss(p):
        if _perturbed_coordinate(p) == target and (p["b"][3] > THETA["b"][3]) == upward:
            seen.append(p["b"][3] - THETA["b"][3])
            raise OverflowError("planted")
        return _value(p)

    with pytest.raises(fg.LossError) as caught:
        fg.check(loss, GRAD, THETA)
    message = str(caught.value)
    assert "raised OverflowError at coordinate b[3] with step" in message
    assert f"{seen[0]:+.3e}" in message and ("+" if upward else "-") in f"{seen[0]:+.3e}"
    assert message.endswith("planted")
    assert caught.value.coordinate == "b[3]"


def test_loss_nan_during_the_check_at_one_coordinate_names_it():
    def loss(p):
        if _perturbed_coordinate(p) == 6 and p["A"][1, 2] < THETA["A"][1, 2]:  # A[1, 2]
            return float("nan")
        return _value(p)

    with pytest.raises(fg.LossError, match=r"non-finite value at coordinate A\[1, 2\] with step -"):
        fg.check(loss, GRAD, THETA)
    with pytest.raises(fg.LossError, match=r"A\[1, 2\]"):
        fg.numerical_gradient(loss, THETA)


def test_nondeterministic_loss_is_reported():
    rng = np.random.default_rng(1)
    with pytest.raises(fg.LossError, match="not deterministic"):
        fg.check(lambda p: _value(p) + 1e-3 * rng.standard_normal(), GRAD, THETA)


@pytest.mark.parametrize("failure", ["raise", "nan"])
def test_loss_failing_near_but_not_at_theta_is_not_blamed_on_theta(failure):
    def loss(p):
        flat = np.concatenate([p["A"].ravel(), p["b"]])
        if np.count_nonzero(flat != FLAT) > 1:  # only the noise estimate moves every coordinate
            if failure == "raise":
                raise RuntimeError("off theta")
            return float("nan")
        return _value(p)

    assert np.isfinite(loss(THETA))
    with pytest.raises(fg.LossError) as caught:
        fg.check(loss, GRAD, THETA)
    assert not re.search(r"at theta(:|$)", str(caught.value)), str(caught.value)
