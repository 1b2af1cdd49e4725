"""parajob: joblib's API, faster and sturdier.

Parallel loops (``Parallel``/``delayed``), on-disk memoization (``Memory``), persistence
(``dump``/``load``) and fast, stable hashing (``hash``). Code written for joblib runs by
changing the import.
"""

from __future__ import annotations

from parajob import errors
from parajob.hashing import hash
from parajob.memory import (
    Logger,
    MemorizedResult,
    Memory,
    PrintTime,
    StoreBackendBase,
    expires_after,
    register_store_backend,
)
from parajob.parallel import (
    Parallel,
    ParallelBackendBase,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
    worker_id,
    wrap_non_picklable_objects,
)
from parajob.persistence import dump, dumps, load, loads, register_compressor
from parajob.process_pool import cpu_count, worker_state

__version__ = "0.1.0.dev0"

__all__ = [
    "Logger",
    "MemorizedResult",
    "Memory",
    "Parallel",
    "ParallelBackendBase",
    "PrintTime",
    "StoreBackendBase",
    "__version__",
    "cpu_count",
    "delayed",
    "dump",
    "dumps",
    "effective_n_jobs",
    "errors",
    "expires_after",
    "hash",
    "load",
    "loads",
    "parallel_backend",
    "parallel_config",
    "register_compressor",
    "register_parallel_backend",
    "register_store_backend",
    "worker_id",
    "worker_state",
    "wrap_non_picklable_objects",
]
