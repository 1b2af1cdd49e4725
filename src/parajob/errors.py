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
    "CorruptFileError",
    "HashingError",
    "MissingDependencyError",
    "ParajobError",
    "ParajobWarning",
    "TaskPicklingError",
    "TaskTimeoutError",
    "TerminatedWorkerError",
    "TruncatedFileError",
    "UnsafeLoadError",
    "WorkerError",
]


class ParajobError(Exception):
    """Base class of every error raised by parajob."""


class ParajobWarning(UserWarning):
    """Base class of every warning issued by parajob."""


class MissingDependencyError(ParajobError, ImportError):
    """An optional dependency is needed for what was asked; the message names the extra."""


# -- persistence -------------------------------------------------------------------------------


class CorruptFileError(ParajobError, pickle.UnpicklingError):
    """A file given to :func:`parajob.load` is damaged, truncated or not a parajob/joblib file."""


class TruncatedFileError(CorruptFileError, EOFError):
    """A file given to :func:`parajob.load` ends before its content does."""


class UnsafeLoadError(ParajobError, pickle.UnpicklingError):
    """A file loaded with ``allow_pickle=False`` asked for something outside the safe set."""


# -- hashing -----------------------------------------------------------------------------------


class HashingError(ParajobError, pickle.PicklingError):
    """An object could not be hashed (it cannot be reduced to a canonical description)."""


# -- workers -----------------------------------------------------------------------------------


class WorkerError(ParajobError):
    """Base class of the errors about worker processes."""


class TerminatedWorkerError(WorkerError, BrokenProcessPool):
    """A worker process died while it ran a task (segfault, ``os._exit``, SIGKILL, ...)."""


class TaskTimeoutError(WorkerError, TimeoutError):
    """A task ran past its time limit; its worker was stopped and replaced."""


class TaskPicklingError(WorkerError, pickle.PicklingError):
    """A task's function, arguments or result could not be sent between processes."""
