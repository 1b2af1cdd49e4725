"""parajob's built-in parallel backends, registered on import."""

from __future__ import annotations

from parajob.parallel._backend import BACKENDS
from parajob.parallel.backends._multiprocessing import MultiprocessingBackend
from parajob.parallel.backends._processes import ProcessesBackend
from parajob.parallel.backends._sequential import SequentialBackend
from parajob.parallel.backends._threading import ThreadingBackend

__all__ = ["MultiprocessingBackend", "ProcessesBackend", "SequentialBackend", "ThreadingBackend"]

for _name, _factory in (
    ("sequential", SequentialBackend),
    ("threading", ThreadingBackend),
    ("multiprocessing", MultiprocessingBackend),
    ("processes", ProcessesBackend),
):
    if _name not in BACKENDS:
        BACKENDS.register(_name, _factory)
