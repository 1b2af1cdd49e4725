"""Which child processes are interpreter-lifetime helpers rather than workers left behind."""

from __future__ import annotations

import psutil

# Helper processes kept for the interpreter's whole life on purpose, and stopped at exit: the
# standard library's forkserver and resource tracker, and joblib's (loky's) resource tracker,
# which the scikit-learn comparison tests start through joblib.
INTERPRETER_HELPERS = (
    "multiprocessing.forkserver",
    "multiprocessing.resource_tracker",
    "joblib.externals.loky.backend.resource_tracker",
)


def is_interpreter_helper(proc: psutil.Process) -> bool:
    """True for a helper process listed in INTERPRETER_HELPERS."""
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(h in cmdline for h in INTERPRETER_HELPERS)
