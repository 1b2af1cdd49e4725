"""A small side-by-side benchmark harness: contenders run interleaved, ratios are paired.

The machine is shared and noisy, so absolute seconds mean little. Each repeat runs every
contender of a case once, in a rotating order, and the case reports the median over repeats of
the *paired* ratio (contender time / reference time within the same repeat). Targets are
stated as ratios and checked on those medians.

A contender is a zero-argument callable. It is timed from the outside, unless it returns a
:class:`Measured`, in which case the number it carries is used (for work timed inside a
subprocess, such as a first call from a fresh interpreter, or for a peak-memory figure).
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Measured:
    """A figure measured by the contender itself (seconds, or bytes with ``unit="B"``)."""

    value: float


@dataclass(frozen=True)
class Target:
    """``numerator``'s figure must be at most ``max_ratio`` times ``denominator``'s."""

    numerator: str
    denominator: str
    max_ratio: float

    def label(self) -> str:
        return f"{self.numerator}/{self.denominator} <= {self.max_ratio:g}"


@dataclass
class Case:
    """One benchmark: several contenders doing the same work, and the ratios that must hold."""

    name: str
    contenders: dict[str, Callable[[], Any]]
    targets: list[Target] = field(default_factory=list)
    repeat: int = 5
    setup: Callable[[], None] | None = None
    teardown: Callable[[], None] | None = None
    unit: str = "s"  # "s" for seconds, "B" for bytes (Measured values only)
    # Run once before measuring (imports, pool start-up) unless the case measures a cold start.
    warmup: bool = True


@dataclass
class Result:
    case: Case
    figures: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.figures[name])

    def paired_ratio(self, num: str, den: str) -> float:
        pairs = [a / b for a, b in zip(self.figures[num], self.figures[den], strict=True) if b > 0]
        return statistics.median(pairs) if pairs else float("nan")


def _measure(fn: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    if isinstance(out, Measured):
        return out.value
    return elapsed


def run_case(case: Case, *, repeat: int | None = None) -> Result:
    """Run ``case``: warm up once, then ``repeat`` interleaved rounds."""
    n = repeat or case.repeat
    names = list(case.contenders)
    figures: dict[str, list[float]] = {name: [] for name in names}
    if case.setup is not None:
        case.setup()
    try:
        if case.warmup:
            for name in names:
                case.contenders[name]()
        for round_ in range(n):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                figures[name].append(_measure(case.contenders[name]))
    finally:
        if case.teardown is not None:
            case.teardown()
    return Result(case, figures)


def _fmt(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / 2**20:,.1f} MiB"
    if value < 1e-3:
        return f"{value * 1e6:,.1f} us"
    if value < 1:
        return f"{value * 1e3:,.2f} ms"
    return f"{value:,.3f} s"


def report(results: list[Result], out: Any = None) -> bool:
    """Print a Markdown table of medians and target ratios; return True when all targets hold."""
    out = out or sys.stdout
    all_ok = True
    print("| case | contender medians | target | measured ratio | ok |", file=out)
    print("|---|---|---|---|---|", file=out)
    for res in results:
        medians = ", ".join(
            f"{name} {_fmt(res.median(name), res.case.unit)}" for name in res.figures
        )
        if not res.case.targets:
            print(f"| {res.case.name} | {medians} | - | - | - |", file=out)
        for i, target in enumerate(res.case.targets):
            ratio = res.paired_ratio(target.numerator, target.denominator)
            ok = ratio <= target.max_ratio
            all_ok &= ok
            first = medians if i == 0 else ""
            print(
                f"| {res.case.name if i == 0 else ''} | {first} | {target.label()} "
                f"| {ratio:.3f} | {'yes' if ok else 'NO'} |",
                file=out,
            )
    return all_ok


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout (stderr is shown on failure)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def measured_from_stdout(code: str, **kwargs: Any) -> Measured:
    """Run ``code`` in a fresh interpreter; its last stdout line is the figure to report."""
    return Measured(float(run_python(code, **kwargs).strip().splitlines()[-1]))
