"""The ``fastgrad`` command line: ``demo``, ``check`` and ``bench``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import runpy
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .errors import GradientCheckError
from .methods import METHODS

#: Exit statuses of ``fastgrad check``: 1 only for a gradient found wrong.
PASSED, FAILED, USAGE = 0, 1, 2
#: Interrupted (Ctrl-C), and stdout's reader gone before the end: 128 + the signal's number,
#: as a shell reports a process that the signal ended.
INTERRUPTED, BROKEN_PIPE = 130, 141

#: NumPy's warning on casting complex to real (numpy.exceptions since NumPy 1.25).
ComplexWarning = getattr(np, "exceptions", np).ComplexWarning


class UsageError(Exception):
    """A bad file or option: one line on stderr, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad option said in one line on stderr (exit status 2)."""

    def error(self, message: str):
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="fastgrad",
        description="Fast, trustworthy gradient checking for hand-written gradients.",
    )
    parser.add_argument("--version", action="version", version=f"fastgrad {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="check a from-scratch MLP's backprop and a copy with a planted bug",
        description="Check the backprop of a two-layer MLP (Numba forward pass, about 10^4 "
                    "parameters), then the same backprop with one planted bug, and print both "
                    "reports. Exit status 0 when the correct one passes and the buggy one fails.")
    demo.add_argument("--workers", type=_positive, default=None,
                      help="threads (default: every core)")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the model and data (default 0)")

    check = commands.add_parser(
        "check", help="check the derivatives defined in a Python file",
        description="Load FILE, which defines a point theta (or x), optionally args (a tuple), "
                    "and loss(theta, *args) with grad (an array/dict like theta, or "
                    "grad(theta, *args)); or fun(x, *args) with vjp, jvp or jac; or grad with "
                    "hess or hvp. Run every check it defines and print the reports. Exit "
                    "status: 0 pass (and warn, unless --strict), 1 fail, 2 a usage or input "
                    "error (one line on stderr; --traceback for more).")
    check.add_argument("file", help="Python file defining theta (or x) [, args] and the functions")
    check.add_argument("--sample", type=_sample, metavar="K",
                       help="check K coordinates (an int), or a fraction of them (e.g. 0.1)")
    check.add_argument("--detect", type=_detect, metavar="P,ALPHA",
                       help="sample enough to catch a bug touching a fraction P of a group "
                            "with probability >= 1 - ALPHA (e.g. 0.01,0.05)")
    check.add_argument("--directions", type=_positive, metavar="M",
                       help="test M random directions (and localise a failure)")
    check.add_argument("--method", choices=tuple(METHODS), default="central",
                       help="finite-difference method (default central)")
    check.add_argument("--eps", type=float, help="relative step h0 (default: by method)")
    check.add_argument("--seed", type=_seed,
                       help="seed of the sample and the directions (an int >= 0)")
    check.add_argument("--workers", type=_positive, help="threads (default: every core)")
    check.add_argument("--json", action="store_true",
                       help="print the report as strict JSON on stdout (no progress bar): a "
                            "non-finite figure is null, its path and value listed in "
                            "\"non_finite\"")
    check.add_argument("--strict", action="store_true", help="exit 1 on warn too")
    check.add_argument("--plot", metavar="PNG",
                       help="save the gradient check's picture to PNG (needs matplotlib)")
    check.add_argument("--taylor", action="store_true",
                       help="also run the Taylor test of loss and grad (with hvp, if defined, "
                            "at third order)")
    check.add_argument("--progress", action="store_true",
                       help="show the progress bar on stderr even when it is not a terminal")
    check.add_argument("--traceback", action="store_true",
                       help="on an error, print its traceback too (e.g. the line of the model "
                            "file that failed to load)")

    bench = commands.add_parser(
        "bench", help="benchmark fastgrad against a naive loop and its peers",
        description="Run the benchmark comparisons in one process, print a Markdown table of "
                    "ratios and save it as JSON beside it.")
    bench.add_argument("--quick", action="store_true", help="tiny sizes, a short run")
    bench.add_argument("--output", default="fastgrad-bench", metavar="STEM",
                       help="write STEM.json and STEM.md (default fastgrad-bench)")
    bench.add_argument("--plot", action="store_true",
                       help="also save STEM.png: time against n (needs matplotlib)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    try:
        return run_command(parser, options)
    except BrokenPipeError:  # e.g. ``fastgrad demo | head``: the reader left
        _discard_stdout()
        return BROKEN_PIPE


#: The benchmark harness lives beside the benchmarks, in the source tree, not in the package.
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def bench_harness():
    """The ``fastgrad_bench`` package of the source checkout's ``benchmarks/`` folder.

    The harness, its peers (the seed's naive loop, SciPy, torch) and its models are code
    about fastgrad, not code a user's check runs: it lives with the other benchmarks and
    ships in the sdist, not in the installed package.  ``fastgrad bench`` therefore runs
    from a checkout (an editable install finds it through this file's location).
    """
    if not (BENCHMARKS / "fastgrad_bench" / "__init__.py").is_file():
        raise UsageError("fastgrad bench runs from a source checkout: clone the repository, "
                         "pip install -e '.[bench]' in it, and run fastgrad bench there")
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import fastgrad_bench

    return fastgrad_bench


def run_command(parser: argparse.ArgumentParser, options) -> int:
    if options.command == "demo":
        from .demo import run_demo

        return run_demo(workers=options.workers, seed=options.seed)
    if options.command == "check":
        return check_command(options)
    if options.command == "bench":
        try:
            harness = bench_harness()
        except UsageError as error:
            print(f"fastgrad: {error}", file=sys.stderr)
            return USAGE
        return harness.run_bench(quick=options.quick, output=options.output, plot=options.plot)
    parser.print_help(sys.stderr)
    return USAGE


def check_command(options) -> int:
    """``fastgrad check``: the verdict's status, or USAGE with one line on stderr for any
    error before the verdict (the model file's, an option's, the loss's or grad's)."""
    try:
        return run_check(options)
    except KeyboardInterrupt:
        print("fastgrad: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:  # every failure is one line and USAGE
        if options.traceback:
            _print_traceback(error)
        print(f"fastgrad: {_describe(error, options.traceback)}", file=sys.stderr)
        return USAGE


#: What a model file may define beside its point (``theta`` or ``x``) and ``args``: each pair
#: (function, derivative) found runs its check, in this order.
DERIVATIVE_CHECKS = (
    ("gradient", "loss", "grad", "check"),
    ("vjp", "fun", "vjp", "check_vjp"),
    ("jvp", "fun", "jvp", "check_jvp"),
    ("jacobian", "fun", "jac", "check_jacobian"),
    ("hessian", "grad", "hess", "check_hessian"),
    ("hvp", "grad", "hvp", "check_hvp"),
)


def run_check(options) -> int:
    """Load the model file, run every check it defines (:data:`DERIVATIVE_CHECKS`, and the
    Taylor test with ``--taylor``), print the reports; the exit status of the worst."""
    with _model_folder_on_path(options.file):
        model = load_model(options.file)
        kinds = [kind for kind, function, derivative, _ in DERIVATIVE_CHECKS
                 if function in model and derivative in model]
        if options.taylor:
            kinds.append("taylor")
        reports = []
        try:
            with warnings.catch_warnings():
                # Complex points reach a loss that may drop the imaginary part (float()):
                # the check says so in its own error, without NumPy's warning lines.
                warnings.simplefilter("ignore", ComplexWarning)
                for kind in kinds:
                    reports.append((kind, _run_one(kind, model, options)))
        except SystemExit as error:
            raise UsageError(f"the function or a derivative called sys.exit({error.code!r})") from error
    if options.plot:
        _save_plot(dict(reports).get("gradient"), options.plot)
    if options.json:
        data = [dict(report.to_dict(), check=kind) for kind, report in reports]
        text = json.dumps(data[0] if len(data) == 1 else {"checks": data}, indent=2, allow_nan=False)
    else:
        text = "\n\n".join(_formatted(kind, report, len(reports) > 1) for kind, report in reports)
    _emit(text)
    verdicts = {report.verdict for _, report in reports}
    if "fail" in verdicts or (options.strict and "warn" in verdicts):
        return FAILED
    return PASSED


def _run_one(kind: str, model: dict, options):
    """The report of one check of ``model`` (a gradient check with every option; the others
    with the seed)."""
    import fastgrad

    point = model["theta"] if "theta" in model else model["x"]
    args = model.get("args", ())
    if kind == "gradient":
        return _gradient_check(model, point, args, options)
    if kind == "taylor":
        return fastgrad.taylor_test(model["loss"], model["grad"], point, args,
                                    hvp=model.get("hvp"), seed=options.seed)
    _, function, derivative, name = next(entry for entry in DERIVATIVE_CHECKS if entry[0] == kind)
    return getattr(fastgrad, name)(model[function], model[derivative], point, args, seed=options.seed)


def _gradient_check(model: dict, theta, args, options):
    from .api import check
    from .parameters import ParameterLayout
    from .progress import ProgressBar

    progress = None
    if options.progress or (sys.stderr.isatty() and not options.json):
        layout, _ = ParameterLayout.from_theta(theta)
        total = layout.size if options.sample is None and options.detect is None \
            and options.directions is None else _expected(layout, options)
        progress = ProgressBar(total)
    try:
        return check(model["loss"], model["grad"], theta, args, method=options.method,
                     eps=options.eps, workers=options.workers, sample=options.sample,
                     detect=options.detect, directions=options.directions, seed=options.seed,
                     progress=progress)
    finally:
        if progress is not None:
            progress.close()


def _save_plot(report, path: str) -> None:
    """The gradient check's picture saved to ``path`` (Agg: no screen needed)."""
    if report is None:
        raise UsageError("--plot draws a gradient check: the file defines no loss with grad")
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'fastgrad[plot]'") from None
    matplotlib.use("Agg")
    figure = report.plot()
    figure.savefig(path, dpi=100)
    print(f"saved {path}", file=sys.stderr)


def _formatted(kind: str, report, titled: bool) -> str:
    """A report as text, options spelled as on the command line; titled when there are several."""
    text = report.format(command_line=True) if kind == "gradient" else str(report)
    return f"== {kind} ==\n{text}" if titled else text


def load_model(path: str) -> dict:
    """Run the file and return its names: a point (theta or x) and at least one function
    with its derivative (:data:`DERIVATIVE_CHECKS`) must be among them."""
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    try:
        namespace = runpy.run_path(path, run_name="fastgrad_model")
    except SyntaxError as error:
        raise UsageError(f"{error.filename or path} has a syntax error at line {error.lineno}: "
                         f"{error.msg}") from error
    except SystemExit as error:
        raise UsageError(f"{path} called sys.exit({error.code!r}) while loading; a model file "
                         "defines loss, grad and theta without exiting") from error
    except Exception as error:  # the model file's own failure, in one line
        raise UsageError(f"{path} raised {_describe(error)} while loading") from error
    pairs = [(function, derivative) for _, function, derivative, _ in DERIVATIVE_CHECKS
             if function in namespace and derivative in namespace]
    if ("theta" not in namespace and "x" not in namespace) or not pairs:
        missing = [name for name in ("loss", "grad", "theta") if name not in namespace]
        raise UsageError(f"{path} does not define {', '.join(missing) or 'a point'} "
                         "(it must define theta (or x) and loss with grad, or fun with vjp, jvp or "
                         "jac, or grad with hess or hvp; it may define args)")
    if "args" in namespace and not isinstance(namespace["args"], (tuple, list)):
        raise UsageError(f"{path}: args must be a tuple, got {type(namespace['args']).__name__}")
    return namespace


@contextlib.contextmanager
def _model_folder_on_path(path: str):
    """The model file's folder first on sys.path, as ``python model.py`` puts it, while the
    file loads and is checked (its loss may import a sibling lazily); afterwards sys.path
    as it was, and the sibling modules it imported forgotten (a later model's differ)."""
    folder = os.path.dirname(os.path.realpath(path))
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            where = getattr(sys.modules[name], "__file__", None) or ""
            if where.startswith(folder + os.sep):
                del sys.modules[name]


def _emit(text: str) -> None:
    """Print ``text`` on stdout; a reader that left (``| head``) is not an error."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()


def _discard_stdout() -> None:
    """Point stdout at devnull, so that the interpreter's last flush does not fail again
    (the recipe of Python's signal module documentation, "Note on SIGPIPE")."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


def _print_traceback(error: BaseException) -> None:
    """The traceback of what failed: the model file's own error from its first frame in the
    user's code (runpy's and fastgrad's frames dropped), else the error's own."""
    cause = error.__cause__ if isinstance(error, UsageError) and error.__cause__ else error
    frames = cause.__traceback__
    while frames is not None and _is_ours(frames.tb_frame.f_code.co_filename):
        frames = frames.tb_next
    traceback.print_exception(type(cause), cause, frames or cause.__traceback__, file=sys.stderr)


def _is_ours(filename: str) -> bool:
    """A frame of fastgrad's command line or of runpy, which stand before the user's code."""
    return filename in (__file__, runpy.__file__) or filename.startswith("<frozen runpy")


def _describe(error: BaseException, traceback_shown: bool = True) -> str:
    """One line: fastgrad's own message, or the type and message of anything else; where
    the user's code failed, a pointer to --traceback unless it is shown."""
    ours = isinstance(error, (UsageError, GradientCheckError))
    text = _one_line(error) if ours else f"{type(error).__name__}: {_one_line(error)}"
    users = not ours or error.__cause__ is not None
    return text + (" (--traceback shows where)" if users and not traceback_shown else "")


def _expected(layout, options) -> int:
    from .sampling import sample_coordinates

    if options.sample is None and options.detect is None:
        return 1  # directions only: no coordinate loop to show
    return sample_coordinates(layout, sample=options.sample, detect=options.detect).sampled


def _sample(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an int or a fraction: {text!r}") from None


def _seed(text: str) -> int:
    """A seed of NumPy's SeedSequence: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def _detect(text: str) -> tuple[float, float]:
    try:
        fraction, alpha = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected P,ALPHA such as 0.01,0.05, got {text!r}"
                                         ) from None
    return fraction, alpha


def _one_line(error: BaseException) -> str:
    """The message on one line; an exception whose str() raises is named by its type."""
    try:
        text = str(error)
    except Exception:  # the user's __str__ failed: say what we know
        text = f"<{type(error).__name__} whose message cannot be printed>"
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
