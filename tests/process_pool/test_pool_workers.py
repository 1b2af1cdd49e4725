"""What workers offer and how they are managed: ids, state, recycling, logs, env, CPUs."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import pool_tasks as t
import pytest
from pool_helpers import assert_gone, run_script

from parajob.errors import InvalidParameterError
from parajob.process_pool import (
    ProcessPool,
    cpu_count,
    effective_n_jobs,
    worker_id,
    worker_state,
)
from parajob.process_pool._cpu import (
    THREAD_CAP_VARS,
    _cgroup_cpu_limit,
    _physical_cores_from_cpuinfo,
)


def test_worker_id_is_none_in_parent_and_0_to_n_minus_1_in_workers(
    pool: ProcessPool, tmp_path: Path
) -> None:
    assert worker_id() is None
    ids = pool.map(t.rendezvous, [str(tmp_path)] * 2, [2] * 2, chunksize=1)
    assert sorted(ids) == [0, 1]


def test_worker_state_persists_across_tasks_on_a_worker() -> None:
    with ProcessPool(1) as pool:
        results = [pool.submit(t.count_in_state).result(timeout=60) for _ in range(4)]
    assert len({pid for pid, _ in results}) == 1
    assert [n for _, n in results] == [1, 2, 3, 4]
    assert isinstance(worker_state(), dict)


def test_max_tasks_per_child_replaces_workers_without_failing_tasks() -> None:
    with ProcessPool(1, max_tasks_per_child=2) as pool:
        pids = [pool.submit(t.pid).result(timeout=60) for _ in range(6)]
        # map chunks count as one submission each
        assert list(pool.map(t.identity, range(20), chunksize=5)) == list(range(20))
    assert len(set(pids)) == 3
    assert all(pids.count(p) == 2 for p in set(pids))
    assert_gone(pids)


def test_max_rss_replaces_a_worker_that_grew_too_big() -> None:
    with ProcessPool(1, max_rss=400 * 2**20) as pool:
        small = [pool.submit(t.pid).result(timeout=60) for _ in range(3)]
        assert len(set(small)) == 1, "a small worker must be kept"
        big = pool.submit(t.grow_memory, 500 * 2**20).result(timeout=60)
        after = pool.submit(t.pid).result(timeout=60)
    assert big == small[0]
    assert after != big


def test_logging_in_workers_reaches_parent_loggers(pool: ProcessPool) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("parajob.tests.forwarding")
    handler = Collect()
    logger.addHandler(handler)
    try:
        worker_pid = pool.submit(t.log_something, logger.name, "hello").result(timeout=60)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["hello from worker"]
    assert records[0].process == worker_pid
    assert records[0].levelno == logging.WARNING


def test_warnings_in_workers_are_reissued_in_parent(pool: ProcessPool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool.submit(t.warn_something, "careful now").result(timeout=60)
    matching = [w for w in caught if "careful now" in str(w.message)]
    assert len(matching) == 1
    assert matching[0].category is RuntimeWarning
    assert matching[0].filename.endswith("pool_tasks.py")


def test_thread_caps_are_set_unless_the_user_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in THREAD_CAP_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    with ProcessPool(2) as pool:
        omp = pool.submit(t.env, "OMP_NUM_THREADS").result(timeout=60)
        blas = pool.submit(t.env, "OPENBLAS_NUM_THREADS").result(timeout=60)
        mkl = pool.submit(t.env, "MKL_NUM_THREADS").result(timeout=60)
    share = str(max(cpu_count() // 2, 1))
    assert (omp, blas, mkl) == (share, "7", share)


def test_thread_caps_apply_before_the_main_module_is_imported_in_workers(
    tmp_path: Path,
) -> None:
    code = """
        import os, sys
        SEEN_AT_IMPORT = os.environ.get("OMP_NUM_THREADS")
        from parajob.process_pool import get_executor, shutdown_executor

        def seen():
            return sys.modules["__mp_main__"].SEEN_AT_IMPORT

        if __name__ == "__main__":
            pool = get_executor(1)
            print(pool.submit(seen).result(timeout=60))
            shutdown_executor()
    """
    proc = run_script(code, path=tmp_path / "main_caps.py", env={"OMP_NUM_THREADS": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(cpu_count())


def test_idle_timeout_stops_workers_and_the_pool_restarts_on_demand() -> None:
    with ProcessPool(1, idle_timeout=0.2) as pool:
        first = pool.submit(t.pid).result(timeout=60)
        deadline = time.monotonic() + 10
        while pool.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.pids() == []
        assert_gone([first])
        second = pool.submit(t.pid).result(timeout=60)
    assert second != first


def test_cpu_count_honours_the_affinity_mask() -> None:
    code = """
        import os
        from parajob.process_pool import cpu_count
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        print(cpu_count(), cpu_count(only_physical_cores=True))
    """
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "1"]


def test_cpu_count_is_bounded_by_os_cpu_count() -> None:
    assert 1 <= cpu_count() <= (os.cpu_count() or 1)
    assert 1 <= cpu_count(only_physical_cores=True) <= cpu_count()


def _cgroup_tree(tmp_path: Path, proc_line: str, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        target = tmp_path / "fs" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (tmp_path / "cgroup").write_text(proc_line)
    return tmp_path / "fs"


def test_cgroup_v2_quota_is_read_from_own_cgroup_and_ancestors(tmp_path: Path) -> None:
    root = _cgroup_tree(
        tmp_path,
        "0::/user.slice/job\n",
        {
            "user.slice/job/cpu.max": "max 100000\n",
            "user.slice/cpu.max": "150000 100000\n",
        },
    )
    assert _cgroup_cpu_limit(root, tmp_path / "cgroup") == 2


def test_cgroup_v1_quota_and_unlimited(tmp_path: Path) -> None:
    root = _cgroup_tree(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert _cgroup_cpu_limit(root, tmp_path / "cgroup") == 1
    unlimited = _cgroup_tree(tmp_path / "u", "0::/\n", {"cpu.max": "max 100000\n"})
    assert _cgroup_cpu_limit(unlimited, tmp_path / "u" / "cgroup") is None


def test_physical_cores_from_cpuinfo(tmp_path: Path) -> None:
    blocks = []
    for cpu, (phys, core) in enumerate([(0, 0), (0, 0), (0, 1), (0, 1), (1, 0)]):
        blocks.append(f"processor\t: {cpu}\nphysical id\t: {phys}\ncore id\t\t: {core}\n")
    path = tmp_path / "cpuinfo"
    path.write_text("\n".join(blocks))
    assert _physical_cores_from_cpuinfo(path) == 3
    empty = tmp_path / "empty"
    empty.write_text("")
    assert _physical_cores_from_cpuinfo(empty) is None


@pytest.mark.parametrize(
    ("n_jobs", "expected"),
    [(None, 1), (1, 1), (3, 3), (-1, "all"), (-2, "all-1"), (-1000, 1)],
)
def test_effective_n_jobs_follows_joblib_rules(n_jobs: int | None, expected: object) -> None:
    cpus = cpu_count()
    want = {"all": cpus, "all-1": max(cpus - 1, 1)}.get(str(expected), expected)
    assert effective_n_jobs(n_jobs) == want


def test_effective_n_jobs_rejects_zero_and_non_ints() -> None:
    with pytest.raises(InvalidParameterError, match="got 0; use 1 for sequential") as info:
        effective_n_jobs(0)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidParameterError, match="got '2'"):
        effective_n_jobs("2")  # type: ignore[arg-type]
