"""The ``parajob`` command: ``parajob demo``, ``parajob cache ...``, ``parajob --version``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _build_parser() -> argparse.ArgumentParser:
    from parajob import __version__

    parser = argparse.ArgumentParser(
        prog="parajob",
        description="parajob: joblib's API, faster and sturdier.",
    )
    parser.add_argument("--version", action="version", version=f"parajob {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="show parajob at work on a built-in example (no setup needed)",
        description="Dump, load, memory-map and hash a large array and a model-like object, "
        "printing sizes, times and hashes.",
    )
    demo.add_argument(
        "--dir",
        default="parajob_demo",
        help="folder for the demo's files (default: ./parajob_demo; large files are removed "
        "afterwards, the small cache is kept)",
    )
    demo.add_argument(
        "--size-mb", type=int, default=200, help="size of the demo array in MB (default: 200)"
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo's files afterwards")

    from parajob.memory._cli import add_cache_parser

    add_cache_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``parajob`` command line and return its exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from parajob._demo import run_demo

        if args.size_mb <= 0:
            parser.error(f"--size-mb must be a positive number of MB, got {args.size_mb}")
        return run_demo(args.dir, size_mb=args.size_mb, keep=args.keep)
    if args.command == "cache":
        return int(args.cache_handler(args))
    parser.print_help(sys.stderr)
    return 2
