"""``parajob demo``: the library doing its main jobs on a built-in example.

Everything happens in one local folder and needs no setup. It grows as parajob does.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def _make_model(np: Any) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    return {
        "name": "demo-classifier",
        "layers": [rng.standard_normal((512, 512), dtype=np.float32) for _ in range(6)],
        "bias": rng.standard_normal(512),
        "vocabulary": {f"token{i}": i for i in range(50_000)},
        "classes": ("cat", "dog", "bird"),
        "params": {"alpha": 1e-3, "max_iter": 200, "tol": None},
    }


def _same(np: Any, a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(np, a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(np, x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def _persistence_section(np: Any, folder: Path, array: Any, model: dict[str, Any]) -> None:
    from parajob import dump, load

    compressors: list[Any] = [0, ("zlib", 3), "lz4", "zstd"]
    available = {"lz4": "lz4", "zstd": "zstandard"}
    print("\n1. Persistence: dump / load")
    header = f"   {'object':<12}{'compress':<14}{'on disk':>12}{'dump':>12}{'load':>12}"
    print(header + f"{'load mmap':>12}")
    for label, obj in (("array", array), ("model", model)):
        for compress in compressors:
            name = compress[0] if isinstance(compress, tuple) else compress
            if name in available and importlib.util.find_spec(available[name]) is None:
                print(f"   {label:<12}{name!s:<14}   (skipped: pip install 'parajob[{name}]')")
                continue
            path = folder / f"{label}.{name or 'raw'}.pj"
            _, t_dump = _timed(lambda: dump(obj, path, compress=compress))  # noqa: B023
            back, t_load = _timed(lambda: load(path))  # noqa: B023
            if not _same(np, obj, back):
                raise RuntimeError(f"demo: {path} did not load back equal to what was dumped")
            mmap_col = ""
            if compress == 0:
                mapped, t_mmap = _timed(lambda: load(path, mmap_mode="r"))  # noqa: B023
                if not _same(np, obj, mapped):
                    raise RuntimeError(f"demo: {path} memory-mapped is not equal")
                mmap_col = _ms(t_mmap)
                del mapped
            print(
                f"   {label:<12}{name or 'none'!s:<14}{_mb(path.stat().st_size):>12}"
                f"{_ms(t_dump):>12}{_ms(t_load):>12}{mmap_col:>12}"
            )


def _hashing_section(array: Any, model: dict[str, Any]) -> None:
    from parajob import hash as pj_hash

    print("\n2. Hashing: the same value gives the same digest in every process")
    digest, t = _timed(lambda: pj_hash(array))
    print(f"   hash(array of {_mb(array.nbytes)}) = {digest}  in {_ms(t)}")
    digest, t = _timed(lambda: pj_hash(model))
    print(f"   hash(model)                  = {digest}  in {_ms(t)}")
    reordered = dict(reversed(list(model.items())))
    print(f"   same digest with the dict's keys in another order: {pj_hash(reordered) == digest}")


def count_primes(start: int, stop: int) -> int:
    """Count the primes in ``[start, stop)`` by trial division (deliberately CPU-bound)."""
    count = 0
    for n in range(max(start, 2), stop):
        if n % 2 == 0:
            count += n == 2
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


def slice_mean(array: Any, start: int, stop: int) -> float:
    """Return the mean of ``array[start:stop]`` (a task that reads part of a big array)."""
    return float(array[start:stop].mean())


def _shared_array_section(array: Any) -> None:
    from parajob import Parallel, delayed

    n = len(array)
    bounds = [(i * n // 8, (i + 1) * n // 8) for i in range(8)]
    print(f"\n   8 tasks each reading a slice of the {_mb(array.nbytes)} array:")
    expected = [float(array[a:b].mean()) for a, b in bounds]

    def run() -> list[float]:
        means = Parallel(n_jobs=-1)(delayed(slice_mean)(array, a, b) for a, b in bounds)
        if any(abs(m - e) > 1e-9 * max(1.0, abs(e)) for m, e in zip(means, expected, strict=True)):
            raise RuntimeError("demo: the workers' slice means disagree with the caller's")
        return means

    _, first = _timed(run)
    print(
        f"   first call: {_ms(first)}; the array went to the workers once, through shared "
        f"memory, not 8 times through a pipe"
    )
    _, again = _timed(run)
    print(
        f"   same call again: {_ms(again)}; the unchanged array's shared copy was reused "
        f"(checked by hashing it)"
    )


def _parallel_section() -> None:
    from parajob import Parallel, cpu_count, delayed

    chunks = [(i, i + 25_000) for i in range(0, 400_000, 25_000)]
    print(f"\n3. Parallel: counting primes below 400,000 in {len(chunks)} tasks")
    serial, t_serial = _timed(
        lambda: Parallel(n_jobs=1)(delayed(count_primes)(a, b) for a, b in chunks)
    )
    print(f"   n_jobs=1:  {sum(serial):,} primes in {_ms(t_serial)}")
    # The worker pool starts once and then stays warm between calls: time that apart.
    _, t_start = _timed(lambda: Parallel(n_jobs=-1)(delayed(abs)(-i) for i in range(2)))
    print(f"   starting {cpu_count()} worker processes (once, kept warm): {_ms(t_start)}")
    tasks = [delayed(count_primes)(a, b) for a, b in chunks]
    parallel, t_parallel = _timed(lambda: Parallel(n_jobs=-1, progress="text")(tasks))
    if parallel != serial:
        raise RuntimeError("demo: the parallel run disagrees with the serial one")
    print(
        f"   n_jobs=-1: {sum(parallel):,} primes in {_ms(t_parallel)} on {cpu_count()} CPUs "
        f"({t_serial / t_parallel:.1f}x faster)"
    )


def _memory_section(folder: Path) -> None:
    from parajob import Memory

    cache_dir = folder / "cache"
    memory = Memory(cache_dir, verbose=0)
    cached = memory.cache(count_primes)
    print("\n4. Memory: results cached on disk, keyed by the arguments")
    from_earlier_run = cached.check_call_in_cache(0, 600_000)
    first, t_first = _timed(lambda: cached(0, 600_000))
    how = "answered from the cache an earlier run left" if from_earlier_run else "computed"
    print(f"   count_primes(0, 600_000) = {first:,}: {how}, {_ms(t_first)}")
    second, t_second = _timed(lambda: cached(0, 600_000))
    if second != first:
        raise RuntimeError("demo: the cached result differs from the computed one")
    print(f"   the same call again: answered from the cache in {_ms(t_second)}")
    print(f"   {cached.explain(0, 600_000)}")
    print(f"   the cache stays in {cache_dir}: run the demo again to see the first call hit it,")
    print(f"   or look at it with: parajob cache info {cache_dir}")


def run_demo(folder: str | os.PathLike[str], *, size_mb: int = 200, keep: bool = False) -> int:
    """Run the demo in ``folder``; return the process exit status."""
    try:
        import numpy as np
    except ImportError:
        print("the demo needs numpy: pip install 'parajob[numpy]'")
        return 1
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    try:
        rng = np.random.default_rng(0)
        # A random walk, like a sensor's readings: realistic, and compressible.
        array = np.cumsum(rng.integers(-3, 4, size_mb * 1_000_000 // 8)).astype(np.float64)
        model = _make_model(np)
        print(f"parajob demo: working in {path.resolve()}")
        print(
            f"   a float64 array of {_mb(array.nbytes)} (a random walk) and a model-like dict "
            f"(6 float32 matrices, a 50,000-word vocabulary, settings)"
        )
        _persistence_section(np, path, array, model)
        _hashing_section(array, model)
        _parallel_section()
        _shared_array_section(array)
        _memory_section(path)
        print("\nAll results were checked equal to the originals.")
    finally:
        # The big persistence files go; the small cache stays, so that a second run shows
        # Memory answering from disk.
        if keep:
            print(f"files kept in {path.resolve()}")
        else:
            for child in path.glob("*.pj"):
                child.unlink()
    return 0
