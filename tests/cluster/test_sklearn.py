"""scikit-learn's parallel work on parajob's pool through the joblib adapter."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="the scikit-learn tests need scikit-learn")
joblib = pytest.importorskip("joblib", reason="the joblib adapter tests need joblib")

from sklearn.datasets import make_classification  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn_tasks import CrashingLogisticRegression  # noqa: E402

from parajob.errors import TerminatedWorkerError  # noqa: E402
from parajob.joblib_adapter import register_joblib_backend  # noqa: E402
from parajob.process_pool import shutdown_executor  # noqa: E402

X, Y = make_classification(n_samples=200, n_features=10, random_state=0)


@pytest.fixture(autouse=True)
def registered_and_stopped() -> Iterator[None]:
    """Register the adapter; stop parajob's and loky's worker pools after each test."""
    register_joblib_backend()
    yield
    shutdown_executor(wait=True, kill_workers=True)
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)


def _fit_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    search = GridSearchCV(LogisticRegression(max_iter=300), {"C": [0.1, 1, 10]}, n_jobs=2)
    search.fit(X, Y)
    scores = cross_val_score(
        RandomForestClassifier(n_estimators=10, random_state=0), X, Y, n_jobs=2
    )
    forest = RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=2).fit(X, Y)
    return search.cv_results_["mean_test_score"], scores, forest.predict_proba(X)


def test_sklearn_on_parajob_gives_the_same_results_as_on_loky() -> None:
    with joblib.parallel_config(backend="parajob"):
        ours = _fit_all()
    with joblib.parallel_config(backend="loky"):
        theirs = _fit_all()
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_work_runs_in_parajob_workers() -> None:
    with joblib.parallel_config(backend="parajob", n_jobs=2):
        ids = joblib.Parallel()(joblib.delayed(_worker_id)() for _ in range(8))
    # parajob's worker_id() is None outside parajob's workers (in loky's, for instance).
    assert set(ids) <= {0, 1} and ids


def _worker_id() -> int | None:
    from parajob.process_pool import worker_id

    return worker_id()


def test_worker_crash_in_grid_search_names_the_task() -> None:
    search = GridSearchCV(CrashingLogisticRegression(), {"C": [0.1, 1, 10]}, n_jobs=2)
    with joblib.parallel_config(backend="parajob"), pytest.raises(TerminatedWorkerError) as info:
        search.fit(X, Y)
    message = str(info.value)
    # 3 candidates x 5 folds; candidate C=10 is tasks 10-14.
    match = re.search(
        r"task (\d+) \(sklearn\.model_selection\._validation\._fit_and_score\)", message
    )
    assert match is not None, message
    assert 10 <= int(match.group(1)) <= 14
    # The pool recovers: the next search works.
    with joblib.parallel_config(backend="parajob"):
        GridSearchCV(LogisticRegression(max_iter=300), {"C": [1, 2]}, n_jobs=2).fit(X, Y)


def test_progress_counts_scikit_learn_tasks() -> None:
    seen: list[tuple[int, int | None]] = []
    with joblib.parallel_config(
        backend="parajob", progress=lambda done, total: seen.append((done, total))
    ):
        cross_val_score(LogisticRegression(max_iter=300), X, Y, cv=4, n_jobs=2)
    assert seen and seen[-1][0] == 4


def test_task_error_is_raised_with_a_note_naming_the_task() -> None:
    with (
        joblib.parallel_config(backend="parajob", n_jobs=2),
        pytest.raises(ZeroDivisionError) as info,
    ):
        joblib.Parallel()(joblib.delayed(_inverse)(i) for i in [3, 2, 1, 0, 5])
    assert any("task 3 (_inverse)" in n for n in info.value.__notes__)


def _inverse(x: int) -> float:
    return 1 / x


def _describe(a: np.ndarray) -> tuple[str, bool, float]:
    return type(a).__name__, bool(a.flags.writeable), float(a.sum())


def test_large_arrays_reach_the_workers_through_shared_memory() -> None:
    from parajob.process_pool import _sharer

    big = np.arange(300_000, dtype=np.float64)  # 2.4 MB, above joblib's max_nbytes of 1M
    with joblib.parallel_config(backend="parajob", n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(_describe)(big) for _ in range(4))
        assert out == [("memmap", False, float(big.sum()))] * 4  # mapped, read-only
        assert _sharer.KEEPER.holds(_sharer._key(big))  # kept for the next call
        out = joblib.Parallel(mmap_mode="c")(joblib.delayed(_describe)(big) for _ in range(2))
        assert out == [("memmap", True, float(big.sum()))] * 2
        out = joblib.Parallel(max_nbytes=None)(joblib.delayed(_describe)(big) for _ in range(2))
        assert out == [("ndarray", True, float(big.sum()))] * 2  # pickled, as joblib does


def _first_plus(a: np.ndarray, i: int) -> float:
    time.sleep(0.05)  # later tasks are still queued when the other call runs
    return float(a[0]) + i


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_a_joblib_call_inside_an_open_generator_leaves_its_shared_arrays_alone(
    mode: str,
) -> None:
    # joblib gives every Parallel of a parallel_config block the same backend object: the
    # inner call must neither close nor replace the open call's shared copies.
    big = np.arange(500_000, dtype=np.float64)  # 4 MB, shared
    with joblib.parallel_config(backend="parajob", n_jobs=2, mmap_mode=mode):
        gen = joblib.Parallel(return_as="generator", batch_size=1, pre_dispatch="2*n_jobs")(
            joblib.delayed(_first_plus)(big, i) for i in range(10)
        )
        first = next(gen)
        assert joblib.Parallel()(joblib.delayed(sum)(np.ones(10)) for _ in range(2)) == [10, 10]
        assert [first, *gen] == [float(i) for i in range(10)]


def _fill_row(out: np.ndarray, i: int) -> int:
    out[i] = i
    return i


def _kind(a: np.ndarray) -> str:
    return type(a).__name__


def test_managed_joblib_parallels_of_one_block_each_use_their_own_settings(
    tmp_path: Path,
) -> None:
    big = np.ones(500_000)  # 4 MB
    with (
        joblib.parallel_config(backend="parajob", n_jobs=2),
        joblib.Parallel(mmap_mode="r+") as p1,
        joblib.Parallel() as p2,
    ):
        out = np.memmap(tmp_path / "out", dtype=np.float64, mode="w+", shape=(4, 10))
        assert p1(joblib.delayed(_fill_row)(out, i) for i in range(4)) == [0, 1, 2, 3]
        assert all((out[i] == i).all() for i in range(4))  # the workers' writes arrived
        assert p1(joblib.delayed(_kind)(big) for _ in range(1)) == ["memmap"]
        assert p2(joblib.delayed(_kind)(big) for _ in range(1)) == ["memmap"]


def _fail_with_big_result(i: int) -> np.ndarray:
    if i == 0:
        raise ValueError("no")
    return np.ones(100_000)


def test_batches_of_failed_joblib_calls_are_not_kept() -> None:
    with joblib.parallel_config(backend="parajob", n_jobs=2):
        for _ in range(3):
            parallel = joblib.Parallel()
            with pytest.raises(ValueError, match="no"):
                parallel(joblib.delayed(_fail_with_big_result)(i) for i in range(6))
        backend = parallel._backend
    deadline = time.monotonic() + 10
    while backend._first_task and time.monotonic() < deadline:
        time.sleep(0.01)  # batches still finishing in the workers
    assert backend._first_task == {}


def test_a_failing_joblib_call_does_not_cancel_another_open_one() -> None:
    big = np.arange(10.0)
    with joblib.parallel_config(backend="parajob", n_jobs=2):
        gen = joblib.Parallel(return_as="generator", batch_size=1)(
            joblib.delayed(_first_plus)(big, i) for i in range(10)
        )
        first = next(gen)
        with pytest.raises(ValueError, match="no"):
            joblib.Parallel()(joblib.delayed(_fail_with_big_result)(i) for i in range(4))
        assert [first, *gen] == [float(i) for i in range(10)]
