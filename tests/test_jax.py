"""fastgrad.jax.check_function: jax.custom_vjp / custom_jvp rules checked in float64, right
rules pass and planted bugs fail, the user's x64 setting is left alone, and the perturbed
points are evaluated by jax.vmap (or one call each where vmap fails, as the report says)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import fastgrad as fg  # noqa: E402
from fastgrad.jax import check_function  # noqa: E402
from fastgrad.testing import assert_jax_function  # noqa: E402

RNG = np.random.default_rng(11)
X = RNG.standard_normal(5)
W = RNG.standard_normal((3, 5))


def layer_with(backward):
    """y = tanh(W·x) as a jax.custom_vjp whose backward rule is ``backward(x, w, y, g)``."""
    @jax.custom_vjp
    def layer(x, w):
        return jnp.tanh(w @ x)

    def forward(x, w):
        y = jnp.tanh(w @ x)
        return y, (x, w, y)

    def rule(residuals, g):
        return backward(*residuals, g)

    layer.defvjp(forward, rule)
    return layer


def right_backward(x, w, y, g):
    d = g * (1.0 - y ** 2)
    return w.T @ d, jnp.outer(d, x)


def off_by_1e3(x, w, y, g):  # one element of the weight gradient off by a relative 1e-3
    gx, gw = right_backward(x, w, y, g)
    return gx, gw.at[1, 2].multiply(1.001)


def negated(x, w, y, g):
    gx, gw = right_backward(x, w, y, g)
    return -gx, gw


def dropped(x, w, y, g):
    gx, gw = right_backward(x, w, y, g)
    return gx, jnp.zeros_like(gw)


def softplus_with(derivative):
    """softplus as a jax.custom_jvp whose tangent rule uses ``derivative(x)``."""
    @jax.custom_jvp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    @softplus.defjvp
    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        return softplus(x), derivative(x) * t

    return softplus


def sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


def wrong_sigmoid(x):  # one element's derivative off by a relative 1e-3
    return sigmoid(x).at[2].multiply(1.001)


def test_a_right_custom_vjp_passes_in_vmapped_float64_batches():
    report = check_function(layer_with(right_backward), X, W, seed=3)
    assert report.verdict == "pass", str(report)
    assert report.vmapped and "jax.vmap batches" in report.notes[0]
    assert report.jvp is None and any("custom_vjp" in note for note in report.notes)
    assert "(jax.vmap, 1 worker, float64)" in str(report.vjp.reports[0])
    assert report.inputs == {"input0": (5,), "input1": (3, 5)}


@pytest.mark.parametrize("bug", [off_by_1e3, negated, dropped])
def test_planted_bugs_in_a_custom_vjp_rule_fail(bug):
    report = check_function(layer_with(bug), X, W, seed=3)
    assert report.verdict == "fail", str(report)
    assert report.worst[0].label.split(": ")[1].startswith("input1" if bug is not negated else "input0")
    if bug is off_by_1e3:
        assert report.worst[0].label.endswith("input1[1, 2]"), str(report)


def test_a_custom_jvp_rule_is_checked_by_jvp_and_by_its_transpose():
    x = np.linspace(-2.0, 3.0, 6)
    right = check_function(softplus_with(sigmoid), x, seed=4)
    assert right.verdict == "pass" and right.jvp is not None, str(right)
    assert right.jvp.verdict == "pass" and right.vjp.verdict == "pass"
    wrong = check_function(softplus_with(wrong_sigmoid), x, seed=4)
    assert wrong.verdict == "fail", str(wrong)
    assert wrong.jvp is not None and wrong.jvp.verdict == "fail" and wrong.vjp.verdict == "fail"
    assert any(entry.label.endswith("out[2]") for entry in wrong.jvp.worst[:1])


@pytest.mark.parametrize("before", [False, True])
def test_the_users_x64_setting_is_restored_also_on_an_error(before):
    saved = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", before)
    try:
        report = check_function(layer_with(right_backward), X.astype(np.float32), W, seed=3)
        assert report.verdict == "pass"
        assert jax.config.jax_enable_x64 is before

        def broken(x):
            raise ValueError("no")
        with pytest.raises(fg.GradientCheckError):
            check_function(broken, X)
        assert jax.config.jax_enable_x64 is before
        with pytest.raises(fg.InputError):
            check_function(layer_with(right_backward), X, W, jvp=True)  # custom_vjp: no jax.jvp
        assert jax.config.jax_enable_x64 is before
    finally:
        jax.config.update("jax_enable_x64", saved)


def test_float32_inputs_are_checked_in_float64_and_the_report_says_so():
    report = check_function(layer_with(off_by_1e3), X.astype(np.float32), W.astype(np.float32), seed=3)
    assert report.verdict == "fail"  # a relative 1e-3 is far beyond float32's own tolerance here
    assert any("float32" in note and "float64" in note for note in report.notes)


def test_pytree_and_keyword_inputs_are_named_and_integers_held_fixed():
    params = {"W": W, "b": RNG.standard_normal(3)}

    def model(x, params, *, scale, power):
        return {"y": jnp.tanh(params["W"] @ x + params["b"]) * scale ** power,
                "norm": jnp.sum(x ** 2)}

    report = check_function(model, X, params, scale=np.array(1.5), power=2, seed=5)
    assert report.verdict == "pass", str(report)
    assert report.inputs == {"input0": (5,), "input1['W']": (3, 5), "input1['b']": (3,),
                             "scale": ()}
    labels = {e.label.split(": ")[1] for e in report.vjp.worst}
    assert any(label.startswith("input1['W'][") for label in labels)
    assert report.jvp is not None
    assert {e.label.split(": ")[1].split("[")[0] for e in report.jvp.worst} <= {"out"}


def test_the_inputs_are_left_alone():
    x, w = X.copy(), W.copy()
    check_function(layer_with(right_backward), x, w, seed=3)
    assert np.array_equal(x, X) and np.array_equal(w, W)


def test_a_function_vmap_cannot_batch_falls_back_to_one_call_per_point():
    @jax.custom_vjp
    def kernel(x):  # a host kernel with a hand-written VJP: jit works, vmap does not
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    kernel.defvjp(lambda x: (kernel(x), x), lambda x, g: (g * jnp.cos(x),))
    x = np.linspace(-1.0, 1.0, 6)
    report = check_function(kernel, x, seed=6)
    assert report.verdict == "pass" and not report.vmapped, str(report)
    assert "jax.vmap failed" in report.notes[0]
    assert "(jax, 1 worker" in str(report.vjp.reports[-1])
    kernel.defvjp(lambda x: (kernel(x), x), lambda x, g: (-g * jnp.cos(x),))
    assert check_function(kernel, x, seed=6).verdict == "fail"


def test_vmapped_and_per_point_evaluations_agree():
    batched = check_function(layer_with(right_backward), X, W, seed=3)
    single = check_function(layer_with(right_backward), X, W, seed=3, engine="python")
    assert not single.vmapped and "one jitted call per point" in single.notes[0]
    for one, other in zip(batched.vjp.reports, single.vjp.reports, strict=True):
        np.testing.assert_allclose(one.details.numerical, other.details.numerical, rtol=1e-12, atol=0)


def test_bad_input_is_refused_before_any_work():
    with pytest.raises(fg.InputError, match="no float"):
        check_function(lambda n: jnp.arange(3.0) * n, 3)
    with pytest.raises(fg.InputError, match="complex"):
        check_function(layer_with(right_backward), X, W, method="complex")
    with pytest.raises(fg.InputError):
        check_function("not a function", X)


def test_assert_jax_function_raises_with_the_report():
    assert assert_jax_function(layer_with(right_backward), X, W, seed=3).verdict == "pass"
    with pytest.raises(fg.GradientMismatch) as raised:
        assert_jax_function(layer_with(negated), X, W, seed=3)
    assert "VJPs by jax.vjp" in str(raised.value)
    assert raised.value.report.to_dict()["vjp"]["verdict"] == "fail"


def test_import_fastgrad_does_not_import_jax():
    code = "import sys, fastgrad, fastgrad.testing; print('jax' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "False"


def test_batches_continue_only_while_a_point_costs_less_in_them():
    from fastgrad.jax.function import Evaluations

    measured = Evaluations()
    measured.timed_single(20e-6)
    assert measured.batching  # no warm batch timed yet
    measured.timed_batch(512 * 5e-6, 512)
    measured.batched = 512
    assert measured.batching and "5 µs per point batched, 20 µs per single call" in measured.note()
    measured.timed_batch(64 * 30e-6, 64)  # the fastest batch still wins
    assert measured.batching
    slow = Evaluations()
    slow.timed_single(20e-6)
    slow.timed_batch(8 * 50e-6, 8)
    slow.batched = 8
    assert not slow.batching and "single calls from then on" in slow.note()
    failed = Evaluations(vmap_failure="NotImplementedError: no")
    assert not failed.batching


def test_a_function_jit_cannot_trace_is_checked_eagerly():
    def branchy(x):  # Python control flow on a value: jax.vjp works, jax.jit does not
        if x[0] > 0:
            return jnp.sin(x) * x[1]
        return jnp.cos(x)

    x = np.array([0.5, -1.2, 2.0])
    report = check_function(branchy, x, seed=7)
    assert report.verdict == "pass" and not report.vmapped, str(report)
    assert "jax.jit cannot trace fun" in report.notes[0] and "one eager call per point" in report.notes[0]
    assert report.jvp is not None and report.jvp.verdict == "pass"
