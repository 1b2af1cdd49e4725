"""Large numpy arrays to and from process workers through shared memory (issue 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shm_tasks as t
from shm_helpers import held_in, wait_until_released

from parajob import Parallel, delayed
from parajob.errors import SharedMemoryError, SharedMemoryWarning
from parajob.process_pool import _messages as m
from parajob.process_pool import _sharer, _shm

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="argument sharing needs Linux's /proc"
)

BIG = 300_000  # float64 values: 2.4 MB, above the default max_nbytes of 1M
SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS = str(Path(__file__).resolve().parent)


# -- arguments ---------------------------------------------------------------------------------


def test_large_arguments_reach_workers_as_read_only_mappings(shm_dir: Path) -> None:
    a = np.arange(BIG, dtype=np.float64)
    out = Parallel(n_jobs=2)(delayed(t.describe)(a) for _ in range(4))
    assert out == [("memmap", True, False, float(a.sum()))] * 4


def test_small_arrays_and_max_nbytes_none_travel_by_pickle(shm_dir: Path) -> None:
    small = np.arange(1000, dtype=np.float64)
    big = np.arange(BIG, dtype=np.float64)
    assert Parallel(n_jobs=2)(delayed(t.describe)(x) for x in [small]) == [
        ("ndarray", False, True, float(small.sum()))
    ]
    out = Parallel(n_jobs=2, max_nbytes=None)(delayed(t.describe)(x) for x in [big])
    assert out == [("ndarray", False, True, float(big.sum()))]


def test_array_bytes_never_enter_the_task_message_and_are_shared_once(shm_dir: Path) -> None:
    a = np.random.default_rng(0).random(1_000_000)  # 8 MB
    settings = _shm.make_settings(2**20, "r", None, None)
    with _sharer.ArraySharer(settings) as sharer, _sharer.sharing(sharer):
        frames = [
            m.dumps_payload((t.describe, False, [(a,)], False, i, None), [t.describe])
            for i in range(8)
        ]
        # Slices of one array share its segment too.
        m.dumps_payload(
            (t.describe, False, [(a[:500_000],), (a[500_000:],)], False, 0, None), [t.describe]
        )
        assert sharer.nsegments == 1
    assert max(len(f) for f in frames) < 2_000  # the 8 MB stayed out of every pipe message


def test_writing_raises_in_workers_by_default(shm_dir: Path) -> None:
    a = np.zeros(BIG)
    (out,) = Parallel(n_jobs=2)(delayed(t.try_write)(a) for _ in range(1))
    assert out.startswith("refused") and "read-only" in out


def test_copy_on_write_mode_keeps_writes_in_the_worker(shm_dir: Path) -> None:
    a = np.zeros(BIG)
    assert Parallel(n_jobs=2, mmap_mode="c")(delayed(t.try_write)(a) for _ in range(2)) == [
        "written",
        "written",
    ]
    assert a[0] == 0.0


@pytest.mark.parametrize("mode", ["r+", "w+"])
@pytest.mark.parametrize("max_nbytes", ["1M", None])
def test_workers_write_into_a_shared_output_memmap(
    tmp_path: Path, mode: str, max_nbytes: str | None
) -> None:
    out = np.memmap(tmp_path / "out.dat", dtype=np.float64, mode="w+", shape=(6, BIG // 6))
    # Even with max_nbytes=None (nothing copied to shared memory), a memmap goes by path.
    done = Parallel(n_jobs=2, mmap_mode=mode, max_nbytes=max_nbytes)(
        delayed(t.fill_row)(out, i) for i in range(6)
    )
    assert done == list(range(6))
    assert all((out[i] == i).all() for i in range(6))
    del out


def test_memmap_arguments_are_passed_by_reference_not_copied(tmp_path: Path) -> None:
    mm = np.memmap(tmp_path / "in.dat", dtype=np.float64, mode="w+", shape=(BIG,))
    mm[:] = 1.0
    mm.flush()
    settings = _shm.make_settings(2**20, "r", None, None)
    with _sharer.ArraySharer(settings) as sharer, _sharer.sharing(sharer):
        m.dumps_payload((t.describe, False, [(mm[10:],)], False, 0, None), [t.describe])
        assert sharer.nsegments == 0  # no copy: the worker maps the same file
    (desc,) = Parallel(n_jobs=2)(delayed(t.describe)(mm[10:]) for _ in range(1))
    assert desc[:2] == ("memmap", True) and desc[3] == float(BIG - 10)
    del mm


def test_arrays_in_nested_containers_are_shared(shm_dir: Path) -> None:
    a = np.ones(BIG)
    obj = {
        "list": [a * 2],
        "dict": {"x": a * 3},
        "dataclass": t.Holder("h", a * 4),
        "object": t.Plain(a * 5),
    }
    (out,) = Parallel(n_jobs=2)(delayed(t.describe_nested)(obj) for _ in range(1))
    assert [d[1] for d in out] == [True] * 4
    assert [d[3] for d in out] == [2.0 * BIG, 3.0 * BIG, 4.0 * BIG, 5.0 * BIG]


@pytest.mark.parametrize(
    "make",
    [
        lambda base: np.asfortranarray(base),
        lambda base: base[::2, ::3],
        lambda base: base[::-1, :],
        lambda base: np.asfortranarray(base)[:, 1:-1],
        lambda base: base.T,
    ],
    ids=["fortran", "strided", "negative-stride", "fortran-view", "transposed"],
)
def test_fortran_and_non_contiguous_arrays_arrive_intact(shm_dir: Path, make: Any) -> None:
    base = np.arange(1200 * 400, dtype=np.float64).reshape(1200, 400)
    a = make(base)
    (got,) = Parallel(n_jobs=2, max_nbytes="100K")(delayed(t.same_layout)(a) for _ in range(1))
    shape, _c, f, values = got
    assert shape == a.shape
    np.testing.assert_array_equal(values, a)
    if a.flags.f_contiguous and not a.flags.c_contiguous:
        assert f  # F-ordered arrays stay F-ordered


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_subclasses_share_when_they_can_and_pickle_otherwise(shm_dir: Path) -> None:
    mat = np.asmatrix(np.ones((600, 600)))
    masked = np.ma.masked_array(np.arange(BIG, dtype=np.float64), mask=np.arange(BIG) % 2 == 0)
    (shared,) = Parallel(n_jobs=2)(delayed(t.describe)(x) for x in [mat])
    assert shared[:2] == ("matrix", True)
    (pickled,) = Parallel(n_jobs=2)(delayed(t.masked_sum)(x) for x in [masked])
    assert pickled == ("MaskedArray", float(masked.sum()), BIG // 2)


# -- results -----------------------------------------------------------------------------------


def test_large_results_come_back_through_shared_memory_intact(shm_dir: Path) -> None:
    out = Parallel(n_jobs=2)(delayed(t.full)(BIG, float(i)) for i in range(4))
    for i, r in enumerate(out):
        assert type(r) is np.ndarray and r.flags.writeable
        assert t.describe(r)[1]  # backed by a mapping, not a copy of pipe bytes
        assert (r == i).all()
    held = held_in(shm_dir)
    assert held and all(h.startswith(f"pid {os.getpid()} ") for h in held)  # only ours
    r = out[0]
    r[0] = 42.0  # results are ordinary writeable arrays
    del out, r, held
    assert wait_until_released(shm_dir) == []  # dropping the arrays frees the segments


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_fortran_and_subclass_results(shm_dir: Path) -> None:
    f_arr, mat = Parallel(n_jobs=2)([delayed(t.full_f)((1000, 300)), delayed(t.matrix)(400)])
    assert f_arr.flags.f_contiguous and not f_arr.flags.c_contiguous
    np.testing.assert_array_equal(f_arr, t.full_f((1000, 300)))
    assert type(mat) is np.matrix and mat.sum() == 400 * 400


def test_a_result_with_no_room_fails_its_task_with_a_clear_error(
    shm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_shm.SHM_SIZE_ENV, "1K")
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SharedMemoryError, match=r"tried .*1.0 KiB free.*no-such-folder"):
        Parallel(n_jobs=2, temp_folder=str(missing))(delayed(t.full)(BIG, 1.0) for _ in range(1))


# -- room --------------------------------------------------------------------------------------


def test_full_shm_falls_back_to_temp_folder_with_a_warning(
    shm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_shm.SHM_SIZE_ENV, "1K")  # the shm folder "has" 1 KiB of room
    fallback = tmp_path / "fallback"
    fallback.mkdir()
    a = np.arange(BIG, dtype=np.float64)
    with pytest.warns(SharedMemoryWarning, match="too little room"):
        out = Parallel(n_jobs=2, temp_folder=str(fallback))(
            delayed(t.describe)(a) for _ in range(2)
        )
    assert out == [("memmap", True, False, float(a.sum()))] * 2
    assert os.listdir(fallback) == [] and os.listdir(shm_dir) == []


def test_the_fallback_warning_as_an_error_is_raised_as_itself(
    shm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_shm.SHM_SIZE_ENV, "1K")
    a = np.arange(BIG, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SharedMemoryWarning)  # as python -W error does
        with pytest.raises(SharedMemoryWarning, match="too little room"):
            Parallel(n_jobs=2, temp_folder=str(tmp_path))(delayed(t.describe)(a) for _ in range(2))


def test_no_room_anywhere_names_the_size_and_the_places(
    shm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_shm.SHM_SIZE_ENV, "1K")
    missing = tmp_path / "no-such-folder"
    a = np.arange(BIG, dtype=np.float64)
    with pytest.raises(SharedMemoryError) as info:
        Parallel(n_jobs=2, temp_folder=str(missing))(delayed(t.describe)(a) for _ in range(1))
    text = str(info.value)
    assert f"{a.nbytes} bytes" in text and str(shm_dir) in text and str(missing) in text
    assert isinstance(info.value, OSError)


def test_a_folder_that_fills_up_while_writing_is_reported(tmp_path: Path) -> None:
    # A real "disk full" (write fails with EFBIG under a file size limit), in a subprocess.
    code = f"""
        import resource, signal, sys
        sys.path[:0] = [{SRC!r}, {TESTS!r}]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        import numpy as np
        from parajob import Parallel, delayed
        from parajob.errors import SharedMemoryError
        import shm_tasks as t
        if __name__ == "__main__":
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
            try:
                Parallel(n_jobs=2)(delayed(t.describe)(np.ones({BIG})) for _ in range(1))
            except SharedMemoryError as exc:
                print("ERROR", exc)
    """
    out = _run_script(tmp_path, code, {_shm.SHM_DIR_ENV: str(tmp_path)})
    assert "ERROR no room to share an array" in out.stdout, out.stderr
    assert "full while writing" in out.stdout


# -- cleanup -----------------------------------------------------------------------------------


def test_nothing_is_held_after_the_array_is_dropped_or_a_writeable_call_ends(
    shm_dir: Path,
) -> None:
    a = np.ones(BIG)
    Parallel(n_jobs=2)(delayed(t.describe)(a) for _ in range(4))
    assert held_in(shm_dir), "a read-only copy is kept for the next call with the same array"
    del a
    assert wait_until_released(shm_dir) == []
    b = np.ones(BIG)
    with pytest.raises(RuntimeError, match="failed on"):
        Parallel(n_jobs=2, mmap_mode="r+")(delayed(t.fail)(b) for _ in range(4))
    assert wait_until_released(shm_dir) == []
    Parallel(n_jobs=2, mmap_mode="w+")(delayed(t.describe)(b) for _ in range(4))
    assert wait_until_released(shm_dir) == []
    assert os.listdir(shm_dir) == []


def _run_script(
    tmp_path: Path, code: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_BLOCKING_CALL = """
    import sys
    sys.path[:0] = [{src!r}, {tests!r}]
    import numpy as np
    from parajob import Parallel, delayed
    import shm_tasks as t
    if __name__ == "__main__":
        a = np.ones({n})
        Parallel(n_jobs=2)(delayed(t.wait_for_file)(a, {gate!r}) for _ in range(4))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_segments_are_released_when_the_parent_is_interrupted_or_killed(
    shm_dir: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    gate = str(tmp_path / "gate")
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(_BLOCKING_CALL.format(src=SRC, tests=TESTS, n=BIG, gate=gate))
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, _shm.SHM_DIR_ENV: str(shm_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate + ".started") and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        assert held_in(shm_dir), "the call should hold its segment while tasks run"
        proc.send_signal(sig)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert wait_until_released(shm_dir, 5.0) == []
    assert os.listdir(shm_dir) == []


def test_a_plain_field_of_a_structured_array_with_objects_is_shared(shm_dir: Path) -> None:
    rec = np.zeros(BIG, dtype=[("x", "f8"), ("label", "O")])
    rec["x"] = np.arange(BIG)
    out = Parallel(n_jobs=2)(delayed(t.describe)(rec["x"]) for _ in range(2))
    assert out == [("memmap", True, False, float(rec["x"].sum()))] * 2
