"""One Memory cache shared by the workers of a dask LocalCluster."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import cluster_tasks as ct
import pytest

from parajob import Parallel, delayed, parallel_config

# The module's cluster lives across tests on purpose; its fixture checks its own teardown.
pytestmark = pytest.mark.allow_leftovers


def test_cached_function_computes_each_key_once_across_cluster_workers(
    dask_client: Any, tmp_path: Path
) -> None:
    location = str(tmp_path / "cache")
    markers = tmp_path / "markers"
    markers.mkdir()
    keys = [k for k in range(4) for _ in range(4)]  # each key asked 4 times, interleaved
    keys = keys[::2] + keys[1::2]
    with parallel_config(backend="dask"):
        out = Parallel(batch_size=1)(
            delayed(ct.run_cached)(location, k, str(markers)) for k in keys
        )
    assert [v for v, _ in out] == [k * 10 for k in keys]
    assert len({pid for _, pid in out}) == 2, "both workers took part"
    computed = Counter(int(p.name.split("-")[1]) for p in markers.glob("computed-*"))
    assert computed == Counter(range(4)), f"computations per key: {dict(computed)}"
    # The results are visible to every process, this one included.
    with parallel_config(backend="dask"):
        again = Parallel()(delayed(ct.run_cached)(location, k, str(markers)) for k in range(4))
    assert [v for v, _ in again] == [0, 10, 20, 30]
    assert sum(1 for _ in markers.glob("computed-*")) == 4
    assert ct.run_cached(location, 3, str(markers))[0] == 30
    assert sum(1 for _ in markers.glob("computed-*")) == 4
