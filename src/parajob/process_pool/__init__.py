"""parajob's process pool: reusable, warm, and sturdy when workers crash or hang.

The engine of parajob's ``"processes"`` backend, usable on its own. See
``docs/process_pool.md`` for how it behaves.

Public names
------------
get_executor, shutdown_executor
    The shared warm pool of this process.
free_shared_arrays
    Free the shared-memory copies of arrays kept from earlier Parallel calls.
ProcessPool, BatchResult, Call
    The pool itself and the shape of batch results.
worker_id, worker_state
    What task code can ask of the worker it runs in.
cpu_count, effective_n_jobs
    How many CPUs this process may use, and joblib's ``n_jobs`` arithmetic.
RemoteTraceback
    The worker traceback attached as ``__cause__`` of a re-raised task error.

The names are imported on first use: a worker process imports ``_worker`` through this
package, and must not pay for the parent-side machinery (threads, futures, the manager)
while it starts. That import is on the critical path of every pool's first call.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parajob.process_pool._cpu import cpu_count, effective_n_jobs
    from parajob.process_pool._messages import RemoteTraceback
    from parajob.process_pool._pool import BatchResult, Call, ProcessPool
    from parajob.process_pool._shared import get_executor, shutdown_executor
    from parajob.process_pool._sharer import free_shared_arrays
    from parajob.process_pool._worker import worker_id, worker_state

_WHERE = {
    "BatchResult": "_pool",
    "Call": "_pool",
    "ProcessPool": "_pool",
    "RemoteTraceback": "_messages",
    "cpu_count": "_cpu",
    "effective_n_jobs": "_cpu",
    "free_shared_arrays": "_sharer",
    "get_executor": "_shared",
    "shutdown_executor": "_shared",
    "worker_id": "_worker",
    "worker_state": "_worker",
}

__all__ = [
    "BatchResult",
    "Call",
    "ProcessPool",
    "RemoteTraceback",
    "cpu_count",
    "effective_n_jobs",
    "free_shared_arrays",
    "get_executor",
    "shutdown_executor",
    "worker_id",
    "worker_state",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'parajob.process_pool' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"parajob.process_pool.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
