"""``parajob cache info|list|prune|clear LOCATION``: look after a cache from the shell.

:func:`add_cache_parser` adds the ``cache`` command to the ``parajob`` parser; the parsed
arguments carry ``cache_handler``, which runs the chosen command and returns the exit status.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any, TextIO

__all__ = ["add_cache_parser", "parse_age", "run_cache_command"]

_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """Return seconds for ``"90"``, ``"90s"``, ``"15m"``, ``"12h"``, ``"7d"`` or ``"2w"``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(
            f"an age is a number with an optional unit s, m, h, d or w (like 7d), got {text!r}"
        )
    return float(match.group(1)) * _AGE_UNITS[match.group(2) or "s"]


def _size(text: str) -> int:
    from parajob.memory._memory import parse_bytes

    try:
        value = parse_bytes(int(text) if text.isdigit() else text, "--max-bytes")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert value is not None
    return value


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def add_cache_parser(subparsers: Any) -> None:
    """Add ``cache info|list|prune|clear LOCATION`` to an argparse ``subparsers`` object."""
    cache = subparsers.add_parser(
        "cache",
        help="inspect and prune a Memory cache",
        description="Inspect and prune a parajob Memory cache. LOCATION is the folder (or "
        "URL) given to Memory(location).",
    )
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    actions.required = True

    info = actions.add_parser("info", help="sizes, counts and hit statistics")
    list_ = actions.add_parser("list", help="list entries, most recently used first")
    list_.add_argument("--function", help="only this function (its folder, module/name)")
    list_.add_argument("--limit", type=int, default=50, help="show at most this many (50)")
    prune = actions.add_parser("prune", help="evict entries by size, count, age or function")
    prune.add_argument("--max-bytes", type=_size, help="keep the cache under this size (500M)")
    prune.add_argument("--max-items", type=int, help="keep at most this many entries")
    prune.add_argument("--max-age", type=parse_age, help="evict entries unused this long (7d)")
    prune.add_argument("--function", help="remove every entry of this function")
    clear = actions.add_parser("clear", help="remove every entry")
    for sub in (info, list_, prune, clear):
        sub.add_argument("location", metavar="LOCATION", help="the Memory location")
    cache.set_defaults(cache_handler=run_cache_command)


def _open(location: str) -> Any:
    from parajob.memory._memory import Memory
    from parajob.memory._store import _is_url

    if not _is_url(location) and not os.path.isdir(os.path.join(location, "parajob")):
        raise FileNotFoundError(
            f"no parajob cache at {location!r} (expected a 'parajob' folder in it); give the "
            f"location you passed to Memory(location)"
        )
    return Memory(location, verbose=0)


def _match_function(memory: Any, name: str) -> str:
    known = sorted(memory.stats().functions)
    exact = [f for f in known if name in (f, f.replace("/", "."))]
    if exact:
        return str(exact[0])
    # A bare name matches the last part of the function folder (``mod/outer-inner``).
    short = [f for f in known if re.split(r"[/.\-]", f)[-1] == name or f.endswith("/" + name)]
    if len(short) == 1:
        return str(short[0])
    if len(short) > 1:
        raise KeyError(
            f"{name!r} matches several functions: {', '.join(short)}; give the full name"
        )
    raise KeyError(f"no function {name!r} in this cache; known: {', '.join(known) or 'none'}")


def run_cache_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the parsed ``cache`` command; return the exit status (0 ok, 1 error)."""
    out = out or sys.stdout
    try:
        memory = _open(args.location)
    except FileNotFoundError as exc:
        print(f"parajob cache: {exc}", file=sys.stderr)
        return 1
    store = memory.store_backend
    command = args.cache_command
    try:
        if command == "info":
            _info(memory, out)
        elif command == "list":
            func = _match_function(memory, args.function) if args.function else None
            _list(store, func, args.limit, out)
        elif command == "prune":
            _prune(memory, args, out)
        elif command == "clear":
            entries, nbytes = store.index.totals()
            memory.clear(warn=False)
            print(f"cleared {entries} entries ({_human(nbytes)}) from {store.location}", file=out)
    except KeyError as exc:
        print(f"parajob cache: {exc.args[0]}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _info(memory: Any, out: TextIO) -> None:
    stats = memory.stats()
    print(f"location:      {memory.store_backend.location}", file=out)
    print(f"entries:       {stats.entries}", file=out)
    print(f"size:          {_human(stats.bytes)}", file=out)
    print(f"functions:     {len(stats.functions)}", file=out)
    print(f"hits / misses: {stats.hits} / {stats.misses} (hit rate {stats.hit_rate:.0%})", file=out)
    print(f"time saved:    {stats.saved_seconds:.1f}s", file=out)
    if stats.functions:
        print("", file=out)
        print(f"{'function':<48}{'entries':>9}{'size':>12}{'hits':>8}{'misses':>8}", file=out)
        for func, s in stats.functions.items():
            print(
                f"{func:<48}{s.entries:>9}{_human(s.bytes):>12}{s.hits:>8}{s.misses:>8}",
                file=out,
            )


def _list(store: Any, func: str | None, limit: int, out: TextIO) -> None:
    records = store.index.entries(func)
    print(f"{'function':<40}{'argument key':<34}{'size':>11}{'hits':>6}  last used", file=out)
    for rec in records[: max(0, limit)]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.last_access))
        print(f"{rec.func:<40}{rec.args:<34}{_human(rec.size):>11}{rec.hits:>6}  {when}", file=out)
    if len(records) > limit:
        print(f"... and {len(records) - limit} more", file=out)


def _prune(memory: Any, args: argparse.Namespace, out: TextIO) -> None:
    from parajob.memory._entry import evict

    store = memory.store_backend
    # Re-sync the index with the files first: entries a killed writer never indexed count
    # for the limits too, and rows of entries removed by hand are dropped.
    started = time.time()
    store.index.reconcile(store.scan_entries(), started)
    before = store.index.totals()
    if args.function:
        func = _match_function(memory, args.function)
        victims = [(rec.func, rec.args) for rec in store.index.entries(func)]
        evict(store, victims, "cleared|cleared")
    if args.max_bytes is not None or args.max_items is not None or args.max_age is not None:
        memory.reduce_size(args.max_bytes, args.max_items, args.max_age)
    swept = store.sweep_temporaries() if hasattr(store, "sweep_temporaries") else 0
    after = store.index.totals()
    print(
        f"removed {before[0] - after[0]} entries ({_human(before[1] - after[1])}); "
        f"{after[0]} entries ({_human(after[1])}) remain"
        + (f"; swept {swept} leftover temporary files" if swept else ""),
        file=out,
    )
