"""Migration: files written by joblib 1.6 load through parajob.load, with or without joblib.

The golden files (../shared/data/joblib-1.6) were written by joblib itself. The other files
come from ``joblib_writer.joblib_bytes``, which is shown there to write joblib's bytes.
"""

from __future__ import annotations

import bz2
import io
import os
import pathlib
import subprocess
import sys
import textwrap
import warnings
import zlib
from typing import Any

import joblib_writer as writer
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parajob
from parajob.errors import (
    CorruptFileError,
    InvalidParameterError,
    ParajobWarning,
    TruncatedFileError,
    UnsafeLoadError,
)
from parajob.persistence._joblib_format import load_joblib_stream

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


joblib_bytes = writer.joblib_bytes
GOLDEN: pathlib.Path = writer.GOLDEN
MANIFEST: dict[str, dict[str, Any]] = writer.golden_manifest()
OBJECTS: dict[str, Any] = writer.golden_objects()
UNCOMPRESSED = sorted(name for name, spec in MANIFEST.items() if spec["compress"] == 0)
COMPRESSED = sorted(name for name, spec in MANIFEST.items() if spec["compress"] != 0)
# A golden file holds only data that allow_pickle=False may rebuild unless it has object arrays.
UNSAFE_OBJECTS = {"object_array"}


def assert_same(got: Any, want: Any, *, mapped: bool = False, where: str = "value") -> None:
    """Check ``got`` against the expected object, arrays as the golden README states.

    Arrays: same dtype up to byte order, shape, values (NaN equal to NaN) and memory order.
    Read into memory they are writable ndarrays in native order; mapped (``mapped=True``),
    those of non-object dtype are read-only memmaps that keep the file's byte order.
    """
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), f"{where}: {type(got).__name__}, not an array"
        assert got.shape == want.shape, where
        assert got.dtype.newbyteorder("=") == want.dtype.newbyteorder("="), where
        # joblib stores an array in Fortran order when it is only F-contiguous, else in C order.
        want_f = want.flags.f_contiguous
        want_c = want.flags.c_contiguous or not want_f
        assert (got.flags.c_contiguous, got.flags.f_contiguous) == (want_c, want_f), where
        if mapped and not want.dtype.hasobject:
            assert type(got) is np.memmap, where
            assert not got.flags.writeable, where
            assert got.dtype == want.dtype, where
        else:
            assert type(got) is np.ndarray, where
            assert got.flags.writeable, where
            assert got.dtype.isnative or _mixed_order_record(want.dtype), where
        if want.dtype.hasobject:
            assert got.tolist() == want.tolist(), where
        else:
            np.testing.assert_array_equal(got, want, err_msg=where)
        return
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_same(got[key], want[key], mapped=mapped, where=f"{where}[{key!r}]")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, mapped=mapped, where=f"{where}[{i}]")
    else:
        assert got == want, where


def _mixed_order_record(dtype: np.dtype) -> bool:
    """A record with fields in both byte orders, which joblib's rule leaves as it is."""
    orders = {field[0].byteorder for field in (dtype.fields or {}).values()} - {"|"}
    return len(orders) > 1


def check_golden_file(name: str, **load_args: Any) -> None:
    """Load golden file ``name`` through parajob.load and compare it with its object."""
    got = parajob.load(GOLDEN / name, **load_args)
    assert_same(got, OBJECTS[MANIFEST[name]["object"]], mapped="mmap_mode" in load_args)


def _decompressed(name: str) -> bytes:
    data = (GOLDEN / name).read_bytes()
    method = MANIFEST[name]["compress"]
    method = "zlib" if method == 3 else method[0]
    if method == "zlib":
        return zlib.decompress(data)
    if method == "gzip":
        import gzip

        return gzip.decompress(data)
    if method == "bz2":
        return bz2.decompress(data)
    if method in ("lzma", "xz"):
        import lzma

        return lzma.decompress(data)
    import lz4.frame

    return bytes(lz4.frame.decompress(data))


class _Pipe(io.RawIOBase):
    """A readable stream that cannot seek or tell, like a decompressor's output."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


def _stream_load(data: bytes, **kwargs: Any) -> Any:
    options = {"mmap_mode": None, "ensure_native_byte_order": True, "allow_pickle": True}
    options.update(kwargs)
    return load_joblib_stream(io.BufferedReader(_Pipe(data)), filename="", **options)


# -- the golden files ---------------------------------------------------------------------------


def test_golden_folder_lists_every_file_it_holds() -> None:
    on_disk = {p.name for p in GOLDEN.glob("*.pkl")}
    assert on_disk == set(MANIFEST)
    assert {spec["object"] for spec in MANIFEST.values()} == set(OBJECTS)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_file_loads_to_its_expected_object(name: str) -> None:
    check_golden_file(name)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_file_loads_from_an_open_file_object(name: str) -> None:
    with open(GOLDEN / name, "rb") as f:
        got = parajob.load(f)
    assert_same(got, OBJECTS[MANIFEST[name]["object"]])
    got = parajob.load(io.BytesIO((GOLDEN / name).read_bytes()))
    assert_same(got, OBJECTS[MANIFEST[name]["object"]])


@pytest.mark.parametrize("name", UNCOMPRESSED)
def test_uncompressed_golden_file_maps_its_arrays_read_only(name: str) -> None:
    check_golden_file(name, mmap_mode="r")


def test_mapped_golden_arrays_are_views_of_the_file_at_their_offset() -> None:
    path = GOLDEN / "mixed.pkl"
    got = parajob.load(path, mmap_mode="r")
    big = got["big"]
    assert os.path.samefile(big.filename, path)
    raw = path.read_bytes()
    assert raw[big.offset : big.offset + big.nbytes] == big.tobytes()
    # joblib >= 1.2 aligns array data on 16 bytes; the maps land exactly there.
    assert big.offset % 16 == 0


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_golden_file_with_mmap_mode_warns_and_loads_into_memory(name: str) -> None:
    with pytest.warns(ParajobWarning, match="compressed"):
        got = parajob.load(GOLDEN / name, mmap_mode="r")
    assert_same(got, OBJECTS[MANIFEST[name]["object"]])


def test_big_endian_golden_array_keeps_file_order_only_when_asked() -> None:
    path = GOLDEN / "bigendian.pkl"
    assert parajob.load(path).dtype == np.dtype("=i8")
    kept = parajob.load(path, ensure_native_byte_order=False)
    assert kept.dtype == np.dtype(">i8")
    np.testing.assert_array_equal(kept, np.arange(10))
    assert parajob.load(path, mmap_mode="r").dtype == np.dtype(">i8")


def test_golden_files_load_without_joblib_installed() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["joblib"] = None  # any "import joblib" now raises ImportError
        import importlib.util
        spec = importlib.util.spec_from_file_location("check", {str(__file__)!r})
        check = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(check)
        for name in check.MANIFEST:
            check.check_golden_file(name)
            check.check_golden_file(name, allow_pickle=True, ensure_native_byte_order="auto")
        for name in check.UNCOMPRESSED:
            check.check_golden_file(name, mmap_mode="r")
        assert sys.modules["joblib"] is None
        print("loaded", len(check.MANIFEST))
        """
    )
    # src for parajob, this folder for the test-side joblib_writer the module imports.
    path = [str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["loaded", str(len(MANIFEST))]


# -- safe loading of the golden files -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", sorted(n for n in MANIFEST if MANIFEST[n]["object"] not in UNSAFE_OBJECTS)
)
def test_safe_load_rebuilds_golden_files_of_plain_data_and_arrays(name: str) -> None:
    check_golden_file(name, allow_pickle=False)
    if name in UNCOMPRESSED:
        check_golden_file(name, allow_pickle=False, mmap_mode="r")


@pytest.mark.parametrize(
    "name", sorted(n for n in MANIFEST if MANIFEST[n]["object"] in UNSAFE_OBJECTS)
)
def test_safe_load_refuses_golden_object_arrays_naming_file_and_dtype(name: str) -> None:
    with pytest.raises(UnsafeLoadError, match=r"object") as info:
        parajob.load(GOLDEN / name, allow_pickle=False)
    assert name in str(info.value)


# -- truncated golden files ---------------------------------------------------------------------


def _cut_offsets(size: int, array_end: int) -> list[int]:
    """Every offset of the pickle part, and a spread through the array data and its end."""
    offsets = set(range(1, min(size, 700)))
    offsets.update(range(700, size, max(1, size // 40)))
    offsets.update(range(max(1, array_end - 8), size))
    return sorted(o for o in offsets if 0 < o < size)


@pytest.mark.parametrize("name", UNCOMPRESSED)
def test_truncated_golden_file_raises_truncated_file_error(
    name: str, tmp_path: pathlib.Path
) -> None:
    data = (GOLDEN / name).read_bytes()
    path = tmp_path / name
    for cut in _cut_offsets(len(data), len(data) - 1):
        path.write_bytes(data[:cut])
        for mmap_mode in (None, "r"):
            with pytest.raises(TruncatedFileError, match="truncated") as info:
                parajob.load(path, mmap_mode=mmap_mode)
            assert name in str(info.value), (cut, mmap_mode)


@pytest.mark.parametrize("name", COMPRESSED)
def test_truncated_decompressed_golden_stream_raises_truncated_file_error(name: str) -> None:
    data = _decompressed(name)
    for cut in _cut_offsets(len(data), len(data) - 1)[::3]:
        with pytest.raises(TruncatedFileError, match="ends early"):
            _stream_load(data[:cut])


@pytest.mark.parametrize("name", COMPRESSED)
def test_truncated_compressed_golden_file_raises_corrupt_file_error(
    name: str, tmp_path: pathlib.Path
) -> None:
    data = (GOLDEN / name).read_bytes()
    path = tmp_path / name
    for cut in sorted({1, 2, 10, len(data) // 3, len(data) // 2, len(data) - 1}):
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError):
            parajob.load(path)


# -- more joblib files: layouts, dtypes, protocols ----------------------------------------------


def _arrays() -> dict[str, np.ndarray]:
    base = np.arange(60, dtype=np.float64).reshape(3, 4, 5)
    return {
        "c": base,
        "f": np.asfortranarray(base),
        "strided": base[:, ::2, 1:],
        "transposed": base.transpose(2, 0, 1),
        "zero_d": np.array(-1.5),
        "empty": np.empty((4, 0)),
        "empty_f": np.asfortranarray(np.empty((0, 4))),
        "big_endian_f": np.asfortranarray(np.arange(6, dtype=">f4").reshape(2, 3)),
        "structured_mixed_order": np.array(
            [(1, 2.0, b"ab")], dtype=[("i", "<i4"), ("x", ">f8"), ("s", "S2")]
        ),
        "bool": np.array([True, False, True]),
        "complex": np.array([1 + 2j, np.nan], dtype=">c16"),
        "datetime": np.array(["2024-01-01", "NaT"], dtype="datetime64[D]"),
        "timedelta": np.array([1, 2], dtype=">m8[ms]"),
        "unicode": np.array(["héllo", "wörld"], dtype=">U5"),
        "void": np.array([b"\x00\x01\x02"], dtype="V3"),
        "subarray_field": np.zeros(3, dtype=[("v", "<f4", (2, 2))]),
        "float16": np.linspace(0, 1, 5, dtype=np.float16),
        "nan": np.array([np.nan, np.inf, -0.0]),
    }


@pytest.mark.parametrize("alignment", [16, None], ids=["aligned", "joblib<=1.1"])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_array_layout_loads_for_every_protocol(
    protocol: int, alignment: int | None, tmp_path: pathlib.Path
) -> None:
    arrays = _arrays()
    value = {"arrays": arrays, "nested": [(arrays["c"], {"deep": arrays["f"]})], "n": 3}
    path = tmp_path / "value.pkl"
    path.write_bytes(joblib_bytes(value, protocol=protocol, alignment=alignment))
    assert_same(parajob.load(path), value)
    with warnings.catch_warnings():
        # Without alignment padding, some maps start at offsets their dtype would not choose.
        warnings.simplefilter("ignore", ParajobWarning)
        assert_same(parajob.load(path, mmap_mode="r"), value, mapped=True)


_DTYPES = ["<f8", ">f8", "<i2", ">u4", "|b1", "<c8", "|S3", ">U2", "<M8[s]", "|V5"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(_DTYPES),
    shape=st.lists(st.integers(0, 4), max_size=3).map(tuple),
    layout=st.sampled_from(["C", "F", "reversed"]),
    protocol=st.integers(2, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_arrays_round_trip_through_joblib_bytes(
    dtype: str, shape: tuple[int, ...], layout: str, protocol: int, seed: int
) -> None:
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.frombuffer(np.random.default_rng(seed).bytes(size), dtype=np.uint8)
    if np.dtype(dtype).kind in "bUSM":
        raw = raw & 1  # valid bools, code points and dates
    array = raw.view(dtype).reshape(shape)
    if layout == "F":
        array = np.asfortranarray(array)
    elif layout == "reversed" and array.ndim:
        array = array[::-1]
    got = parajob.load(io.BytesIO(joblib_bytes(array, protocol=protocol)))
    assert got.shape == array.shape
    assert got.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, array)


def test_arrays_read_into_memory_own_their_buffer(tmp_path: pathlib.Path) -> None:
    # Data goes straight into the array's memory (readinto), never through a bytes object.
    path = tmp_path / "value.pkl"
    path.write_bytes(joblib_bytes({"le": np.arange(1000.0), "be": np.arange(10, dtype=">i4")}))
    for got in parajob.load(path).values():
        root = got
        while isinstance(root.base, np.ndarray):
            root = root.base
        assert root.base is None and root.flags.owndata


def test_structured_array_is_made_native_only_when_every_field_is_foreign() -> None:
    all_big = np.array([(1, 2.0)], dtype=[("i", ">i4"), ("x", ">f8")])
    mixed = np.array([(1, 2.0)], dtype=[("i", "<i4"), ("x", ">f8")])
    got = parajob.load(io.BytesIO(joblib_bytes([all_big, mixed])))
    assert got[0].dtype == np.dtype([("i", "=i4"), ("x", "=f8")])
    assert got[1].dtype == mixed.dtype  # joblib's rule: a mixed record is left as it is
    np.testing.assert_array_equal(got[0], all_big)
    np.testing.assert_array_equal(got[1], mixed)


def test_copy_on_write_map_changes_memory_not_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "value.pkl"
    path.write_bytes(joblib_bytes(np.arange(8.0)))
    before = path.read_bytes()
    got = parajob.load(path, mmap_mode="c")
    assert type(got) is np.memmap and got.flags.writeable
    got[:] = -1
    got.flush()
    del got
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", ["r+", "w+"])
def test_read_write_map_writes_through_and_never_truncates(
    mode: str, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "value.pkl"
    path.write_bytes(joblib_bytes({"a": np.arange(8.0), "b": np.arange(3)}))
    got = parajob.load(path, mmap_mode=mode)
    np.testing.assert_array_equal(got["a"], np.arange(8.0))  # "w+" keeps the data
    assert type(got["a"][2:]) is np.memmap  # slices of a map are maps, as with np.memmap
    got["a"][0] = 42.0
    got["a"].flush()
    del got
    again = parajob.load(path)
    assert again["a"][0] == 42.0
    np.testing.assert_array_equal(again["b"], np.arange(3))


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("allow_pickle", [True, False])
def test_matrix_and_memmap_subclasses_come_back_as_written(
    allow_pickle: bool, tmp_path: pathlib.Path
) -> None:
    source = np.memmap(tmp_path / "source.bin", dtype="<f4", mode="w+", shape=(4,))
    source[:] = [1, 2, 3, 4]
    value = {"matrix": np.matrix([[1, 2], [3, 4]]), "memmap": source}
    path = tmp_path / "value.pkl"
    path.write_bytes(joblib_bytes(value))
    del source
    got = parajob.load(path, allow_pickle=allow_pickle)
    assert type(got["matrix"]) is np.matrix
    np.testing.assert_array_equal(got["matrix"], [[1, 2], [3, 4]])
    assert type(got["memmap"]) is np.ndarray  # as joblib: a map only when asked for one
    mapped = parajob.load(path, mmap_mode="r", allow_pickle=allow_pickle)
    assert type(mapped["memmap"]) is np.memmap
    assert os.path.samefile(mapped["memmap"].filename, path)
    np.testing.assert_array_equal(mapped["memmap"], [1, 2, 3, 4])


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_object_arrays_and_what_follows_them_load(protocol: int) -> None:
    # The nested pickle of an object array may span frames and hold large bytes outside
    # them; the reader must stop exactly at its end, where the next array's header follows.
    inner = np.arange(70_000, dtype=">i4")
    blob = b"x" * 300_000
    value = {
        "objects": np.array([inner, blob, None, {"k": list(range(50_000))}], dtype=object),
        "after": np.arange(5.0),
        "blob": blob,
    }
    got = parajob.load(io.BytesIO(joblib_bytes(value, protocol=protocol)))
    assert got["objects"].dtype == object and got["objects"].shape == (4,)
    np.testing.assert_array_equal(got["objects"][0], inner)
    assert got["objects"][1] == blob and got["objects"][2] is None
    assert got["objects"][3] == {"k": list(range(50_000))}
    np.testing.assert_array_equal(got["after"], np.arange(5.0))
    assert got["blob"] == blob


def test_unaligned_map_of_an_old_file_warns(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "old.pkl"
    path.write_bytes(joblib_bytes({"a": np.arange(5.0), "b": np.arange(3.0)}, alignment=None))
    with pytest.warns(ParajobWarning, match="not aligned"):
        got = parajob.load(path, mmap_mode="r")
    np.testing.assert_array_equal(got["b"], np.arange(3.0))


# -- the reader's own contract, beyond what parajob.load passes ---------------------------------


def test_ensure_native_true_reads_foreign_arrays_into_memory_even_when_mapping(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "value.pkl"
    path.write_bytes(joblib_bytes({"be": np.arange(4, dtype=">i8"), "le": np.arange(4.0)}))
    with open(path, "rb") as f:
        got = load_joblib_stream(
            f, filename=str(path), mmap_mode="r", ensure_native_byte_order=True, allow_pickle=True
        )
    assert type(got["be"]) is np.ndarray and got["be"].dtype == np.dtype("=i8")
    assert type(got["le"]) is np.memmap
    np.testing.assert_array_equal(got["be"], np.arange(4))


def test_mapping_a_stream_without_a_name_warns_and_reads_into_memory() -> None:
    data = joblib_bytes(np.arange(3.0))
    with pytest.warns(ParajobWarning, match="without a name"):
        got = load_joblib_stream(
            io.BytesIO(data),
            filename="",
            mmap_mode="r",
            ensure_native_byte_order=False,
            allow_pickle=True,
        )
    assert type(got) is np.ndarray
    np.testing.assert_array_equal(got, np.arange(3.0))


def test_unknown_mmap_mode_is_refused_before_reading() -> None:
    with pytest.raises(InvalidParameterError, match="mmap_mode must be one of"):
        load_joblib_stream(
            io.BytesIO(joblib_bytes(1)),
            filename="x.pkl",
            mmap_mode="rw",
            ensure_native_byte_order=True,
            allow_pickle=True,
        )


def test_stream_of_unknown_length_loads_every_golden_file() -> None:
    for name in MANIFEST:
        data = (GOLDEN / name).read_bytes() if name in UNCOMPRESSED else _decompressed(name)
        assert_same(_stream_load(data), OBJECTS[MANIFEST[name]["object"]], where=name)


def test_peak_memory_of_loading_a_large_array_stays_near_its_size(
    tmp_path: pathlib.Path,
) -> None:
    # Measured in a fresh interpreter, whose peak RSS is not inflated by earlier tests.
    path = tmp_path / "big.pkl"
    size = 128 * 2**20
    with open(path, "wb") as f:
        writer.dump_joblib(np.arange(size // 8, dtype=np.float64), f)
    code = textwrap.dedent(
        f"""
        import resource, sys, psutil, numpy, parajob
        import parajob.persistence._joblib_format  # imports are not what this measures

        def peak():
            # Linux carries the parent's peak into a child's ru_maxrss across exec; the
            # high-water mark of the process's own memory is VmHWM.
            if sys.platform.startswith("linux"):
                with open("/proc/self/status") as f:
                    line = next(l for l in f if l.startswith("VmHWM:"))
                return int(line.split()[1]) * 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        before = psutil.Process().memory_info().rss
        got = parajob.load({str(path)!r})
        assert got.nbytes == {size}, got.shape
        print((peak() - before) / got.nbytes)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 1.2
