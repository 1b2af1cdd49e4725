"""Run joblib's (and so scikit-learn's) parallel work on parajob's process pool.

scikit-learn calls ``joblib.Parallel`` internally. :func:`register_joblib_backend` registers a
joblib backend that hands each of joblib's batches to parajob's warm process pool, task by
task, so that::

    import joblib
    import parajob

    parajob.register_joblib_backend()
    with joblib.parallel_config(backend="parajob"):
        GridSearchCV(estimator, grid, n_jobs=2).fit(X, y)

runs the search on parajob's workers, a worker that dies is reported with the task it was
running (:class:`~parajob.errors.TerminatedWorkerError`), and ``progress=True`` shows
parajob's progress bar. Large arrays (following joblib's ``max_nbytes`` and ``mmap_mode``)
reach the workers through parajob's shared memory, and a read-only copy is kept for the next
call with the same array (``docs/sharedmem.md``). joblib is imported only
when the backend is registered.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from parajob.errors import MissingDependencyError

__all__ = ["register_joblib_backend"]


class _InNestedConfig:
    """Call ``function`` inside joblib's config for nested calls, as joblib's batches do.

    joblib runs each batch inside ``parallel_config(backend=<nested backend>, n_jobs=...)``
    so that Parallel calls made by the tasks (a forest inside a grid search) do not start
    a pool of their own. parajob runs the tasks of a batch one by one (so a crash names the
    exact task), so each call carries that config itself. The wrapper takes the function's
    name, which parajob's error messages use.
    """

    def __init__(self, function: Callable[..., Any], nested: Any, n_jobs: int | None) -> None:
        self.function = function
        self.nested = nested
        self.n_jobs = n_jobs
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import joblib

        with joblib.parallel_config(backend=self.nested, n_jobs=self.n_jobs):
            return self.function(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_InNestedConfig, (self.function, self.nested, self.n_jobs))


class _JoblibCall:
    """What one joblib ``Parallel`` call on parajob's backend has of its own."""

    __slots__ = ("next_index", "parallel", "pool", "reporter", "sharer", "submitted")

    def __init__(self, parallel: Any, pool: Any, sharer: Any, reporter: Any) -> None:
        self.parallel = parallel
        self.pool = pool
        self.sharer = sharer  # its ArraySharer (shared-memory copies of large arguments)
        self.reporter = reporter
        self.next_index = 0  # of its next task, for error messages
        self.submitted: set[Any] = set()  # its futures not done yet (what an abort cancels)

    def close(self) -> None:
        sharer, self.sharer = self.sharer, None
        reporter, self.reporter = self.reporter, None
        try:
            if sharer is not None:
                sharer.close()
        finally:
            if reporter is not None:
                reporter.finish()


def _split_batch(batch: Any) -> list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]:
    """The calls of one of joblib's batches, each wrapped to run in the nested config."""
    items = getattr(batch, "items", None)
    if items is None:
        # Not one of joblib's BatchedCalls: run it as a single call.
        return [(batch, (), {})]
    nested = getattr(batch, "_backend", None)
    n_jobs = getattr(batch, "_n_jobs", None)
    wrappers: dict[int, _InNestedConfig] = {}
    calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
    for function, args, kwargs in items:
        wrapper = wrappers.get(id(function))
        if wrapper is None:
            wrapper = wrappers[id(function)] = _InNestedConfig(function, nested, n_jobs)
        calls.append((wrapper, tuple(args), dict(kwargs)))
    return calls


def _make_backend_class() -> type:
    try:
        from joblib.parallel import ParallelBackendBase as JoblibBackendBase
        from joblib.parallel import SequentialBackend as JoblibSequential
    except ImportError as exc:
        raise MissingDependencyError(
            "register_joblib_backend needs joblib: pip install joblib (scikit-learn installs it)"
        ) from exc
    from joblib._parallel_backends import FallbackToBackend

    class ParajobJoblibBackend(JoblibBackendBase):
        """A joblib backend that runs joblib's batches on parajob's process pool.

        Parameters
        ----------
        progress : bool, str, callable or ProgressReporter, default=False
            parajob's progress reporting (see :class:`parajob.Parallel`), counted in tasks.
        **pool_options
            Passed to :func:`parajob.process_pool.get_executor` (``max_tasks_per_child``,
            ``idle_timeout``, ...).
        """

        supports_retrieve_callback = True
        default_n_jobs = 1

        def __init__(
            self,
            nesting_level: int | None = None,
            inner_max_num_threads: int | None = None,
            progress: Any = False,
            **pool_options: Any,
        ) -> None:
            super().__init__(
                nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads
            )
            from parajob.progress import make_reporter

            make_reporter(progress)  # validate now, where the mistake is made
            self.progress = progress
            self.pool_options = pool_options
            self._pool: Any = None
            self._n_jobs = 1
            self._lock = threading.Lock()
            # joblib gives every Parallel of a parallel_config block the same backend object,
            # and one may make a call while another's generator is still open (or, managed
            # with `with`, after another one configured the backend). What belongs to a call
            # is therefore kept per joblib Parallel (by id; the entry holds the object), made
            # on its first batch from that Parallel's own settings, and dropped once it no
            # longer runs.
            self._calls: dict[int, _JoblibCall] = {}
            self._first_task: dict[Any, tuple[int, Any]] = {}

        def effective_n_jobs(self, n_jobs: int | None) -> int:
            from parajob.parallel._budget import effective_n_jobs_within_budget

            return effective_n_jobs_within_budget(n_jobs)

        def configure(
            self,
            n_jobs: int = 1,
            parallel: Any = None,
            prefer: str | None = None,
            require: str | None = None,
            **backend_kwargs: Any,
        ) -> int:
            n = self.effective_n_jobs(n_jobs)
            if n == 1:
                # As joblib's own process backend does: one worker runs in the caller.
                raise FallbackToBackend(JoblibSequential(nesting_level=self.nesting_level))
            from parajob.process_pool import get_executor

            self.parallel = parallel
            self._n_jobs = n
            # The shared warm pool gives each worker its share of the CPUs itself, and caps
            # native thread pools when joblib's inner_max_num_threads is set.
            self._pool = get_executor(
                n, inner_max_num_threads=self.inner_max_num_threads, **self.pool_options
            )
            return n

        def start_call(self) -> None:
            # The call's own state is made with its first batch (see _call_for); what is left
            # of calls that no longer run goes now.
            self._end_calls(only_finished=True)

        def stop_call(self) -> None:
            # joblib calls this when one of its Parallel objects ends a call, after marking
            # it as no longer running; others sharing this backend may still be running.
            self._end_calls(only_finished=True)

        def _end_calls(self, only_finished: bool) -> None:
            with self._lock:
                ended = [
                    call
                    for call in self._calls.values()
                    if not (only_finished and getattr(call.parallel, "_running", False))
                ]
                for call in ended:
                    del self._calls[id(call.parallel)]
            for call in ended:
                call.close()

        def _call_for(self, callback: Any) -> _JoblibCall:
            # joblib's batch callback knows its Parallel; without one, the latest configured.
            parallel = getattr(callback, "parallel", None) or self.parallel
            with self._lock:
                call = self._calls.get(id(parallel))
            if call is not None:
                return call
            from parajob.process_pool import get_executor
            from parajob.process_pool._sharer import call_sharer
            from parajob.progress import make_reporter

            # That Parallel's own memmapping settings (max_nbytes already in bytes): large
            # arrays reach the workers through parajob's shared memory, as they do with loky.
            settings = getattr(parallel, "_backend_kwargs", {})
            sharer = call_sharer(
                settings.get("max_nbytes", 1 << 20),
                settings.get("mmap_mode", "r"),
                settings.get("temp_folder"),
            )
            pool = self._pool
            if pool is None or pool.closed:
                pool = get_executor(
                    self._n_jobs,
                    inner_max_num_threads=self.inner_max_num_threads,
                    **self.pool_options,
                )
            call = _JoblibCall(parallel, pool, sharer, make_reporter(self.progress))
            if call.reporter is not None:
                call.reporter.start(getattr(parallel, "n_tasks", None))
            with self._lock:
                self._calls[id(parallel)] = call
            return call

        def submit(self, func: Any, callback: Callable[[Any], None] | None = None) -> Any:
            from parajob.process_pool._sharer import submit_sharing

            call = self._call_for(callback)
            calls = _split_batch(func)
            first = call.next_index
            call.next_index += len(calls)
            future = submit_sharing(
                call.sharer,
                lambda: call.pool.submit_batch(
                    calls, indices=range(first, first + len(calls)), stop_on_error=True
                ),
            )
            with self._lock:
                self._first_task[future] = (first, calls[0][0])
                if not future.done():
                    call.submitted.add(future)
            reporter = call.reporter

            def done(fut: Any) -> None:
                with self._lock:
                    call.submitted.discard(fut)
                if reporter is not None:
                    with self._lock:
                        reporter.advance(len(calls))
                try:
                    if callback is not None:
                        callback(fut)  # joblib retrieves the result here (if it still wants it)
                finally:
                    with self._lock:
                        # Not retrieved (the call failed or its generator was dropped): the
                        # entry must not keep the batch's result alive.
                        self._first_task.pop(fut, None)

            future.add_done_callback(done)
            return future

        def retrieve_result_callback(self, out: Any) -> list[Any]:
            with self._lock:
                first, function = self._first_task.pop(out, (0, None))
            result = out.result()  # a dead worker raises TerminatedWorkerError naming the task
            if result.errors:
                pos = min(result.errors)
                exc = result.errors[pos]
                from parajob.parallel._dispatch import _add_note, _name

                _add_note(
                    exc,
                    f"raised by task {first + pos} ({_name(function)}) of joblib's Parallel on parajob",
                )
                raise exc
            return list(result.values)

        def abort_everything(self, ensure_ready: bool = True) -> None:
            # joblib marks the Parallel that aborts (_aborting) before calling this; only its
            # batches are cancelled, not those of other calls sharing this backend.
            with self._lock:
                calls = list(self._calls.values())
                aborting = [c for c in calls if getattr(c.parallel, "_aborting", False)]
                targets = [(c.pool, list(c.submitted)) for c in (aborting or calls) if c.submitted]
                for c in aborting or calls:
                    c.submitted.clear()
            for pool, futures in targets:
                pool.cancel(futures, kill_running=True)

        def terminate(self) -> None:
            # parajob's pool is shared and stays warm for the next call; calls of other
            # Parallel objects still running keep theirs.
            self._end_calls(only_finished=True)

        def get_nested_backend(self) -> tuple[Any, int | None]:
            # Inside a worker, nested joblib calls run sequentially: the worker already has
            # its share of the CPUs (joblib's own rule for its process backend).
            return JoblibSequential(nesting_level=(self.nesting_level or 0) + 1), None

    return ParajobJoblibBackend


def register_joblib_backend(name: str = "parajob", make_default: bool = False) -> None:
    """Register parajob's process pool as a joblib backend named ``name``.

    After this, ``with joblib.parallel_config(backend=name):`` runs joblib's parallel work,
    including scikit-learn's (``GridSearchCV(n_jobs=...)``, ``cross_val_score``,
    ``RandomForestClassifier(n_jobs=...)``), on parajob's warm process pool: results are the
    same as with joblib's ``"loky"``, a worker that dies is reported as
    :class:`~parajob.errors.TerminatedWorkerError` naming the task it ran, and
    ``joblib.parallel_config(backend=name, progress=True)`` shows parajob's progress bar.

    Parameters
    ----------
    name : str, default="parajob"
        The backend name to use with joblib.
    make_default : bool, default=False
        Make it joblib's default backend for this process.

    Examples
    --------
    >>> import joblib
    >>> from parajob import register_joblib_backend
    >>> register_joblib_backend()
    >>> with joblib.parallel_config(backend="parajob", n_jobs=2):
    ...     joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(3))
    [0, 1, 2]

    .. versionadded:: 0.1
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    backend_class = _make_backend_class()
    import joblib

    joblib.register_parallel_backend(name, backend_class, make_default=make_default)
