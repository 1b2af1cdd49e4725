"""dump/load/dumps/loads: round trips, array layouts, memory maps, file objects, arguments."""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import warnings
from collections import OrderedDict
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from parajob.errors import ParajobWarning
from parajob.persistence import dump, dumps, load, loads
from parajob.persistence._format import ALIGNMENT, MAGIC

SRC = str(pathlib.Path(__file__).resolve().parents[2] / "src")


def _arrays() -> dict[str, np.ndarray]:
    base = np.arange(60, dtype=np.float64).reshape(3, 4, 5)
    return {
        "c": base,
        "f": np.asfortranarray(base),
        "strided": base[:, ::2, 1:],
        "transposed_3d": base.transpose(1, 2, 0),
        "reversed": np.arange(10)[::-1],
        "zero_d": np.array(3.5),
        "empty": np.empty((0, 4)),
        "empty_f": np.asfortranarray(np.empty((4, 0))),
        "structured": np.array(
            [(1, 2.0, b"ab"), (3, 4.0, b"cd")], dtype=[("i", "<i4"), ("x", ">f8"), ("s", "S2")]
        ),
        "big_endian": np.arange(7, dtype=">i8"),
        "big_endian_f": np.asfortranarray(np.arange(6, dtype=">f4").reshape(2, 3)),
        "bool": np.array([True, False, True]),
        "complex": np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
        "datetime": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
        "timedelta": np.array([1, 2], dtype="timedelta64[ms]"),
        "unicode": np.array(["héllo", "wörld"]),
        "void": np.array([b"\x00\x01\x02"], dtype="V3"),
        "subarray_field": np.zeros(3, dtype=[("v", "<f4", (2, 2))]),
        "int8": np.arange(-5, 5, dtype=np.int8),
        "float16": np.linspace(0, 1, 5, dtype=np.float16),
    }


def _assert_same_array(got: Any, expected: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.shape == expected.shape
    assert got.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=") or (
        got.dtype == expected.dtype
    )
    np.testing.assert_array_equal(got, expected)


def test_every_array_layout_and_dtype_round_trips_through_a_file(tmp_path: pathlib.Path) -> None:
    arrays = _arrays()
    path = tmp_path / "arrays.pj"
    assert dump(arrays, path) == [str(path)]
    loaded = load(path)
    assert loaded.keys() == arrays.keys()
    for name, expected in arrays.items():
        got = loaded[name]
        assert type(got) is np.ndarray, name
        _assert_same_array(got, expected)
        assert got.flags.writeable, name


def test_fortran_arrays_stay_fortran_and_c_arrays_stay_c(tmp_path: pathlib.Path) -> None:
    arrays = _arrays()
    loaded = loads(dumps(arrays))
    assert loaded["f"].flags.f_contiguous and not loaded["f"].flags.c_contiguous
    assert loaded["c"].flags.c_contiguous
    # Non-contiguous arrays are stored in C order.
    assert loaded["strided"].flags.c_contiguous


def test_plain_python_objects_round_trip() -> None:
    value = {
        "ints": [0, -1, 2**100],
        "floats": (1.5, float("inf")),
        "text": "naïve ☃",
        "bytes": b"\x00\xff",
        "bytearray": bytearray(b"xyz"),
        "none": None,
        "bools": {True, False},
        "frozen": frozenset({1, 2}),
        "complex": 1 + 2j,
        "ordered": OrderedDict(a=1, b=2),
        "fraction": Fraction(3, 7),
        "nested": [[[(1, "a")]]],
    }
    assert loads(dumps(value)) == value


def test_numpy_scalars_object_arrays_and_subclasses_go_through_pickle() -> None:
    value = {
        "scalar": np.float32(1.5),
        "int_scalar": np.int64(7),
        "object_array": np.array([1, "two", None], dtype=object),
        "masked": np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
        "record": np.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    }
    loaded = loads(dumps(value))
    assert loaded["scalar"] == value["scalar"] and type(loaded["scalar"]) is np.float32
    assert loaded["int_scalar"] == 7 and type(loaded["int_scalar"]) is np.int64
    assert loaded["object_array"].tolist() == [1, "two", None]
    assert isinstance(loaded["masked"], np.ma.MaskedArray)
    assert loaded["masked"].mask.tolist() == [False, True, False]
    assert type(loaded["record"]) is np.recarray


def test_an_array_referenced_twice_loads_as_one_object(tmp_path: pathlib.Path) -> None:
    arr = np.arange(10.0)
    value = {"a": arr, "b": [arr, arr]}
    for loaded in (loads(dumps(value)), _dump_load(value, tmp_path / "shared.pj")):
        assert loaded["a"] is loaded["b"][0] is loaded["b"][1]
    mapped = _dump_load(value, tmp_path / "shared_mmap.pj", mmap_mode="r")
    assert mapped["a"] is mapped["b"][0]


def _dump_load(value: Any, path: pathlib.Path, **load_args: Any) -> Any:
    dump(value, path)
    return load(path, **load_args)


def test_arrays_are_stored_raw_at_64_byte_aligned_offsets(tmp_path: pathlib.Path) -> None:
    arr = np.arange(1000, dtype=np.float64)
    path = tmp_path / "aligned.pj"
    dump({"x": "some text before", "arr": arr}, path)
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    offset = data.find(arr.tobytes())
    assert offset > 0 and offset % ALIGNMENT == 0
    # The array is out of the pickle stream: its bytes appear exactly once.
    assert data.count(arr.tobytes()) == 1


@pytest.mark.parametrize("mode", ["r", "c", "r+", "w+"])
def test_mmap_mode_returns_memmaps_onto_the_file(tmp_path: pathlib.Path, mode: str) -> None:
    arrays = _arrays()
    path = tmp_path / f"mapped_{mode.replace('+', 'plus')}.pj"
    dump(arrays, path)
    loaded = load(path, mmap_mode=mode)
    for name, expected in arrays.items():
        got = loaded[name]
        assert isinstance(got, np.memmap), name
        np.testing.assert_array_equal(got, expected)
        # The file's byte order is kept with mmap_mode and the default "auto".
        assert got.dtype == expected.dtype, name
        assert got.filename == str(path.resolve())
        assert got.mode == ("r+" if mode == "w+" else mode)
    big = loaded["c"]
    assert big.offset % ALIGNMENT == 0
    assert big.flags.writeable == (mode != "r")
    assert loaded["f"].flags.f_contiguous


def test_mmap_r_plus_writes_through_to_the_file_and_the_file_still_loads(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "writable.pj"
    dump({"a": np.zeros(100), "b": np.ones(3)}, path)
    mapped = load(path, mmap_mode="r+")
    mapped["a"][:10] = 7.0
    mapped["a"].flush()
    del mapped
    # The array checksums were marked unverifiable when the file was mapped writable, so the
    # changed bytes load instead of being reported as damage.
    again = load(path)
    assert again["a"][:10].tolist() == [7.0] * 10
    assert again["a"][10:].sum() == 0
    np.testing.assert_array_equal(again["b"], np.ones(3))


def test_mmap_c_mode_changes_stay_private(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cow.pj"
    dump(np.zeros(16), path)
    mapped = load(path, mmap_mode="c")
    mapped[:] = 5.0
    del mapped
    np.testing.assert_array_equal(load(path), np.zeros(16))


def test_mmap_r_arrays_are_read_only(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "readonly.pj"
    dump(np.zeros(4), path)
    mapped = load(path, mmap_mode="r")
    with pytest.raises(ValueError, match="read-only"):
        mapped[0] = 1.0


def test_foreign_byte_order_is_converted_in_memory_and_kept_when_mapped(
    tmp_path: pathlib.Path,
) -> None:
    other = ">" if sys.byteorder == "little" else "<"
    arr = np.arange(5, dtype=f"{other}i4")
    fields = np.zeros(2, dtype=[("a", f"{other}i4"), ("b", f"{other}f8")])
    fields["a"] = [1, 2]
    path = tmp_path / "order.pj"
    dump({"arr": arr, "fields": fields}, path)

    native = load(path)
    assert native["arr"].dtype.isnative and native["arr"].tolist() == [0, 1, 2, 3, 4]
    assert all(f[0].isnative for f in native["fields"].dtype.fields.values())
    assert native["fields"]["a"].tolist() == [1, 2]

    kept = load(path, ensure_native_byte_order=False)
    assert kept["arr"].dtype == arr.dtype and kept["arr"].tolist() == [0, 1, 2, 3, 4]

    mapped = load(path, mmap_mode="r")
    assert mapped["arr"].dtype == arr.dtype and mapped["arr"].tolist() == [0, 1, 2, 3, 4]

    assert load(path, ensure_native_byte_order=True)["arr"].dtype.isnative


def test_ensure_native_byte_order_true_with_mmap_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.pj"
    dump(1, path)
    with pytest.raises(ValueError, match="ensure_native_byte_order=True needs mmap_mode=None"):
        load(path, mmap_mode="r", ensure_native_byte_order=True)


def test_file_objects_are_written_and_read_at_their_position(tmp_path: pathlib.Path) -> None:
    arrays = _arrays()
    buffer = io.BytesIO()
    buffer.write(b"prefix")
    assert dump(arrays, buffer) is None
    dump(["second", np.arange(3)], buffer, compress="zstd")
    dump("third", buffer)
    buffer.seek(len(b"prefix"))
    first = load(buffer)
    for name, expected in arrays.items():
        _assert_same_array(first[name], expected)
    second = load(buffer)
    assert second[0] == "second" and second[1].tolist() == [0, 1, 2]


def test_consecutive_plain_containers_in_one_file_object_load_in_turn() -> None:
    buffer = io.BytesIO()
    dump({"a": np.arange(5)}, buffer)
    dump("plain", buffer)
    dump([np.ones(2), np.zeros(3)], buffer)
    buffer.seek(0)
    assert load(buffer)["a"].tolist() == [0, 1, 2, 3, 4]
    assert load(buffer) == "plain"
    last = load(buffer)
    assert last[0].tolist() == [1.0, 1.0] and last[1].tolist() == [0.0, 0.0, 0.0]


def test_real_open_files_work_in_both_directions(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "opened.pj"
    with open(path, "wb") as f:
        dump({"arr": np.arange(4.0)}, f)
    with open(path, "rb") as f:
        assert load(f)["arr"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_mmap_mode_on_a_file_object_warns_and_reads_into_memory(tmp_path: pathlib.Path) -> None:
    buffer = io.BytesIO(dumps(np.arange(3)))
    with pytest.warns(ParajobWarning, match="ignored when loading from a file object"):
        loaded = load(buffer, mmap_mode="r")
    assert type(loaded) is np.ndarray and loaded.tolist() == [0, 1, 2]


@pytest.mark.parametrize("compress", [0, "zstd", "gzip"])
def test_non_seekable_streams_load(compress: Any) -> None:
    data = dumps({"arr": np.arange(100), "text": "through a pipe"}, compress=compress)
    assert len(data) < 60_000  # fits in the pipe buffer, so no writer thread is needed
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as writer:
        writer.write(data)
    with os.fdopen(read_fd, "rb") as reader:
        assert not reader.seekable()
        loaded = load(reader)
    assert loaded["text"] == "through a pipe" and loaded["arr"].tolist() == list(range(100))


def test_a_fifo_path_is_read_as_a_stream(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = dumps({"arr": np.arange(5000), "s": "via a named pipe"})
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with open(fifo, "wb") as writer:
                writer.write(data)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        with pytest.warns(ParajobWarning, match="cannot memory-map"):
            loaded = load(fifo, mmap_mode="r")
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive() and not errors
    assert loaded["s"] == "via a named pipe" and type(loaded["arr"]) is np.ndarray


def test_a_large_array_streams_through_a_pipe_to_a_reader() -> None:
    arr = np.arange(2_000_000, dtype=np.int64)  # 16 MB: much more than the pipe holds
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(write_fd, "wb") as writer:
                dump(arr, writer)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        with os.fdopen(read_fd, "rb") as reader:
            loaded = load(reader)
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive() and not errors
    np.testing.assert_array_equal(loaded, arr)


def test_large_non_contiguous_arrays_are_written_in_chunks_correctly(
    tmp_path: pathlib.Path,
) -> None:
    # 40 MB base, strided view of 20 MB: larger than the write chunk, so several pieces.
    base = np.arange(5_000_000, dtype=np.float64).reshape(1000, 5000)
    views = {
        "columns": base[:, ::2],
        "transposed": base.T[::2],
        "tall": base.reshape(5_000_000, 1)[::2],
        "deep": base.reshape(10, 100, 5000)[:, :, ::2],
    }
    path = tmp_path / "chunks.pj"
    dump(views, path)
    loaded = load(path)
    for name, view in views.items():
        np.testing.assert_array_equal(loaded[name], view, err_msg=name)


def test_dumps_and_loads_match_the_file_format(tmp_path: pathlib.Path) -> None:
    value = {"arr": np.arange(10), "x": 1}
    path = tmp_path / "same.pj"
    dump(value, path)
    assert path.read_bytes() == dumps(value)
    assert loads(bytearray(dumps(value)))["x"] == 1
    assert loads(memoryview(dumps(value)))["arr"].tolist() == list(range(10))


def test_loads_reads_compressed_bytes() -> None:
    for compress in ("zlib", "gzip", "bz2", "lzma", "xz", "lz4", "zstd", True, 5):
        assert loads(dumps([np.arange(3), "x"], compress=compress))[1] == "x"


def test_loads_refuses_text_and_non_buffers() -> None:
    with pytest.raises(TypeError, match="loads needs bytes, got str"):
        loads("not bytes")
    with pytest.raises(TypeError, match="loads needs a bytes-like object, got int"):
        loads(12)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5, -1, None])
def test_every_pickle_protocol_works_and_arrays_stay_out_of_band(protocol: Any) -> None:
    arr = np.arange(300, dtype=np.int32)
    data = dumps({"arr": arr, "s": "text", "f": 1.5}, protocol=protocol)
    assert data.count(arr.tobytes()) == 1
    loaded = loads(data)
    assert loaded["arr"].tolist() == arr.tolist() and loaded["s"] == "text"


@pytest.mark.parametrize("protocol", [6, "5", 1.0, True])
def test_invalid_protocols_are_refused_with_the_value(protocol: Any) -> None:
    with pytest.raises(ValueError, match="protocol"):
        dumps(1, protocol=protocol)


def test_dump_accepts_pathlike_and_str_and_returns_the_path(tmp_path: pathlib.Path) -> None:
    as_path = tmp_path / "p.pj"
    as_str = str(tmp_path / "s.pj")
    assert dump(1, as_path) == [str(as_path)]
    assert dump(2, as_str) == [as_str]
    assert load(as_str) == 2 and load(as_path) == 1


def test_dump_with_swapped_arguments_explains_the_order(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"note the order is dump\(value, filename\)"):
        dump(str(tmp_path / "x.pj"), 42)


def test_load_of_an_invalid_filename_type_names_it() -> None:
    with pytest.raises(ValueError, match="filename must be a path"):
        load(3.5)


@pytest.mark.parametrize("mmap_mode", ["rw", "x", 1, True])
def test_invalid_mmap_mode_is_refused(tmp_path: pathlib.Path, mmap_mode: Any) -> None:
    path = tmp_path / "x.pj"
    dump(1, path)
    with pytest.raises(ValueError, match="mmap_mode must be one of"):
        load(path, mmap_mode=mmap_mode)


@pytest.mark.parametrize("value", ["yes", 2, None])
def test_invalid_ensure_native_byte_order_is_refused(tmp_path: pathlib.Path, value: Any) -> None:
    path = tmp_path / "x.pj"
    dump(1, path)
    with pytest.raises(ValueError, match="ensure_native_byte_order must be"):
        load(path, ensure_native_byte_order=value)


def test_allow_pickle_must_be_a_bool(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.pj"
    dump(1, path)
    with pytest.raises(ValueError, match="allow_pickle must be True or False"):
        load(path, allow_pickle="no")


def test_a_missing_file_raises_file_not_found(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.pj")


# -- atomic writes ------------------------------------------------------------------------------


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("this object refuses to be pickled")


class _Interrupting:
    def __reduce__(self) -> Any:
        raise KeyboardInterrupt


def _leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".parajob-tmp-" in p.name)


@pytest.mark.parametrize(
    ("bad", "error"), [(_Unpicklable(), pickle.PicklingError), (_Interrupting(), KeyboardInterrupt)]
)
@pytest.mark.parametrize("compress", [0, "zstd"])
def test_a_failed_dump_leaves_the_old_file_and_no_temporary_file(
    tmp_path: pathlib.Path, bad: Any, error: type[BaseException], compress: Any
) -> None:
    path = tmp_path / "model.pj"
    dump({"version": 1}, path)
    with pytest.raises(error):
        dump({"arr": np.arange(10**5), "bad": bad}, path, compress=compress)
    assert load(path) == {"version": 1}
    assert _leftovers(tmp_path) == []


def test_a_failed_first_dump_leaves_no_file_at_all(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "new.pj"
    with pytest.raises(pickle.PicklingError):
        dump(_Unpicklable(), path)
    assert list(tmp_path.iterdir()) == []


def test_a_file_size_limit_mid_write_keeps_the_old_file(tmp_path: pathlib.Path) -> None:
    # A real failing sink: the kernel refuses to grow any file past RLIMIT_FSIZE (EFBIG),
    # as a full disk refuses with ENOSPC. Run in a child so the limit does not leak.
    path = tmp_path / "limited.pj"
    dump({"version": 1}, path)
    code = textwrap.dedent(
        f"""
        import errno, resource, signal, sys
        import numpy as np
        from parajob.persistence import dump
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            dump({{"arr": np.ones(1 << 20)}}, {str(path)!r})
        except OSError as exc:
            print("errno", exc.errno == errno.EFBIG)
        else:
            print("no error")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "errno True", out.stderr
    assert load(path) == {"version": 1}
    assert _leftovers(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path: pathlib.Path) -> Any:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        timeout=30,
    )
    if result.returncode != 0:
        pytest.skip(f"this system does not let us mount a tmpfs: {result.stderr!r}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30, check=True)


def test_a_full_disk_mid_write_keeps_the_old_file(tiny_tmpfs: pathlib.Path) -> None:
    path = tiny_tmpfs / "model.pj"
    dump({"version": 1}, path)
    with pytest.raises(OSError) as caught:
        dump({"arr": np.ones(1 << 18)}, path)  # 2 MB into a 1 MB filesystem
    assert caught.value.errno == 28  # ENOSPC
    assert load(path) == {"version": 1}
    assert _leftovers(tiny_tmpfs) == []


class _FullDisk(io.RawIOBase):
    """A real sink that accepts ``capacity`` bytes and then fails like a full disk."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        room = self.capacity - len(self.data)
        if view.nbytes > room:
            self.data += view[:room]
            raise OSError(28, "No space left on device")
        self.data += view
        return view.nbytes


@pytest.mark.parametrize("compress", [0, "zstd", "zlib", "lz4"])
def test_a_full_file_object_raises_the_os_error(compress: Any) -> None:
    sink = _FullDisk(4096)
    with pytest.raises(OSError, match="No space left"):
        dump({"arr": np.random.default_rng(0).random(10_000)}, sink, compress=compress)


@pytest.mark.parametrize("exchange", [True, False])
def test_replacing_a_file_is_atomic_for_open_readers_and_leaves_one_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    from parajob.persistence import _atomic_write

    if not exchange:
        monkeypatch.setattr(_atomic_write, "_renameat2", False)  # the portable os.replace path
    path = tmp_path / "model.pj"
    # Over 1 MiB, so the old version's cached pages are released before the new one is written.
    old = np.arange(300_000)
    dump({"version": 1, "arr": old}, path)
    with open(path, "rb") as old_reader:
        dump({"version": 2, "arr": np.ones(10)}, path)
        # A reader that opened the old file keeps reading the old, complete file.
        loaded_old = load(old_reader)
    assert loaded_old["version"] == 1
    np.testing.assert_array_equal(loaded_old["arr"], old)
    assert load(path)["version"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pj"]


def test_the_replacement_keeps_the_old_files_permissions(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "perm.pj"
    dump(1, path)
    os.chmod(path, 0o600)
    dump(2, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load(path) == 2


def test_dumping_through_a_symlink_replaces_its_target(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "real.pj"
    link = tmp_path / "link.pj"
    dump(1, target)
    link.symlink_to(target)
    dump(2, link)
    assert link.is_symlink() and load(target) == 2


def test_dumping_to_dev_null_writes_through() -> None:
    assert dump(np.arange(10), os.devnull) == [os.devnull]
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)


def test_importing_parajob_and_dumping_plain_data_never_imports_numpy(
    tmp_path: pathlib.Path,
) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import parajob
        from parajob.persistence import dump, load, dumps, loads
        assert loads(dumps([1, "a"], compress="zlib")) == [1, "a"]
        dump({{"k": (1, 2.5)}}, {str(tmp_path / "plain.pj")!r})
        assert load({str(tmp_path / "plain.pj")!r}) == {{"k": (1, 2.5)}}
        print("numpy" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "False", out.stderr


def test_loading_arrays_without_numpy_names_the_extra(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "arrays.pj"
    dump(np.arange(3), path)
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["numpy"] = None  # as if numpy were not installed
        from parajob.errors import MissingDependencyError
        from parajob.persistence import load
        try:
            load({str(path)!r})
        except MissingDependencyError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "pip install 'parajob[numpy]'" in out.stdout, out.stderr


def test_a_real_sigint_during_a_dump_cleans_up(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "interrupted.pj"
    dump("old", path)

    class _SignalOnReduce:
        def __reduce__(self) -> Any:
            signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt
            return (str, ("never stored",))

    with pytest.raises(KeyboardInterrupt):
        dump([np.arange(1000), _SignalOnReduce()], path)
    assert load(path) == "old"
    assert _leftovers(tmp_path) == []


def test_warnings_are_not_raised_for_ordinary_use(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "quiet.pj"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dump({"a": np.arange(3), "s": "x"}, path)
        load(path)
        load(path, mmap_mode="r")
