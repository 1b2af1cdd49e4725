"""Objects that cannot be hashed raise HashingError naming the type and where it sat."""

from __future__ import annotations

import pathlib
import pickle
import sys
import threading
from typing import Any

import pytest

from parajob.errors import HashingError, ParajobError
from parajob.hashing import hash as pj_hash


def _error_of(value: Any) -> HashingError:
    with pytest.raises(HashingError) as info:
        pj_hash(value)
    return info.value


def test_lock_nested_in_dicts_is_named_with_its_path() -> None:
    error = _error_of({"config": {"lock": threading.Lock(), "n": 1}, "other": [1, 2]})
    assert "cannot hash object of type _thread.lock at ['config']['lock']" in str(error)
    assert "TypeError" in str(error)  # the underlying reason is kept in the message


def test_error_is_a_parajob_error_a_pickling_error_and_a_type_error() -> None:
    error = _error_of([threading.Lock()])
    assert isinstance(error, ParajobError)
    assert isinstance(error, pickle.PicklingError)
    assert isinstance(error, TypeError)  # what joblib.hash let through for a lock
    assert isinstance(error.__cause__, TypeError)


def test_error_pickles_with_its_message() -> None:
    error = _error_of({"gen": (i for i in range(3))})
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is HashingError
    assert str(clone) == str(error)


def test_generator_at_the_top_level() -> None:
    error = _error_of(i for i in range(3))
    assert "type generator at the top level" in str(error)


def test_open_file_in_an_attribute_and_a_list(tmp_path: pathlib.Path) -> None:
    class Holder:
        def __init__(self, handle: Any) -> None:
            self.name = "h"
            self.files = [1, handle]

    with open(tmp_path / "f.txt", "w") as handle:
        error = _error_of({"holder": Holder(handle)})
    assert "type _io.TextIOWrapper at ['holder'].files[1]" in str(error)


def test_unpicklable_value_captured_by_a_closure() -> None:
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    error = _error_of(uses_lock)
    assert "at .<closure variable lock>" in str(error)


def test_error_raised_by_a_custom_reduce_is_wrapped() -> None:
    class Refuses:
        def __reduce__(self) -> Any:
            raise RuntimeError("no state for you")

    error = _error_of({"x": (1, Refuses())})
    assert "Refuses at ['x'][1]" in str(error)
    assert "RuntimeError: no state for you" in str(error)


def test_path_search_stops_on_cycles() -> None:
    value: dict[str, Any] = {}
    value["a_self"] = value
    value["lock"] = threading.Lock()
    assert "at ['lock']" in str(_error_of(value))


def test_too_deep_nesting_raises_a_hashing_error_not_a_recursion_error() -> None:
    value: list[Any] = []
    for _ in range(sys.getrecursionlimit() * 2):
        value = [value]
    error = _error_of(value)
    assert "recursion limit" in str(error)
    assert isinstance(error.__cause__, RecursionError)


def test_a_reduction_that_never_ends_is_an_error_not_a_hang() -> None:
    class Endless:
        # Each reduction makes a new, deeper object: no cycle to find, no bottom to reach.
        def __reduce__(self) -> Any:
            return (Endless, (Endless(),))

    error = _error_of([Endless()])
    assert "recursion limit" in str(error)


def test_hashing_still_works_after_an_error() -> None:
    _error_of(threading.Lock())
    assert pj_hash({"a": 1}) == pj_hash({"a": 1})
