"""Run parajob's benchmarks against joblib and the raw limit, and print ratio tables.

Usage: ``python benchmarks/run.py [SUITE ...] [--repeat N] [--quick]``; suites are the
``bench_*.py`` modules beside this file (``hashing``, ``persistence``, ...). Exit status 1 when
a target ratio is missed, so a missed target is never silent.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import report, run_case  # noqa: E402


def available_suites() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suites", nargs="*", help=f"any of {available_suites()}")
    parser.add_argument("--repeat", type=int, default=None, help="rounds per case")
    parser.add_argument(
        "--quick", action="store_true", help="smaller inputs, for checking the suites run"
    )
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["PARAJOB_BENCH_QUICK"] = "1"
    suites = args.suites or available_suites()
    unknown = sorted(set(suites) - set(available_suites()))
    if unknown:
        parser.error(f"unknown suites {unknown}; choose from {available_suites()}")
    all_ok = True
    for suite in suites:
        module = importlib.import_module(f"bench_{suite}")
        print(f"\n## {suite}\n", flush=True)
        results = []
        try:
            cases = module.cases()
        except Exception as exc:  # a suite that cannot even set up is reported, not fatal
            print(f"suite {suite} could not start: {type(exc).__name__}: {exc}", flush=True)
            all_ok = False
            continue
        for case in cases:
            print(f"running {case.name} ...", file=sys.stderr, flush=True)
            try:
                results.append(run_case(case, repeat=args.repeat))
            except Exception as exc:
                print(f"| {case.name} | ERROR: {type(exc).__name__}: {exc} | | | NO |", flush=True)
                all_ok = False
        all_ok &= report(results)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
