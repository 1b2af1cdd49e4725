"""The cache index: entry sizes and last uses (for LRU limits), stats, and why entries left.

An SQLite database (``index.sqlite`` in the cache folder for the local store; in memory, seeded
from a listing, for other stores). It answers "what to evict" with one ordered query instead of
a walk over the whole tree, and it is safe to share: SQLite's WAL mode serialises writers from
every process, and a process killed mid-transaction leaves the previous state.

Hits are frequent and cheap, so they are buffered in memory and written in batches (every
``_FLUSH_EVERY`` hits, every ``_FLUSH_SECONDS`` seconds, before any store, limit check or stats
query, when the index is dropped, and at exit); LRU order is therefore exact up to that delay.
Writes of new entries go to the database at once. One process keeps one index (and one
connection) per cache, shared by every store object on it (:meth:`CacheIndex.shared`): cached
functions unpickled in a worker for each task add no connections and lose no hits.

Removals race with writers: another process may write an entry again between the removal of
its files and the removal of its row. Rows are therefore removed only if written before the
removal began (``before``), so the index can hold a row whose files are gone (it reads as a
miss and is replaced or evicted) but never misses an entry that exists.

Tables: ``entries`` (one row per stored entry), ``functions`` (counters per function),
``removed`` (recently removed entries and why, for ``explain``), ``totals`` (entry count and
bytes, kept by triggers so limit checks cost O(1)).
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["CacheIndex", "EntryRecord", "FunctionCounters"]

_FLUSH_EVERY = 512
_FLUSH_SECONDS = 2.0
_KEEP_REMOVED = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    func TEXT NOT NULL, args TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL,
    last_access REAL NOT NULL, duration REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (func, args)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_access);
CREATE TABLE IF NOT EXISTS functions (
    func TEXT PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0, misses INTEGER NOT NULL DEFAULT 0,
    compute_seconds REAL NOT NULL DEFAULT 0, saved_seconds REAL NOT NULL DEFAULT 0,
    load_seconds REAL NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removed (
    func TEXT NOT NULL, args TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (func, args)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0),
    items INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entries_add AFTER INSERT ON entries BEGIN
    UPDATE totals SET items = items + 1, bytes = bytes + NEW.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
    UPDATE totals SET items = items - 1, bytes = bytes - OLD.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size ON entries BEGIN
    UPDATE totals SET bytes = bytes - OLD.size + NEW.size WHERE id = 0; END;
"""


@dataclass(frozen=True)
class EntryRecord:
    """One indexed entry."""

    func: str
    args: str
    size: int
    created: float
    last_access: float
    duration: float
    hits: int


@dataclass
class FunctionCounters:
    """Counters of one function (or of the whole cache)."""

    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0
    compute_seconds: float = 0.0
    saved_seconds: float = 0.0


_BUSY_SECONDS = 60.0
_Found = tuple[str, str, int, float]  # (function folder, argument key, size, mtime)


def _retry_while_busy(step: Callable[[], None]) -> None:
    # SQLite's busy timeout does not cover every contention: switching a new database to WAL,
    # or a lock upgrade that could deadlock, fails with "database is locked" at once. That
    # happens when several processes open a fresh cache together; wait for them instead.
    deadline = time.monotonic() + _BUSY_SECONDS
    wait = 0.001
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(wait)
        wait = min(wait * 2, 0.05)


_open_indexes: weakref.WeakSet[CacheIndex] = weakref.WeakSet()
_shared: weakref.WeakValueDictionary[str, CacheIndex] = weakref.WeakValueDictionary()
_shared_guard = threading.Lock()


def _flush_all_at_exit() -> None:
    for index in list(_open_indexes):
        with contextlib.suppress(Exception):
            index.close()


atexit.register(_flush_all_at_exit)

# Connections inherited through fork: SQLite forbids using them in the child, closing
# included, so the child keeps them unused and opens its own.
_inherited_connections: list[sqlite3.Connection] = []


def _reset_after_fork() -> None:
    global _shared_guard
    # A thread of the parent may have held these locks at the fork; it does not exist here.
    _shared_guard = threading.Lock()
    for index in list(_open_indexes):
        index._lock = threading.RLock()
        if index._conn is not None:
            _inherited_connections.append(index._conn)
            index._conn = None
        index._own_buffer()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class CacheIndex:
    """The index of one store.

    Parameters
    ----------
    path : str or None
        The database file; None keeps it in memory (for stores without a local folder).
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._pending: dict[tuple[str, str], list[float]] = {}
        self._pending_misses: dict[str, list[float]] = {}
        self._pending_count = 0
        self._last_flush = time.time()
        self._buffer_pid = os.getpid()
        self.created_fresh = False
        self._file_id: tuple[int, int] | None = None
        self._scan: Callable[[], Callable[[], Iterable[_Found]] | None] | None = None
        _open_indexes.add(self)

    @classmethod
    def shared(cls, key: str, path: str | None) -> CacheIndex:
        """Return this process's index for ``key`` (made on first use)."""
        with _shared_guard:
            index = _shared.get(key)
            if index is None:
                index = _shared[key] = cls(path)
            return index

    def seed_once(self, scan: Callable[[], Iterable[_Found]]) -> None:
        """Index what ``scan()`` finds whenever the database is created (now or later)."""
        with self._lock:
            # Weakly: the index must not keep a store alive (it would make a cycle, freed
            # only by the garbage collector, delaying the flush of its buffered hits).
            self._scan = weakref.WeakMethod(scan) if inspect.ismethod(scan) else lambda: scan
            self._connection()
            if self.created_fresh:
                self.created_fresh = False
                self.add_found(scan())

    def __del__(self) -> None:
        # The last store using this index is gone: write its buffered hits (a cached function
        # unpickled for one task must not lose them). Never raise from a finaliser.
        with contextlib.suppress(Exception):
            if self._conn is not None and self._pid == os.getpid():
                if self._pending or self._pending_misses:
                    self.flush()
                self._conn.close()

    def _own_buffer(self) -> None:
        # After a fork, the buffered events (and the connection) belong to the parent.
        if self._buffer_pid != os.getpid():
            self._pending = {}
            self._pending_misses = {}
            self._pending_count = 0
            self._buffer_pid = os.getpid()

    # -- connection ----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is not None and self._pid == os.getpid():
            if self.path is None or self._file_is_ours():
                return conn
            # The database file was deleted or replaced (someone removed the cache folder to
            # start over): the connection would keep writing an unlinked file nobody else
            # sees. Open the one at the path now.
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            self._conn = None
        if self.path is not None:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        fresh = self.path is None or not os.path.exists(self.path)
        target = self.path if self.path is not None else ":memory:"
        conn = sqlite3.connect(
            target, timeout=_BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            _retry_while_busy(lambda: self._set_up(conn))
            if self.path is not None:
                st = os.stat(self.path)
                self._file_id = (st.st_dev, st.st_ino)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        self.created_fresh = fresh
        scan = self._scan() if self._scan is not None else None
        if fresh and scan is not None:
            self.created_fresh = False
            self._insert_found(conn, scan())
        return conn

    def _file_is_ours(self) -> bool:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._file_id

    def _set_up(self, conn: sqlite3.Connection) -> None:
        if self.path is not None:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may lose the last transactions, never corrupt; the
            # index is advisory (the files are the truth), so that is the right trade.
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Write buffered hits and close the database (reopened if used again).

        An in-memory index is only flushed: closing it would lose it for the other stores
        sharing it.
        """
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    self.flush()
                if self.path is None:
                    return
                self._conn.close()
            self._conn = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    # -- buffered events -----------------------------------------------------------------------

    def record_hit(self, func: str, args: str, load_seconds: float) -> None:
        """Note a hit (buffered)."""
        now = time.time()
        with self._lock:
            if self._buffer_pid != os.getpid():
                self._own_buffer()
            slot = self._pending.get((func, args))
            if slot is None:
                self._pending[(func, args)] = [1.0, now, load_seconds]
            else:
                slot[0] += 1
                slot[1] = now
                slot[2] += load_seconds
            self._pending_count += 1
            if self._pending_count >= _FLUSH_EVERY or now - self._last_flush > _FLUSH_SECONDS:
                self.flush()

    def record_miss(self, func: str, compute_seconds: float) -> None:
        """Note a computation (buffered)."""
        with self._lock:
            self._own_buffer()
            slot = self._pending_misses.setdefault(func, [0.0, 0.0])
            slot[0] += 1
            slot[1] += compute_seconds
            self._pending_count += 1

    def flush(self) -> None:
        """Write buffered hits and misses."""
        with self._lock:
            self._own_buffer()
            conn = self._connection()
            if not self._pending and not self._pending_misses:
                self._last_flush = time.time()
                return
            hits, self._pending = self._pending, {}
            misses, self._pending_misses = self._pending_misses, {}
            self._pending_count = 0
            self._last_flush = time.time()
            with self._transaction(conn):
                for (func, args), (count, last, load) in hits.items():
                    row = conn.execute(
                        "SELECT duration FROM entries WHERE func = ? AND args = ?", (func, args)
                    ).fetchone()
                    saved = max(0.0, (row[0] if row else 0.0) * count - load)
                    conn.execute(
                        "UPDATE entries SET hits = hits + ?, last_access = max(last_access, ?) "
                        "WHERE func = ? AND args = ?",
                        (int(count), last, func, args),
                    )
                    self._bump(conn, func, hits=int(count), saved=saved, load=load)
                for func, (count, seconds) in misses.items():
                    self._bump(conn, func, misses=int(count), compute=seconds)

    @staticmethod
    def _bump(
        conn: sqlite3.Connection,
        func: str,
        hits: int = 0,
        misses: int = 0,
        compute: float = 0.0,
        saved: float = 0.0,
        load: float = 0.0,
    ) -> None:
        conn.execute(
            "INSERT INTO functions (func, hits, misses, compute_seconds, saved_seconds, "
            "load_seconds) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (func) DO UPDATE SET "
            "hits = hits + excluded.hits, misses = misses + excluded.misses, "
            "compute_seconds = compute_seconds + excluded.compute_seconds, "
            "saved_seconds = saved_seconds + excluded.saved_seconds, "
            "load_seconds = load_seconds + excluded.load_seconds",
            (func, hits, misses, compute, saved, load),
        )

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Any:
        # IMMEDIATE takes the write lock up front, so two writers never deadlock upgrading.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- entries -------------------------------------------------------------------------------

    def record_store(self, func: str, args: str, size: int, duration: float) -> None:
        """Add (or replace) an entry just written."""
        now = time.time()
        with self._lock:
            self.flush()
            conn = self._connection()
            with self._transaction(conn):
                conn.execute(
                    "INSERT INTO entries (func, args, size, created, last_access, duration) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (func, args) DO UPDATE SET "
                    "size = excluded.size, created = excluded.created, "
                    "last_access = excluded.last_access, duration = excluded.duration",
                    (func, args, size, now, now, duration),
                )
                conn.execute("DELETE FROM removed WHERE func = ? AND args = ?", (func, args))

    def add_found(self, records: Iterable[tuple[str, str, int, float]]) -> None:
        """Index entries found by a listing ``(func, args, size, mtime)``, keeping known ones."""
        with self._lock:
            self._insert_found(self._connection(), records)

    def _insert_found(
        self, conn: sqlite3.Connection, records: Iterable[tuple[str, str, int, float]]
    ) -> None:
        with self._transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO entries (func, args, size, created, last_access, "
                "duration) VALUES (?, ?, ?, ?, ?, 0)",
                [(f, a, s, m, m) for f, a, s, m in records],
            )

    def reconcile(
        self, found: Iterable[tuple[str, str, int, float]], before: float
    ) -> tuple[int, int]:
        """Make the index match a listing ``(func, args, size, mtime)`` taken after ``before``.

        Entries the listing found and the index lacks are added (a writer killed between its
        commit and its index update leaves those); rows older than ``before`` whose entry
        the listing did not find are dropped. Returns ``(added, dropped)``.
        """
        records = [(f, a, s, m, m) for f, a, s, m in found]
        with self._lock:
            self.flush()
            conn = self._connection()
            with self._transaction(conn):
                conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS listed (func TEXT, args TEXT, "
                    "PRIMARY KEY (func, args)) WITHOUT ROWID"
                )
                conn.execute("DELETE FROM listed")
                conn.executemany(
                    "INSERT OR IGNORE INTO listed VALUES (?, ?)", [r[:2] for r in records]
                )
                before_count = self.totals()[0]
                conn.executemany(
                    "INSERT OR IGNORE INTO entries (func, args, size, created, last_access, "
                    "duration) VALUES (?, ?, ?, ?, ?, 0)",
                    records,
                )
                added = self.totals()[0] - before_count
                dropped = conn.execute(
                    "DELETE FROM entries WHERE created < ? AND NOT EXISTS (SELECT 1 FROM "
                    "listed WHERE listed.func = entries.func AND listed.args = entries.args)",
                    (before,),
                ).rowcount
                conn.execute("DELETE FROM listed")
        return added, dropped

    def forget(
        self, items: Iterable[tuple[str, str]], reason: str, before: float | None = None
    ) -> None:
        """Drop entries from the index, remembering why (for ``explain``).

        With ``before`` (a :func:`time.time` taken before the files were removed), a row
        written since, by a writer that stored the entry again, is kept.
        """
        now = time.time()
        cutoff = now if before is None else before
        items = list(items)
        with self._lock:
            self.flush()
            conn = self._connection()
            with self._transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO removed SELECT ?, ?, ?, ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM entries WHERE func = ? AND args = ? AND created >= ?)",
                    [(f, a, reason, now, f, a, cutoff) for f, a in items],
                )
                conn.executemany(
                    "DELETE FROM entries WHERE func = ? AND args = ? AND created < ?",
                    [(f, a, cutoff) for f, a in items],
                )
                self._trim_removed(conn)

    def forget_function(self, func: str, reason: str, before: float | None = None) -> None:
        """Drop every entry of ``func`` written before ``before``, remembering why."""
        now = time.time()
        cutoff = now if before is None else before
        with self._lock:
            self.flush()
            conn = self._connection()
            with self._transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO removed SELECT func, args, ?, ? FROM entries "
                    "WHERE func = ? AND created < ?",
                    (reason, now, func, cutoff),
                )
                conn.execute("DELETE FROM entries WHERE func = ? AND created < ?", (func, cutoff))
                self._trim_removed(conn)

    def forget_all(self, before: float | None = None) -> None:
        """Empty the index (the store was cleared); rows written since ``before`` stay."""
        cutoff = time.time() if before is None else before
        with self._lock:
            self._pending.clear()
            self._pending_misses.clear()
            conn = self._connection()
            with self._transaction(conn):
                conn.execute("DELETE FROM entries WHERE created < ?", (cutoff,))
                for table in ("functions", "removed"):
                    conn.execute(f"DELETE FROM {table}")

    @staticmethod
    def _trim_removed(conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM removed WHERE at < (SELECT at FROM removed ORDER BY at DESC "
            "LIMIT 1 OFFSET ?)",
            (_KEEP_REMOVED,),
        )

    def removal_reason(self, func: str, args: str) -> tuple[str, float] | None:
        """Return ``(reason, time)`` if the entry was removed and not written since."""
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT reason, at FROM removed WHERE func = ? AND args = ?", (func, args))
                .fetchone()
            )
        return None if row is None else (str(row[0]), float(row[1]))

    def totals(self) -> tuple[int, int]:
        """Return ``(entries, bytes)``."""
        with self._lock:
            row = self._connection().execute("SELECT items, bytes FROM totals").fetchone()
        return int(row[0]), int(row[1])

    def over_limits(
        self, max_bytes: int | None, max_items: int | None, max_age: float | None
    ) -> list[tuple[str, str]]:
        """Return the entries to evict, least recently used first, to meet the limits."""
        with self._lock:
            self.flush()
            conn = self._connection()
            chosen: list[tuple[str, str]] = []
            items, nbytes = self.totals()
            if max_age is not None:
                rows = conn.execute(
                    "SELECT func, args, size FROM entries WHERE last_access < ? "
                    "ORDER BY last_access",
                    (time.time() - max_age,),
                ).fetchall()
                for func, args, size in rows:
                    chosen.append((func, args))
                    items -= 1
                    nbytes -= size
            too_many = max_items is not None and items > max_items
            too_big = max_bytes is not None and nbytes > max_bytes
            if not (too_many or too_big):
                return chosen
            already = set(chosen)
            cursor = conn.execute("SELECT func, args, size FROM entries ORDER BY last_access")
            for func, args, size in cursor:
                if (func, args) in already:
                    continue
                too_many = max_items is not None and items > max_items
                too_big = max_bytes is not None and nbytes > max_bytes
                if not (too_many or too_big):
                    break
                chosen.append((func, args))
                items -= 1
                nbytes -= size
            cursor.close()
            return chosen

    def entries(self, func: str | None = None) -> list[EntryRecord]:
        """Return the indexed entries (of one function, or all), most recently used first."""
        with self._lock:
            self.flush()
            conn = self._connection()
            query = "SELECT func, args, size, created, last_access, duration, hits FROM entries"
            if func is None:
                rows = conn.execute(query + " ORDER BY last_access DESC").fetchall()
            else:
                rows = conn.execute(
                    query + " WHERE func = ? ORDER BY last_access DESC", (func,)
                ).fetchall()
        return [EntryRecord(*row) for row in rows]

    def counters(self) -> dict[str, FunctionCounters]:
        """Return counters per function (functions with entries or history)."""
        with self._lock:
            self.flush()
            conn = self._connection()
            out: dict[str, FunctionCounters] = {}
            for func, hits, misses, compute, saved, load in conn.execute(
                "SELECT func, hits, misses, compute_seconds, saved_seconds, load_seconds "
                "FROM functions"
            ):
                out[func] = FunctionCounters(
                    hits=hits,
                    misses=misses,
                    compute_seconds=compute,
                    saved_seconds=max(0.0, saved),
                )
                del load  # already subtracted from saved at flush time
            for func, count, nbytes in conn.execute(
                "SELECT func, COUNT(*), SUM(size) FROM entries GROUP BY func"
            ):
                c = out.setdefault(func, FunctionCounters())
                c.entries, c.bytes = int(count), int(nbytes or 0)
        return out
