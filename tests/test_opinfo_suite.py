"""The OpInfo peer suite (benchmarks/fastgrad_bench/opinfo.py) on a small subset of PyTorch's
operators: fastgrad raises no false alarm on their true backward and catches every planted
backward bug (one element off by a relative 1e-3, one input's gradient negated, one dropped).

Skips without torch, or without expecttest (torch's test helpers, which hold the OpInfo
database, import it).  No timing is asserted.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest", reason="torch's OpInfo database needs expecttest (pip install expecttest)")

from fastgrad.cli import bench_harness  # noqa: E402

bench_harness()  # puts benchmarks/ on sys.path
from fastgrad_bench import opinfo  # noqa: E402

#: One or two inputs, broadcasting, a reduction, a matrix product, a factorisation whose
#: gradient is not contiguous (cholesky), an output constant up to rounding (corrcoef).
OPS = ("mul", "atan2", "logsumexp", "matmul", "cholesky", "corrcoef")
SAMPLES = 2
#: torch.cholesky (the OpInfo "cholesky") warns that it is deprecated, on every call.
pytestmark = pytest.mark.filterwarnings("ignore:torch.cholesky is deprecated:UserWarning")


@pytest.fixture(scope="module", params=sorted(opinfo.FASTGRAD_APIS))
def suite(request):
    """The subset checked with fastgrad reached through each of its APIs (torch, numpy)."""
    if request.param == "torch" and opinfo.default_api() != "torch":
        pytest.skip("fastgrad.torch is not in this fastgrad")
    cases, left_out = opinfo.collect_cases(len(OPS), SAMPLES, OPS)
    before = [[t.detach().clone() for t in case.inputs] for case in cases]
    records = opinfo.run_suite(cases, request.param)
    return cases, left_out, records, before


def test_the_subset_is_the_chosen_operators(suite):
    cases, left_out, records, _ = suite
    assert {case.op for case in cases} == set(OPS), left_out
    assert all(sum(case.op == op for case in cases) == SAMPLES for op in OPS)
    assert len(records) == len(cases)


def test_no_false_alarm_on_the_true_backward(suite):
    _, _, records, _ = suite
    for record in records:
        assert record["true"]["gradcheck"]["verdict"] == "pass", record  # the harness is sound
        assert not record["true"]["fastgrad"]["caught"], record


def test_fastgrad_catches_every_planted_bug(suite):
    _, _, records, _ = suite
    planted = [(record, bug) for record in records for bug in record["bugs"]]
    assert len(planted) >= 3 * (len(records) - SAMPLES)  # corrcoef's samples may have none
    for record, bug in planted:
        assert record["bugs"][bug]["fastgrad"]["verdict"] == "fail", (record["op"], bug, record)


def test_no_checker_errors(suite):
    _, _, records, _ = suite
    verdicts = [entry["verdict"] for record in records
                for entry in [*record["true"].values(),
                              *(b[tool] for b in record["bugs"].values() for tool in opinfo.TOOLS)]]
    assert not [v for v in verdicts if v.startswith("error")]


def test_the_inputs_are_left_as_they_were(suite):
    cases, _, _, before = suite
    for case, saved in zip(cases, before, strict=True):
        for tensor, copy in zip(case.inputs, saved, strict=True):
            assert torch.equal(tensor.detach(), copy)
            assert tensor.grad is None


def _vjp(fn, inputs, cotangents):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    grads = torch.autograd.grad(fn(*leaves), leaves, cotangents, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]


@pytest.mark.parametrize("bug", opinfo.BUGS)
def test_a_planted_bug_is_exactly_what_it_says(suite, bug):
    """The planted backward differs from autograd's in the one place it names, by the stated
    amount, and nowhere else."""
    cases, _, _, _ = suite
    case = next(c for c in cases if c.op == "atan2")
    made = opinfo.planted(case, bug, np.random.default_rng(0))
    assert made is not None
    fn, where = made
    torch.manual_seed(1)
    outputs = case.fn(*case.inputs)
    cotangents = [torch.randn_like(out) for out in outputs]
    true, wrong = _vjp(case.fn, case.inputs, cotangents), _vjp(fn, case.inputs, cotangents)
    target = where["input"]
    for k, (g, w) in enumerate(zip(true, wrong, strict=True)):
        if k != target:
            assert torch.equal(g, w)
    g, w = true[target].reshape(-1), wrong[target].reshape(-1)
    if bug == "element":
        expected = g.clone()
        expected[where["element"]] *= 1 + opinfo.ELEMENT_ERROR
        assert torch.equal(w, expected) and not torch.equal(w, g)
    else:
        assert torch.equal(w, -g if bug == "negated" else torch.zeros_like(g))


def test_a_column_zero_up_to_rounding_gets_no_bug():
    """corrcoef of rows of two points is ±1 whatever the points: its Jacobian is rounding
    (~1e-16), and a bug planted there would be no bug."""
    cases, _ = opinfo.collect_cases(1, 3, ["corrcoef"])
    constant = [case for case in cases if case.inputs[0].shape[-1] == 2]
    assert constant, [case.inputs[0].shape for case in cases]
    for case in constant:
        assert not any(nonzero.any() for nonzero in case.jacobian_nonzero)
        assert opinfo.planted(case, "negated", np.random.default_rng(0)) is None


def test_skipped_operators_are_left_out():
    _, left_out = opinfo.collect_cases(2, 1, ["cov", "item"])
    assert "skips or xfails gradcheck" in left_out["cov"]
    assert left_out["item"] == "no autograd"


def test_a_random_function_is_told_from_a_deterministic_one():
    """OpInfo's dropout fixes its seed inside (wrapper_set_seed): deterministic, so kept."""
    x = (torch.linspace(-1, 1, 5, dtype=torch.float64),)
    assert opinfo.is_random(lambda t: (t * torch.rand_like(t),), x, torch)
    assert not opinfo.is_random(lambda t: (torch.sin(t),), x, torch)
    cases, left_out = opinfo.collect_cases(1, 1, ["nn.functional.dropout"])
    assert [case.op for case in cases] == ["nn.functional.dropout"], left_out


def test_the_table_counts_what_the_records_hold(suite):
    _, _, records, _ = suite
    summary = opinfo.summarise(records)
    table = opinfo.peer_table(summary)
    rows = [row for row in table.splitlines() if row.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| fastgrad", "| gradcheck", "| gradcheck fast_mode"]
    for bug in opinfo.BUGS:
        assert summary["fastgrad"][bug]["caught"] == sum(
            r["bugs"][bug]["fastgrad"]["caught"] for r in records if bug in r["bugs"])
    assert summary["false_alarms"] == []
