"""What hash() considers equal and different, for Python objects (docs/hashing.md's table)."""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import math
import os
import pathlib
import pickle
import sys
import types
from collections import Counter, OrderedDict, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import xxhash

from parajob import hashing
from parajob._hashing_algorithms import _Sink
from parajob._hashing_pickler import _FORMAT_TAG, _CanonicalPickler, _digest_bytes
from parajob.errors import InvalidParameterError, ParajobError
from parajob.hashing import hash as pj_hash

# -- the public function --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hash_name", "length"), [("xxh3_128", 32), ("md5", 32), ("sha1", 40), ("sha256", 64)]
)
def test_every_accepted_hash_name_gives_a_hex_digest_of_its_length(
    hash_name: str, length: int
) -> None:
    value = {"a": [1, 2, 3], "b": {"x", "y"}}
    out = pj_hash(value, hash_name=hash_name)
    assert isinstance(out, str)
    assert len(out) == length
    int(out, 16)  # hex
    assert out == pj_hash({"b": {"y", "x"}, "a": [1, 2, 3]}, hash_name=hash_name)


def test_algorithms_give_different_digests_of_one_value() -> None:
    digests = {pj_hash("same value", hash_name=name) for name in hashing.HASH_NAMES}
    assert len(digests) == len(hashing.HASH_NAMES)


@pytest.mark.parametrize(
    ("hash_name", "reference"),
    [
        ("xxh3_128", lambda data: xxhash.xxh3_128(data).hexdigest()),
        ("md5", lambda data: hashlib.md5(data).hexdigest()),
        ("sha1", lambda data: hashlib.sha1(data).hexdigest()),
        ("sha256", lambda data: hashlib.sha256(data).hexdigest()),
    ],
)
def test_digest_is_the_named_algorithm_over_the_canonical_stream(
    hash_name: str, reference: Any
) -> None:
    value = {"k": (1, 2.0), "s": {"b", "a"}}
    stream = bytearray(_FORMAT_TAG)
    pickler = _CanonicalPickler(_Sink(stream.extend), hash_name, False, False)
    pickler.dump(value)
    assert pj_hash(value, hash_name=hash_name) == reference(bytes(stream))


def test_default_algorithm_is_xxh3_128() -> None:
    assert pj_hash([1, "a"]) == pj_hash([1, "a"], hash_name="xxh3_128")


@pytest.mark.parametrize("bad", ["sha512", "MD5", "", None, 5])
def test_unknown_hash_name_is_rejected_naming_the_value_and_the_choices(bad: Any) -> None:
    with pytest.raises(InvalidParameterError) as info:
        pj_hash(1, hash_name=bad)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ParajobError)
    message = str(info.value)
    assert repr(bad) in message
    for name in hashing.HASH_NAMES:
        assert repr(name) in message


def test_hash_and_digest_are_the_same_function() -> None:
    value = [{"a": 1}, (2, 3)]
    assert hashing.digest(value, "sha1") == pj_hash(value, "sha1")


def test_module_never_calls_the_name_hash_and_defines_it_once_at_module_level() -> None:
    # Inside parajob.hashing the name "hash" is the public function, so a call to it from the
    # implementation would be a bug (it meant the builtin, or it recursed).
    tree = ast.parse(pathlib.Path(hashing.__file__).read_text(encoding="utf-8"))
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hash"
    ]
    assert calls == []
    definitions = [
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "hash"
    ]
    assert len(definitions) == 1
    assert definitions[0] in tree.body


# -- order does not count, identity does not count -------------------------------------------


def test_dict_insertion_order_does_not_count() -> None:
    items = [(f"k{i}", i) for i in range(50)]
    assert pj_hash(dict(items)) == pj_hash(dict(reversed(items)))


def test_nested_dict_and_set_order_does_not_count() -> None:
    a = {"outer": {"x": {1, 2, 3}, "y": [{"p": 1, "q": 2}]}, "z": frozenset("abc")}
    b = {"z": frozenset("cba"), "outer": {"y": [{"q": 2, "p": 1}], "x": {3, 2, 1}}}
    assert pj_hash(a) == pj_hash(b)


@pytest.mark.parametrize(
    "make_key", [str, lambda i: str(i).encode(), int, float, lambda i: i % 2 == 0 and i < 2]
)
def test_large_dicts_and_sets_of_atomic_values_ignore_order(make_key: Any) -> None:
    # Large enough for the bulk path (pickled without persistent_id).
    keys = list({make_key(i): None for i in range(300)})
    values: list[Any] = ["s", 1, 2.5, None, True, b"b", 1j] * 50
    items = list(zip(keys, values, strict=False))
    assert pj_hash(dict(items)) == pj_hash(dict(reversed(items)))
    assert pj_hash(set(keys)) == pj_hash(set(reversed(keys)))
    assert pj_hash(frozenset(keys)) == pj_hash(frozenset(reversed(keys)))
    changed = dict(items)
    changed[keys[-1]] = "other"
    assert pj_hash(changed) != pj_hash(dict(items))


def test_large_dicts_hash_alike_whichever_path_their_values_take() -> None:
    # Atomic values take the bulk path, a list among them does not; both ignore order, and
    # the two dicts differ.
    atomic = {f"k{i}": i for i in range(200)}
    mixed = {**atomic, "k0": [0]}
    for value in (atomic, mixed):
        assert pj_hash(value) == pj_hash(dict(reversed(list(value.items()))))
    assert pj_hash(atomic) != pj_hash(mixed)


def test_large_float_keys_with_nan_ignore_order() -> None:
    keys = [float(i) for i in range(100)] + [float("nan")]
    items = [(k, i) for i, k in enumerate(keys)]
    assert pj_hash(dict(items)) == pj_hash(dict(reversed(items)))


def test_dicts_with_keys_of_mixed_types_ignore_order() -> None:
    items = [(1, "a"), ("1", "b"), (2.5, "c"), ((1, "x"), "d"), (None, "e"), (b"k", "f")]
    assert pj_hash(dict(items)) == pj_hash(dict(reversed(items)))
    assert pj_hash(dict(items)) != pj_hash(dict(items[:-1]))


def test_dicts_with_tuple_keys_ignore_order() -> None:
    items = [((i, str(i), float(i)), i) for i in range(30)]
    assert pj_hash(dict(items)) == pj_hash(dict(reversed(items)))


def test_dict_keys_that_describe_alike_are_ordered_by_their_values() -> None:
    # Two distinct keys (hashed by identity) with identical descriptions: the values break
    # the tie, so insertion order still does not count.
    class Token:
        pass

    first, second = Token(), Token()
    assert pj_hash({first: 1, second: 2}) == pj_hash({second: 2, first: 1})
    assert pj_hash({first: 1, second: 2}) == pj_hash({second: 1, first: 2})


def test_float_keys_with_nan_ignore_order() -> None:
    nan_a, nan_b = float("nan"), float("nan")
    assert pj_hash({nan_a: 1, 0.5: 2, nan_b: 3}) == pj_hash({nan_b: 3, 0.5: 2, nan_a: 1})


def test_sets_of_mixed_types_ignore_order() -> None:
    elements = [1, "1", 2.5, (3, "x"), frozenset({"y"}), None, b"w", False]
    assert pj_hash(set(elements)) == pj_hash(set(reversed(elements)))


def test_instance_attribute_order_does_not_count() -> None:
    class Thing:
        pass

    one, two = Thing(), Thing()
    one.a, one.b = 1, {"x": 2}
    two.b, two.a = {"x": 2}, 1
    assert pj_hash(one) == pj_hash(two)
    two.a = 2
    assert pj_hash(one) != pj_hash(two)


def test_equal_strings_hash_the_same_whether_or_not_they_are_one_object() -> None:
    shared = "ab" * 20
    separate = "".join(["ab"] * 20)
    assert shared is not separate
    assert pj_hash([shared, shared]) == pj_hash([shared, separate])
    inner: dict[str, int] = {"x": 1}
    assert pj_hash([inner, inner]) == pj_hash([inner, {"x": 1}])


def test_deep_and_pickled_copies_hash_equal() -> None:
    value = {"a": [1, {2, 3}, (4.0, "five")], "b": OrderedDict(z=1), "c": Counter("abca")}
    assert pj_hash(copy.deepcopy(value)) == pj_hash(value)
    assert pj_hash(pickle.loads(pickle.dumps(value))) == pj_hash(value)


# -- what differs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (1, 1.0),
        (1, True),
        (1.0, True),
        (0, False),
        (0.0, -0.0),
        ([1, 2], (1, 2)),
        ("abc", b"abc"),
        (b"abc", bytearray(b"abc")),
        ({1, 2}, frozenset({1, 2})),
        ({"a": 1}, OrderedDict(a=1)),
        ({"a": 1}, defaultdict(int, a=1)),
        (defaultdict(int, a=1), defaultdict(list, a=1)),
        ({"a": 1}, Counter(a=1)),
        (OrderedDict([("a", 1), ("b", 2)]), OrderedDict([("b", 2), ("a", 1)])),
        ([], [[]]),
        ({}, set()),
        ("", None),
        ([1, [2, 3]], [[1, 2], 3]),
        ({"a": (1, 2)}, {"a": [1, 2]}),
        ({"a": 1, "b": 2}, {"a": 2, "b": 1}),
        (range(3), [0, 1, 2]),
    ],
)
def test_values_of_different_type_or_structure_differ(left: Any, right: Any) -> None:
    assert pj_hash(left) != pj_hash(right)


def test_nan_hashes_equal_to_itself_and_to_an_equal_bit_pattern() -> None:
    assert pj_hash(float("nan")) == pj_hash(float("nan"))
    assert pj_hash([math.nan]) == pj_hash([float("nan")])


def test_ordered_dict_order_counts_but_plain_and_counter_order_does_not() -> None:
    assert pj_hash(Counter("aab")) == pj_hash(Counter("baa"))
    assert pj_hash(defaultdict(list, a=[1], b=[2])) == pj_hash(defaultdict(list, b=[2], a=[1]))
    assert pj_hash(OrderedDict(a=1, b=2)) == pj_hash(OrderedDict(a=1, b=2))


def test_dict_subclass_attributes_count() -> None:
    class Tagged(dict):  # type: ignore[type-arg]
        pass

    one, two = Tagged(a=1), Tagged(a=1)
    assert pj_hash(one) == pj_hash(two)
    one.tag = "x"
    assert pj_hash(one) != pj_hash(two)
    assert pj_hash(Tagged(a=1, b=2)) == pj_hash(Tagged(b=2, a=1))


def test_set_subclasses_ignore_order_and_keep_their_class() -> None:
    class Bag(set):  # type: ignore[type-arg]
        pass

    assert pj_hash(Bag("abcdef")) == pj_hash(Bag("fedcba"))
    assert pj_hash(Bag("abc")) != pj_hash(set("abc"))


# -- functions, classes, modules -------------------------------------------------------------


def _compile_function(source: str, filename: str, name: str) -> types.FunctionType:
    namespace: dict[str, Any] = {"__name__": "fake_module"}
    exec(compile(source, filename, "exec"), namespace)
    function: types.FunctionType = namespace[name]
    return function


SOURCE = """
def f(x, y=2, *, z=3):
    '''Add things.'''
    total = 0
    for i in range(x):
        total += i * y + z
    return {"total": total, "labels": {"a", "b"}}
"""


def test_functions_hash_by_code_not_by_file_or_line() -> None:
    here = _compile_function(SOURCE, "/project/a.py", "f")
    moved = _compile_function("\n" * 40 + SOURCE, "/elsewhere/clone/a.py", "f")
    assert here.__code__.co_firstlineno != moved.__code__.co_firstlineno
    assert pj_hash(here) == pj_hash(moved)


def test_function_body_defaults_and_keyword_defaults_count() -> None:
    base = _compile_function(SOURCE, "a.py", "f")
    assert pj_hash(base) != pj_hash(
        _compile_function(SOURCE.replace("i * y", "i + y"), "a.py", "f")
    )
    assert pj_hash(base) != pj_hash(_compile_function(SOURCE.replace("y=2", "y=5"), "a.py", "f"))
    assert pj_hash(base) != pj_hash(_compile_function(SOURCE.replace("z=3", "z=4"), "a.py", "f"))
    renamed = _compile_function(SOURCE.replace("def f", "def g"), "a.py", "g")
    assert pj_hash(base) != pj_hash(renamed)


def test_closures_hash_by_captured_values() -> None:
    def make(offset: Any) -> Any:
        def add(x: int) -> Any:
            return x + offset

        return add

    assert pj_hash(make(1)) == pj_hash(make(1))
    assert pj_hash(make(1)) != pj_hash(make(2))
    assert pj_hash(make({"a": 1, "b": 2})) == pj_hash(make({"b": 2, "a": 1}))


def test_closure_with_an_unassigned_cell_hashes() -> None:
    def outer() -> Any:
        def inner() -> Any:
            return later

        first = pj_hash(inner)
        later = 1
        return first, pj_hash(inner)

    before, after = outer()
    assert before != after


def test_lambdas_hash_by_code() -> None:
    assert pj_hash(lambda x: x + 1) == pj_hash(lambda x: x + 1)
    assert pj_hash(lambda x: x + 1) != pj_hash(lambda x: x + 2)
    assert pj_hash(lambda x, k=1: x) != pj_hash(lambda x, k=2: x)


def test_nested_code_objects_count() -> None:
    nested = "def outer():\n    return lambda: {}\n"
    one = _compile_function(nested.format(1), "a.py", "outer")
    two = _compile_function(nested.format(2), "a.py", "outer")
    assert pj_hash(one) != pj_hash(two)
    assert pj_hash(one) == pj_hash(_compile_function(nested.format(1), "b.py", "outer"))


def test_functools_wraps_attributes_count() -> None:
    def original(x: int) -> int:
        return x

    @functools.wraps(original)
    def wrapper(x: int) -> int:
        return x

    assert pj_hash(wrapper) != pj_hash(original)


def test_builtins_hash_by_name_and_bound_object() -> None:
    assert pj_hash(len) == pj_hash(len)
    assert pj_hash(len) != pj_hash(max)
    assert pj_hash([1].append) == pj_hash([1].append)
    assert pj_hash([1].append) != pj_hash([2].append)
    assert pj_hash(math.sqrt) != pj_hash(math.floor)
    assert pj_hash(str.upper) != pj_hash(str.lower)


def test_methods_hash_by_function_and_instance_value() -> None:
    class Counter_:
        def __init__(self, start: int) -> None:
            self.start = start

        def next(self) -> int:
            return self.start + 1

    assert pj_hash(Counter_(1).next) == pj_hash(Counter_(1).next)
    assert pj_hash(Counter_(1).next) != pj_hash(Counter_(2).next)


def test_classes_hash_by_module_and_qualified_name_even_when_local() -> None:
    def make() -> type:
        class Local:
            pass

        return Local

    first, second = make(), make()
    assert first is not second
    assert pj_hash(first) == pj_hash(second)
    assert pj_hash(first()) == pj_hash(second())
    assert pj_hash(int) != pj_hash(float)


def test_instances_of_classes_in_main_hash() -> None:
    main = sys.modules["__main__"]
    cls = type("DefinedInMain", (), {"__module__": "__main__"})
    assert not hasattr(main, "DefinedInMain")  # not importable, unlike what pickle needs
    instance = cls()
    instance.value = [1, 2]
    assert pj_hash(instance) == pj_hash(copy.copy(instance))


def test_modules_hash_by_name() -> None:
    assert pj_hash(os) == pj_hash(os)
    assert pj_hash(os) != pj_hash(sys)
    assert pj_hash({"lib": math}) != pj_hash({"lib": os})


# -- cycles ----------------------------------------------------------------------------------


def _cyclic_dict(name: str) -> dict[str, Any]:
    value: dict[str, Any] = {"name": name, "members": {"a", "b"}}
    value["self"] = value
    return value


def test_self_referencing_dicts_hash_by_structure() -> None:
    assert pj_hash(_cyclic_dict("x")) == pj_hash(_cyclic_dict("x"))
    assert pj_hash(_cyclic_dict("x")) != pj_hash(_cyclic_dict("y"))


def test_self_referencing_lists_and_instances_hash() -> None:
    def cyclic_list() -> list[Any]:
        value: list[Any] = [1, "two"]
        value.append(value)
        return value

    assert pj_hash(cyclic_list()) == pj_hash(cyclic_list())

    class Node:
        pass

    def ring(size: int) -> Node:
        nodes = [Node() for _ in range(size)]
        for i, node in enumerate(nodes):
            node.next = nodes[(i + 1) % size]
            node.label = f"n{i}"
        return nodes[0]

    assert pj_hash(ring(3)) == pj_hash(ring(3))
    assert pj_hash(ring(3)) != pj_hash(ring(4))


def test_cycles_through_objects_whose_getstate_copies_their_dict_hash() -> None:
    # A common pattern (drop a lock before pickling) that hands pickle a new dict each time.
    class Node:
        def __init__(self, name: str) -> None:
            self.name = name
            self.children: list[Node] = []
            self.parent: Node | None = None

        def __getstate__(self) -> dict[str, Any]:
            return dict(self.__dict__)

    def tree(label: str) -> Node:
        root = Node("root")
        for i in range(3):
            child = Node(f"{label}{i}")
            child.parent = root
            root.children.append(child)
        return root

    assert pj_hash(tree("c")) == pj_hash(tree("c"))
    assert pj_hash(tree("c")) != pj_hash(tree("d"))


def test_a_deque_that_contains_itself_hashes() -> None:
    def loop(label: str) -> deque[Any]:
        value: deque[Any] = deque([label])
        value.append(value)
        return value

    assert pj_hash(loop("a")) == pj_hash(loop("a"))
    assert pj_hash(loop("a")) != pj_hash(loop("b"))


def test_recursive_closures_hash() -> None:
    def make() -> Any:
        def fact(n: int) -> int:
            return 1 if n <= 1 else n * fact(n - 1)

        return fact

    assert pj_hash(make()) == pj_hash(make())


def test_sharing_counts_inside_cyclic_structures_as_documented() -> None:
    # Cyclic structures are hashed in memo mode: there, the same object twice differs from
    # two equal objects. Acyclic structures never see this.
    def build(share: bool) -> list[Any]:
        inner = ["x"]
        value: list[Any] = [inner, inner if share else ["x"]]
        value.append(value)
        return value

    assert pj_hash(build(share=True)) != pj_hash(build(share=False))
    assert pj_hash(build(share=True)) == pj_hash(build(share=True))


def test_cycles_deeper_than_the_fast_mode_check_are_found() -> None:
    # A cycle through 60 lists, beyond the C pickler's 50-level fast-mode threshold.
    head: list[Any] = []
    node = head
    for _ in range(60):
        nxt: list[Any] = []
        node.append(nxt)
        node = nxt
    node.append(head)
    assert pj_hash(head) == pj_hash(head)


# -- internals that the guarantees rest on ---------------------------------------------------


def test_reused_child_pickler_writes_what_a_fresh_one_writes() -> None:
    # Keys that cannot be sorted by value are ordered by their own digests, computed by one
    # reused child pickler; its output must not depend on what it described before.
    values: list[Any] = [
        (1, "a"),
        frozenset({"x", "y"}),
        {"k": {1, 2}},
        [1.5, None],
        ("nested", (1, (2, 3))),
        len,
        _cyclic_dict("c"),
        (1, "a"),
    ]
    parent = _CanonicalPickler(_Sink(lambda _b: None), "xxh3_128", False, False)
    for value in values:
        assert parent._sub_digest(value) == _digest_bytes(value, "xxh3_128", False)


def test_concurrent_threads_get_the_same_digests() -> None:
    value = {f"key{i}": {"v": i, "s": {str(i), str(-i)}} for i in range(2000)}
    expected = pj_hash(value)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(pj_hash, [value] * 8, timeout=60))
    assert results == [expected] * 8
