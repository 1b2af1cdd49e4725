"""Every public exception and warning of parajob, in one hierarchy.

Each concrete error subclasses both :class:`ParajobError` and the builtin exception that
joblib raised in the same situation, so existing ``except`` clauses keep working.

All of them pickle: an error raised in a worker crosses a process boundary. The rule that
makes this hold is simple: ``__init__`` passes its positional arguments to ``super().__init__``
unchanged and keeps everything else as attributes (``BaseException.__reduce__`` carries both).
"""

from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "CacheWarning",
    "CorruptFileError",
    "FunctionChangedWarning",
    "HashingError",
    "InvalidParameterError",
    "MissingDependencyError",
    "ParajobError",
    "ParajobWarning",
    "ParallelTimeoutError",
    "PoolClosedError",
    "RemoteTaskError",
    "SharedMemoryError",
    "SharedMemoryWarning",
    "TaskPicklingError",
    "TaskTimeoutError",
    "TerminatedWorkerError",
    "TruncatedFileError",
    "UnsafeLoadError",
    "WorkerError",
    "WorkerStartError",
]


class ParajobError(Exception):
    """Base class of every error raised by parajob."""


class ParajobWarning(UserWarning):
    """Base class of every warning issued by parajob."""


class MissingDependencyError(ParajobError, ImportError):
    """An optional dependency is needed for what was asked; the message names the extra."""


class InvalidParameterError(ParajobError, ValueError):
    """A parameter has a value that cannot work (for example ``n_jobs=0``)."""


# -- persistence -------------------------------------------------------------------------------


class CorruptFileError(ParajobError, pickle.UnpicklingError):
    """A file given to :func:`parajob.load` is damaged, truncated or not a parajob/joblib file."""


class TruncatedFileError(CorruptFileError, EOFError):
    """A file given to :func:`parajob.load` ends before its content does."""


class UnsafeLoadError(ParajobError, pickle.UnpicklingError):
    """A file loaded with ``allow_pickle=False`` asked for something outside the safe set."""


# -- memory ------------------------------------------------------------------------------------


class CacheWarning(ParajobWarning):
    """Something went wrong with a cache entry; the call still returns the right value."""


class FunctionChangedWarning(CacheWarning):
    """A cached function (or something it depends on) changed; its old entries were removed."""


# -- hashing -----------------------------------------------------------------------------------


class HashingError(ParajobError, pickle.PicklingError, TypeError):
    """An object could not be hashed (it cannot be reduced to a canonical description).

    Also a TypeError: joblib.hash let pickle's TypeError through for locks, generators, ...
    """


# -- workers -----------------------------------------------------------------------------------


class WorkerError(ParajobError):
    """Base class of the errors about worker processes."""


class TerminatedWorkerError(WorkerError, BrokenProcessPool):
    """A worker process died while it ran a task (segfault, ``os._exit``, SIGKILL, ...)."""


class TaskTimeoutError(WorkerError, TimeoutError):
    """A task ran past its time limit; its worker was stopped and replaced."""


class TaskPicklingError(WorkerError, pickle.PicklingError):
    """A task's function, arguments or result could not be sent between processes."""


class WorkerStartError(WorkerError, BrokenProcessPool):
    """Workers could not start (the initializer raised, or they died while starting)."""


class PoolClosedError(WorkerError, RuntimeError):
    """Work was submitted to a pool that was shut down, or was stopped by its shutdown."""


class RemoteTaskError(WorkerError):
    """A task raised an exception that could not be sent back; this carries its description.

    ``args`` are ``(message, type_name, traceback_text)``.
    """

    @property
    def type_name(self) -> str:
        """Qualified name of the exception type the task raised."""
        return str(self.args[1]) if len(self.args) > 1 else ""

    @property
    def traceback_text(self) -> str:
        """The task's traceback, formatted in the worker."""
        return str(self.args[2]) if len(self.args) > 2 else ""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- parallel ----------------------------------------------------------------------------------


class ParallelTimeoutError(ParajobError, TimeoutError):
    """A Parallel call's ``timeout`` passed before a batch finished; the call was stopped."""


# -- shared memory -----------------------------------------------------------------------------


class SharedMemoryError(ParajobError, OSError):
    """A large array could not be shared with workers: no folder had room for it."""


class SharedMemoryWarning(ParajobWarning):
    """Large arrays are shared through a slower place (the shared-memory folder was full)."""
