"""fastgrad against ``torch.autograd.gradcheck`` on PyTorch's own operators and sample inputs.

    PYTHONPATH=benchmarks python -m fastgrad_bench.opinfo [--ops N] [--samples S] [--output STEM]

PyTorch's OpInfo database (``torch.testing._internal.common_methods_invocations.op_db``) holds,
for each operator, the sample inputs its own gradcheck tests use.  For each operator chosen
(rule below) and each of its first S usable samples, three checkers judge

* the true backward (autograd's): a failure there is a false alarm unless the operator is not
  differentiable at the sample (gradcheck's verdict on the same function is printed beside it);
* three planted backward bugs, each a custom :class:`torch.autograd.Function` whose forward
  calls the operator and whose backward returns the true VJP (``torch.autograd.grad`` through
  the operator) with (a) one element of one input's gradient off by a relative 1e-3, (b) one
  input's gradient negated, (c) one input's gradient dropped (``None``, read as zero).

The checkers: fastgrad (through ``fastgrad.torch.check_function`` where it exists, else through
``fastgrad.check_vjp`` on NumPy arrays: :data:`FASTGRAD_APIS`, ``--fastgrad``), ``gradcheck`` (rtol 1e-3,
atol 1e-5) and ``gradcheck(fast_mode=True)``; a bug is caught when the checker fails
(fastgrad: verdict "fail"; gradcheck: ``GradcheckError``).  Every check's wall time is summed
per checker, in one run.

Which operators: those of ``op_db``, in its order, that support autograd in float64 on the CPU,
whose OpInfo does not skip or xfail ``TestBwdGradients`` (``test_fn_grad``) for float64 on the
CPU, whose backward is deterministic (``gradcheck_nondet_tol == 0``), and whose forward is not
random (two calls under different ``torch.manual_seed`` give the same output).  Samples: the
first S (default 3) of ``op.sample_inputs("cpu", float64, requires_grad=True)`` (drawn after
``torch.manual_seed(0)``) that have a tensor input requiring grad and a differentiable floating
output.  Where each bug goes: the input, and for (a) the element, drawn from the seeded
generator among those whose Jacobian column is not zero beyond rounding (100 u · max(1, max |J|):
a bug in a zero column changes nothing, 0 × (1 + 1e-3) = 0); a sample with no such input gets
no planted bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from .common import Line, Section, judged, machine, skipped

#: Seed of every random choice: sample inputs (torch), bug placement, fastgrad's cotangents,
#: gradcheck fast mode's projections.
SEED = 0
#: The relative error of bug (a), and gradcheck's tolerances (its defaults).
ELEMENT_ERROR = 1e-3
GRADCHECK_RTOL, GRADCHECK_ATOL = 1e-3, 1e-5
BUGS = ("element", "negated", "dropped")
BUG_TITLES = {"element": "one element × (1 + 1e-3)", "negated": "one input's gradient negated",
              "dropped": "one input's gradient dropped"}
TOOLS = ("fastgrad", "gradcheck", "gradcheck_fast")
#: Operators and samples per operator: the full run and ``fastgrad bench --quick``.
FULL_OPS, QUICK_OPS, SAMPLES = 60, 5, 3
#: Jacobian entries below this many units of rounding (u = 2^-52), relative to max(1, max |J|),
#: count as zero: a bug planted there is no bug.
ROUNDING_LEVEL = 100 * float(np.finfo(np.float64).eps)
#: The OpInfo test whose skips and xfails exclude an operator: PyTorch's own gradcheck test.
GRADCHECK_TEST = ("TestBwdGradients", "test_fn_grad")


@dataclasses.dataclass
class Case:
    """One operator at one sample: ``fn(*inputs)`` returns the differentiable outputs."""

    op: str
    sample: int
    fn: Callable
    inputs: tuple
    jacobian_nonzero: list  # per input, a bool array in the input's shape: column ≠ 0

    @property
    def label(self) -> str:
        return f"{self.op}[{self.sample}]"


# ------------------------------------------------------------------------------ operators
def opinfo_database():
    """``op_db``, or the reason it cannot be imported (torch or its test dependency missing)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "torch is not installed (pip install torch)"
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    except ImportError as error:  # torch's test helpers need expecttest
        return None, f"torch's OpInfo database cannot be imported ({error}; pip install expecttest)"
    return op_db, ""


def _skips_gradcheck(op, torch) -> bool:
    """The OpInfo skips or xfails its gradcheck test for float64 on the CPU."""
    for info in op.decorators:
        if not hasattr(info, "cls_name") or not info.active_if:
            continue
        names = (info.cls_name, info.test_name)
        if names != GRADCHECK_TEST and names != (GRADCHECK_TEST[0], None):
            continue
        if info.device_type in (None, "cpu") and (info.dtypes is None or torch.float64 in info.dtypes):
            return True
    return False


def operator_exclusion(op, torch) -> str:
    """Why an operator is left out by its OpInfo alone ("" when it is not)."""
    if not op.supports_autograd:
        return "no autograd"
    if torch.float64 not in op.supported_backward_dtypes("cpu"):
        return "no float64 backward on the CPU"
    if _skips_gradcheck(op, torch):
        return "its OpInfo skips or xfails gradcheck (test_fn_grad) for float64 on the CPU"
    if op.gradcheck_nondet_tol:
        return f"nondeterministic backward (gradcheck_nondet_tol = {op.gradcheck_nondet_tol})"
    return ""


def _recompose(sample, inputs: Sequence) -> tuple[list, dict]:
    """The sample's arguments with its grad-requiring tensors replaced, in order, by ``inputs``
    (as PyTorch's own test_ops_gradients does)."""
    import torch

    position = iter(inputs)

    def replace(value):
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            return [replace(v) for v in value]
        if isinstance(value, torch.Tensor) and value.requires_grad:
            return next(position)
        return value

    positional = [replace(sample.input)] + [replace(arg) for arg in sample.args]
    return positional, {key: replace(value) for key, value in sample.kwargs.items()}


def _grad_inputs(sample) -> tuple:
    import torch

    values: list = []
    for value in (sample.input, *sample.args, *sample.kwargs.values()):
        values += value if isinstance(value, (list, tuple)) else [value]
    return tuple(v for v in values if isinstance(v, torch.Tensor) and v.requires_grad)


def _leaves(output) -> list:
    import torch
    from torch.utils._pytree import tree_leaves

    return [leaf for leaf in tree_leaves(output) if isinstance(leaf, torch.Tensor)]


def sample_function(op, sample, inputs: tuple) -> Callable | None:
    """``fn(*inputs)``: the operator at the sample with its grad-requiring tensors as arguments,
    returning the tuple of its differentiable outputs (floating, depending on an input); None
    when it has none."""
    import torch

    def full(*tensors):
        positional, kwargs = _recompose(sample, tensors)
        output = op.gradcheck_wrapper(op.get_op(), *positional, **kwargs)
        if sample.output_process_fn_grad is not None:
            output = sample.output_process_fn_grad(output)
        return _leaves(output)

    with torch.enable_grad():
        outputs = full(*inputs)
    keep = [k for k, out in enumerate(outputs) if out.is_floating_point() and out.requires_grad]
    if not keep:
        return None

    def fn(*tensors):
        outputs = full(*tensors)
        return tuple(outputs[k] for k in keep)

    return fn


def is_random(fn, inputs, torch) -> bool:
    """Two forward calls under different seeds differ: a random operator."""
    with torch.no_grad():
        torch.manual_seed(SEED)
        first = fn(*inputs)
        torch.manual_seed(SEED + 1)
        second = fn(*inputs)
    return not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def _jacobian_nonzero(fn, inputs, torch) -> list:
    """Per input, which of its elements have a Jacobian column (in any output) above rounding.

    Autograd's Jacobian carries rounding errors of a few u times the magnitudes it is made of:
    an entry below :data:`ROUNDING_LEVEL` · max(1, max |J|) cannot be told from zero (a
    constant output's Jacobian of ±1e-16, say), and neither can a bug planted in it."""
    jacobian = torch.autograd.functional.jacobian(lambda *x: fn(*x), inputs)
    scale = max([1.0] + [float(block.abs().max()) for per_output in jacobian for block in per_output
                         if block.numel()])
    nonzero = [np.zeros(t.shape, dtype=bool) for t in inputs]
    for per_output in jacobian:
        for k, block in enumerate(per_output):  # block: output shape + input shape
            ndim = inputs[k].dim()
            rows = block.reshape(-1, *block.shape[block.dim() - ndim:]) if ndim else block.reshape(-1, 1)
            nonzero[k] |= (rows.abs() > ROUNDING_LEVEL * scale).any(dim=0).reshape(inputs[k].shape).numpy()
    return nonzero


def collect_cases(ops: int, samples: int = SAMPLES, names: Sequence[str] | None = None) -> tuple[list, dict]:
    """The first ``ops`` operators that qualify (or those ``names``) and their first
    ``samples`` usable samples; and, per operator or sample (``op[index]``) left out, why."""
    import torch

    op_db, why = opinfo_database()
    if op_db is None:
        raise RuntimeError(why)
    left_out: dict[str, str] = {}
    cases: list[Case] = []
    chosen = 0
    for op in op_db:
        label = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
        if names is not None and label not in names:
            continue
        if chosen >= ops:
            break
        reason = operator_exclusion(op, torch)
        found = [] if reason else _op_cases(op, label, samples, torch, left_out)
        if found:
            cases += found
            chosen += 1
        else:
            left_out.setdefault(label, reason or "no usable sample")
    return cases, left_out


def _op_cases(op, label: str, samples: int, torch, left_out: dict) -> list:
    torch.manual_seed(SEED)
    found: list[Case] = []
    for index, sample in enumerate(op.sample_inputs("cpu", torch.float64, requires_grad=True)):
        if len(found) >= samples:
            break
        inputs = tuple(t.detach().clone().requires_grad_() for t in _grad_inputs(sample))
        if not inputs or any(not t.is_floating_point() or t.layout != torch.strided or t.numel() == 0
                             for t in inputs):
            continue
        try:
            fn = sample_function(op, sample, inputs)
            if fn is None:
                continue
            if is_random(fn, inputs, torch):
                left_out[label] = "random: its output changes with the seed"
                return []
            nonzero = _jacobian_nonzero(fn, inputs, torch)
        except Exception as error:  # a sample that cannot run this way is left out, with why
            left_out[f"{label}[{index}]"] = f"{type(error).__name__}: {error}"[:200]
            continue
        found.append(Case(label, index, fn, inputs, nonzero))
    return found


# ------------------------------------------------------------------------------ planted bugs
def planted(case: Case, bug: str, rng: np.random.Generator) -> tuple[Callable, dict] | None:
    """``case.fn`` as a custom Function whose backward returns the true VJP with ``bug``
    planted, and where it was planted; None when no input has a nonzero Jacobian."""
    import torch

    candidates = [k for k, nonzero in enumerate(case.jacobian_nonzero) if nonzero.any()]
    if not candidates:
        return None
    target = int(rng.choice(candidates))
    element = int(rng.choice(np.flatnonzero(case.jacobian_nonzero[target].ravel())))
    where = {"input": target, **({"element": element} if bug == "element" else {})}

    def corrupt(grads: list) -> list:
        grads = list(grads)
        if bug == "element":
            wrong = grads[target].clone(memory_format=torch.contiguous_format)
            wrong.view(-1)[element] *= 1 + ELEMENT_ERROR
            grads[target] = wrong
        elif bug == "negated":
            grads[target] = -grads[target]
        else:
            grads[target] = None
        return grads

    class Planted(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            with torch.enable_grad():
                leaves = tuple(t.detach().requires_grad_() for t in inputs)
                outputs = case.fn(*leaves)
            ctx.graph = (leaves, outputs)
            return tuple(out.detach() for out in outputs)

        @staticmethod
        def backward(ctx, *cotangents):
            leaves, outputs = ctx.graph
            true = torch.autograd.grad(outputs, leaves, cotangents, allow_unused=True,
                                       retain_graph=True)
            return tuple(corrupt([torch.zeros_like(t) if g is None else g
                                  for t, g in zip(leaves, true, strict=True)]))

    return Planted.apply, where


# ------------------------------------------------------------------------------ checkers
def fastgrad_numpy(fn: Callable, inputs: tuple, seed: int = SEED):
    """fastgrad's VJP check of ``fn`` through the NumPy API: ``fastgrad.check_vjp`` with the
    tensors as a dict of arrays ``input0, input1, …`` and the outputs ``output0, …``.

    The VJP is autograd's (``torch.autograd.grad``), through whatever backward ``fn`` has.
    Returns the report (``.passed``, ``.verdict``)."""
    import torch

    import fastgrad

    names = [f"input{k}" for k in range(len(inputs))]
    x = {name: t.detach().numpy().copy() for name, t in zip(names, inputs, strict=True)}

    def tensors(point: dict, grad: bool) -> list:
        return [torch.from_numpy(np.array(point[name], dtype=np.float64)).requires_grad_(grad)
                for name in names]

    def fun(point: dict) -> dict:
        with torch.no_grad():
            outputs = fn(*tensors(point, False))
        return {f"output{j}": out.numpy().copy() for j, out in enumerate(outputs)}

    def vjp(point: dict, u: dict) -> dict:
        leaves = tensors(point, True)
        with torch.enable_grad():
            outputs = fn(*leaves)
            grads = torch.autograd.grad(outputs, leaves,
                                        [torch.from_numpy(np.array(u[f"output{j}"]))
                                         for j in range(len(outputs))], allow_unused=True)
        return {name: np.zeros(leaf.shape) if g is None else g.numpy().copy()
                for name, leaf, g in zip(names, leaves, grads, strict=True)}

    return fastgrad.check_vjp(fun, vjp, x, seed=seed)


def fastgrad_torch(fn: Callable, inputs: tuple, seed: int = SEED):
    """fastgrad's VJP check of ``fn`` through ``fastgrad.torch.check_function`` (its
    defaults: 4 cotangents, vmap batches where vmap works on fn and is faster)."""
    from fastgrad.torch import check_function

    return check_function(fn, *inputs, seed=seed)


#: The ways to reach fastgrad: the framework API, or the NumPy API through a wrapper.
FASTGRAD_APIS: dict[str, Callable] = {"torch": fastgrad_torch, "numpy": fastgrad_numpy}


def default_api() -> str:
    """"torch" where ``fastgrad.torch`` exists, else "numpy"."""
    try:
        import fastgrad.torch  # noqa: F401
    except ImportError:
        return "numpy"
    return "torch"


def fastgrad_caught(fn: Callable, inputs: tuple, api: str) -> tuple[bool, str]:
    """Whether fastgrad, reached through ``api``, fails ``fn``; and its verdict."""
    report = FASTGRAD_APIS[api](fn, inputs, seed=SEED)
    return not report.passed, report.verdict


def gradcheck_caught(fn: Callable, inputs: tuple, fast_mode: bool = False) -> tuple[bool, str]:
    import torch
    from torch.autograd.gradcheck import GradcheckError

    torch.manual_seed(SEED)  # fast mode's random projections
    try:
        torch.autograd.gradcheck(fn, inputs, rtol=GRADCHECK_RTOL, atol=GRADCHECK_ATOL,
                                 fast_mode=fast_mode)
    except GradcheckError:
        return True, "fail"
    return False, "pass"


def checkers(api: str) -> dict[str, Callable]:
    """The three columns, each ``(fn, inputs) -> (failed, verdict)``; the fastgrad column
    reaches fastgrad through ``api`` (a key of :data:`FASTGRAD_APIS`)."""
    return {"fastgrad": lambda fn, inputs: fastgrad_caught(fn, inputs, api),
            "gradcheck": gradcheck_caught,
            "gradcheck_fast": lambda fn, inputs: gradcheck_caught(fn, inputs, fast_mode=True)}


def judge_all(fn: Callable, inputs: tuple, columns: dict[str, Callable]) -> dict:
    """Each checker's verdict on ``fn`` at ``inputs``, whether it failed, and its wall time."""
    judged_by = {}
    for tool, checker in columns.items():
        started = time.perf_counter()
        try:
            failed, verdict = checker(fn, inputs)
        except Exception as error:  # a checker that breaks on a case is recorded, not fatal
            failed, verdict = False, f"error: {type(error).__name__}: {error}"[:300]
        judged_by[tool] = {"caught": failed, "verdict": verdict,
                           "seconds": time.perf_counter() - started}
    return judged_by


# ------------------------------------------------------------------------------ the suite
def run_suite(cases: list[Case], api: str, progress: bool = False) -> list[dict]:
    """Every case: the checkers (fastgrad through ``api``) on the true backward and on each
    planted bug."""
    columns = checkers(api)
    records = []
    for number, case in enumerate(cases, 1):
        if progress:
            print(f"  [{number}/{len(cases)}] {case.label}", file=sys.stderr, flush=True)
        record = {"op": case.op, "sample": case.sample,
                  "sizes": [int(t.numel()) for t in case.inputs],
                  "true": judge_all(case.fn, case.inputs, columns), "bugs": {}}
        rng = np.random.default_rng([SEED, zlib.crc32(case.op.encode()), case.sample])
        for bug in BUGS:
            made = planted(case, bug, rng)
            if made is not None:
                record["bugs"][bug] = {"where": made[1], **judge_all(made[0], case.inputs, columns)}
        records.append(record)
    return records


def summarise(records: list[dict]) -> dict:
    """Counts per checker: false alarms and warnings on the true backward, bugs caught, time."""
    summary: dict = {"operators": len({r["op"] for r in records}), "cases": len(records),
                     "seconds": {tool: 0.0 for tool in TOOLS}}
    for tool in TOOLS:
        true = [r["true"][tool] for r in records]
        summary[tool] = {
            "true_failed": [f"{r['op']}[{r['sample']}]" for r in records if r["true"][tool]["caught"]],
            "true_warned": [f"{r['op']}[{r['sample']}]" for r in records
                            if r["true"][tool]["verdict"] == "warn"],
            "errors": [f"{r['op']}[{r['sample']}]" for r in records for entry in
                       [r["true"][tool], *(b[tool] for b in r["bugs"].values())]
                       if entry["verdict"].startswith("error")],
        }
        summary["seconds"][tool] = sum(entry["seconds"] for entry in true) + sum(
            b[tool]["seconds"] for r in records for b in r["bugs"].values())
        for bug in BUGS:
            planted_here = [r for r in records if bug in r["bugs"]]
            summary[tool][bug] = {
                "planted": len(planted_here),
                "caught": sum(r["bugs"][bug][tool]["caught"] for r in planted_here),
                "missed": [f"{r['op']}[{r['sample']}]" for r in planted_here
                           if not r["bugs"][bug][tool]["caught"]]}
    gradcheck_passes = {f"{r['op']}[{r['sample']}]" for r in records if not r["true"]["gradcheck"]["caught"]}
    summary["false_alarms"] = sorted(set(summary["fastgrad"]["true_failed"]) & gradcheck_passes)
    return summary


def peer_table(summary: dict) -> str:
    """The Markdown table: per checker, the true backward, each planted bug, the time."""
    names = {"fastgrad": "fastgrad", "gradcheck": "gradcheck",
             "gradcheck_fast": "gradcheck fast_mode"}
    header = ["checker", "true backward: fail", "warn"] + [
        f"{BUG_TITLES[bug]} caught (of {summary['fastgrad'][bug]['planted']})" for bug in BUGS
    ] + ["errors", "wall time, all checks"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for tool in TOOLS:
        figures = summary[tool]
        cells = [names[tool], f"{len(figures['true_failed'])} of {summary['cases']}",
                 str(len(figures["true_warned"]))]
        cells += [str(figures[bug]["caught"]) for bug in BUGS]
        cells.append(str(len(figures["errors"])))
        cells.append(f"{summary['seconds'][tool]:.1f} s")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def measure_opinfo(ops: int = FULL_OPS, samples: int = SAMPLES, names: Sequence[str] | None = None,
                   progress: bool = True, api: str | None = None) -> Section:
    """The ``opinfo`` section of ``fastgrad bench`` (and of the standalone run); ``api``:
    how fastgrad is reached, "torch" or "numpy" (default: "torch" where it exists)."""
    title = "PyTorch OpInfo operators: fastgrad vs gradcheck"
    op_db, why = opinfo_database()
    if op_db is None:
        return skipped("opinfo", title, why)
    import torch

    api = api or default_api()

    cases, left_out = collect_cases(ops, samples, names)
    records = run_suite(cases, api, progress)
    summary = summarise(records)
    section = Section("opinfo", title, {
        "rule": __doc__.split("Which operators: ", 1)[1].strip(), "samples_per_op": samples,
        "fastgrad_api": api,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "summary": summary, "table": peer_table(summary), "left_out": left_out, "cases": records})
    cases_text = f"{summary['operators']} operators, {summary['cases']} samples"
    section.lines.append(judged(
        f"true backward, {cases_text}: fastgrad fails where gradcheck passes",
        f"{len(summary['false_alarms'])} false alarms"
        + (f" ({', '.join(summary['false_alarms'])})" if summary["false_alarms"] else ""),
        "0", not summary["false_alarms"], "each one is listed in the JSON: summary.false_alarms"))
    for bug in BUGS:
        counts = {tool: summary[tool][bug] for tool in TOOLS}
        planted_count = counts["fastgrad"]["planted"]
        section.lines.append(judged(
            f"planted: {BUG_TITLES[bug]}, caught of {planted_count}",
            f"fastgrad {counts['fastgrad']['caught']}, gradcheck {counts['gradcheck']['caught']}, "
            f"fast_mode {counts['gradcheck_fast']['caught']}", "fastgrad all",
            counts["fastgrad"]["caught"] == planted_count,
            f"fastgrad missed {', '.join(counts['fastgrad']['missed'])}"))
    seconds = summary["seconds"]
    section.lines.append(Line(
        "wall time of every check above", ", ".join(f"{tool} {seconds[tool]:.1f} s" for tool in TOOLS)))
    return section


def main(argv: Sequence[str] | None = None) -> int:
    """The standalone run: prints the peer table and the bench lines; writes STEM.json/.md."""
    from . import output as outputs

    parser = argparse.ArgumentParser(prog="python -m fastgrad_bench.opinfo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=FULL_OPS, help=f"operators (default {FULL_OPS})")
    parser.add_argument("--samples", type=int, default=SAMPLES,
                        help=f"samples per operator (default {SAMPLES})")
    parser.add_argument("--only", nargs="*", metavar="OP", help="these operators (OpInfo names)")
    parser.add_argument("--fastgrad", choices=sorted(FASTGRAD_APIS), default=default_api(),
                        help="reach fastgrad by fastgrad.torch.check_function (torch) or by "
                             "fastgrad.check_vjp on NumPy arrays (numpy); default %(default)s")
    parser.add_argument("--output", default="fastgrad-opinfo", metavar="STEM",
                        help="write STEM.json and STEM.md (default fastgrad-opinfo)")
    options = parser.parse_args(argv)
    if options.ops < 1 or options.samples < 1:
        parser.error("--ops and --samples must be at least 1")
    meta = machine()
    meta["mode"] = (f"opinfo: {options.ops} operators, {options.samples} samples each, fastgrad "
                    f"through its {options.fastgrad} API")
    started = time.perf_counter()
    section = measure_opinfo(options.ops, options.samples, options.only, api=options.fastgrad)
    meta["bench_seconds"] = time.perf_counter() - started
    table = outputs.markdown(meta, [section])
    if "table" in section.figures:
        table += "\n" + section.figures["table"]
    print(table)
    outputs.write(options.output, table, ".md")
    outputs.write(options.output, outputs.as_json(meta, {"ops": options.ops, "samples": options.samples},
                                                  [section]), ".json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
