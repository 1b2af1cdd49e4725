"""``parajob cache info|list|prune|clear``: through argparse, as the parajob command runs it."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from parajob.memory import Memory
from parajob.memory._cli import add_cache_parser, parse_age


def run(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="parajob")
    add_cache_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    return args.cache_handler(args, out=out), out.getvalue()


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    memory = Memory(tmp_path, verbose=0)

    @memory.cache
    def alpha(x):
        return b"a" * 1000

    @memory.cache
    def beta(x):
        return b"b" * 5000

    for i in range(4):
        alpha(i)
    alpha(0)
    beta(1)
    memory.store_backend.close()
    return tmp_path


def test_info_shows_sizes_counts_and_hits(filled: Path) -> None:
    code, out = run("cache", "info", str(filled))
    assert code == 0
    assert "entries:       5" in out
    assert "hits / misses: 1 / 5" in out
    assert "alpha" in out and "beta" in out


def test_list_and_filter_by_function(filled: Path) -> None:
    code, out = run("cache", "list", str(filled))
    assert code == 0
    assert out.count("alpha") == 4 and out.count("beta") == 1
    code, out = run("cache", "list", str(filled), "--function", "beta")
    assert code == 0 and "alpha" not in out and "beta" in out


def test_prune_by_function_size_and_age(filled: Path) -> None:
    code, out = run("cache", "prune", str(filled), "--function", "beta")
    assert code == 0 and "removed 1 entries" in out
    code, out = run("cache", "prune", str(filled), "--max-items", "2")
    assert code == 0 and "2 entries" in out
    code, out = run("cache", "prune", str(filled), "--max-age", "0s")
    assert code == 0 and "0 entries" in out


def test_clear_and_errors(filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run("cache", "clear", str(filled))
    assert code == 0 and "cleared 5 entries" in out
    assert not list((filled / "parajob").rglob("output.pkl"))
    code, _ = run("cache", "info", str(tmp_path / "nowhere"))
    assert code == 1
    assert "no parajob cache" in capsys.readouterr().err
    code, _ = run("cache", "list", str(filled), "--function", "gamma")
    assert code == 1


def test_parse_age() -> None:
    assert parse_age("90") == 90
    assert parse_age("2h") == 7200
    assert parse_age("7d") == 7 * 86400
    with pytest.raises(argparse.ArgumentTypeError):
        parse_age("soon")


def test_prune_puts_entries_the_index_lost_back_under_its_limits(filled: Path) -> None:
    # A process killed between writing an entry and indexing it leaves files the index does
    # not know: limits would never count or evict them. prune re-syncs the index first.
    import sqlite3

    index = filled / "parajob" / "index.sqlite"
    with sqlite3.connect(index) as conn:
        conn.execute("DELETE FROM entries WHERE func LIKE '%beta'")
    conn.close()
    code, out = run("cache", "info", str(filled))
    assert "entries:       4" in out
    code, out = run("cache", "prune", str(filled), "--max-bytes", "3000")
    assert code == 0
    outputs = list((filled / "parajob").rglob("output.pkl"))
    assert len(outputs) <= 2 and all("beta" not in str(p) for p in outputs), outputs
    code, out = run("cache", "info", str(filled))
    assert f"entries:       {len(outputs)}" in out
