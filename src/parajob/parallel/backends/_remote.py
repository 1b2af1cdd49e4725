"""What the cluster backends (dask, Ray) share: scattering large arguments, running a batch.

A call replaces each large argument by a :class:`ScatteredArgument` token and ships the value
to the cluster once (``client.scatter`` or ``ray.put``); :func:`run_remote_batch`, the function
the workers run, puts the values back, runs the call's initializer once per worker process and
runs the batch inside a ``parallel_config`` whose backend is the same cluster, so nested
Parallel calls stay there. :class:`ClusterBackend` is the caller's side of that: the shape of a
call on a cluster that both backends have, whatever their cluster's API.
"""

from __future__ import annotations

import threading
import uuid
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from parajob.errors import InvalidParameterError
from parajob.parallel._backend import ParallelBackendBase
from parajob.parallel._tasks import Batch, BatchResult, Task
from parajob.parallel.backends._pooled import worker_setup

__all__ = [
    "ArgumentScatterer",
    "ClusterBackend",
    "RemoteContext",
    "ScatteredArgument",
    "check_batch_result",
    "run_remote_batch",
]

# Types whose values are never worth scattering: checked first, so that the common case of
# many tiny tasks with scalar arguments costs one set lookup per argument.
_SMALL_TYPES = frozenset({int, float, complex, bool, str, type(None), range, slice})


def _nbytes(value: Any) -> int:
    """The size of ``value`` in bytes if it is a buffer-like object, else 0."""
    kind = type(value)
    if kind in _SMALL_TYPES:
        return 0
    if kind is bytes or kind is bytearray:
        return len(value)
    try:
        # numpy arrays, memoryviews, pandas Series, xarray objects, ...
        nbytes = getattr(value, "nbytes", None)
    except Exception:
        return 0
    if isinstance(nbytes, int) and not isinstance(nbytes, bool):
        return nbytes
    return 0


def _is_large(value: Any, threshold: int) -> bool:
    size = _nbytes(value)
    return size > 0 and size >= threshold


class ScatteredArgument:
    """Stands in a task's arguments for a value sent to the cluster once per call."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token

    def __reduce__(self) -> tuple[Any, ...]:
        return (ScatteredArgument, (self.token,))

    def __repr__(self) -> str:
        return f"ScatteredArgument({self.token!r})"


class ArgumentScatterer:
    """Replace large top-level task arguments by tokens, sending each object once per call.

    Parameters
    ----------
    send : callable
        ``send(obj)`` puts ``obj`` on the cluster and returns a handle (a dask Future, a Ray
        ObjectRef) that the worker side resolves to ``obj`` again.
    """

    def __init__(self, send: Callable[[Any], Any]) -> None:
        self._send = send
        # id(obj) -> (obj, token, handle). The object itself is held so that its id cannot be
        # reused by another object while the call runs.
        self._sent: dict[int, tuple[Any, str, Any]] = {}

    def prepare(self, batch: Batch, threshold: int | None) -> tuple[Batch, dict[str, Any]]:
        """Return the batch to send and the handles (by token) that its tasks refer to."""
        if threshold is None:
            return batch, {}
        handles: dict[str, Any] = {}
        new_tasks: list[Task] | None = None
        for pos, (function, args, kwargs) in enumerate(batch.tasks):
            new_args = self._replace_args(args, threshold, handles)
            new_kwargs = self._replace_kwargs(kwargs, threshold, handles)
            if new_args is None and new_kwargs is None:
                if new_tasks is not None:
                    new_tasks.append((function, args, kwargs))
                continue
            if new_tasks is None:
                new_tasks = list(batch.tasks[:pos])
            new_tasks.append(
                (
                    function,
                    args if new_args is None else new_args,
                    kwargs if new_kwargs is None else new_kwargs,
                )
            )
        if new_tasks is None:
            return batch, handles
        return Batch(new_tasks, batch.first_index, batch.stop_on_error), handles

    def _token_for(self, value: Any, handles: dict[str, Any]) -> ScatteredArgument:
        entry = self._sent.get(id(value))
        if entry is None:
            token = uuid.uuid4().hex
            entry = (value, token, self._send(value))
            self._sent[id(value)] = entry
        handles[entry[1]] = entry[2]
        return ScatteredArgument(entry[1])

    def _replace_args(
        self, args: tuple[Any, ...], threshold: int, handles: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        out: list[Any] | None = None
        for pos, value in enumerate(args):
            if _is_large(value, threshold):
                if out is None:
                    out = list(args)
                out[pos] = self._token_for(value, handles)
        return None if out is None else tuple(out)

    def _replace_kwargs(
        self, kwargs: dict[str, Any], threshold: int, handles: dict[str, Any]
    ) -> dict[str, Any] | None:
        out: dict[str, Any] | None = None
        for name, value in kwargs.items():
            if _is_large(value, threshold):
                if out is None:
                    out = dict(kwargs)
                out[name] = self._token_for(value, handles)
        return out

    @property
    def n_sent(self) -> int:
        """How many distinct objects were sent during this call."""
        return len(self._sent)

    def clear(self) -> list[Any]:
        """Forget the objects sent during the call; return their handles (to release them)."""
        handles = [entry[2] for entry in self._sent.values()]
        self._sent.clear()
        return handles


def _substitute(batch: Batch, values: Mapping[str, Any]) -> Batch:
    def put_back(value: Any) -> Any:
        if isinstance(value, ScatteredArgument):
            return values[value.token]
        return value

    tasks: list[Task] = [
        (
            function,
            tuple(put_back(a) for a in args),
            {k: put_back(v) for k, v in kwargs.items()},
        )
        for function, args, kwargs in batch.tasks
    ]
    return Batch(tasks, batch.first_index, batch.stop_on_error)


# Initializers already run in this worker process, by the token of the call that asked.
_initialized: set[str] = set()
_init_lock = threading.Lock()


@dataclass(frozen=True)
class RemoteContext:
    """What a cluster worker needs, besides the batch, to run it as Parallel would locally.

    ``backend`` names the backend that nested Parallel calls inside the tasks use (``"dask"``
    or ``"ray"``) and ``nesting_level`` is the level of those nested calls.
    """

    backend: str
    nesting_level: int
    init_token: str
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()

    def run_initializer_once(self) -> None:
        """Run the call's initializer if this worker process has not run it yet."""
        if self.initializer is None:
            return
        with _init_lock:
            if self.init_token in _initialized:
                return
            self.initializer(*self.initargs)
            _initialized.add(self.init_token)

    def nested_backend(self) -> ParallelBackendBase:
        """The backend for Parallel calls made by the tasks (on the same cluster)."""
        if self.backend == "ray":
            from parajob.parallel.backends._ray import RayBackend

            return RayBackend(nesting_level=self.nesting_level)
        from parajob.parallel.backends._dask import DaskBackend

        return DaskBackend(nesting_level=self.nesting_level)

    @classmethod
    def for_call(cls, backend: str, nesting_level: int | None, parallel: Any) -> RemoteContext:
        """The context of one Parallel call on ``backend`` (a fresh initializer token)."""
        initializer, initargs = worker_setup(parallel)
        return cls(
            backend=backend,
            nesting_level=(nesting_level or 0) + 1,
            init_token=uuid.uuid4().hex,
            initializer=initializer,
            initargs=tuple(initargs),
        )


def run_remote_batch(
    batch: Batch, context: RemoteContext, values: Mapping[str, Any]
) -> BatchResult:
    """Run ``batch`` in a cluster worker (the function the dask and Ray backends send)."""
    from parajob.parallel._config import parallel_config

    if values:
        batch = _substitute(batch, values)
    context.run_initializer_once()
    with parallel_config(backend=context.nested_backend()):
        return batch()


def check_batch_result(result: Any, worker: str, description: str) -> BatchResult:
    """Return ``result``, failing if a ``worker`` worker sent anything but a BatchResult."""
    if not isinstance(result, BatchResult):
        raise TypeError(
            f"a {worker} worker returned {type(result).__name__} for {description}; expected a "
            f"BatchResult"
        )
    return result


class ClusterBackend(ParallelBackendBase):
    """The caller's side of a Parallel call on a cluster (the dask and Ray backends).

    A subclass names itself and what ``n_jobs=-1`` covers, and implements
    :meth:`_count_slots` (how many batches the cluster runs at once), :meth:`_send` (put one
    object on the cluster), ``submit`` (starting with :meth:`_prepare_batch`) and
    ``abort_everything`` (cancelling what :meth:`_take_pending` returns).
    """

    default_n_jobs = -1
    supports_initializer = True

    # The backend's registered name (messages, RemoteContext), what n_jobs=-1 means on its
    # cluster, and the parameters its constructor takes (for the unexpected-parameter error).
    _name: ClassVar[str]
    _all_workers: ClassVar[str]
    _parameters: ClassVar[str]

    def __init__(self, nesting_level: int | None = None, **backend_kwargs: Any) -> None:
        if backend_kwargs:
            raise InvalidParameterError(
                f"unexpected parameters {sorted(backend_kwargs)} for the {self._name} backend; "
                f"it takes {self._parameters}"
            )
        super().__init__(nesting_level=nesting_level)
        self._lock = threading.Lock()
        # What abort_everything cancels (a future or ObjectRef), by what its completion
        # callback receives; filled by _track, emptied by _untrack and _take_pending.
        self._pending: dict[Any, Any] = {}
        self._scatterer: ArgumentScatterer | None = None
        self._context: RemoteContext | None = None

    @abstractmethod
    def _count_slots(self) -> int:
        """How many batches the cluster can run at once (what ``n_jobs=-1`` gets)."""

    @abstractmethod
    def _send(self, value: Any) -> Any:
        """Put ``value`` on the cluster once; return the handle its workers resolve."""

    def _release(self, handles: list[Any]) -> None:
        """Free the objects sent during the call (dropping the last handles does, by default)."""

    def effective_n_jobs(self, n_jobs: int) -> int:
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs == 0:
            raise ValueError(
                f"n_jobs must be a non-zero int, got 0; use -1 for {self._all_workers}"
            )
        if n_jobs > 0:
            return int(n_jobs)
        return max(self._count_slots() + 1 + n_jobs, 1)

    def _prepare_workers(self, n: int) -> None:
        self._context = RemoteContext.for_call(self._name, self.nesting_level, self.parallel)

    def start_call(self) -> None:
        self._scatterer = ArgumentScatterer(self._send)

    def stop_call(self) -> None:
        scatterer, self._scatterer = self._scatterer, None
        if scatterer is not None:
            self._release(scatterer.clear())

    def _prepare_batch(self, func: Callable[[], Any]) -> tuple[Batch, dict[str, Any]]:
        """Return the batch to send for ``func`` and the handles of its scattered arguments."""
        if not isinstance(func, Batch):
            raise TypeError(f"the {self._name} backend runs Parallel batches, got {func!r}")
        if self._context is None:
            self.configure(n_jobs=-1, parallel=self.parallel)
        if self._scatterer is None:
            self._scatterer = ArgumentScatterer(self._send)
        threshold = getattr(self.parallel, "_max_nbytes", 1 << 20)
        return self._scatterer.prepare(func, threshold)

    def _track(self, key: Any, handle: Any) -> None:
        with self._lock:
            self._pending[key] = handle

    def _untrack(self, key: Any) -> None:
        with self._lock:
            self._pending.pop(key, None)

    def _take_pending(self) -> list[Any]:
        """Forget the batches still pending; return their handles, to cancel them."""
        with self._lock:
            handles = list(self._pending.values())
            self._pending.clear()
        return handles

    def terminate(self) -> None:
        # The cluster belongs to the user (or, for Ray, to the process): only forget the call.
        self.abort_everything()
        self._context = None
