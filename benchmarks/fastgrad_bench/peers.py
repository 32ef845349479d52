"""A full check against what a user would otherwise run: the naive loop, SciPy, PyTorch.

All of them evaluate the same loss, the MLP of :mod:`fastgrad.models.mlp`, at the same θ
(``problem.theta``, the flat vector of ``problem.params``) on the same data:
``mlp.loss`` (Numba) or ``mlp.loss_numpy`` for the naive loops and SciPy, and the same
network written in PyTorch (float64) for ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import numpy as np

from fastgrad.api import check
from fastgrad.models import mlp

from .common import Line, Section, Sizes, fmt_seconds, fmt_speedup, interleaved, judged, load_text, skipped
from .scaling import kernel_seconds, loss_seconds

#: The classic step of the naive loop.
NAIVE_EPS = 1e-6
TARGET_COMPILED, TARGET_NUMPY = 1.7, 5.0


def naive_gradient(loss, theta: np.ndarray, args: tuple, eps: float = NAIVE_EPS,
                   coords=None) -> np.ndarray:
    """The seed's loop, as a user writes it: copy θ, perturb coordinate i by ±eps, evaluate;
    for every i, or for the flat indices ``coords`` (the result then has their length)."""
    coords = range(theta.size) if coords is None else coords
    grad = np.zeros(len(coords))
    for k, i in enumerate(coords):
        plus = theta.copy()
        plus[i] += eps
        minus = theta.copy()
        minus[i] -= eps
        grad[k] = (loss(plus, *args) - loss(minus, *args)) / (2 * eps)
    return grad


def full_check(problem, workers=None):
    """fastgrad's full check of the MLP's backprop (the Numba loss, every coordinate)."""
    return check(mlp.loss, mlp.grad, problem.params, (problem.X, problem.Y), workers=workers)


def _flat_grad(problem):
    def grad(theta, X, Y):
        params = mlp.unflatten(theta, problem.d, problem.h, problem.c)
        return mlp.flatten(mlp.grad(params, X, Y))
    return grad


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b|: the naive loop and the check computed the same derivatives."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ------------------------------------------------------------------------------ naive loops
def compare_naive(sizes: Sizes) -> Section:
    """Full check vs the naive loop with the compiled loss and with the NumPy loss."""
    section = Section("naive", "full check vs the naive Python loop")
    for shape in sizes.naive_shapes:
        figures, lines = _naive_one(mlp.problem(*shape, m=sizes.m), sizes.repeats)
        section.figures[str(figures["n"])] = figures
        section.lines += lines
    return section


def _naive_one(problem, repeats: int) -> tuple[dict, list[Line]]:
    theta, args = problem.theta, (problem.X, problem.Y)
    same_loss = abs(mlp.loss(theta, *args) - mlp.loss_numpy(theta, *args))
    report = full_check(problem)  # warm-up: compiles the kernel for these types
    times = interleaved({
        "check": lambda: full_check(problem),
        "naive_compiled": lambda: naive_gradient(mlp.loss, theta, args),
        "naive_numpy": lambda: naive_gradient(mlp.loss_numpy, theta, args),
    }, repeats)
    naive = naive_gradient(mlp.loss, theta, args)
    check_s = times["check"]["median_s"]
    kernel_s = kernel_seconds(problem, loss_seconds(problem, 50))
    figures = {"n": problem.n, "shape": (problem.d, problem.h, problem.c), "m": problem.m,
               "times": times, "check_evaluations": report.evaluations,
               "naive_evaluations": 2 * problem.n, "verdict": report.verdict,
               "workers": report.workers, "t_f_kernel_s": kernel_s,
               "loss_difference_numba_vs_numpy": same_loss,
               "naive_vs_check_max_relative_difference":
                   _agreement(naive, mlp.flatten(report.numerical))}
    lines = []
    for name, label, target in (("naive_compiled", "compiled loss", TARGET_COMPILED),
                                ("naive_numpy", "NumPy loss", TARGET_NUMPY)):
        ratio = times[name]["median_s"] / check_s
        why = _naive_why(name, ratio, target, times, problem, report.workers, kernel_s)
        figures[f"speedup_vs_{name}"] = ratio
        figures[f"why_{name}"] = why
        lines.append(judged(f"full check vs naive loop + {label}, n = {problem.n:,}",
                            f"{fmt_speedup(ratio)} ({fmt_seconds(check_s)} vs "
                            f"{fmt_seconds(times[name]['median_s'])})", f"≥ {target:g}×",
                            ratio >= target, why))
    return figures, lines


def _naive_why(name, ratio, target, times, problem, workers, kernel_s) -> str:
    """Why the ratio is what it is: the per-evaluation costs bound it by workers × their ratio."""
    if ratio >= target:
        return ""
    naive_s = times[name]["median_s"] / (2 * problem.n)
    bound = workers * naive_s / kernel_s
    fixed = times["check"]["median_s"] - 2 * problem.n * kernel_s / workers
    return (f"per evaluation the naive loop costs {fmt_seconds(naive_s)} (loss, two copies of θ, "
            f"Python), the check's serial kernel {fmt_seconds(kernel_s)}: with {workers} workers "
            f"the check can be at most {bound:.2f}× faster, and it spends "
            f"{fmt_seconds(max(fixed, 0.0))} beyond 2n·T_kernel/{workers} (noise estimate, "
            f"gradient, analysis, threads, and any core taken by other processes: "
            f"{load_text(times['check'])})"
            + ("; the NumPy loss does its products in BLAS, about as fast per call as the "
               "loop-based Numba loss" if name == "naive_numpy" else ""))


# ------------------------------------------------------------------------------ SciPy
def compare_scipy(sizes: Sizes) -> Section:
    """Full check vs ``scipy.optimize.check_grad`` (forward differences, n + 1 evaluations)."""
    title = "full check vs scipy.optimize.check_grad"
    try:
        from scipy.optimize import approx_fprime, check_grad
    except ImportError:
        return skipped("scipy", title, "scipy is not installed (pip install scipy)")
    section = Section("scipy", title)
    for shape in sizes.naive_shapes:
        problem = mlp.problem(*shape, m=sizes.m)
        figures = _scipy_one(problem, sizes.repeats, check_grad, approx_fprime)
        section.figures[str(problem.n)] = figures
        section.lines += [
            Line(f"full check vs scipy check_grad, n = {problem.n:,}",
                 f"{fmt_speedup(figures['wall_ratio'])} ({fmt_seconds(figures['check_s'])} vs "
                 f"{fmt_seconds(figures['scipy_s'])}); SciPy does n + 1 forward differences, "
                 "the check 2n central ones"),
            Line(f"  per loss evaluation, n = {problem.n:,}",
                 fmt_speedup(figures['per_evaluation_ratio']))]
    return section


def _scipy_one(problem, repeats: int, check_grad, approx_fprime) -> dict:
    theta, args, grad = problem.theta, (problem.X, problem.Y), _flat_grad(problem)
    full_check(problem)
    check_grad(mlp.loss, grad, theta, *args)
    times = interleaved({
        "check": lambda: full_check(problem),
        "scipy_check_grad": lambda: check_grad(mlp.loss, grad, theta, *args),
    }, repeats)
    forward = approx_fprime(theta, mlp.loss, np.sqrt(np.finfo(float).eps), *args)
    check_s, scipy_s = times["check"]["median_s"], times["scipy_check_grad"]["median_s"]
    return {"n": problem.n, "times": times, "check_s": check_s, "scipy_s": scipy_s,
            "scipy_evaluations": problem.n + 1, "check_evaluations_approx": 2 * problem.n,
            "scipy_check_grad_value": float(check_grad(mlp.loss, grad, theta, *args)),
            "approx_fprime_vs_backprop_relative": _agreement(forward, grad(theta, *args)),
            "wall_ratio": scipy_s / check_s,
            "per_evaluation_ratio": (scipy_s / (problem.n + 1)) / (check_s / (2 * problem.n))}


# ------------------------------------------------------------------------------ PyTorch
def torch_mlp(problem):
    """The same MLP and loss in PyTorch, float64: ``loss(W1, b1, W2, b2)`` and the params."""
    import torch

    X, Y = torch.from_numpy(problem.X), torch.from_numpy(problem.Y)

    def loss(W1, b1, W2, b2):
        Z = torch.tanh(X @ W1 + b1) @ W2 + b2
        return -(Y * torch.log_softmax(Z, dim=1)).sum() / X.shape[0]

    params = tuple(torch.tensor(problem.params[k], dtype=torch.float64, requires_grad=True)
                   for k in mlp.KEYS)
    return loss, params


def compare_torch(sizes: Sizes) -> Section:
    """Full check vs ``torch.autograd.gradcheck`` (numerical Jacobian, 2n evaluations too)."""
    title = "full check vs torch.autograd.gradcheck"
    try:
        import torch
    except ImportError:
        return skipped("torch", title, "torch is not installed (pip install torch)")
    section = Section("torch", title, {"torch_threads": torch.get_num_threads()})
    for shape in sizes.naive_shapes:
        problem = mlp.problem(*shape, m=sizes.m)
        figures = _torch_one(problem, sizes.repeats, torch)
        section.figures[str(problem.n)] = figures
        section.lines += [
            Line(f"full check vs torch gradcheck, n = {problem.n:,}",
                 f"{fmt_speedup(figures['wall_ratio'])} ({fmt_seconds(figures['check_s'])} vs "
                 f"{fmt_seconds(figures['gradcheck_s'])}); both take 2n loss evaluations"),
            Line(f"  gradcheck(fast_mode=True) (random projections), n = {problem.n:,}",
                 fmt_seconds(figures["times"]["gradcheck_fast_mode"]["median_s"]))]
    return section


def _torch_one(problem, repeats: int, torch) -> dict:
    loss, params = torch_mlp(problem)
    with torch.no_grad():
        same = abs(float(loss(*params)) - mlp.loss(problem.theta, problem.X, problem.Y))
    full_check(problem)
    torch.autograd.gradcheck(loss, params)
    torch.autograd.gradcheck(loss, params, fast_mode=True)
    times = interleaved({
        "check": lambda: full_check(problem),
        "gradcheck": lambda: torch.autograd.gradcheck(loss, params),
        "gradcheck_fast_mode": lambda: torch.autograd.gradcheck(loss, params, fast_mode=True),
    }, repeats)
    check_s, torch_s = times["check"]["median_s"], times["gradcheck"]["median_s"]
    return {"n": problem.n, "times": times, "check_s": check_s, "gradcheck_s": torch_s,
            "loss_difference_torch_vs_numba": same, "wall_ratio": torch_s / check_s}
