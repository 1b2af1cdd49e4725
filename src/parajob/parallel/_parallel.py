"""``Parallel``: run ``delayed`` tasks on a backend, with joblib's semantics and more."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

from parajob.errors import InvalidParameterError
from parajob.parallel._backend import (
    ParallelBackendBase,
    check_backend_spec,
    default_backend_name,
    make_backend,
)
from parajob.parallel._batching import parse_pre_dispatch
from parajob.parallel._config import UNSET, active_config, parse_nbytes, resolve, validate_setting
from parajob.parallel._dispatch import Call, _Settings
from parajob.progress import make_reporter

__all__ = ["Parallel"]

_RETURN_AS = ("list", "generator", "generator_unordered")


class Parallel:
    """Run tasks made with :func:`~parajob.delayed` in parallel.

    ``Parallel(n_jobs=4)(delayed(f)(x) for x in data)`` returns ``[f(x) for x in data]``,
    computed by 4 workers. Every parameter left out takes its value from the innermost active
    :class:`~parajob.parallel_config`, else its default.

    Parameters
    ----------
    n_jobs : int, optional
        Number of workers. ``-1`` uses every CPU, ``-2`` all but one, and so on; ``None``
        means 1 unless a config says otherwise. ``1`` runs the tasks in the calling thread,
        without pickling anything. ``0`` is an error.
    backend : str or ParallelBackendBase, optional
        ``"processes"`` (default; parajob's process pool, also called ``"loky"``),
        ``"threading"``, ``"sequential"``, ``"multiprocessing"``, a registered name, or an
        instance.
    return_as : {"list", "generator", "generator_unordered"}, default="list"
        A list in input order; a generator yielding in input order as results arrive; or a
        generator yielding in completion order.
    verbose : int, default=0
        Progress lines on stderr: above 0 at powers of two tasks done, from 10 on after
        every batch.
    timeout : float, optional
        Seconds a batch may run before the whole call stops with
        :class:`~parajob.errors.ParallelTimeoutError` (joblib's meaning), counted from when
        the batch starts on ``"processes"`` and threads, from when it is sent elsewhere.
    pre_dispatch : int, "all" or str, default="2 * n_jobs"
        How many batches may be in flight at once; an arithmetic expression in ``n_jobs``.
    batch_size : int or "auto", default="auto"
        Tasks per batch; "auto" grows batches while tasks are fast and shrinks them when slow.
    temp_folder, max_nbytes, mmap_mode : optional
        Where and from what size large numpy arguments are shared with process workers.
    prefer : {"processes", "threads"}, optional
        A soft hint used when no backend is named.
    require : {"sharedmem"}, optional
        A hard constraint: tasks must share the caller's memory (selects threads).
    progress : bool, str, callable or ProgressReporter, default=False
        ``True`` shows a progress bar (tqdm when installed, a built-in one otherwise);
        ``"tqdm"``, ``"rich"`` or ``"text"`` choose; a callable receives ``(done, total)``.

        .. versionadded:: 0.1
    on_error : {"raise", "return"}, default="raise"
        ``"raise"`` stops at the first failure and raises it; ``"return"`` puts each failed
        task's exception in its place in the results and runs the rest.

        .. versionadded:: 0.1
    retries : int, default=0
        How many more times a task that raised, or whose worker died, is run.

        .. versionadded:: 0.1
    task_timeout : float, optional
        Seconds one task may run; a late task fails with
        :class:`~parajob.errors.TaskTimeoutError` and only it. On ``"processes"`` its worker
        is stopped and replaced; on threads the task is abandoned (it cannot be stopped) and
        its result dropped; elsewhere (``"sequential"``, ``"multiprocessing"``) it runs to
        its end and then fails. Tasks then travel one per batch.

        .. versionadded:: 0.1
    initializer, initargs : optional
        ``initializer(*initargs)`` runs once in each worker before its first task.

        .. versionadded:: 0.1
    **backend_kwargs
        Passed to the backend's constructor when ``backend`` is a name.

    Examples
    --------
    >>> from math import sqrt
    >>> from parajob import Parallel, delayed
    >>> Parallel(n_jobs=2, backend="threading")(delayed(sqrt)(i**2) for i in range(4))
    [0.0, 1.0, 2.0, 3.0]
    """

    def __init__(
        self,
        n_jobs: Any = UNSET,
        backend: Any = UNSET,
        return_as: str = "list",
        verbose: Any = UNSET,
        timeout: float | None = None,
        pre_dispatch: int | str = "2 * n_jobs",
        batch_size: int | str = "auto",
        temp_folder: Any = UNSET,
        max_nbytes: Any = UNSET,
        mmap_mode: Any = UNSET,
        prefer: Any = UNSET,
        require: Any = UNSET,
        *,
        progress: Any = UNSET,
        on_error: Any = UNSET,
        retries: Any = UNSET,
        task_timeout: Any = UNSET,
        initializer: Any = UNSET,
        initargs: Any = UNSET,
        **backend_kwargs: Any,
    ) -> None:
        def setting(name: str, argument: Any) -> Any:
            value = resolve(name, argument)
            return validate_setting(name, value) if argument is not UNSET else value

        self.n_jobs = setting("n_jobs", n_jobs)
        self.verbose = setting("verbose", verbose)
        self.temp_folder = setting("temp_folder", temp_folder)
        self.max_nbytes = setting("max_nbytes", max_nbytes)
        self.mmap_mode = setting("mmap_mode", mmap_mode)
        self.prefer = setting("prefer", prefer)
        self.require = setting("require", require)
        self.progress = setting("progress", progress)
        self.on_error = setting("on_error", on_error)
        self.retries = setting("retries", retries)
        self.task_timeout = setting("task_timeout", task_timeout)
        self._initializer = setting("initializer", initializer)
        self._initargs = setting("initargs", initargs)
        if return_as not in _RETURN_AS:
            raise InvalidParameterError(
                f"return_as must be one of {_RETURN_AS!r}, got {return_as!r}; use "
                f"'generator' to get the results as they come"
            )
        self.return_as = return_as
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise InvalidParameterError(
                f"timeout must be a positive number of seconds or None, got {timeout!r}"
            )
        self.timeout = timeout
        if batch_size != "auto" and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise InvalidParameterError(
                f"batch_size must be 'auto' or an int >= 1, got {batch_size!r}"
            )
        self.batch_size = batch_size
        parse_pre_dispatch(pre_dispatch, 1)  # validate now; evaluated per call
        self.pre_dispatch = pre_dispatch
        self._max_nbytes = parse_nbytes(self.max_nbytes)
        self._backend, self._backend_explicit = self._choose_backend(backend, backend_kwargs)
        self._managed = False
        self._configured_n_jobs: int | None = None
        self._running = False

    def _choose_backend(
        self, backend: Any, backend_kwargs: dict[str, Any]
    ) -> tuple[ParallelBackendBase, bool]:
        if backend is not UNSET and backend is not None:
            chosen = check_backend_spec(backend, backend_kwargs)
            explicit = True
        else:
            if backend_kwargs:
                raise InvalidParameterError(
                    f"unexpected keyword arguments {sorted(backend_kwargs)}: backend "
                    f"parameters need a backend name, e.g. Parallel(backend='processes', ...)"
                )
            configured = active_config().get("backend")
            explicit = False
            if configured is not None:
                chosen = configured
            elif self.prefer == "threads":
                chosen = make_backend("threading", {})
            else:
                chosen = make_backend(default_backend_name(), {})
        if self.require == "sharedmem" and not chosen.supports_sharedmem:
            if explicit:
                raise InvalidParameterError(
                    f"backend {chosen.__class__.__name__} does not share memory with the caller,"
                    f" but require='sharedmem' was given; use backend='threading' or drop "
                    f"require"
                )
            chosen = make_backend("threading", {})
        return chosen, explicit

    # -- context manager: keep the workers between calls --------------------------------------

    def __enter__(self) -> Parallel:
        self._managed = True
        self._configure()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._managed = False
        self._terminate()

    def _requested_n_jobs(self) -> int:
        n_jobs = self.n_jobs
        if n_jobs is None:
            n_jobs = self._backend.default_n_jobs
        return int(n_jobs)

    def _configure(self) -> int:
        if self._configured_n_jobs is not None:
            return self._configured_n_jobs
        requested = self._requested_n_jobs()
        if self._initializer is not None and not self._backend.supports_initializer:
            raise InvalidParameterError(
                f"backend {type(self._backend).__name__} cannot run an initializer in its "
                f"workers (supports_initializer is False), got initializer="
                f"{self._initializer!r}; use backend='processes' or 'threading'"
            )
        n = self._backend.effective_n_jobs(requested)
        if n == 1 and not self._backend_explicit and not self._backend.uses_threads:
            # One worker: run in the calling thread, no pickling, no process to start.
            self._backend = make_backend("sequential", {})
        n = self._backend.configure(
            n_jobs=requested, parallel=self, prefer=self.prefer, require=self.require
        )
        self._configured_n_jobs = n
        return n

    def _terminate(self) -> None:
        if self._configured_n_jobs is not None:
            self._configured_n_jobs = None
            self._backend.terminate()

    # -- the call -----------------------------------------------------------------------------

    def __call__(self, iterable: Iterable[Any]) -> Any:
        """Run the tasks of ``iterable`` and return their results (see ``return_as``)."""
        if self._running:
            raise RuntimeError(
                "this Parallel object is already running a call (a generator from it is still "
                "open); finish or close that generator, or use another Parallel object"
            )
        n_jobs = self._configure()
        settings = _Settings(
            n_jobs=n_jobs,
            return_as=self.return_as,
            batch_size=self.batch_size,
            pre_dispatch=parse_pre_dispatch(self.pre_dispatch, n_jobs),
            timeout=self.timeout,
            task_timeout=self.task_timeout,
            on_error=self.on_error,
            retries=self.retries,
            verbose=self.verbose,
            reporter=make_reporter(self.progress),
            name=type(self).__name__,
        )
        self._running = True
        try:
            # Inside the try: a backend that fails to start the call (a bad setting in the
            # environment, Ctrl-C) must not leave this object believing a call is running.
            self._backend.start_call()
            call = Call(self._backend, iterable, settings, self._call_closed)
        except BaseException:
            self._call_closed(False)
            raise
        if self.return_as == "list":
            return call.collect()
        return call.start_results()

    def _call_closed(self, ok: bool) -> None:
        self._running = False
        try:
            self._backend.stop_call()
        finally:
            if not self._managed:
                self._terminate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_jobs={self.n_jobs}, backend={self._backend!r})"
