"""Suite-wide guards: no test may leave a child process, thread, temp file or shm segment."""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile
import threading
import time

import psutil
import pytest

from _procs import is_interpreter_helper

faulthandler.enable(file=sys.stderr, all_threads=True)

_SHM = "/dev/shm"


def _shm_entries() -> set[str]:
    try:
        return {n for n in os.listdir(_SHM) if "parajob" in n or n.startswith("pj")}
    except FileNotFoundError:
        return set()


def _tmp_entries() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("parajob")}


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest):
    """Fail a test that leaves child processes, threads, temp files or shm segments behind.

    Long-lived resources that a test deliberately keeps (the warm process pool) are shut
    down by the tests that start them, so the rule is the same for every test.
    """
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    threads_before = _threads()
    tmp_before = _tmp_entries()
    shm_before = _shm_entries()
    yield
    if request.node.get_closest_marker("allow_leftovers"):
        return
    problems = []

    # Processes and threads on their way out get a bounded wait. A killed worker may stay a
    # zombie for a moment until its parent (the forkserver) reaps it: that counts as gone.
    def still_running() -> list[psutil.Process]:
        alive = []
        for p in me.children(recursive=True):
            try:
                if (
                    p.pid not in children_before
                    and p.status() != psutil.STATUS_ZOMBIE
                    and not is_interpreter_helper(p)
                ):
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        return alive

    deadline = time.monotonic() + 5
    alive = still_running()
    while alive and time.monotonic() < deadline:
        psutil.wait_procs(alive, timeout=0.05)
        alive = still_running()
    if alive:
        problems.append(f"child processes left running: {[(p.pid, p.name()) for p in alive]}")
    for t in _threads() - threads_before:
        t.join(timeout=5)
    left_threads = [t for t in _threads() - threads_before if t.is_alive()]
    if left_threads:
        problems.append(f"threads left running: {[t.name for t in left_threads]}")
    left_tmp = _tmp_entries() - tmp_before
    if left_tmp:
        problems.append(f"temp files left in {tempfile.gettempdir()}: {sorted(left_tmp)}")
    left_shm = _shm_entries() - shm_before
    if left_shm:
        problems.append(f"shared-memory segments left in {_SHM}: {sorted(left_shm)}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_leftovers: the test hands its resources to a later one on purpose"
    )
