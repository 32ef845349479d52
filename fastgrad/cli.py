"""The ``fastgrad`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.command == "demo":
        from .demo import run_demo

        return run_demo(workers=options.workers, seed=options.seed)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
