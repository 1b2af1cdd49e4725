"""The Ray backend: Parallel's batches run as Ray tasks.

Each batch becomes one Ray task running :func:`~parajob.parallel.backends._remote.run_remote_batch`
(the same worker-side runner as the dask backend). Large arguments are put in Ray's object
store once per call and passed as top-level ``ObjectRef`` arguments, which Ray resolves (numpy
arrays without a copy, read-only). Completion reaches the dispatcher through
``ObjectRef.future()``; cancellation uses ``ray.cancel(..., force=True)``, which stops the
worker running a batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from parajob.errors import InvalidParameterError, MissingDependencyError, TerminatedWorkerError
from parajob.parallel._backend import ParallelBackendBase
from parajob.parallel._tasks import Batch, BatchResult
from parajob.parallel.backends._remote import (
    ClusterBackend,
    RemoteContext,
    check_batch_result,
    run_remote_batch,
)

__all__ = ["RayBackend"]


# How long abort_everything waits for cancelled tasks to stop (seconds).
_CANCEL_WAIT = 5.0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            "the ray backend needs Ray: pip install 'parajob[ray]'"
        ) from exc
    return ray


def _run_ray_batch(
    batch: Batch, context: RemoteContext, tokens: tuple[str, ...], *values: Any
) -> BatchResult:
    # Ray resolves ObjectRefs only among the top-level arguments, so the scattered values
    # arrive here positionally and are matched with their tokens.
    resolved: Mapping[str, Any] = dict(zip(tokens, values, strict=True))
    return run_remote_batch(batch, context, resolved)


_remote_function: list[Any] = []
_remote_lock = threading.Lock()


def _remote() -> Any:
    """``ray.remote(_run_ray_batch)``, made once (it registers the function with Ray)."""
    with _remote_lock:
        if not _remote_function:
            ray = _import_ray()
            # max_retries=1: when a call is cancelled, its running tasks' workers are killed
            # asynchronously, and Ray may hand one of those dying workers a task of the next
            # call; one system-level retry runs that task again on a live worker. A task
            # that kills its worker itself dies twice and is then reported, naming the task
            # (cancelled tasks are never retried by Ray).
            _remote_function.append(ray.remote(max_retries=1)(_run_ray_batch))
        return _remote_function[0]


class RayBackend(ClusterBackend):
    """Run Parallel's batches as tasks on a Ray cluster.

    Use it with ``parallel_config(backend="ray")``. When Ray is not initialized yet, the first
    call runs ``ray.init(address=address)``, which connects to the cluster named by
    ``address`` (or ``RAY_ADDRESS``) or starts a local one.

    Parameters
    ----------
    address : str, optional
        Passed to ``ray.init`` when Ray is not initialized yet.
    ray_remote_args : dict, optional
        Resources and options of each batch's task, passed to ``.options()`` (for example
        ``{"num_cpus": 2}`` or ``{"resources": {"big-memory": 1}}``); ``{"num_cpus": 1}`` by
        default.
    nesting_level : int, optional
        Set by parajob for Parallel calls made inside tasks.

    Notes
    -----
    * ``n_jobs=-1`` (the default under this backend) means every CPU of the Ray cluster.
    * Arguments of at least ``max_nbytes`` bytes are put in Ray's object store once per call.
    * Cancellation (the first error under ``on_error="raise"``, Ctrl-C, a closed generator)
      cancels pending batches and stops the workers running the call's batches.

    .. versionadded:: 0.1
    """

    _name = "ray"
    _all_workers = "every CPU of the Ray cluster"
    _parameters = "address= and ray_remote_args="

    def __init__(
        self,
        nesting_level: int | None = None,
        address: str | None = None,
        ray_remote_args: Mapping[str, Any] | None = None,
        **backend_kwargs: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, **backend_kwargs)
        if ray_remote_args is not None and not isinstance(ray_remote_args, Mapping):
            raise InvalidParameterError(
                f"ray_remote_args must be a dict of Ray task options such as {{'num_cpus': 1}},"
                f" got {ray_remote_args!r}"
            )
        self.address = address
        self.ray_remote_args = dict(ray_remote_args or {"num_cpus": 1})

    def _ray(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address)
        return ray

    def _count_slots(self) -> int:
        per_task = float(self.ray_remote_args.get("num_cpus", 1)) or 1.0
        cpus = float(self._ray().cluster_resources().get("CPU", 1))
        return max(int(cpus // per_task), 1)

    def _prepare_workers(self, n: int) -> None:
        # Inside a Ray task, a nested call must wait with ray.get in the task's own thread:
        # only that releases the task's CPU to the nested tasks (waiting elsewhere deadlocks
        # a cluster whose CPUs are all held by outer tasks). Without completion callbacks
        # the dispatcher waits through retrieve_result, in the calling thread.
        self.supports_retrieve_callback = not _in_ray_task(self._ray())
        super()._prepare_workers(n)

    def _send(self, value: Any) -> Any:
        # Dropping the last references to what this returns (the default _release) frees the
        # objects in the store.
        return self._ray().put(value)

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        batch, handles = self._prepare_batch(func)
        self._ray()
        remote = _remote().options(**self.ray_remote_args)
        tokens = tuple(handles)
        ref = remote.remote(batch, self._context, tokens, *handles.values())
        description = batch.describe()
        if not self.supports_retrieve_callback:
            self._track(ref, ref)
            return _RayFuture(None, description, ref)
        future: Future[Any] = ref.future()
        self._track(future, ref)

        def done(fut: Future[Any]) -> None:
            self._untrack(fut)
            if callback is not None:
                callback(_RayFuture(fut, description))

        future.add_done_callback(done)
        return _RayFuture(future, description, ref)

    def retrieve_result(self, out: Any, timeout: float | None = None) -> Any:
        # Used inside Ray tasks only (see configure). A late batch must look like a timeout
        # to the dispatcher; any other failure is handed over as a value, so that
        # retrieve_result_callback raises it for this batch's tasks alone.
        ray = _import_ray()
        try:
            value = ray.get(out.ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"{out.description} is still running") from None
        except Exception as exc:
            value = _Failed(exc)
        self._untrack(out.ref)
        return value

    def retrieve_result_callback(self, out: Any) -> BatchResult:
        if isinstance(out, _RayFuture):
            return out.result()
        value = out.result()
        if isinstance(value, _Failed):
            return _ray_result(value, "a batch")
        if not isinstance(value, BatchResult):
            raise TypeError(f"a Ray worker returned {type(value).__name__}; expected a BatchResult")
        return value

    def abort_everything(self, ensure_ready: bool = True) -> None:
        refs = self._take_pending()
        if not refs:
            return
        ray = _import_ray()
        for ref in refs:
            try:
                # force=True stops running tasks at once (their workers are killed); see
                # _remote() for how the next call copes with a worker still dying.
                ray.cancel(ref, force=True)
            except Exception:
                # Already finished, or its worker already gone: nothing left to stop.
                pass
        try:
            ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_WAIT)
        except Exception:
            pass

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        return (
            RayBackend(
                nesting_level=(self.nesting_level or 0) + 1,
                ray_remote_args=self.ray_remote_args,
            ),
            None,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayBackend, (self.nesting_level, self.address, self.ray_remote_args))


def _in_ray_task(ray: Any) -> bool:
    # The worker's mode says whether this process is a Ray worker (tasks run only there);
    # asking for the task id in a driver logs a warning.
    worker = getattr(ray.get_runtime_context(), "worker", None)
    return getattr(worker, "mode", None) == getattr(ray, "WORKER_MODE", 1)


class _Failed:
    """A batch's failure, carried as a value through the dispatcher's no-callback path."""

    __slots__ = ("exception",)

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception

    def result(self, timeout: float | None = None) -> Any:
        raise self.exception


class _RefWaiter:
    """``result(timeout)`` over a bare ObjectRef."""

    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def result(self, timeout: float | None = None) -> Any:
        return _import_ray().get(self.ref, timeout=timeout)


class _RayFuture:
    """What submit returns (and the callback receives): the result future and its batch's name."""

    __slots__ = ("description", "future", "ref")

    def __init__(self, future: Future[Any] | None, description: str, ref: Any = None) -> None:
        self.future = future
        self.description = description
        self.ref = ref

    def cancel(self) -> bool:
        if self.ref is not None:
            try:
                _import_ray().cancel(self.ref, force=True)
            except Exception:
                pass  # already finished
        return self.future.cancel() if self.future is not None else True

    def result(self, timeout: float | None = None) -> BatchResult:
        if self.future is None:  # no-callback mode: wait on the ObjectRef itself
            return _ray_result(_RefWaiter(self.ref), self.description, timeout)
        return _ray_result(self.future, self.description, timeout)


def _ray_result(future: Any, description: str, timeout: float | None = None) -> BatchResult:
    ray = _import_ray()
    try:
        result = future.result(timeout=timeout)
    except ray.exceptions.WorkerCrashedError as exc:
        raise TerminatedWorkerError(
            f"the Ray worker running {description} died (segfault, os._exit, out of memory, "
            f"...): {exc}; Ray starts a new worker, so the next call works"
        ) from exc
    return check_batch_result(result, "Ray", description)
