"""Memory's joblib contract: decorator forms, keys, call/shelve/check/clear, callables, pickling."""

from __future__ import annotations

import asyncio
import functools
import pickle
import warnings
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

from parajob.errors import CacheWarning, InvalidParameterError
from parajob.memory import (
    AsyncMemorizedFunc,
    AsyncNotMemorizedFunc,
    MemorizedFunc,
    MemorizedResult,
    Memory,
    NotMemorizedFunc,
    NotMemorizedResult,
    expires_after,
)


@pytest.fixture
def memory(tmp_path: Path) -> Memory:
    return Memory(tmp_path, verbose=0)


def counted(log: list[Any]):
    def f(x, y=2, *, z=3):
        log.append((x, y, z))
        return x * y + z

    return f


def test_decorator_without_and_with_arguments(memory: Memory) -> None:
    log: list[Any] = []

    @memory.cache
    def plain(x):
        log.append(x)
        return x + 1

    @memory.cache(ignore=["verbose_flag"], verbose=0)
    def with_args(x, verbose_flag=False):
        log.append(("w", x))
        return x - 1

    assert isinstance(plain, MemorizedFunc)
    assert plain(1) == plain(1) == 2
    assert with_args(5, verbose_flag=True) == with_args(5) == 4
    assert log == [1, ("w", 5)]


def test_defaults_and_keyword_order_hit_the_same_entry(memory: Memory) -> None:
    log: list[Any] = []
    f = memory.cache(counted(log))
    assert f(1) == 5
    assert f(x=1) == 5
    assert f(1, 2) == 5
    assert f(1, z=3, y=2) == 5
    assert f(z=3, x=1) == 5
    assert len(log) == 1
    assert f(1, 3) == 6
    assert len(log) == 2


def test_wrong_arguments_raise_the_calls_type_error(memory: Memory) -> None:
    f = memory.cache(counted([]))
    with pytest.raises(TypeError):
        f()
    with pytest.raises(TypeError):
        f(1, bogus=2)


def test_ignore_unknown_name_is_an_error_naming_it(memory: Memory) -> None:
    def f(a, b):
        return a + b

    with pytest.raises(InvalidParameterError, match="'c'"):
        memory.cache(f, ignore=["c"])
    with pytest.raises(ValueError):
        memory.cache(f, ignore=["c"])


def test_unhashable_and_numpy_arguments(memory: Memory) -> None:
    log: list[Any] = []

    @memory.cache
    def total(d, arr):
        log.append(1)
        return sum(d["xs"]) + float(arr.sum())

    a = np.arange(10.0)
    assert total({"xs": [1, 2]}, a) == total({"xs": [1, 2]}, a.copy()) == 48.0
    assert total({"xs": [1, 3]}, a) == 49.0
    assert len(log) == 2


def test_call_forces_computation_and_returns_metadata(memory: Memory) -> None:
    log: list[Any] = []
    f = memory.cache(counted(log))
    f(1)
    out, metadata = f.call(1)
    assert out == 5
    assert len(log) == 2
    assert metadata["duration"] >= 0
    assert "time" in metadata
    assert metadata["input_args"]["x"] == "1"


def test_call_and_shelve_returns_picklable_reference(memory: Memory) -> None:
    log: list[Any] = []
    f = memory.cache(counted(log))
    ref = f.call_and_shelve(4)
    assert isinstance(ref, MemorizedResult)
    assert ref.get() == 11
    again = pickle.loads(pickle.dumps(ref))
    assert again.get() == 11
    assert f.call_and_shelve(4).args_id == ref.args_id
    assert len(log) == 1
    assert "MemorizedResult(location=" in repr(ref)
    ref.clear()
    with pytest.raises(KeyError, match="no longer"):
        again.get()
    assert not f.check_call_in_cache(4)


def test_check_call_in_cache_does_not_compute(memory: Memory) -> None:
    log: list[Any] = []
    f = memory.cache(counted(log))
    assert not f.check_call_in_cache(7)
    assert log == []
    f(7)
    assert f.check_call_in_cache(7)
    assert f.check_call_in_cache(x=7, y=2)


def test_clear_function_and_memory(memory: Memory) -> None:
    log: list[Any] = []
    f = memory.cache(counted(log))
    g = memory.cache(lambda x: x)
    f(1)
    g(1)
    f.clear()
    assert not f.check_call_in_cache(1)
    assert g.check_call_in_cache(1)
    f(1)
    memory.clear(warn=False)
    assert not f.check_call_in_cache(1)
    assert not g.check_call_in_cache(1)
    f(1)
    assert len(log) == 3


def test_eval(memory: Memory) -> None:
    log: list[Any] = []
    f = counted(log)
    assert memory.eval(f, 2) == memory.eval(f, 2) == 7
    assert len(log) == 1
    assert Memory(None).eval(f, 2) == 7


def test_location_none_caches_nothing() -> None:
    memory = Memory(None, verbose=0)
    log: list[Any] = []
    f = memory.cache(counted(log))
    assert isinstance(f, NotMemorizedFunc)
    assert f(1) == f(1) == 5
    assert len(log) == 2
    assert f.call(1) == (5, {})
    assert not f.check_call_in_cache(1)
    shelved = f.call_and_shelve(1)
    assert isinstance(shelved, NotMemorizedResult)
    assert shelved.get() == 5
    shelved.clear()
    with pytest.raises(KeyError):
        shelved.get()
    f.clear()
    memory.clear()
    memory.reduce_size(items_limit=0)
    assert repr(memory) == "Memory(location=None)"


def test_expires_after(memory: Memory) -> None:
    log: list[Any] = []
    fresh = memory.cache(counted(log), cache_validation_callback=expires_after(hours=1))
    fresh(1)
    fresh(1)
    assert len(log) == 1
    stale = memory.cache(counted(log), cache_validation_callback=expires_after(seconds=0))
    stale(2)
    stale(2)
    assert len(log) == 3
    assert stale.explain(2).reason == "expired"
    with pytest.raises(InvalidParameterError):
        memory.cache(counted(log), cache_validation_callback=3)


def test_cache_validation_callback_sees_metadata(memory: Memory) -> None:
    seen: list[dict[str, Any]] = []

    def keep(metadata: dict[str, Any]) -> bool:
        seen.append(metadata)
        return True

    f = memory.cache(counted([]), cache_validation_callback=keep)
    f(3)
    f(3)
    assert seen and seen[-1]["input_args"] == {"x": "3", "y": "2", "z": "3"}


MODEL_CALLS: list[float] = []


class Model:
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def predict(self, x: float) -> float:
        MODEL_CALLS.append(self.scale)
        return x * self.scale


def test_bound_method_includes_instance_in_key(memory: Memory) -> None:
    MODEL_CALLS.clear()
    a, b = Model(2.0), Model(3.0)
    fa, fb = memory.cache(a.predict), memory.cache(b.predict)
    assert fa(1.0) == 2.0
    assert fa(1.0) == 2.0
    assert fb(1.0) == 3.0
    assert MODEL_CALLS == [2.0, 3.0]


def test_method_decorated_in_class_body(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0)
    log: list[Any] = []

    class Scaler:
        def __init__(self, k: int) -> None:
            self.k = k

        @memory.cache(ignore=["self"])
        def shared(self, x):
            log.append(x)
            return x * 10

        @memory.cache
        def scaled(self, x):
            log.append((self.k, x))
            return x * self.k

        @staticmethod
        @memory.cache
        def static(x):
            log.append(("s", x))
            return -x

    s1, s2 = Scaler(2), Scaler(3)
    assert s1.shared(1) == s2.shared(1) == 10
    assert s1.scaled(1) == 2 and s2.scaled(1) == 3 and s1.scaled(1) == 2
    assert Scaler.static(4) == s1.static(4) == -4
    assert log == [1, (2, 1), (3, 1), ("s", 4)]
    assert s1.scaled.check_call_in_cache(1)


def test_staticmethod_object_is_unwrapped(memory: Memory) -> None:
    def f(x):
        return x + 100

    cached = memory.cache(staticmethod(f))
    assert cached(1) == 101
    assert cached.check_call_in_cache(1)


def test_partials_with_different_arguments_do_not_share_entries(memory: Memory) -> None:
    def power(base, exp):
        return base**exp

    square = memory.cache(functools.partial(power, exp=2))
    cube = memory.cache(functools.partial(power, exp=3))
    assert square(3) == 9
    assert cube(3) == 27
    assert square.check_call_in_cache(3)
    assert square(3) == 9


def test_lambdas_and_closures(memory: Memory) -> None:
    def make(k):
        return memory.cache(lambda x: x * k)

    double, triple = make(2), make(3)
    assert double(5) == 10
    assert triple(5) == 15  # same code, captured value differs: another key
    assert double.check_call_in_cache(5)
    first = memory.cache(lambda x: x + 1)
    second = memory.cache(lambda x: x - 1)  # another line: another folder
    assert first(1) == 2 and second(1) == 0
    assert first.func_id != second.func_id


def test_async_function_is_awaitable_and_cached(memory: Memory) -> None:
    log: list[Any] = []

    @memory.cache
    async def fetch(x):
        await asyncio.sleep(0)
        log.append(x)
        return x * 2

    assert isinstance(fetch, AsyncMemorizedFunc)

    async def main() -> tuple[Any, ...]:
        a = await fetch(3)
        b = await fetch(3)
        ref = await fetch.call_and_shelve(3)
        out, meta = await fetch.call(4)
        return a, b, ref.get(), out, meta

    a, b, shelved, out, meta = asyncio.run(main())
    assert (a, b, shelved, out) == (6, 6, 6, 8)
    assert "duration" in meta
    assert log == [3, 4]
    none = Memory(None).cache(fetch.func)
    assert isinstance(none, AsyncNotMemorizedFunc)
    assert asyncio.run(none.call_and_shelve(1)).get() == 2


def test_async_concurrent_misses_compute_once(memory: Memory) -> None:
    log: list[Any] = []
    started = asyncio.Event

    @memory.cache
    async def slow(x):
        log.append(x)
        await asyncio.sleep(0)
        return x

    async def main() -> list[Any]:
        return await asyncio.gather(*(slow(1) for _ in range(5)))

    assert started is asyncio.Event
    assert asyncio.run(main()) == [1] * 5
    assert log == [1]


def test_mmap_mode_returns_memmaps_on_every_call(tmp_path: Path) -> None:
    memory = Memory(tmp_path, mmap_mode="r", verbose=0)

    @memory.cache
    def make(n):
        return {"a": np.arange(n, dtype=np.float64)}

    first = make(100_000)
    second = make(100_000)
    assert isinstance(first["a"], np.memmap)
    assert isinstance(second["a"], np.memmap)
    np.testing.assert_array_equal(second["a"], np.arange(100_000.0))
    plain = memory.cache(make.func, mmap_mode=None)
    assert not isinstance(plain(100_000)["a"], np.memmap)


def test_compressed_results(tmp_path: Path) -> None:
    memory = Memory(tmp_path, compress=3, verbose=0)

    @memory.cache
    def zeros(n):
        return np.zeros(n)

    assert zeros(1_000_000).sum() == 0
    assert zeros(1_000_000).shape == (1_000_000,)
    assert zeros.stats().bytes < 1_000_000
    with pytest.warns(UserWarning, match="memory-mapped"):
        Memory(tmp_path, compress=True, mmap_mode="r", verbose=0)


def test_unpicklable_result_warns_and_returns(memory: Memory) -> None:
    import threading

    @memory.cache
    def make_lock(x):
        return threading.Lock()

    with pytest.warns(CacheWarning, match="could not be stored"):
        lock = make_lock(1)
    assert hasattr(lock, "acquire")
    assert not make_lock.check_call_in_cache(1)


def test_exception_in_function_stores_nothing(memory: Memory) -> None:
    @memory.cache
    def boom(x):
        raise RuntimeError(f"boom {x}")

    with pytest.raises(RuntimeError, match="boom 1"):
        boom(1)
    assert not boom.check_call_in_cache(1)


def test_memory_and_memorized_func_pickle(memory: Memory) -> None:
    log: list[Any] = []
    f = memory.cache(counted(log))
    f(1)
    m2 = pickle.loads(pickle.dumps(memory))
    assert m2.store_backend.location == memory.store_backend.location
    f2 = cloudpickle.loads(cloudpickle.dumps(f))
    assert f2.check_call_in_cache(1)
    assert f2(1) == 5
    assert len(log) == 1
    g = pickle.loads(pickle.dumps(m2.cache(Model.predict)))
    assert g.func is Model.predict


def test_verbose_prints_computations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    memory = Memory(tmp_path, verbose=1)

    @memory.cache
    def shout(x):
        return x

    shout(1)
    shout(1)
    out = capsys.readouterr().out
    assert out.count("[Memory] Calling") == 1
    assert "shout(x=1)" in out


def test_repr_and_wrapping(memory: Memory) -> None:
    def documented(x):
        """Add one."""
        return x + 1

    f = memory.cache(documented)
    assert f.__name__ == "documented"
    assert "Add one." in (f.__doc__ or "")
    assert "MemorizedFunc(func=" in repr(f)
    assert repr(memory).startswith("Memory(location=")


def test_invalid_parameters_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="mmap_mode"):
        Memory(tmp_path, mmap_mode="x")
    with pytest.raises(InvalidParameterError, match="invalidation"):
        Memory(tmp_path, invalidation="sometimes")
    with pytest.raises(InvalidParameterError, match="max_bytes"):
        Memory(tmp_path, max_bytes="lots")
    with pytest.raises(ValueError, match="unknown store backend"):
        Memory(tmp_path, backend="nope")
    memory = Memory(tmp_path, verbose=0)
    with pytest.raises(InvalidParameterError, match="age_limit"):
        memory.reduce_size(age_limit=-1)
    with pytest.raises(InvalidParameterError, match="depends_on"):
        memory.cache(lambda x: x, invalidation="none", depends_on=[1])


def test_no_warnings_on_a_normal_hit(memory: Memory) -> None:
    f = memory.cache(counted([]))
    f(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(1) == 5


def test_memorized_func_and_result_accept_a_folder_as_joblib_does(tmp_path: Path) -> None:
    from parajob.memory import Logger

    log: list[Any] = []
    direct = MemorizedFunc(counted(log), str(tmp_path), verbose=0)
    assert direct(1) == direct(1) == 5
    assert len(log) == 1
    assert isinstance(direct, Logger)  # joblib's MemorizedFunc logs like Memory
    ref = direct.call_and_shelve(1)
    again = MemorizedResult(str(tmp_path), (ref.func_id, ref.args_id))
    assert again.get() == 5
    # The same cache as Memory(location) uses.
    assert Memory(tmp_path, verbose=0).cache(direct.func).check_call_in_cache(1)


def test_cache_over_staticmethod_and_classmethod_in_class_body(tmp_path: Path) -> None:
    memory = Memory(tmp_path, verbose=0)
    log: list[Any] = []

    class Units:
        scale = 10

        @memory.cache
        @staticmethod
        def double(x):
            log.append(("double", x))
            return 2 * x

        @memory.cache
        @classmethod
        def scaled(cls, x):
            log.append(("scaled", x))
            return cls.scale * x

    assert Units.double(3) == Units().double(3) == 6
    assert Units.scaled(3) == Units().scaled(3) == 30
    assert log == [("double", 3), ("scaled", 3)]
    assert Units().scaled.check_call_in_cache(3)


def test_closures_capturing_different_data_do_not_share_entries(memory: Memory) -> None:
    # A function decorated inside another one, reading what that one was given: the data
    # selects the result as much as an argument does.
    def total(data: Any) -> int:
        @memory.cache
        def plus(x):
            return x + int(np.sum(data["values"]))

        return plus(1)

    assert total({"values": [1]}) == 2
    assert total({"values": np.arange(3)}) == 4
    assert total({"values": [1]}) == 2

    class Unhashable:
        def __reduce__(self) -> Any:
            raise TypeError("no")

    lock = Unhashable()

    @memory.cache
    def uses_state(x):
        return (x, lock is not None)

    assert uses_state(1) == (1, True)  # a capture that cannot be hashed is left out
