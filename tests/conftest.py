"""Shared fixtures of the core-check tests: compiled losses, small problems, and a
record of verdict scores printed at the end of the run.

Numba compiles a loss (and fastgrad's chunk kernel) once per argument types and
process, at ~1-3 s each: the compiled losses used by several test files live here,
and the problems are session-scoped.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import pytest
from hypothesis import settings

from fastgrad.models import mlp

# Hypothesis profiles (tests/test_properties.py). "ci": the same examples on every run
# (derandomize), a fixed count, no deadline (a first call compiles Numba kernels for seconds);
# loaded when the CI environment variable is set. "dev", the default: fresh random examples on
# each run, to keep finding new ones. "thorough": 300 examples a test, for a long hunt.
# HYPOTHESIS_PROFILE=name chooses one explicitly.
settings.register_profile("ci", derandomize=True, max_examples=20, deadline=None,
                          print_blob=True)
settings.register_profile("dev", max_examples=20, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=300, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

#: NUMBA_DISABLE_JIT=1 (the CI's second pass): numba.njit returns the function itself, which
#: fastgrad still runs on its compiled engine ("numba"), kernel and loss as Python.
JIT_DISABLED = bool(numba.config.DISABLE_JIT)

# Numba read the variable when it was imported (above). Programs that the tests start (the CLI,
# the benchmark harness, a fresh venv) run with the JIT: coverage is measured in this process
# only, and their sizes are set for compiled losses.
os.environ.pop("NUMBA_DISABLE_JIT", None)

#: For tests about Numba's compilation itself (typing errors, on-disk caching): nothing is
#: compiled when the JIT is disabled.
needs_jit = pytest.mark.skipif(JIT_DISABLED, reason="about Numba's compilation, and "
                               "NUMBA_DISABLE_JIT=1 compiles nothing")

#: Tests whose sizes are set for compiled losses (10^5 to 10^7 parameters, hundreds of checks of
#: a network): without the JIT each takes from 10 s to over 100 s of interpreted loops, so the
#: no-JIT pass leaves them to the JIT pass (the same code paths run there on smaller models).
SIZED_FOR_THE_JIT = frozenset({
    # its fixture differences an MLP of n = 1029 by the complex step for 3 seeds: 59 s without
    # the JIT (measured), a second with it
    "test_the_two_references_agree",
    "test_concurrent_checks_leave_the_blas_thread_count_as_they_found_it",
    "test_sampled_check_of_ten_million_parameters",
    "test_sampled_check_of_a_large_theta_measures_noise_on_a_sparse_direction",
    "test_example_model_file_passes", "test_example_model_file_with_a_bug_fails",
    "test_interrupt_main_stops_a_multi_worker_compiled_check",
    "test_correct_gradient_over_1e5_parameters_passes", "test_one_coordinate_off_by_1e_3_in_1e5_fails",
    "test_float32_in_float64", "test_float32_factor_two_bug_fails", "test_float32_passes_in_float32",
    "test_accuracy_on_a_smooth_mlp", "test_every_method_is_bitwise_the_same_on_1_and_2_workers",
    "test_a_factor_two_on_w2_fails_and_the_correct_gradient_passes",
    "test_evaluations_scale_with_the_method",
    "test_correct_gradient_passes_on_every_seed", "test_correct_gradient_passes_on_every_padded_seed",
    "test_planted_bugs_fail_on_every_seed", "test_kinks_are_found_and_marked",
    "test_central4_on_the_relu_hinge_net_passes_and_the_bugs_fail", "test_hinge_gradient_is_right",
    "test_the_same_verdict_and_failing_groups_as_central",
    "test_float32_same_verdicts_and_no_screen_where_it_cannot_resolve",
    "test_a_gradient_computed_by_forward_differences_fails",
    "test_the_screen_does_the_work_on_the_mlp_and_the_relu_net",
    "test_least_squares_summed_over_1e5_samples_passes",
    "test_single_coordinate_relative_1e3_in_a_million_fails",
    "test_localisation_names_the_coordinate_in_a_million",
    "test_localisation_not_misled_by_a_small_reference_truncation", "test_stated_sensitivity_holds",
    "test_two_wrong_coordinates_in_different_groups_are_both_named",
})

#: Tests of what only compiled code does: a float64 signature that refuses complex input, and
#: a Numba loss in worker processes (which, without the JIT, receive a plain function).
ABOUT_COMPILED_CODE = frozenset({
    "test_complex_refuses_a_loss_that_cannot_take_complex_input[njit with a float64 signature-check]",
    "test_complex_refuses_a_loss_that_cannot_take_complex_input"
    "[njit with a float64 signature-numerical_gradient]",
    "test_gradient_bit_identical_serial_threads_processes[numba]",
})


def pytest_collection_modifyitems(config, items):
    """In the no-JIT pass, skip :data:`SIZED_FOR_THE_JIT` and :data:`ABOUT_COMPILED_CODE`."""
    if not JIT_DISABLED:
        return
    sized = pytest.mark.skip(reason="sized for compiled losses: run by the JIT pass")
    compiled = pytest.mark.skip(reason="about compiled code: NUMBA_DISABLE_JIT=1 compiles nothing")
    for item in items:
        if item.name in ABOUT_COMPILED_CODE:
            item.add_marker(compiled)
        elif getattr(item, "originalname", item.name) in SIZED_FOR_THE_JIT:
            item.add_marker(sized)


#: Small MLP sizes: n = d*h + h + h*c + c = 24 + 6 + 18 + 3 = 51 parameters.
MLP_SIZES = dict(d=4, h=6, c=3, m=20)

#: name -> (kind, max score): the largest score of each checked case, printed at the end.
SCORES: dict[str, tuple[str, float]] = {}


def decay_loss(p, t, data):
    """Least squares of a sum of exponential decays Σ_k amp_k·exp(−rate_k·t) to ``data``."""
    model = (p["amp"][:, None] * np.exp(-p["rate"][:, None] * t)).sum(0)
    return 0.5 * np.sum((model - data) ** 2)


def decay_grad(p, t, data):
    """Its gradient: amp_k ← Σ_t e_kt·r_t, rate_k ← −Σ_t amp_k·t·e_kt·r_t."""
    decay = np.exp(-p["rate"][:, None] * t)
    residual = (p["amp"][:, None] * decay).sum(0) - data
    return {"amp": decay @ residual, "rate": -(p["amp"][:, None] * t * decay) @ residual}


@numba.njit(nogil=True)
def summed_least_squares(w, X, y):
    """Σ_i (x_i·w − y_i)², summed (not averaged) in one sequential loop: its rounding noise
    grows with the number of rows."""
    total = 0.0
    for i in range(X.shape[0]):
        r = -y[i]
        for j in range(X.shape[1]):
            r += X[i, j] * w[j]
        total += r * r
    return total


def summed_least_squares_grad(w, X, y):
    """Its gradient 2·Xᵀ(Xw − y)."""
    return 2.0 * X.T @ (X @ w - y)


@numba.njit(nogil=True)
def cube_sum(x):
    """sum(x**3) of an array of any shape, as a sequential loop in C order."""
    flat = x.reshape(x.size) if x.ndim != 1 else x
    total = 0.0
    for i in range(flat.size):
        total += flat[i] * flat[i] * flat[i]
    return total


def max_score(report) -> float:
    return max((c.score for c in report.worst), default=0.0)


def record(name: str, report, kind: str) -> float:
    """Remember the largest score of a check (kind "correct" or "bug") and return it."""
    score = max_score(report)
    SCORES[name] = (kind, score)
    return score


@pytest.fixture(scope="session")
def mlp_problem():
    """(problem, args, exact gradient dict) of a small MLP."""
    problem = mlp.problem(**MLP_SIZES, seed=5)
    args = (problem.X, problem.Y)
    return problem, args, mlp.grad(problem.params, *args)


@pytest.fixture(scope="session")
def record_score():
    """``record_score(name, report, kind)``: see :func:`record`."""
    return record


@pytest.fixture(scope="session")
def njit_cube():
    return cube_sum


def pytest_terminal_summary(terminalreporter):
    if not SCORES:
        return
    terminalreporter.section("fastgrad verdict margins (max score; > 1 disagrees)")
    for kind in ("correct", "bug"):
        for name, (k, score) in sorted(SCORES.items()):
            if k == kind:
                terminalreporter.write_line(f"{kind:8s} {name:45s} {score:.3g}")
