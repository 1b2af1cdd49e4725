"""Large copies are written in several pieces at once and mapped back to back in workers.

The parent decides how many pieces a copy has (one per CPU for big arrays); these tests ask
for three, so that small arrays exercise the same path on any machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import shm_tasks as t
from shm_helpers import held_in, wait_until_released

from parajob import Parallel, delayed
from parajob.process_pool import _sharer, _shm

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="argument sharing needs Linux's /proc"
)

SRC = str(Path(__file__).resolve().parents[2] / "src")
N = 2_000_000  # float64 values: 16 MB, in pieces of 6, 6 and 4 MiB


@pytest.fixture
def three_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sharer, "_streams", lambda nbytes: 3)


def test_piece_sizes_cover_the_array_on_page_boundaries() -> None:
    for nbytes in (1, 4096, 5 << 20, (64 << 20) + 3, 200_000_000):
        for pieces in (1, 2, 3, 4):
            sizes = _shm.piece_sizes(nbytes, pieces)
            assert sum(sizes) == nbytes
            assert 1 <= len(sizes) <= pieces
            assert all(size % (2 << 20) == 0 for size in sizes[:-1])


def test_a_copy_in_pieces_reads_back_whole_in_workers(shm_dir: Path, three_pieces: None) -> None:
    a = np.random.default_rng(0).random(N)
    out = Parallel(n_jobs=2)(delayed(t.same_layout)(a) for _ in range(2))
    for shape, c_order, _, values in out:
        assert shape == a.shape and c_order
        np.testing.assert_array_equal(values, a)
    entry = _sharer.KEEPER._entries[_sharer._key(a)]
    assert len(entry.segment.pieces) == 3
    # Views inside the copy, across piece boundaries, and with steps.
    views = [a[1:], a[::-3], a[N // 3 - 5 : N // 3 + 5]]
    got = Parallel(n_jobs=2)(delayed(t.same_layout)(v) for v in views)
    for v, (_, _, _, values) in zip(views, got, strict=True):
        np.testing.assert_array_equal(values, v)


def test_read_only_pieces_refuse_writes_without_killing_the_worker(
    shm_dir: Path, three_pieces: None
) -> None:
    a = np.zeros(N)
    (out,) = Parallel(n_jobs=2)(delayed(t.try_write)(a) for _ in range(1))
    assert out.startswith("refused") and "read-only" in out
    (flag,) = Parallel(n_jobs=2)(delayed(t.make_writeable)(a) for _ in range(1))
    assert flag.startswith("refused")


@pytest.mark.parametrize("mode", ["c", "r+"])
def test_writeable_modes_on_pieces(shm_dir: Path, three_pieces: None, mode: str) -> None:
    a = np.zeros(N)
    out = Parallel(n_jobs=2, mmap_mode=mode)(delayed(t.write_first)(a, 5.0) for _ in range(2))
    assert out == [5.0, 5.0]
    assert a[0] == 0.0  # the caller's array never changes


def test_pieces_are_released_with_the_array(shm_dir: Path, three_pieces: None) -> None:
    a = np.ones(N)
    Parallel(n_jobs=2)(delayed(t.describe)(a) for _ in range(4))
    assert len({h.split(":", 1)[1] for h in held_in(shm_dir) if " fd " in h}) == 3
    del a
    assert wait_until_released(shm_dir) == []


_CTRL_C_WHILE_COPYING = """
    import os, signal, sys, threading, time
    sys.path[:0] = [{src!r}]
    import numpy as np
    from parajob import Parallel, delayed
    from parajob.process_pool import _sharer, shutdown_executor

    def copying():
        return any(
            os.readlink(f"/proc/self/fd/{{fd}}").startswith({shm!r})
            for fd in os.listdir("/proc/self/fd")
            if os.path.islink(f"/proc/self/fd/{{fd}}")
        )

    def interrupt(main):
        deadline = time.monotonic() + 60
        while not copying() and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGINT)  # an impatient user presses it twice

    if __name__ == "__main__":
        _sharer._streams = lambda nbytes: 2
        x = np.full(1 << 25, 7.0)  # 256 MiB, in 2 pieces
        th = threading.Thread(target=interrupt, args=(threading.get_ident(),))
        th.start()
        try:
            Parallel(n_jobs=2)(delayed(np.sum)(x) for _ in range(2))
            print("NOT INTERRUPTED")
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the second press may come later
            print("INTERRUPTED")
        # At once, as a program going on after Ctrl-C would: these files get the numbers of
        # the descriptors the copy just closed.
        paths = [os.path.join({tmp!r}, f"user_{{i}}.txt") for i in range(4)]
        fds = [os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644) for p in paths]
        for fd in fds:
            os.write(fd, b"user data\\n")
        th.join()
        time.sleep(0.2)  # ample time for a writer left running to write into them
        print("SIZES", [os.fstat(fd).st_size for fd in fds])
        for fd in fds:
            os.close(fd)
        shutdown_executor(wait=True, kill_workers=True)
"""


def test_ctrl_c_while_pieces_are_written_stops_every_writer_first(
    shm_dir: Path, tmp_path: Path
) -> None:
    code = textwrap.dedent(
        _CTRL_C_WHILE_COPYING.format(src=SRC, shm=str(shm_dir), tmp=str(tmp_path))
    )
    script = tmp_path / "script.py"
    script.write_text(code)
    env = {**os.environ, _shm.SHM_DIR_ENV: str(shm_dir)}
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert "INTERRUPTED" in out.stdout, out.stdout + out.stderr
    # No writer was left to write the array into the files opened next.
    assert "SIZES [10, 10, 10, 10]" in out.stdout, out.stdout + out.stderr
