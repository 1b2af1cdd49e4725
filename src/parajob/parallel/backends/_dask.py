"""The dask backend: Parallel's batches run on a ``dask.distributed`` cluster.

Moving parts::

    caller's thread                                  dask client / cluster
    ───────────────                                  ─────────────────────
    DaskBackend.submit(batch)
      ├─ ArgumentScatterer: large arguments ──────► client.scatter (once per call per object)
      │  are replaced by ScatteredArgument(token)
      └─ client.submit(run_remote_batch, ...) ────► a worker runs the batch:
                                                       substitute the scattered values,
                                                       run the initializer once per process,
                                                       run the batch inside
                                                       parallel_config(backend=<nested dask>)
    callback(future) ◄── dask's callback thread ◄──── BatchResult (values, errors, duration)

The dispatcher (``parajob.parallel._dispatch``) does the rest exactly as for the processes
backend: ordering, the error policy, retries, progress and cancellation. Nested Parallel calls
inside a task run on the same cluster: the task *secedes* from its worker's thread pool while it
waits, so an outer call that fills every worker slot cannot deadlock its inner calls.

The helpers that replace large arguments by tokens and put them back in the worker are shared
with the Ray backend (``_remote.py``).
"""

from __future__ import annotations

import ipaddress
import itertools
import uuid
from collections.abc import Callable
from typing import Any

from parajob.errors import InvalidParameterError, MissingDependencyError, TerminatedWorkerError
from parajob.parallel._backend import ParallelBackendBase
from parajob.parallel._tasks import BatchResult
from parajob.parallel.backends._remote import ClusterBackend, check_batch_result, run_remote_batch

__all__ = ["DaskBackend"]


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise MissingDependencyError(
            "the dask backend needs dask.distributed: pip install 'parajob[dask]'"
        ) from exc
    return distributed


class DaskBackend(ClusterBackend):
    """Run Parallel's batches on a ``dask.distributed`` cluster.

    Use it with ``parallel_config(backend="dask")`` (or ``Parallel(backend="dask")``) while a
    :class:`distributed.Client` is active, or pass the client.

    Parameters
    ----------
    client : distributed.Client, optional
        The client to submit to; by default the current one (``distributed.get_client()``),
        looked up when a Parallel call starts, not when the backend is created. Inside a task
        running on a dask worker this is the worker's client, so nested calls stay on the
        cluster.
    wait_for_workers_timeout : float, default=10.0
        Seconds to wait for the cluster to have at least one worker before a call fails.
    nesting_level : int, optional
        Set by parajob for Parallel calls made inside tasks.

    Notes
    -----
    * ``n_jobs=-1`` (the default under this backend) means every worker thread of the cluster.
    * Arguments of at least ``max_nbytes`` bytes (Parallel's setting, ``"1M"`` by default;
      numpy arrays, bytes, anything with an ``nbytes``) are scattered to the cluster once per
      call, however many tasks use them; ``max_nbytes=None`` sends every argument with its
      task.
    * A running dask task cannot be stopped: cancellation (the first error under
      ``on_error="raise"``, Ctrl-C, a closed generator) cancels pending batches and drops the
      results of running ones. ``task_timeout`` fails a task after the fact when it ran too
      long. Dask re-runs a batch whose worker died up to ``distributed.scheduler.allowed-
      failures`` times (3 by default) before parajob sees it fail.

    .. versionadded:: 0.1
    """

    _name = "dask"
    _all_workers = "every thread of the dask cluster"
    _parameters = "client= and wait_for_workers_timeout="

    def __init__(
        self,
        nesting_level: int | None = None,
        client: Any = None,
        wait_for_workers_timeout: float = 10.0,
        **backend_kwargs: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, **backend_kwargs)
        if isinstance(wait_for_workers_timeout, bool) or not wait_for_workers_timeout >= 0:
            raise InvalidParameterError(
                f"wait_for_workers_timeout must be a number of seconds >= 0, got "
                f"{wait_for_workers_timeout!r}"
            )
        self.client = client
        self.wait_for_workers_timeout = float(wait_for_workers_timeout)
        self._call_client: Any = None
        self._keys = itertools.count()
        self._call_token = uuid.uuid4().hex[:12]
        self._seceded = False
        # Scatter straight to a worker? Looked up at a call's first scatter (_scatter_direct).
        self._direct: bool | None = None
        self._direct_known = False

    # -- the cluster ------------------------------------------------------------------------

    def get_client(self) -> Any:
        """Return the client this backend submits to (the given one, else the current one)."""
        if self.client is not None:
            return self.client
        distributed = _import_distributed()
        try:
            return distributed.get_client()
        except ValueError:
            raise InvalidParameterError(
                "backend='dask' found no dask.distributed Client; create one before the call, "
                "e.g. `from distributed import Client; client = Client()` (a local cluster) or "
                "Client('tcp://scheduler:8786'), or pass parallel_config(backend='dask', "
                "client=client)"
            ) from None

    def _count_slots(self) -> int:
        client = self.get_client()
        total = sum(client.nthreads().values())
        if total == 0 and self.wait_for_workers_timeout > 0:
            try:
                client.wait_for_workers(1, timeout=self.wait_for_workers_timeout)
            except Exception:
                pass
            total = sum(client.nthreads().values())
        if total == 0:
            raise InvalidParameterError(
                f"the dask cluster at {client.scheduler.address} has no workers (waited "
                f"{self.wait_for_workers_timeout:g} s); start workers or raise "
                f"wait_for_workers_timeout"
            )
        return int(total)

    def _prepare_workers(self, n: int) -> None:
        # Set before the call's context: _prepare_batch takes a context to mean both are.
        self._call_client = self.get_client()
        super()._prepare_workers(n)
        self._direct_known = False

    def _send(self, value: Any) -> Any:
        # hash=False: the object is identified by this call, not by its content (hashing
        # 200 MB costs more than it saves).
        if not self._direct_known:
            self._direct = _scatter_direct(self._call_client)
            self._direct_known = True
        return self._call_client.scatter(value, hash=False, direct=self._direct)

    # -- a call -----------------------------------------------------------------------------

    def start_call(self) -> None:
        super().start_call()
        self._call_token = uuid.uuid4().hex[:12]
        self._direct_known = False  # the cluster may have changed since the last call
        self._secede_if_in_task()

    def stop_call(self) -> None:
        try:
            super().stop_call()
        finally:
            self._rejoin()

    def _release(self, handles: list[Any]) -> None:
        if handles and self._call_client is not None:
            # Release the scattered data now rather than when the futures are
            # garbage-collected, so a 200 MB array does not outlive its call.
            self._call_client.cancel(handles)

    def _secede_if_in_task(self) -> None:
        """Inside a dask task, give the worker thread back while this nested call waits."""
        distributed = _import_distributed()
        try:
            distributed.get_worker()
        except ValueError:
            return  # not on a dask worker
        from distributed.worker import thread_state

        if getattr(thread_state, "key", None) is None:
            return  # on a worker, but not in a task's thread
        distributed.secede()
        self._seceded = True

    def _rejoin(self) -> None:
        if self._seceded:
            self._seceded = False
            _import_distributed().rejoin()

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        batch, handles = self._prepare_batch(func)
        key = f"parajob-{self._call_token}-{batch.first_index}-{next(self._keys)}"
        future = self._call_client.submit(
            run_remote_batch, batch, self._context, handles, key=key, pure=False
        )
        wrapper = _DaskFuture(future, batch.describe())
        self._track(future, future)

        def done(fut: Any) -> None:
            self._untrack(fut)
            if callback is not None:
                callback(wrapper)

        future.add_done_callback(done)
        return wrapper

    def retrieve_result_callback(self, out: Any) -> BatchResult:
        future = out.future if isinstance(out, _DaskFuture) else out
        description = out.description if isinstance(out, _DaskFuture) else "a batch"
        return _dask_result(future, description)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        futures = self._take_pending()
        if futures and self._call_client is not None:
            self._call_client.cancel(futures)

    def terminate(self) -> None:
        # The client and cluster belong to the user; only forget this call's state.
        super().terminate()
        self._call_client = None

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        return DaskBackend(nesting_level=(self.nesting_level or 0) + 1), None

    def __reduce__(self) -> tuple[Any, ...]:
        # A backend captured in a task's closure travels without its client (which belongs
        # to the caller's process); on a worker it finds the worker's client.
        return (DaskBackend, (self.nesting_level, None, self.wait_for_workers_timeout))


def _scatter_direct(client: Any) -> bool | None:
    """Whether ``client.scatter`` should send data straight to a worker (None: dask decides).

    Outside a worker, dask's default routes scattered data through the scheduler: client to
    scheduler, then scheduler to worker, so a 200 MB array crosses the wire twice and the
    scheduler's event loop is busy copying it meanwhile. Sending it straight to a worker
    halves that, but only works when the client can open connections to the workers, which a
    remote cluster behind a gateway or firewall may not allow. So: the client's own
    ``direct_to_workers`` setting wins; otherwise go direct only when every worker listens on
    a loopback or in-process address, i.e. the cluster is on this machine (a LocalCluster).
    """
    explicit = getattr(client, "direct_to_workers", None)
    if explicit is not None:
        return bool(explicit)
    try:
        from distributed.comm import get_address_host, parse_address

        workers = list(client.nthreads())
        if not workers:
            return None
        for address in workers:
            if parse_address(address)[0] == "inproc":
                continue
            host = get_address_host(address).strip("[]")
            if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
                return None
    except Exception:
        # An address dask or ipaddress cannot parse (a hostname, a new comm scheme): keep
        # dask's default, which always works.
        return None
    return True


class _DaskFuture:
    """What submit returns (and the callback receives): a dask future and its batch's name."""

    __slots__ = ("description", "future")

    def __init__(self, future: Any, description: str) -> None:
        self.future = future
        self.description = description

    def cancel(self) -> bool:
        self.future.cancel()
        return True

    def result(self, timeout: float | None = None) -> Any:
        return _dask_result(self.future, self.description, timeout)

    def done(self) -> bool:
        return bool(self.future.done())


def _dask_result(future: Any, description: str, timeout: float | None = None) -> BatchResult:
    from distributed.scheduler import KilledWorker

    try:
        result = future.result(timeout=timeout)
    except KilledWorker as exc:
        import dask

        allowed = dask.config.get("distributed.scheduler.allowed-failures", default=3)
        attempts = int(allowed) + 1
        raise TerminatedWorkerError(
            f"the dask worker holding {description} died (segfault, os._exit, out of memory, "
            f"...) {attempts} time{'s' if attempts > 1 else ''} in a row and dask gave up on it: "
            f"{exc}; dask cannot tell which of a dead worker's tasks killed it, so this may be "
            f"a task queued behind the culprit; the cluster replaces dead workers, so the next "
            f"call works (raise distributed.scheduler.allowed-failures to try more often)"
        ) from exc
    return check_batch_result(result, "dask", description)
