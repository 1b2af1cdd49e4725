"""The parallel backend contract and the backend registry.

A backend runs *batches*: zero-argument callables that Parallel builds from the user's tasks.
It needs two methods, :meth:`ParallelBackendBase.effective_n_jobs` and
:meth:`ParallelBackendBase.submit`; everything else has a working default. Capabilities are
stated as class flags that Parallel reads (``supports_sharedmem``, ``supports_task_timeout``, ...).
The method names are joblib's, so a backend written for joblib keeps working.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from parajob._registry import Registry
from parajob.errors import InvalidParameterError

__all__ = [
    "BACKENDS",
    "ParallelBackendBase",
    "check_backend_spec",
    "default_backend_name",
    "register_parallel_backend",
]


class ParallelBackendBase(ABC):
    """Base class of parallel backends.

    Subclass it, implement :meth:`effective_n_jobs` and :meth:`submit`, and register the class
    with :func:`~parajob.register_parallel_backend`. Check it with
    :func:`parajob.testing.check_parallel_backend`.

    Attributes
    ----------
    default_n_jobs : int
        The number of workers used when neither ``Parallel`` nor a config says.
    uses_threads : bool
        Batches run in threads of the calling process.
    supports_sharedmem : bool
        Batches can mutate the caller's objects (``require="sharedmem"`` may pick it).
    supports_task_timeout : bool
        The backend can stop one running batch (``task_timeout`` kills it); without it,
        Parallel abandons a late batch and reports the timeout, but the batch runs on.
    supports_initializer : bool
        The backend runs ``initializer(*initargs)`` once in each worker.
    supports_retrieve_callback : bool
        ``submit`` calls ``callback`` on completion (True for every modern backend).
    supports_inner_max_num_threads : bool
        The backend honours ``inner_max_num_threads`` in its workers.
    nesting_level : int or None
        0 for a top-level call, 1 inside a worker of a top-level call, and so on.
    """

    default_n_jobs: int = 1
    uses_threads: bool = False
    supports_sharedmem: bool = False
    supports_task_timeout: bool = False
    supports_initializer: bool = False
    supports_retrieve_callback: bool = True
    supports_inner_max_num_threads: bool = False
    supports_timeout: bool = True
    supports_return_generator: bool = True
    nesting_level: int | None = None

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **backend_kwargs: Any,
    ) -> None:
        self.nesting_level = nesting_level
        self.inner_max_num_threads = inner_max_num_threads
        self.backend_kwargs = backend_kwargs
        self.parallel: Any = None

    @abstractmethod
    def effective_n_jobs(self, n_jobs: int) -> int:
        """Return how many batches can truly run at once for the requested ``n_jobs``."""

    @abstractmethod
    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        """Schedule ``func()``; call ``callback(future)`` when it is done; return the future.

        The returned object must offer ``result(timeout=None)`` (or be understood by
        :meth:`retrieve_result_callback`) and, ideally, ``cancel()``.
        """

    def retrieve_result_callback(self, out: Any) -> Any:
        """Return the batch's result from the object given to the submit callback."""
        return out.result()

    def retrieve_result(self, out: Any, timeout: float | None = None) -> Any:
        """Return the batch's result from what :meth:`submit` returned (no-callback backends)."""
        if hasattr(out, "result"):
            return out.result(timeout=timeout)
        return out.get(timeout=timeout)

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Prepare for a Parallel call and return the number of workers it will get."""
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        self._prepare_workers(n)
        return n

    def _prepare_workers(self, n: int) -> None:
        """Get ``n`` workers ready for the call being configured (``self.parallel`` is set).

        Our backends override this hook rather than :meth:`configure`, so that joblib's
        signature and the worker count live here once.
        """

    def start_call(self) -> None:
        """Called at the start of each Parallel call."""

    def stop_call(self) -> None:
        """Called at the end of each Parallel call, however it ends."""

    def terminate(self) -> None:
        """Release the workers (called when the Parallel object is done with the backend)."""

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Stop what is still pending or running, because the call failed or was interrupted.

        With ``ensure_ready`` the backend must accept new work afterwards.
        """

    def compute_batch_size(self) -> int:
        """joblib's hook for backends that size batches themselves (Parallel sizes them)."""
        return 1

    def batch_completed(self, batch_size: int, duration: float) -> None:
        """joblib's hook, called after each batch with its size and duration."""

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """The backend (and n_jobs) a Parallel call made inside one of our workers gets."""
        from parajob.parallel.backends import SequentialBackend

        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """A context held while Parallel waits for results (joblib's hook)."""
        yield


BackendFactory = Callable[..., ParallelBackendBase]

BACKENDS: Registry[BackendFactory] = Registry("parallel backend")

# joblib's names for our backends.
ALIASES: Mapping[str, str] = {"loky": "processes"}

_default_backend = ["processes"]


def default_backend_name() -> str:
    """The backend used when nothing says otherwise ("processes" unless changed)."""
    return _default_backend[0]


def register_parallel_backend(
    name: str, factory: BackendFactory, make_default: bool = False
) -> None:
    """Register a parallel backend under ``name``, optionally as the default.

    Parameters
    ----------
    name : str
        The name to use with ``Parallel(backend=name)`` or ``parallel_config(backend=name)``.
    factory : callable
        Usually a :class:`ParallelBackendBase` subclass; called with the backend parameters.
    make_default : bool, default=False
        Use this backend when no backend is named.
    """
    if not callable(factory):
        raise InvalidParameterError(
            f"factory must be a ParallelBackendBase subclass or another callable returning a "
            f"backend, got {factory!r}"
        )
    BACKENDS.register(name, factory, force=True)
    if make_default:
        _default_backend[0] = name


def make_backend(name: str, params: Mapping[str, Any]) -> ParallelBackendBase:
    """Instantiate the backend registered as ``name`` (or one of joblib's aliases for it)."""
    from parajob.parallel import backends  # noqa: F401  (registers the built-in backends)

    key = ALIASES.get(name, name)
    if key not in BACKENDS:
        known = ", ".join(repr(n) for n in [*BACKENDS.names(), *ALIASES])
        raise InvalidParameterError(
            f"unknown backend {name!r}; choose one of {known}, or register yours with "
            f"register_parallel_backend"
        )
    backend = BACKENDS.get(key)(**params)
    if not isinstance(backend, ParallelBackendBase):
        raise TypeError(
            f"the factory registered as backend {name!r} returned {backend!r}, which is not a "
            f"ParallelBackendBase"
        )
    return backend


def check_backend_spec(backend: Any, params: Mapping[str, Any]) -> ParallelBackendBase:
    """Validate a ``backend=`` value given to parallel_config and return a backend instance."""
    if isinstance(backend, str):
        return make_backend(backend, params)
    if isinstance(backend, ParallelBackendBase):
        if params:
            raise InvalidParameterError(
                f"backend parameters {sorted(params)} can only be given with a backend name, "
                f"not with the instance {backend!r}; pass them to its constructor instead"
            )
        return backend
    raise InvalidParameterError(
        f"backend must be a registered backend name such as 'processes' or 'threading', or a "
        f"ParallelBackendBase instance, got {backend!r}"
    )
