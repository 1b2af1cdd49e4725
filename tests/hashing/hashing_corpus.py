"""A fixed corpus of objects whose hashes must agree between fresh interpreters.

Imported by the test process and, by name, by child interpreters started with other
``PYTHONHASHSEED`` values. Every builder is deterministic: no randomness, no ids, no clocks.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections import Counter, OrderedDict, defaultdict
from typing import Any


def scale(values: list[float], factor: float = 2.0) -> list[float]:
    """A module-level function."""
    return [v * factor for v in values]


def make_adder(offset: int) -> Any:
    """Return a closure capturing ``offset`` and a set of strings."""
    labels = {"alpha", "beta", "gamma", "delta"}

    def add(x: int) -> int:
        return x + offset + len(labels)

    return add


def make_recursive() -> Any:
    """Return a closure that refers to itself (a cycle through its own cell)."""

    def countdown(n: int) -> int:
        return 0 if n <= 0 else countdown(n - 1)

    return countdown


square = lambda x: x * x  # noqa: E731 - a lambda is the point


class Config:
    """A plain class whose instances carry attributes, a set and a nested dict."""

    def __init__(self) -> None:
        self.name = "model"
        self.tags = {"fast", "stable", "tested", "typed", "small"}
        self.params = {"lr": 0.01, "layers": [64, 32], "activation": "relu"}

    def describe(self) -> str:
        return self.name


class Color(enum.Enum):
    RED = 1
    GREEN = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self) -> None:
        self.a = {"one", "two", "three"}
        self.b = (1, 2.5, "x")


def make_local_instance() -> Any:
    """Return an instance of a class defined inside a function."""

    class Local:
        def __init__(self) -> None:
            self.value = frozenset({"p", "q", "r", "s"})

    return Local()


def python_corpus() -> dict[str, Any]:
    """Objects that need only the standard library."""
    cyclic_dict: dict[str, Any] = {"name": "loop", "members": {"m1", "m2", "m3"}}
    cyclic_dict["self"] = cyclic_dict
    cyclic_list: list[Any] = ["head", {"k": "v"}]
    cyclic_list.append(cyclic_list)
    cyclic_instance = Config()
    cyclic_instance.me = cyclic_instance  # type: ignore[attr-defined]
    return {
        "nested": {
            "users": {f"user{i}": {"groups": {f"g{j}" for j in range(i % 5)}} for i in range(40)},
            "flags": frozenset({"a", "b", "c", "d", "e", "f"}),
            "matrix": [[i * j for j in range(5)] for i in range(5)],
            ("tuple", "key"): None,
        },
        "set_of_str": {f"item-{i}" for i in range(200)},
        "set_of_tuples": {(i, f"t{i}") for i in range(50)},
        "big_dict": {
            f"key{i:04d}": [i, float(i), None, True, b"x", "s"][i % 6] for i in range(300)
        },
        "big_int_set": {i * 7919 % 1000 for i in range(500)},
        "mixed_keys": {1: "int", "1": "str", 2.5: "float", (1, 2): "tuple", b"1": "bytes"},
        "mixed_set": {1, "1", 2.5, (3, "x"), frozenset({"y", "z"}), None, b"w"},
        "scalars": [0, -1, 2**100, 1.5, -0.0, float("nan"), float("inf"), 1 + 2j, True, None],
        "text": ["", "héllo", "\u2603" * 3, b"\x00\xff", bytearray(b"ab")],
        "ordered": OrderedDict([("z", 1), ("a", 2)]),
        "defaultdict": defaultdict(list, {"x": [1], "y": [2]}),
        "counter": Counter("mississippi"),
        "function": scale,
        "lambda": square,
        "closure": make_adder(3),
        "recursive_closure": make_recursive(),
        "partial": functools.partial(scale, factor=3.0),
        "builtin": len,
        "bound_builtin": [1, 2].append,
        "instance": Config(),
        "bound_method": Config().describe,
        "local_instance": make_local_instance(),
        "enum": Color.GREEN,
        "dataclass": Point(1.0, 2.0),
        "slotted": Slotted(),
        "class": Config,
        "module": functools,
        "cyclic_dict": cyclic_dict,
        "cyclic_list": cyclic_list,
        "cyclic_instance": cyclic_instance,
        "range": range(3, 30, 3),
    }


def numpy_corpus() -> dict[str, Any]:
    """Arrays in every layout and dtype family the hasher treats specially."""
    import numpy as np

    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    structured = np.zeros(3, dtype=[("id", "<i4"), ("pos", "<f8", (2,)), ("name", "U4")])
    structured["id"] = [1, 2, 3]
    structured["name"] = ["a", "bb", "ccc"]
    string_dtype = getattr(getattr(np, "dtypes", None), "StringDType", None)  # numpy >= 2
    return {
        "c_array": base,
        "f_array": np.asfortranarray(base),
        "strided": base[::2, 1::2],
        "zero_d": np.array(3.5),
        "empty": np.empty((0, 4), dtype=np.int16),
        "big_endian": base.astype(">f8"),
        "structured": structured,
        "datetime": np.array(["2024-01-01", "2024-06-30"], dtype="datetime64[D]"),
        "strings": np.array(["x", "yy", "zzz"]),
        "bools": np.array([True, False, True]),
        "object_array": np.array([{"b": 1, "a": 2}, "s", None], dtype=object),
        "masked": np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False]),
        "scalar": np.float32(1.25),
        "scalars": [np.int16(-3), np.datetime64("2024-01-01", "s"), np.str_("x"), structured[1]],
        "string_dtype": None
        if string_dtype is None
        else np.array(["v", "w"], dtype=string_dtype()),
        "dtype": np.dtype("<i8"),
        "in_dict": {"weights": base * 2, "bias": np.ones(6)},
    }
