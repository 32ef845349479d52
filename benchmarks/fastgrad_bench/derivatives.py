"""Beyond gradients: a sparse residual Jacobian by column groups against the same Jacobian
checked column by column and by ``torch.autograd.gradcheck``; the Taylor test's cost.

The residual is the tridiagonal F_i(x) = 2x_i − x_{i−1} − x_{i+1} + c·x_i³ (NumPy), its
Jacobian a ``scipy.sparse`` matrix: ``check_jacobian`` groups its columns into 3 groups
(Curtis–Powell–Reid), so a check costs a few dozen evaluations whatever n.  Column by column
it costs 2n + noise evaluations: measured at ``dense_n`` (dense Jacobian), and estimated at
``jacobian_n`` as (2n + the noise's evaluations) × the measured time of one evaluation there.
torch's gradcheck checks the same Jacobian, given to it as a custom ``autograd.Function``'s
backward, at ``dense_n``.
"""

from __future__ import annotations

import numpy as np

import fastgrad as fg
from fastgrad.models import mlp

from .common import Line, Section, Sizes, fmt_seconds, fmt_speedup, median_seconds, skipped, timed
from .peers import _flat_grad

C = 0.3  # the residual's cubic coefficient


def residual(x: np.ndarray) -> np.ndarray:
    """F_i = 2x_i − x_{i−1} − x_{i+1} + C·x_i³ (x_0 = x_{n+1} = 0)."""
    out = 2.0 * x + C * x ** 3
    out[1:] -= x[:-1]
    out[:-1] -= x[1:]
    return out


def sparse_jacobian(x: np.ndarray):
    """The residual's tridiagonal Jacobian as a scipy.sparse CSR matrix."""
    import scipy.sparse

    off = -np.ones(x.size - 1)
    return scipy.sparse.diags([off, 2.0 + 3.0 * C * x ** 2, off], [-1, 0, 1], format="csr")


def measure_derivatives(sizes: Sizes) -> Section:
    """The sparse check at jacobian_n, the column-by-column check at dense_n and its estimate
    at jacobian_n, torch's gradcheck at dense_n, the Taylor test's evaluations."""
    title = "derivatives: sparse Jacobian by column groups, Taylor test"
    try:
        import scipy.sparse  # noqa: F401
    except ImportError:
        return skipped("derivatives", title, "scipy is not installed (pip install scipy)")
    section = Section("derivatives", title, {})
    n, small = sizes.jacobian_n, sizes.dense_n
    x = np.random.default_rng(0).uniform(-1.0, 1.0, n)
    fg.check_jacobian(residual, sparse_jacobian(x[:50]), x[:50], seed=0)  # warm: compile grouping
    report, seconds = timed(lambda: fg.check_jacobian(residual, sparse_jacobian(x), x, seed=0))
    per_call, _ = median_seconds(lambda: residual(x), sizes.single_calls)
    columns = 2 * n + (report.evaluations - 2 * report.groups)  # every column instead of the groups
    section.figures.update(sparse={"n": n, "groups": report.groups, "evaluations": report.evaluations,
                                   "seconds": seconds, "verdict": report.verdict},
                           per_evaluation_s=per_call, column_by_column_estimate={
                               "evaluations": columns, "seconds": columns * per_call})
    section.lines.append(Line(
        f"sparse Jacobian by column groups, n = {n:,}",
        f"{report.groups} groups, {report.evaluations} evaluations, {fmt_seconds(seconds)} "
        f"({report.verdict}); column by column: {columns:,} evaluations, ≈ "
        f"{fmt_seconds(columns * per_call)} (estimated from {fmt_seconds(per_call)} an evaluation)"))
    y = x[:small].copy()
    dense = sparse_jacobian(y).toarray()
    by_columns, dense_seconds = timed(lambda: fg.check_jacobian(residual, dense, y, seed=0))
    grouped, grouped_seconds = timed(lambda: fg.check_jacobian(residual, sparse_jacobian(y), y, seed=0))
    section.figures["dense"] = {"n": small, "evaluations": by_columns.evaluations, "seconds": dense_seconds,
                                "grouped_evaluations": grouped.evaluations,
                                "grouped_seconds": grouped_seconds}
    section.lines.append(Line(
        f"dense Jacobian column by column vs grouped, n = {small:,}",
        f"{by_columns.evaluations:,} evaluations, {fmt_seconds(dense_seconds)} vs "
        f"{grouped.evaluations} evaluations, {fmt_seconds(grouped_seconds)} "
        f"({fmt_speedup(dense_seconds / grouped_seconds)})"))
    section.lines.append(_torch_gradcheck(y, dense_seconds, section.figures))
    section.lines.append(_taylor_cost(sizes, section.figures))
    return section


def _torch_gradcheck(y: np.ndarray, fastgrad_seconds: float, figures: dict) -> Line:
    """torch.autograd.gradcheck of the residual whose backward applies the same Jacobian."""
    label = f"dense Jacobian: fastgrad column by column vs torch gradcheck, n = {y.size:,}"
    try:
        import torch
    except ImportError:
        return Line(label, "not run", "", "skipped", "torch is not installed (pip install torch)")

    class Residual(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.from_numpy(residual(x.detach().numpy()))

        @staticmethod
        def backward(ctx, upstream):
            (x,) = ctx.saved_tensors
            return torch.from_numpy(sparse_jacobian(x.detach().numpy()).T @ upstream.numpy())

    point = torch.tensor(y, dtype=torch.float64, requires_grad=True)
    passed, seconds = timed(lambda: torch.autograd.gradcheck(Residual.apply, (point,)))
    figures["torch"] = {"seconds": seconds, "passed": bool(passed), "threads": torch.get_num_threads()}
    return Line(label, f"{fmt_seconds(fastgrad_seconds)} vs {fmt_seconds(seconds)} "
                       f"({fmt_speedup(seconds / fastgrad_seconds)}; gradcheck passed: {passed})")


def _taylor_cost(sizes: Sizes, figures: dict) -> Line:
    """Evaluations and time of a Taylor test of the MLP's gradient (NumPy loss)."""
    problem = mlp.problem(*sizes.scaling_shapes[-2], m=sizes.m)
    args = (problem.X, problem.Y)
    report, seconds = timed(lambda: fg.taylor_test(mlp.loss_numpy, _flat_grad(problem), problem.theta,
                                                   args, seed=0))
    figures["taylor"] = {"n": problem.n, "evaluations": report.evaluations, "seconds": seconds,
                         "verdict": report.verdict}
    return Line(f"Taylor test of the NumPy MLP's gradient, n = {problem.n:,}",
                f"{report.evaluations} evaluations, {fmt_seconds(seconds)} ({report.verdict})")
