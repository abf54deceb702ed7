"""WorkerPool as a concurrent.futures.Executor: run_in_executor, initializer/initargs, map."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import isolate_executor_tasks as tasks
import pytest
from isolate_support import HANG_S, assert_all_gone, pids_of

from nativeguard.isolate import NotPlainDataError, WorkerPool, WorkerStartError

pytestmark = [pytest.mark.usefixtures("fork_server"), pytest.mark.timeout(60)]


def test_a_pool_is_an_executor_that_asyncio_can_use() -> None:
    async def main(pool: WorkerPool) -> list[int]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(*(loop.run_in_executor(pool, tasks.double, i) for i in range(4)))
        )

    with WorkerPool(2) as pool:
        assert isinstance(pool, concurrent.futures.Executor)
        assert asyncio.run(main(pool)) == [0, 2, 4, 6]
    assert_all_gone(pids_of(pool))


def test_initializer_runs_in_every_worker_before_its_tasks() -> None:
    with WorkerPool(
        1, max_tasks=2, jitter=0, initializer=tasks.remember, initargs=("k", 7)
    ) as pool:
        futures = [pool.submit(tasks.recall, "k") for _ in range(4)]
        results = [future.result(HANG_S) for future in futures]
    # Two workers ran two tasks each: each ran the initializer itself, first.
    assert results == [[7, True]] * 4
    assert len({future.pid for future in futures}) == 2
    assert pool.statistics().recycles["max_tasks"] == 2
    assert_all_gone(pids_of(pool, futures))


def test_an_initializer_that_raises_breaks_the_pool_with_a_clear_error() -> None:
    with WorkerPool(
        1, warm_spare=False, initializer=tasks.refuse_to_start, initargs=("no",)
    ) as pool:
        future = pool.submit(tasks.double, 1)
        with pytest.raises(WorkerStartError, match="before they were ready"):
            future.result(HANG_S)
        with pytest.raises(WorkerStartError):
            pool.submit(tasks.double, 2)
    stats = pool.statistics()
    assert [r.reason for r in stats.retirements] == ["start_failed"] * 3
    assert_all_gone(pids_of(pool))


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"initializer": lambda: None}, TypeError, "initializer must be importable"),
        ({"initializer": 3}, TypeError, "initializer must be callable"),
        (
            {"initializer": tasks.remember, "initargs": ["k", 1]},
            TypeError,
            "initargs must be a tuple",
        ),
        ({"initargs": ("k",)}, ValueError, "initargs given without an initializer"),
        (
            {"initializer": tasks.remember, "initargs": ("k", threading.Lock())},
            NotPlainDataError,
            r"initargs\[1\]",
        ),
    ],
)
def test_bad_initializer_options_are_refused_by_name(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    before = threading.active_count()
    with pytest.raises(error, match=match):
        WorkerPool(1, **options)  # type: ignore[arg-type]
    assert threading.active_count() == before  # refused before any thread started


def test_map_takes_chunksize_like_executor_map() -> None:
    with WorkerPool(1) as pool:
        assert list(pool.map(tasks.double, range(5), chunksize=2)) == [0, 2, 4, 6, 8]
        with pytest.raises(ValueError, match="chunksize must be an int >= 1"):
            pool.map(tasks.double, range(5), chunksize=0)
