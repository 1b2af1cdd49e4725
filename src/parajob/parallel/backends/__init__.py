"""parajob's built-in parallel backends, registered on import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from parajob.parallel._backend import BACKENDS, ParallelBackendBase
from parajob.parallel.backends._multiprocessing import MultiprocessingBackend
from parajob.parallel.backends._processes import ProcessesBackend
from parajob.parallel.backends._sequential import SequentialBackend
from parajob.parallel.backends._threading import ThreadingBackend

__all__ = ["MultiprocessingBackend", "ProcessesBackend", "SequentialBackend", "ThreadingBackend"]


def _dask_backend(**params: Any) -> ParallelBackendBase:
    # Imported on use: dask is an optional dependency (pip install 'parajob[dask]').
    from parajob.parallel.backends._dask import DaskBackend

    return DaskBackend(**params)


def _ray_backend(**params: Any) -> ParallelBackendBase:
    # Imported on use: ray is an optional dependency (pip install 'parajob[ray]').
    from parajob.parallel.backends._ray import RayBackend

    return RayBackend(**params)


_factory: Callable[..., ParallelBackendBase]
for _name, _factory in (
    ("sequential", SequentialBackend),
    ("threading", ThreadingBackend),
    ("multiprocessing", MultiprocessingBackend),
    ("processes", ProcessesBackend),
    ("dask", _dask_backend),
    ("ray", _ray_backend),
):
    if _name not in BACKENDS:
        BACKENDS.register(_name, _factory)
