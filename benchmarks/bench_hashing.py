"""Benchmarks of parajob.hash against joblib.hash and the raw limit.

Targets (issue 2): hashing a 500 MB float64 array is at least 20x faster than joblib and within
1.5x of raw xxh3_128 over the same bytes; hashing a dict of 100k str -> int is at least 5x
faster than joblib. ``PARAJOB_BENCH_QUICK=1`` shrinks the inputs so the suite runs in seconds.
"""

from __future__ import annotations

import os
import pickle
import random
from typing import Any

from _harness import Case, Target

QUICK = os.environ.get("PARAJOB_BENCH_QUICK") == "1"


def _array_case() -> Case:
    import joblib
    import numpy as np
    import xxhash

    from parajob import hash as pj_hash

    nbytes = (16 if QUICK else 500) * 10**6
    array = np.random.default_rng(0).random(nbytes // 8)
    label = f"{nbytes // 10**6} MB"
    return Case(
        name=f"hash float64 array ({label})",
        contenders={
            "parajob": lambda: pj_hash(array),
            "joblib": lambda: joblib.hash(array),
            "raw xxh3_128": lambda: xxhash.xxh3_128(array).hexdigest(),
        },
        targets=[
            Target("parajob", "joblib", 1 / 20),
            Target("parajob", "raw xxh3_128", 1.5),
        ],
    )


def _dict_case() -> Case:
    import joblib
    import xxhash

    from parajob import hash as pj_hash

    n = 10_000 if QUICK else 100_000
    rnd = random.Random(0)
    keys = [f"feature_{rnd.getrandbits(48):012x}" for _ in range(n)]
    mapping = {key: i for i, key in enumerate(keys)}  # inserted in random (unsorted) order

    def raw() -> Any:
        # The limit: one pickle pass with no canonical ordering (so not a usable key).
        return xxhash.xxh3_128(pickle.dumps(mapping, protocol=5)).hexdigest()

    return Case(
        name=f"hash dict of {n // 1000}k str->int",
        contenders={
            "parajob": lambda: pj_hash(mapping),
            "joblib": lambda: joblib.hash(mapping),
            "raw pickle+xxh3": raw,
        },
        targets=[Target("parajob", "joblib", 1 / 5)],
    )


def _records_case() -> Case:
    """Informational: many small nested objects, the shape of typical Memory arguments."""
    import joblib
    import numpy as np

    from parajob import hash as pj_hash

    n = 2_000 if QUICK else 20_000
    records = [
        {"id": i, "name": f"row{i}", "tags": {"a", "b", str(i % 7)}, "weights": np.arange(4.0) + i}
        for i in range(n)
    ]

    def raw() -> Any:
        return pickle.dumps(records, protocol=5)

    return Case(
        name=f"hash list of {n // 1000}k small records",
        contenders={
            "parajob": lambda: pj_hash(records),
            "joblib": lambda: joblib.hash(records),
            "raw pickle": raw,
        },
    )


def cases() -> list[Case]:
    """Return the hashing benchmark cases."""
    return [_array_case(), _dict_case(), _records_case()]
