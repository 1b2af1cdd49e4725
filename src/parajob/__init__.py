"""parajob: joblib's API, faster and sturdier.

Parallel loops (``Parallel``/``delayed``), on-disk memoization (``Memory``), persistence
(``dump``/``load``) and fast, stable hashing (``hash``). Code written for joblib runs by
changing the import.

The names below are imported on first use (PEP 562), so ``import parajob`` stays cheap, and
so does the start of every worker process, which imports this package too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "Logger": "parajob.memory",
    "MemorizedResult": "parajob.memory",
    "Memory": "parajob.memory",
    "Parallel": "parajob.parallel",
    "ParallelBackendBase": "parajob.parallel",
    "PrintTime": "parajob.memory",
    "StoreBackendBase": "parajob.memory",
    "cpu_count": "parajob.process_pool",
    "delayed": "parajob.parallel",
    "dump": "parajob.persistence",
    "dumps": "parajob.persistence",
    "effective_n_jobs": "parajob.parallel",
    "expires_after": "parajob.memory",
    "hash": "parajob.hashing",
    "load": "parajob.persistence",
    "loads": "parajob.persistence",
    "parallel_backend": "parajob.parallel",
    "parallel_config": "parajob.parallel",
    "register_compressor": "parajob.persistence",
    "register_joblib_backend": "parajob.joblib_adapter",
    "register_parallel_backend": "parajob.parallel",
    "register_store_backend": "parajob.memory",
    "worker_id": "parajob.parallel",
    "worker_state": "parajob.process_pool",
    "wrap_non_picklable_objects": "parajob.parallel",
}

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
    "register_joblib_backend",
    "register_parallel_backend",
    "register_store_backend",
    "worker_id",
    "worker_state",
    "wrap_non_picklable_objects",
]


def __getattr__(name: str) -> Any:
    if name == "errors":
        value: Any = importlib.import_module("parajob.errors")
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'parajob' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from parajob import errors
    from parajob.hashing import hash
    from parajob.joblib_adapter import register_joblib_backend
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
