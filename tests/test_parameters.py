"""Inputs: theta as an array of any shape or a dict of named arrays; grad mirroring it or
callable; what a Python and a compiled loss receive; flattening, views and labels."""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastgrad as fg
from fastgrad.parameters import ParameterLayout

# ----------------------------------------------------------------- strategies
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
names = st.text(alphabet="abcdefgWXYZ_0123456789", min_size=1, max_size=6)
floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def float_arrays(draw, dtype=None):
    dtype = dtype or draw(st.sampled_from([np.float64, np.float32]))
    return draw(hnp.arrays(dtype, draw(shapes), elements=floats))


@st.composite
def dict_thetas(draw):
    keys = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    return {k: draw(float_arrays()) for k in keys}


def _root(array):
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


# ----------------------------------------------------------------- round trips
@settings(max_examples=40, deadline=None)
@given(theta=dict_thetas())
def test_dict_flatten_structured_round_trip(theta):
    layout, flat = ParameterLayout.from_theta(theta)
    expected = np.concatenate([np.asarray(v, np.float64).ravel() for v in theta.values()])
    assert flat.ndim == 1 and flat.size == expected.size == layout.size
    assert np.array_equal(flat.astype(np.float64), expected)
    all32 = all(v.dtype == np.float32 for v in theta.values())
    assert flat.dtype == (np.float32 if all32 else np.float64)
    for array in theta.values():  # a fresh copy, never a view of the user's arrays
        assert not np.shares_memory(flat, array)
    views = layout.structured(flat)
    assert list(views) == list(theta)  # same names, same order
    for name, array in theta.items():
        assert views[name].shape == array.shape
        assert np.array_equal(views[name], array.astype(flat.dtype))
        assert _root(views[name]) is _root(flat)  # views, not copies
    # writing through the flat vector is seen through the views
    flat[-1] = 12345.0
    last = list(theta)[-1]
    assert views[last].reshape(-1)[-1] == 12345.0
    # flatten_like on something structured like theta gives the same flat float64 vector
    assert np.array_equal(layout.flatten_like(theta, "grad"), expected)
    assert layout.flatten_like(theta, "grad").dtype == np.float64


@settings(max_examples=40, deadline=None)
@given(first=dict_thetas(), second=dict_thetas(), dtype=st.sampled_from([None, "float64"]))
def test_flatten_theta_reuses_the_layout_only_for_the_same_structure(first, second, dtype):
    layout, _ = ParameterLayout.from_theta(first, dtype)
    for theta in (first, {k: v + 1.0 for k, v in first.items()}, second):
        again, flat = layout.flatten_theta(theta, dtype)
        fresh, expected = ParameterLayout.from_theta(theta, dtype)
        same = [(k, v.shape, v.dtype) for k, v in theta.items()] == \
            [(k, v.shape, v.dtype) for k, v in first.items()]
        assert (again is layout) == same  # otherwise a new layout, as from_theta makes it
        assert [(g.name, g.shape, g.offset) for g in again.groups] == \
            [(g.name, g.shape, g.offset) for g in fresh.groups] and again.dtype == fresh.dtype
        assert np.array_equal(flat, expected) and flat.dtype == expected.dtype
        assert not any(np.shares_memory(flat, v) for v in theta.values())
    with pytest.raises(fg.InputError, match="non-finite"):
        layout.flatten_theta({k: np.full_like(v, np.nan) for k, v in first.items()}, dtype)


@settings(max_examples=40, deadline=None)
@given(theta=float_arrays())
def test_array_flatten_structured_round_trip(theta):
    layout, flat = ParameterLayout.from_theta(theta)
    assert flat.shape == (theta.size,)
    assert flat.dtype == theta.dtype
    assert not np.shares_memory(flat, theta)
    view = layout.structured(flat)
    assert view.shape == theta.shape and np.array_equal(view, theta)
    assert np.shares_memory(view, flat)
    assert layout.array_shape == theta.shape


@settings(max_examples=40, deadline=None)
@given(theta=st.one_of(dict_thetas(), float_arrays()))
def test_labels_name_every_coordinate_and_invert(theta):
    layout, _ = ParameterLayout.from_theta(theta)
    items = theta.items() if isinstance(theta, dict) else [("theta", theta)]
    expected = []
    for name, array in items:
        for local in range(array.size):
            index = np.unravel_index(local, array.shape)
            expected.append(name if array.ndim == 0
                            else f"{name}[{', '.join(str(int(k)) for k in index)}]")
    labels = [layout.label(i) for i in range(layout.size)]
    assert labels == expected
    assert len(set(labels)) == len(labels)
    assert [layout.index_of(label) for label in labels] == list(range(layout.size))


def test_label_style_matches_the_docs():
    layout, _ = ParameterLayout.from_theta({"W1": np.zeros((2, 3)), "W2": np.zeros((5, 20)),
                                           "lr": np.array(0.1)})
    assert layout.label(6 + 3 * 20 + 17) == "W2[3, 17]"
    assert layout.label(6 + 100) == "lr"
    with pytest.raises(fg.InputError):
        layout.index_of("W2[5, 0]")
    with pytest.raises(fg.InputError):
        layout.index_of("W3[0, 0]")


def test_working_dtype_rules():
    f32, f64 = np.ones(3, np.float32), np.ones(2)
    assert ParameterLayout.from_theta({"a": f32, "b": f32})[1].dtype == np.float32
    assert ParameterLayout.from_theta({"a": f32, "b": f64})[1].dtype == np.float64
    assert ParameterLayout.from_theta(f32, "float64")[1].dtype == np.float64


# ----------------------------------------------------------------- what a loss receives
def test_python_loss_over_dict_receives_dict_of_views_with_the_same_names():
    rng = np.random.default_rng(0)
    theta = {"W": rng.standard_normal((3, 4)), "b": rng.standard_normal(4), "s": np.array(0.5)}
    seen = []

    def loss(p):
        seen.append(p)
        return float(np.sum(np.tanh(p["W"]) * p["b"]) + p["s"] ** 2)

    def grad(p):
        return {"W": (1 - np.tanh(p["W"]) ** 2) * p["b"], "b": np.tanh(p["W"]).sum(0),
                "s": 2 * p["s"]}

    report = fg.check(loss, grad, theta)
    assert report.passed and report.engine == "python"
    assert seen
    for p in seen:
        assert isinstance(p, dict) and list(p) == list(theta)
        assert {k: v.shape for k, v in p.items()} == {k: v.shape for k, v in theta.items()}
        assert all(v.dtype == np.float64 for v in p.values())
        # views into one buffer, never the user's own arrays
        assert len({id(_root(v)) for v in p.values()}) == 1
        assert not any(np.shares_memory(p[k], theta[k]) for k in theta)


@pytest.mark.parametrize("shape", [(), (7,), (3, 4, 5)])
def test_python_loss_over_array_receives_thetas_shape(shape):
    theta = np.linspace(0.5, 1.5, int(np.prod(shape))).reshape(shape)
    seen = set()

    def loss(x):
        seen.add((type(x), x.shape, x.dtype))
        return float(np.sum(x ** 3))

    report = fg.check(loss, 3 * theta ** 2, theta)
    assert report.passed
    assert seen == {(np.ndarray, shape, np.dtype(np.float64))}


@numba.njit(nogil=True)
def probe_loss(theta, record):
    """sum(theta**2); writes ndim, shape and itemsize into record (same values from every
    thread): record = [ndim, *shape, -1..., itemsize]."""
    record[0] = theta.ndim
    record[record.size - 1] = theta.itemsize
    for k in range(theta.ndim):
        record[1 + k] = theta.shape[k]
    flat = theta.reshape(theta.size)
    total = 0.0
    for i in range(flat.size):
        total += flat[i] * flat[i]
    return total


def test_compiled_loss_receives_thetas_own_shape_for_an_array():
    theta = np.linspace(-1, 1, 60).reshape(3, 4, 5)
    record = np.full(5, -1.0)
    report = fg.check(probe_loss, 2 * theta, theta, (record,))
    assert report.engine == "numba" and report.passed
    assert record.tolist() == [3, 3, 4, 5, 8]


def test_compiled_loss_receives_the_flat_float64_vector_for_a_dict():
    theta = {"A": np.linspace(-1, 1, 6).reshape(2, 3), "b": np.linspace(0.1, 0.4, 4)}
    record = np.full(5, -1.0)
    grad = {k: 2 * v for k, v in theta.items()}
    report = fg.check(probe_loss, grad, theta, (record,))
    assert report.engine == "numba" and report.passed
    assert record.tolist() == [1, 10, -1, -1, 8]  # flat, n = 6 + 4, float64
    # the compiled loss of the flat vector equals the loss at the concatenation
    flat = np.concatenate([theta["A"].ravel(), theta["b"]])
    assert probe_loss(flat, record) == pytest.approx(float(np.sum(flat ** 2)), rel=1e-15)


# ----------------------------------------------------------------- grad forms
def test_grad_callable_receives_thetas_structure_and_args():
    rng = np.random.default_rng(1)
    theta = {"w": rng.standard_normal(5), "c": np.array(0.3)}
    X = rng.standard_normal((8, 5))
    calls = []

    def loss(p, X, scale):
        return scale * float(np.sum((X @ p["w"] + p["c"]) ** 2))

    def grad(p, X, scale):
        calls.append((sorted(p), X is not None, scale))
        r = X @ p["w"] + p["c"]
        return {"w": scale * 2 * X.T @ r, "c": scale * 2 * r.sum()}

    report = fg.check(loss, grad, theta, args=(X, 0.5))
    assert report.passed
    assert calls == [(["c", "w"], True, 0.5)]
    # the same as a dict of arrays
    assert np.array_equal(fg.check(loss, grad(theta, X, 0.5), theta, args=(X, 0.5)).analytic["w"],
                          report.analytic["w"])


def test_grad_callable_for_an_array_theta_and_list_args():
    theta = np.linspace(1.1, 2.0, 12).reshape(3, 4)
    seen = []

    def grad(x, k):
        seen.append(x.shape)
        return k * 3 * x ** 2

    report = fg.check(lambda x, k: k * float(np.sum(x ** 3)), grad, theta, [2.0])
    assert report.passed and seen == [(3, 4)]
    assert report.analytic.shape == (3, 4)


def test_a_wrong_callable_grad_fails():
    theta = np.linspace(1.1, 2.0, 12)
    report = fg.check(lambda x: float(np.sum(x ** 3)), lambda x: 3 * x ** 2 + 1e-3, theta)
    assert report.verdict == "fail"
    assert re.search(r"FAIL", str(report))
