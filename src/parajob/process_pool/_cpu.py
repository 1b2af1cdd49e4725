"""How many CPUs this process may really use, and joblib's ``n_jobs`` arithmetic.

``os.cpu_count()`` counts the machine's CPUs. A process is often allowed fewer: an affinity
mask (``taskset``, ``os.sched_setaffinity``), or a cgroup CPU quota (Docker ``--cpus``,
Kubernetes limits). Starting more busy workers than the quota allows only makes them wait for
each other, so the pool sizes itself from the smallest of these limits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from numbers import Integral
from pathlib import Path

from parajob.errors import InvalidParameterError

__all__ = ["CPU_SHARE_ENV", "THREAD_CAP_VARS", "cpu_count", "effective_n_jobs", "thread_cap_env"]

# Set in each worker to its share of the CPUs (cpu_count() // workers): a nested Parallel call
# in the worker resolves n_jobs against it (see parajob.parallel._budget).
CPU_SHARE_ENV = "PARAJOB_CPU_BUDGET"

# Environment variables read by the native thread pools that numerical libraries start
# (OpenMP, OpenBLAS, MKL, BLIS, Accelerate, numexpr, numba, Rayon-based code). Each worker
# gets its share of the CPUs so n workers times their threads does not oversubscribe.
THREAD_CAP_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "RAYON_NUM_THREADS",
)

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_to_cpus(quota_us: int, period_us: int) -> int | None:
    if quota_us <= 0 or period_us <= 0:
        return None
    # A quota of 1.5 CPUs still lets two workers make progress; round up as the kernel allows
    # bursts to use the fractional part.
    return max(math.ceil(quota_us / period_us), 1)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


def _cgroup_v2_limit(dirs: Iterable[Path]) -> int | None:
    best: int | None = None
    for directory in dirs:
        text = _read_text(directory / "cpu.max")
        if text is None:
            continue
        fields = text.split()
        if len(fields) != 2 or fields[0] == "max":
            continue
        try:
            cpus = _quota_to_cpus(int(fields[0]), int(fields[1]))
        except ValueError:
            continue
        if cpus is not None and (best is None or cpus < best):
            best = cpus
    return best


def _cgroup_v1_limit(dirs: Iterable[Path]) -> int | None:
    best: int | None = None
    for directory in dirs:
        quota = _read_text(directory / "cpu.cfs_quota_us")
        period = _read_text(directory / "cpu.cfs_period_us")
        if quota is None or period is None:
            continue
        try:
            cpus = _quota_to_cpus(int(quota), int(period))
        except ValueError:
            continue
        if cpus is not None and (best is None or cpus < best):
            best = cpus
    return best


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> tuple[list[Path], list[Path]]:
    """List the cgroup v2 and v1 directories of this process and their ancestors."""
    v2: list[Path] = []
    v1: list[Path] = []
    text = _read_text(proc_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.strip().lstrip("/")
        if controllers == "":
            base = root
            target = v2
        elif "cpu" in controllers.split(","):
            base = root / controllers
            if not base.is_dir():
                base = root / "cpu"
            target = v1
        else:
            continue
        # A quota set on any ancestor caps this cgroup too; inside a container the
        # namespace root is the container's own cgroup, which is covered by `base` itself.
        current = base / rel if rel else base
        while True:
            target.append(current)
            if current == base:
                break
            current = current.parent
    # Mounts seen from inside a container without our relative path still hold the limit.
    v2.append(root)
    v1.extend([root / "cpu", root / "cpu,cpuacct"])
    return v2, v1


def _cgroup_cpu_limit(
    root: Path = _CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Return the CPU quota of this process's cgroups as a whole number of CPUs, or None."""
    v2_dirs, v1_dirs = _own_cgroup_dirs(root, proc_cgroup)
    limits = [x for x in (_cgroup_v2_limit(v2_dirs), _cgroup_v1_limit(v1_dirs)) if x is not None]
    return min(limits) if limits else None


def _physical_cores_from_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> int | None:
    """Count distinct (physical id, core id) pairs in a Linux ``/proc/cpuinfo``."""
    text = _read_text(path)
    if not text:
        return None
    cores: set[tuple[str, str]] = set()
    physical = core = None
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if core is not None:
                cores.add((physical or "0", core))
            physical = core = None
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
    return len(cores) or None


def _physical_cores() -> int | None:
    try:
        import psutil
    except ImportError:
        return _physical_cores_from_cpuinfo()
    count = psutil.cpu_count(logical=False)
    return count if count else _physical_cores_from_cpuinfo()


def cpu_count(only_physical_cores: bool = False) -> int:
    """Return the number of CPUs this process can use.

    The count honours the CPU affinity mask (``os.sched_getaffinity``) and cgroup v1 and v2
    CPU quotas (as set by Docker's ``--cpus`` or Kubernetes limits), and is never more than
    ``os.cpu_count()``.

    Parameters
    ----------
    only_physical_cores : bool, default False
        Count physical cores instead of hardware threads (hyper-threads). Uses psutil when it
        is installed, ``/proc/cpuinfo`` otherwise; when neither tells, logical CPUs are counted.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> from parajob.process_pool import cpu_count
    >>> cpu_count() >= 1
    True
    """
    total = os.cpu_count() or 1
    count = total
    if hasattr(os, "sched_getaffinity"):
        try:
            count = min(count, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    quota = _cgroup_cpu_limit()
    if quota is not None:
        count = min(count, quota)
    if only_physical_cores:
        physical = _physical_cores()
        if physical is not None:
            count = min(count, physical)
    return max(count, 1)


def effective_n_jobs(n_jobs: int | None = -1) -> int:
    """Return the number of workers that ``n_jobs`` asks for, following joblib's rules.

    Parameters
    ----------
    n_jobs : int or None, default -1
        ``None`` means 1; a positive number is taken as is; a negative one counts back from
        the number of CPUs: -1 is all of them, -2 all but one, and so on (never below 1).

    Returns
    -------
    int
        At least 1.

    Raises
    ------
    InvalidParameterError
        For ``n_jobs=0`` or a value that is not an int (a ``ValueError``).

    Examples
    --------
    >>> from parajob.process_pool import cpu_count, effective_n_jobs
    >>> effective_n_jobs(None)
    1
    >>> effective_n_jobs(-1) == cpu_count()
    True
    """
    if n_jobs is None:
        return 1
    if not isinstance(n_jobs, Integral):
        raise InvalidParameterError(
            f"n_jobs must be an int or None, got {n_jobs!r} of type {type(n_jobs).__name__}; "
            "use 1 for sequential, a positive count, or -1 for all CPUs"
        )
    n = int(n_jobs)
    if n == 0:
        raise InvalidParameterError(
            "n_jobs must be a non-zero int, got 0; use 1 for sequential or -1 for all CPUs"
        )
    if n < 0:
        return max(cpu_count() + 1 + n, 1)
    return n


def thread_cap_env(
    n_workers: int, environ: dict[str, str] | None = None, threads: int | None = None
) -> dict[str, str]:
    """Return the thread-cap variables for a worker: the user's value where set, else a share.

    Each of ``n_workers`` workers gets ``max(cpu_count() // n_workers, 1)`` native threads,
    unless ``threads`` (``inner_max_num_threads``) says how many, which wins over everything.
    """
    # Inside a worker, its own share is what there is to divide (nested pools).
    try:
        available = int(os.environ.get(CPU_SHARE_ENV, "")) or cpu_count()
    except ValueError:
        available = cpu_count()
    share = str(max(available // max(n_workers, 1), 1))
    # Each worker's share of the CPUs, which Parallel calls made inside it honour.
    caps = {CPU_SHARE_ENV: share}
    if threads is not None:
        caps.update(dict.fromkeys(THREAD_CAP_VARS, str(threads)))
        return caps
    env = os.environ if environ is None else environ
    caps.update({name: env.get(name, share) for name in THREAD_CAP_VARS})
    return caps
