"""Property tests: any nesting of plain values and numpy arrays survives dump/load unchanged."""

from __future__ import annotations

import itertools
import pathlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parajob.persistence import dump, dumps, load, loads

_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_leaf_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(min_len=1, max_len=5),
    hnp.unicode_string_dtypes(min_len=1, max_len=5, endianness="?"),
)
_dtypes = st.one_of(_leaf_dtypes, hnp.array_dtypes(_leaf_dtypes, min_size=1, max_size=3))


@st.composite
def _arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(_dtypes)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    arr = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["C", "F", "strided", "transposed", "reversed"]))
    if layout == "F":
        return np.asfortranarray(arr)
    if layout == "strided" and arr.ndim:
        return arr[tuple(slice(None, None, 2) for _ in range(arr.ndim))]
    if layout == "transposed":
        return arr.T
    if layout == "reversed" and arr.ndim:
        return arr[::-1]
    return arr


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.complex_numbers(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)

_values = st.recursive(
    st.one_of(_scalars, _arrays()),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=5), children, max_size=4),
    ),
    max_leaves=8,
)


def _same_bytes(got: np.ndarray, expected: np.ndarray) -> bool:
    # Bit-exact comparison (NaN and NaT compare unequal by value); a byte-order conversion
    # on load is undone before comparing.
    if got.dtype != expected.dtype:
        got = got.astype(expected.dtype)
    return np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(expected).tobytes()


def _assert_equal(got: Any, expected: Any, *, mapped: bool = False) -> None:
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.memmap if mapped else np.ndarray)
        assert got.shape == expected.shape
        assert got.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=") or (
            got.dtype.names is not None and got.dtype.itemsize == expected.dtype.itemsize
        )
        assert _same_bytes(got, expected)
        if expected.flags.f_contiguous and not expected.flags.c_contiguous:
            assert got.flags.f_contiguous
    elif isinstance(expected, (list, tuple)):
        assert type(got) is type(expected) and len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            _assert_equal(g, e, mapped=mapped)
    elif isinstance(expected, dict):
        assert type(got) is dict and got.keys() == expected.keys()
        for key in expected:
            _assert_equal(got[key], expected[key], mapped=mapped)
    else:
        assert type(got) is type(expected) and got == expected


@_SETTINGS
@given(value=_values, compress=st.sampled_from([0, "zlib", "lz4", "zstd", "gzip"]))
def test_dumps_loads_round_trip(value: Any, compress: Any) -> None:
    _assert_equal(loads(dumps(value, compress=compress)), value)


@_SETTINGS
@given(value=_values, allow_pickle=st.booleans())
def test_file_round_trip_in_memory_and_memory_mapped(
    tmp_path: pathlib.Path, value: Any, allow_pickle: bool
) -> None:
    path = tmp_path / f"value_{next(_counter)}.pj"
    dump(value, path)
    _assert_equal(load(path, allow_pickle=allow_pickle), value)
    _assert_equal(load(path, mmap_mode="r", allow_pickle=allow_pickle), value, mapped=True)


@_SETTINGS
@given(arr=_arrays(), compress=st.sampled_from([0, "zstd"]))
def test_single_arrays_round_trip_with_their_layout(
    tmp_path: pathlib.Path, arr: np.ndarray, compress: Any
) -> None:
    path = tmp_path / f"array_{next(_counter)}.pj"
    dump(arr, path, compress=compress)
    _assert_equal(load(path), arr)
    _assert_equal(load(path, ensure_native_byte_order=False), arr)


_counter = itertools.count()


def test_the_strategies_cover_the_hard_cases() -> None:
    # Guards the strategies above against silently narrowing: these layouts must be drawable.
    found = {"F": False, "noncontiguous": False, "big_endian": False, "structured": False}

    @settings(max_examples=300, deadline=None)
    @given(arr=_arrays())
    def collect(arr: np.ndarray) -> None:
        found["F"] |= arr.flags.f_contiguous and not arr.flags.c_contiguous
        found["noncontiguous"] |= not (arr.flags.c_contiguous or arr.flags.f_contiguous)
        found["big_endian"] |= arr.dtype.byteorder == ">"
        found["structured"] |= arr.dtype.names is not None

    collect()
    assert all(found.values()), found


@pytest.mark.parametrize("order", ["C", "F"])
def test_large_random_arrays_round_trip_through_every_path(
    tmp_path: pathlib.Path, order: str
) -> None:
    arr = np.asarray(np.random.default_rng(7).random((700, 900)), order=order)  # 5 MB
    path = tmp_path / "large.pj"
    dump({"a": arr, "view": arr[::3, 1::2]}, path)
    for loaded in (load(path), load(path, mmap_mode="r"), loads(dumps(arr, compress="zstd"))):
        got = loaded if isinstance(loaded, np.ndarray) else loaded["a"]
        assert _same_bytes(got, arr)
