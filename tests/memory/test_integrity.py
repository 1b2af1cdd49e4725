"""Atomic writes, damaged entries, permissions, names that try to leave the cache folder."""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parajob.errors import CacheWarning
from parajob.memory import Memory
from parajob.memory._local_store import LocalStoreBackend
from parajob.memory._naming import sanitize_component

SRC = str(Path(__file__).resolve().parents[2] / "src")
WAIT = 60


def outputs(root: Path) -> list[Path]:
    return sorted(root.rglob("output.pkl"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_entry_warns_is_removed_and_recomputed(tmp_path: Path, damage: str) -> None:
    memory = Memory(tmp_path, verbose=0)
    log: list[int] = []

    @memory.cache
    def make(n):
        log.append(n)
        return np.arange(n)

    make(1000)
    (path,) = outputs(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(data[:40] + b"\x00garbage" * 20 + data[200:])
    else:
        path.write_bytes(b"")
    with pytest.warns(CacheWarning, match="could not be read"):
        again = make(1000)
    np.testing.assert_array_equal(again, np.arange(1000))
    assert log == [1000, 1000]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(make(1000), np.arange(1000))
    assert log == [1000, 1000]


_LOAD_FAILURE: list[BaseException] = []


def _rebuild_payload(value: int) -> Any:
    if _LOAD_FAILURE:
        raise _LOAD_FAILURE[0]
    return _Payload(value)


class _Payload:
    """A result whose loading fails the way the environment can make it fail."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        return (_rebuild_payload, (self.value,))


@pytest.mark.parametrize(
    "failure",
    [MemoryError(), ModuleNotFoundError("No module named 'gone'"), PermissionError(13, "denied")],
    ids=["memory", "import", "permission"],
)
def test_entry_that_fails_to_load_for_lack_of_resources_is_kept(
    tmp_path: Path, failure: BaseException
) -> None:
    # A valid entry that cannot be loaded right now (out of memory, a worker missing a
    # module, a permission problem) is no damaged entry: removing it would lose a result
    # that may have taken hours, even when the computation then fails too.
    memory = Memory(tmp_path, verbose=0)
    attempts: list[int] = []

    @memory.cache
    def expensive(x):
        attempts.append(x)
        if attempts[1:]:
            raise RuntimeError("the recomputation fails as well")
        return _Payload(x)

    assert expensive(1).value == 1
    _LOAD_FAILURE.append(failure)
    try:
        with (
            pytest.warns(CacheWarning, match="could not be read"),
            pytest.raises(RuntimeError, match="fails as well"),
        ):
            expensive(1)
    finally:
        _LOAD_FAILURE.clear()
    assert len(outputs(tmp_path)) == 1
    assert expensive(1).value == 1
    assert attempts == [1, 1]


def test_folders_and_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        memory = Memory(tmp_path / "new" / "cache", verbose=0)

        @memory.cache
        def f(x):
            return x

        f(1)
    finally:
        os.umask(old)
    root = tmp_path / "new" / "cache" / "parajob"
    # Every folder it made, the location's missing parents included.
    folders = [root.parent.parent, root.parent, root]
    folders += [p for p in root.rglob("*") if p.is_dir()]
    assert len(folders) >= 6
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for name in ("output.pkl", "metadata.json", "func_info.json"):
        for path in root.rglob(name):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


@pytest.mark.parametrize("loose", ["cache folder", "its parent"])
def test_a_cache_others_can_write_to_is_reported(tmp_path: Path, loose: str) -> None:
    # Anyone who can write in the cache can make this process run code (pickles): a cache
    # folder made by someone else, or open to everyone, is worth a warning before use.
    parent = tmp_path / "shared"
    (parent / "parajob").mkdir(parents=True)
    target = parent / "parajob" if loose == "cache folder" else parent
    os.chmod(target, 0o777)
    with pytest.warns(CacheWarning, match="can be written by other users"):
        Memory(parent, verbose=0)
    os.chmod(target, 0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Memory(parent, verbose=0)
    if loose == "its parent":
        os.chmod(parent, 0o777 | stat.S_ISVTX)  # sticky, like /tmp: others cannot rename
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Memory(parent, verbose=0)


def test_hostile_function_names_stay_inside_the_cache(tmp_path: Path) -> None:
    memory = Memory(tmp_path / "cache", verbose=0)

    def f(x):
        return x

    f.__module__ = "../../../etc"
    f.__qualname__ = "../../passwd/.."
    cached = memory.cache(f)
    assert cached("../../x") == "../../x"
    assert cached("../../x") == "../../x"
    root = (tmp_path / "cache" / "parajob").resolve()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for p in written:
        assert p.resolve().is_relative_to(root), p
    assert ".." not in cached.func_id.split("/")
    for part in ("..", ".", "", "a/b", "\x00", "x" * 500, "é"):
        clean = sanitize_component(part)
        assert clean and "/" not in clean and not clean.startswith(".") and len(clean) < 120
    assert sanitize_component("a/b") != sanitize_component("a_b")


def test_store_refuses_keys_that_escape(tmp_path: Path) -> None:
    store = LocalStoreBackend(tmp_path / "root")
    for key in ("../x", "a/../../x", "/etc/passwd", ".hidden", "a//b", ""):
        with pytest.raises(ValueError, match="unsafe store key"):
            store.write_bytes(key, b"x")
        with pytest.raises(ValueError):
            store.read_bytes(key)
    assert not (tmp_path / "x").exists()


WORKER = """
import os, sys, threading
import numpy as np
from parajob.memory import Memory

memory = Memory(os.environ["PJ_CACHE"], verbose=0)
CALLS = os.environ["PJ_CALLS"]


class Stall:
    # Pickling this object (inside the dump of a result) signals the test and then hangs, so
    # the test can kill the process in the middle of writing the entry.
    def __reduce__(self):
        if os.environ.get("PJ_STALL") == "1":
            fd = os.open(os.environ["PJ_FIFO"], os.O_WRONLY)
            os.write(fd, b"x")
            os.close(fd)
            threading.Event().wait()
        return (Stall, ())


@memory.cache
def big(k):
    with open(os.path.join(CALLS, str(k)), "a") as f:
        f.write(f"{os.getpid()}\\n")
    return [np.full(2_000_000, k, dtype=np.float64), Stall()]
"""


def test_writer_killed_mid_write_leaves_no_visible_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod_dir, calls, cache = tmp_path / "mods", tmp_path / "calls", tmp_path / "cache"
    for d in (mod_dir, calls):
        d.mkdir()
    (mod_dir / "killme_worker.py").write_text(WORKER)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env = dict(os.environ, PJ_CACHE=str(cache), PJ_CALLS=str(calls), PJ_FIFO=str(fifo))
    env["PYTHONPATH"] = os.pathsep.join([SRC, str(mod_dir)])
    env["PJ_STALL"] = "1"
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    child = subprocess.Popen([sys.executable, "-c", "import killme_worker as w; w.big(1)"], env=env)
    try:
        ready, _, _ = select.select([reader], [], [], WAIT)
        assert ready, "the worker never reached the write"
        assert os.read(reader, 1) == b"x"
        # The worker is now inside the dump of its result: kill it there.
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=WAIT) == -signal.SIGKILL
    finally:
        os.close(reader)
        if child.poll() is None:
            child.kill()
            child.wait(timeout=WAIT)
    root = cache / "parajob"
    assert outputs(root) == []
    leftovers = [p.name for p in root.rglob("*") if ".parajob-tmp-" in p.name]
    assert leftovers, "expected the killed writer's temporary file"

    monkeypatch.setenv("PJ_CACHE", str(cache))
    monkeypatch.setenv("PJ_CALLS", str(calls))
    monkeypatch.setenv("PJ_FIFO", str(fifo))
    monkeypatch.delenv("PJ_STALL", raising=False)
    monkeypatch.syspath_prepend(str(mod_dir))
    import killme_worker

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arr, _ = killme_worker.big(1)
            assert arr.shape == (2_000_000,) and arr[0] == 1.0
            arr, _ = killme_worker.big(1)
        assert (calls / "1").read_text().count("\n") == 2  # killed run + this one, then a hit
        assert len(outputs(root)) == 1
        store = killme_worker.memory.store_backend
        assert store.sweep_temporaries(older_than=0) >= 1
        assert not [p for p in root.rglob("*") if ".parajob-tmp-" in p.name]
    finally:
        killme_worker.memory.store_backend.close()
        sys.modules.pop("killme_worker", None)


def test_reader_never_sees_partial_values_while_rewritten(tmp_path: Path) -> None:
    import threading

    memory = Memory(tmp_path, verbose=0)
    state = {"n": 0}

    @memory.cache(ignore=["bump"])
    def value(bump):
        state["n"] += 1
        return np.full(200_000, state["n"] % 7, dtype=np.int32)

    value(0)
    stop = threading.Event()
    bad: list[Any] = []

    def read() -> None:
        while not stop.is_set():
            arr = value(0)
            if not (arr.shape == (200_000,) and (arr == arr[0]).all()):
                bad.append(arr)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            value.call(0)
    finally:
        stop.set()
        reader.join(timeout=WAIT)
    assert not bad


def test_hit_sweeps_nothing_and_lists_no_temporaries(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0)

    @memory.cache
    def f(x):
        return x

    f(1)
    entry = outputs(tmp_path)[0].parent
    (entry / "output.pkl.parajob-tmp-1-abcd").write_bytes(b"partial")
    keys = [item.key for item in memory.store_backend.list("")]
    assert all(".parajob-tmp-" not in k and ".lock" not in k for k in keys)
    assert f(1) == 1


def _double(x: int) -> int:
    return 2 * x


def test_cache_folder_deleted_while_in_use_is_made_again(tmp_path: Path) -> None:
    # "rm -rf cache/" while a notebook still uses it is the common way to start over: later
    # calls must work and cache again, with an index that is a real file.
    import shutil

    memory = Memory(tmp_path, verbose=0, max_items=10)
    f = memory.cache(_double)
    assert f(1) == 2
    shutil.rmtree(tmp_path / "parajob")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(2) == 4
        assert f(2) == 4
        assert f(1) == 2
    assert (tmp_path / "parajob" / "index.sqlite").is_file()
    stats = memory.stats()
    assert (stats.entries, stats.misses, stats.hits) == (2, 2, 1)
    other = Memory(tmp_path, verbose=0)
    assert other.cache(_double).check_call_in_cache(2)
    assert other.stats().entries == 2
    other.store_backend.close()
    memory.store_backend.close()
