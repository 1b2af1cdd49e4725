"""numpy arrays: hashed from their buffers, without copies; what counts and what does not."""

from __future__ import annotations

import pathlib
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from parajob import _hashing_algorithms
from parajob.hashing import hash as pj_hash


class Tagged(np.ndarray):  # type: ignore[type-arg]
    """An ndarray subclass without state of its own."""


FIFTY_MB = 50 * 2**20


@pytest.fixture
def traced() -> Iterator[Callable[[Callable[[], object]], int]]:
    """Return a function that runs a callable and reports the peak bytes it allocated."""

    def peak_of(fn: Callable[[], object]) -> int:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        fn()
        _, peak = tracemalloc.get_traced_memory()
        return peak - before

    tracemalloc.start()
    try:
        yield peak_of
    finally:
        tracemalloc.stop()


def test_fifty_mb_c_and_f_arrays_hash_without_a_copy(
    traced: Callable[[Callable[[], object]], int],
) -> None:
    c_array = np.ones((FIFTY_MB // 8 // 1024, 1024))
    f_array = np.asfortranarray(c_array)
    assert f_array.flags.f_contiguous and not f_array.flags.c_contiguous
    # The instrument sees numpy's buffers: a copy of the array shows up in full.
    assert traced(c_array.copy) >= FIFTY_MB
    for array in (c_array, f_array):
        for name in ("xxh3_128", "md5"):
            assert traced(lambda a=array, n=name: pj_hash(a, hash_name=n)) < 2**20


def test_non_contiguous_arrays_hash_through_bounded_chunks(
    traced: Callable[[Callable[[], object]], int],
) -> None:
    strided = np.ones((FIFTY_MB // 8 // 512, 1024))[:, ::2]
    assert not strided.flags.c_contiguous and not strided.flags.f_contiguous
    assert traced(lambda: pj_hash(strided)) < 2 * _hashing_algorithms._CHUNK_BYTES + 2**20


def test_non_contiguous_array_hashes_like_its_c_ordered_copy() -> None:
    base = np.arange(2 * 3 * 4 * 5, dtype=np.int32).reshape(2, 3, 4, 5)
    for view in (base[:, ::2], base[..., ::-1], base.transpose(1, 0, 2, 3), base[::2, :, 1:3]):
        assert not view.flags.c_contiguous
        assert pj_hash(view) == pj_hash(np.ascontiguousarray(view))


def test_chunking_of_rows_larger_than_a_chunk_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # Shrink the chunk so both code paths (row by row, and many rows per chunk) run on a
    # small array; the digest must not depend on how the bytes were cut.
    base = np.arange(6 * 7 * 8, dtype=np.float64).reshape(6, 7, 8)[:, ::2, ::3]
    expected = pj_hash(np.ascontiguousarray(base))
    for chunk in (8, 24, 100, 10_000):
        monkeypatch.setattr(_hashing_algorithms, "_CHUNK_BYTES", chunk)
        assert pj_hash(base) == expected


def test_memory_order_counts_for_arrays_that_are_not_both_c_and_f() -> None:
    c_array = np.arange(12.0).reshape(3, 4)
    f_array = np.asfortranarray(c_array)
    assert pj_hash(c_array) != pj_hash(f_array)
    assert pj_hash(f_array) == pj_hash(np.asfortranarray(c_array.copy()))
    # 1-d arrays are both C- and F-contiguous: nothing to tell apart.
    assert pj_hash(np.arange(5.0)) == pj_hash(np.asfortranarray(np.arange(5.0)))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (np.arange(4, dtype="<f8"), np.arange(4, dtype="<f4")),
        (np.arange(4, dtype="<f8"), np.arange(4, dtype=">f8")),
        (np.arange(4, dtype="<i8"), np.arange(4, dtype="<f8")),
        (np.arange(6.0), np.arange(6.0).reshape(2, 3)),
        (np.arange(6.0).reshape(2, 3), np.arange(6.0).reshape(3, 2)),
        (np.array(["a", "b"]), np.array([b"a", b"b"])),
        (np.zeros(2, "datetime64[s]"), np.zeros(2, "datetime64[ms]")),
        (np.zeros(3, dtype=[("a", "<i4")]), np.zeros(3, dtype=[("b", "<i4")])),
        (np.array(1.0), np.array([1.0])),
        (np.array([0.0]), np.array([-0.0])),
        (np.arange(3.0), np.arange(3.0).view(Tagged)),
        (np.arange(3.0), [0.0, 1.0, 2.0]),
        (np.float64(1.0), 1.0),
        (np.float64(1.0), np.array(1.0)),
    ],
)
def test_dtype_shape_class_and_content_count(left: Any, right: Any) -> None:
    assert pj_hash(left) != pj_hash(right)


def test_equal_arrays_hash_equal_whatever_their_identity() -> None:
    a = np.random.default_rng(0).random((100, 7))
    assert pj_hash(a) == pj_hash(a.copy())
    assert pj_hash([a, a]) == pj_hash([a, a.copy()])
    assert pj_hash({"w": a, "b": a[0]}) == pj_hash({"b": a[0].copy(), "w": a.copy()})


def test_zero_d_empty_structured_datetime_and_readonly_arrays_hash() -> None:
    structured = np.zeros(2, dtype=[("id", "<i4"), ("pos", "<f8", (2,)), ("name", "U3")])
    readonly = np.arange(5)
    readonly.setflags(write=False)
    samples = [
        np.array(2.5),
        np.empty((0, 3)),
        np.empty((3, 0), dtype=np.int8),
        structured,
        np.array(["2024-01-01"], dtype="datetime64[D]"),
        np.array([1, 2], dtype="timedelta64[s]"),
        readonly,
        np.zeros(3, dtype=np.complex128),
        np.zeros(3, dtype="V4"),
    ]
    digests = [pj_hash(sample) for sample in samples]
    assert digests == [pj_hash(sample.copy()) for sample in samples]
    assert len(set(digests)) == len(samples)
    assert pj_hash(np.empty((0, 3))) != pj_hash(np.empty((3, 0)))


def test_object_arrays_hash_their_elements_by_value() -> None:
    left = np.array([{"a": 1, "b": 2}, "s", None, 1.5], dtype=object)
    right = np.array([{"b": 2, "a": 1}, "s", None, 1.5], dtype=object)
    assert pj_hash(left) == pj_hash(right)
    right[3] = 2.5
    assert pj_hash(left) != pj_hash(right)


@pytest.mark.skipif(
    not hasattr(getattr(np, "dtypes", None), "StringDType"), reason="StringDType needs numpy 2"
)
def test_variable_width_string_arrays_hash_by_their_strings() -> None:
    string_dtype = np.dtypes.StringDType()
    left = np.array(["a", "bb", "ccc"], dtype=string_dtype)
    right = np.array(["a", "bb", "ccc"], dtype=string_dtype)
    assert pj_hash(left) == pj_hash(right)  # buffers hold pointers: never hashed raw
    right[0] = "z"
    assert pj_hash(left) != pj_hash(right)


def test_masked_arrays_include_their_mask() -> None:
    data = [1.0, 2.0, 3.0]
    assert pj_hash(np.ma.array(data, mask=[0, 1, 0])) == pj_hash(np.ma.array(data, mask=[0, 1, 0]))
    assert pj_hash(np.ma.array(data, mask=[0, 1, 0])) != pj_hash(np.ma.array(data, mask=[1, 0, 0]))


def test_memmap_differs_from_ndarray_unless_coerced(tmp_path: pathlib.Path) -> None:
    array = np.arange(1000, dtype=np.float32).reshape(10, 100)
    path = tmp_path / "data.bin"
    array.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(10, 100))
    assert pj_hash(mapped) != pj_hash(array)
    assert pj_hash(mapped, coerce_mmap=True) == pj_hash(array, coerce_mmap=True)
    assert pj_hash(mapped, coerce_mmap=True) == pj_hash(array)
    # Views of a memmap are memmaps too; coercion applies to them as well.
    assert isinstance(mapped[2:5], np.memmap)
    assert pj_hash(mapped[2:5], coerce_mmap=True) == pj_hash(array[2:5])
    assert pj_hash({"x": mapped}, coerce_mmap=True) == pj_hash({"x": array})


def test_numpy_scalars_and_dtypes_hash_by_value() -> None:
    assert pj_hash(np.float32(1.5)) == pj_hash(np.float32(1.5))
    assert pj_hash(np.float32(1.5)) != pj_hash(np.float64(1.5))
    assert pj_hash(np.float64(0.0)) != pj_hash(np.float64(-0.0))
    assert pj_hash(np.datetime64(1, "s")) != pj_hash(np.datetime64(1, "ms"))
    assert pj_hash(np.int64(1)) != pj_hash(np.int32(1)) != pj_hash(np.uint64(1))
    assert pj_hash(np.str_("ab")) != pj_hash("ab")
    record = np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")])
    record[1]["a"] = 7
    assert pj_hash(record[0]) == pj_hash(record.copy()[0])
    assert pj_hash(record[0]) != pj_hash(record[1])
    assert pj_hash(np.dtype([("a", "<i4")])) != pj_hash(np.dtype([("b", "<i4")]))
    assert pj_hash(np.dtype("f8")) != pj_hash(np.dtype("f4"))
    # dtypes are interned; one unpickled is a different object with the same value.
    import pickle

    clone = pickle.loads(pickle.dumps(np.dtype("f4")))
    assert pj_hash([np.dtype("f4"), np.dtype("f4")]) == pj_hash([np.dtype("f4"), clone])
