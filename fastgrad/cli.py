"""The ``fastgrad`` command line: ``demo``, ``check`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import runpy
import sys

from . import __version__
from .errors import GradientCheckError

#: Exit statuses of ``fastgrad check``.
PASSED, FAILED, USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad file or option: one line on stderr, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    demo.add_argument("--workers", type=int, default=None, help="threads (default: every core)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the model and data (default 0)")

    check = commands.add_parser(
        "check", help="check the gradient defined in a Python file",
        description="Load FILE, which defines loss(theta, *args), grad (an array/dict like "
                    "theta, or grad(theta, *args)), theta, and optionally args (a tuple), and "
                    "print the report. Exit status: 0 pass (and warn, unless --strict), 1 fail, "
                    "2 a usage or input error (one line on stderr).")
    check.add_argument("file", help="Python file defining loss, grad, theta [, args]")
    check.add_argument("--sample", type=_sample, metavar="K",
                       help="check K coordinates (an int), or a fraction of them (e.g. 0.1)")
    check.add_argument("--detect", type=_detect, metavar="P,ALPHA",
                       help="sample enough to catch a bug touching a fraction P of a group "
                            "with probability >= 1 - ALPHA (e.g. 0.01,0.05)")
    check.add_argument("--directions", type=int, metavar="M",
                       help="test M random directions (and localise a failure)")
    check.add_argument("--method", choices=("central", "central4", "complex"), default="central",
                       help="finite-difference method (default central)")
    check.add_argument("--eps", type=float, help="relative step h0 (default: by method)")
    check.add_argument("--seed", type=int, help="seed of the sample and the directions")
    check.add_argument("--workers", type=int, help="threads (default: every core)")
    check.add_argument("--json", action="store_true",
                       help="print the report as JSON on stdout (no progress bar)")
    check.add_argument("--strict", action="store_true", help="exit 1 on warn too")
    check.add_argument("--progress", action="store_true",
                       help="show the progress bar on stderr even when it is not a terminal")

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
    if options.command == "demo":
        from .demo import run_demo

        return run_demo(workers=options.workers, seed=options.seed)
    if options.command == "check":
        try:
            return run_check(options)
        except (UsageError, GradientCheckError) as error:
            print(f"fastgrad: {_one_line(error)}", file=sys.stderr)
            return USAGE
    if options.command == "bench":
        from .bench import run_bench

        return run_bench(quick=options.quick, output=options.output, plot=options.plot)
    parser.print_help(sys.stderr)
    return USAGE


def run_check(options) -> int:
    """Load the model file, check it, print the report; return the exit status."""
    from .api import check
    from .parameters import ParameterLayout
    from .progress import ProgressBar

    model = load_model(options.file)
    progress = None
    if options.progress or (sys.stderr.isatty() and not options.json):
        layout, _ = ParameterLayout.from_theta(model["theta"])
        total = layout.size if options.sample is None and options.detect is None \
            and options.directions is None else _expected(layout, options)
        progress = ProgressBar(total)
    try:
        report = check(model["loss"], model["grad"], model["theta"], model.get("args", ()),
                       method=options.method, eps=options.eps, workers=options.workers,
                       sample=options.sample, detect=options.detect,
                       directions=options.directions, seed=options.seed, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if options.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    if report.verdict == "fail" or (options.strict and report.verdict == "warn"):
        return FAILED
    return PASSED


def load_model(path: str) -> dict:
    """Run the file and return its names; loss, grad and theta must be among them."""
    try:
        namespace = runpy.run_path(path, run_name="fastgrad_model")
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except SyntaxError as error:
        raise UsageError(f"{path} has a syntax error at line {error.lineno}: {error.msg}") from None
    except Exception as error:  # noqa: BLE001 -- the model file's own failure, in one line
        raise UsageError(f"{path} raised {type(error).__name__} while loading: {error}") from None
    missing = [name for name in ("loss", "grad", "theta") if name not in namespace]
    if missing:
        raise UsageError(f"{path} does not define {', '.join(missing)} "
                         "(it must define loss, grad and theta, and may define args)")
    if "args" in namespace and not isinstance(namespace["args"], (tuple, list)):
        raise UsageError(f"{path}: args must be a tuple, got {type(namespace['args']).__name__}")
    return namespace


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


def _detect(text: str) -> tuple[float, float]:
    try:
        fraction, alpha = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected P,ALPHA such as 0.01,0.05, got {text!r}"
                                         ) from None
    return fraction, alpha


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    raise SystemExit(main())
