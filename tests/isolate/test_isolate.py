"""WorkerPool's API and failure handling, with real worker processes.

Every pool is used as a context manager and every test that starts workers
checks afterwards that none of them is still alive: a pool that leaks
processes would defeat its own purpose.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import isolate_tasks
import psutil
import pytest
from isolate_support import HANG_S, assert_all_gone, pids_of, read_pid, wait_for

import nativeguard.isolate._isolated
from nativeguard import ClosedResourceError
from nativeguard.isolate import (
    NotPlainDataError,
    PoolStatistics,
    RemoteTaskError,
    TaskFuture,
    TaskTimeout,
    WorkerCrashed,
    WorkerPool,
    WorkerStartError,
    in_worker,
    isolated,
    shutdown_isolated_pools,
)

pytestmark = pytest.mark.usefixtures("fork_server")

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent

# ------------------------------------------------------------------- helpers


def active_idle(stats: PoolStatistics) -> int:
    return sum(1 for w in stats.workers if w.role == "active" and w.state == "idle")


def shutdown_hangs(pool: WorkerPool, within_s: float = 5.0) -> bool:
    """Whether ``pool.shutdown()`` fails to return in time; if so, unstick it (no process left)."""
    closer = threading.Thread(target=pool.shutdown, name="test-shutdown", daemon=True)
    closer.start()
    closer.join(within_s)
    hung = closer.is_alive()
    if hung:
        pool.shutdown(cancel_futures=True, terminate=True)
        closer.join(HANG_S)
    return hung


@pytest.fixture
def default_pools() -> Iterator[None]:
    """Shut down the shared @isolated pools a test started, and check their workers are gone."""
    shutdown_isolated_pools()  # start from none, whoever left one
    try:
        yield
    finally:
        pools = list(nativeguard.isolate._isolated._default_pools.values())
        pids = {pid for pool in pools for pid in pids_of(pool)}
        shutdown_isolated_pools()
        pids |= {pid for pool in pools for pid in pids_of(pool)}
        assert pools, "the test started no shared pool"
        assert_all_gone(pids)


# -------------------------------------------------------------------- basics


def test_submit_returns_result_and_accounting() -> None:
    """A task runs in another process; its future says where and at what memory cost."""
    with WorkerPool(1) as pool:
        future = pool.submit(isolate_tasks.add, 2, b=40)
        assert future.result(HANG_S) == 42
        pid_future = pool.submit(isolate_tasks.getpid)
        worker_pid = pid_future.result(HANG_S)
    assert isinstance(future, TaskFuture)
    assert future.pid is not None
    assert future.pid != os.getpid()
    assert worker_pid == pid_future.pid == future.pid  # one worker ran both
    for value in (future.rss_before_mb, future.rss_after_mb, future.rss_delta_mb):
        assert isinstance(value, float)
    assert future.rss_before_mb > 0
    assert future.rss_delta_mb == pytest.approx(future.rss_after_mb - future.rss_before_mb)
    assert isinstance(future.duration_s, float)
    assert future.duration_s >= 0
    assert future.attempts == 1
    assert future.worker_retired is None
    assert future.task.function == "isolate_tasks.add"
    stats = pool.statistics()
    assert (stats.tasks_submitted, stats.tasks_completed, stats.tasks_failed) == (2, 2, 0)
    assert_all_gone(pids_of(pool, [future]))


def test_map_keeps_order_across_workers() -> None:
    """Results come in argument order even when later tasks finish first."""
    with WorkerPool(2) as pool:
        assert list(pool.map(isolate_tasks.add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
        results = pool.map(isolate_tasks.sleep_then, [0.4, 0.0, 0.1, 0.0], ["a", "b", "c", "d"])
        assert list(results) == ["a", "b", "c", "d"]
    assert pool.statistics().tasks_completed == 7
    assert_all_gone(pids_of(pool))


def test_map_timeout_raises_timeout_error() -> None:
    """map(timeout=) bounds the wait for the results, like Executor.map."""
    with WorkerPool(1) as pool:
        # Not yet started when the timeout ends the iterator, the task would be
        # cancelled, not killed: a cold pool (this test alone) needs its worker first.
        wait_for(lambda: active_idle(pool.statistics()) == 1, "a ready worker")
        results = pool.map(isolate_tasks.sleep_then, [30.0], ["late"], timeout=0.2)
        started = time.monotonic()
        # concurrent.futures.TimeoutError: the builtin TimeoutError only from 3.11 on.
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
        assert time.monotonic() - started < HANG_S
        pids = pids_of(pool)
        pool.shutdown(cancel_futures=True, terminate=True)
    stats = pool.statistics()
    assert stats.tasks_failed == 1  # the running task was killed by the shutdown
    assert_all_gone(pids | pids_of(pool))


def test_map_closed_early_cancels_the_rest() -> None:
    """Closing the result iterator cancels every task that has not started; shutdown still ends."""
    with WorkerPool(1, warm_spare=False) as pool:
        results = pool.map(isolate_tasks.sleep_then, [0.0, 0.5, 0.5, 0.5, 0.5], range(5))
        assert next(results) == 0
        # Task 1 is on the worker, tasks 2-4 are queued when the iterator closes.
        wait_for(
            lambda: pool.statistics().workers[0].state == "busy",
            "the second task to start",
        )
        results.close()
        hung = shutdown_hangs(pool)
    assert not hung, "shutdown() hung with cancelled tasks left in the queue"
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_cancelled, stats.tasks_failed) == (2, 3, 0)
    assert_all_gone(pids_of(pool))


def test_asubmit_and_async_with() -> None:
    """asubmit awaits in the event loop; ``async with`` ends the workers without blocking it."""

    async def main() -> tuple[list[object], set[int]]:
        async with WorkerPool(2) as pool:
            results = await asyncio.gather(
                pool.asubmit(isolate_tasks.add, 1, 2),
                pool.asubmit(isolate_tasks.async_double, 21),
                pool.asubmit(isolate_tasks.worker_flag),
            )
            pids = pids_of(pool)
        return results, pids | pids_of(pool)

    results, pids = asyncio.run(main())
    total, (double_pid, doubled), flag = results
    assert (total, doubled, flag) == (3, 42, True)
    assert double_pid != os.getpid()
    assert_all_gone(pids)


def test_async_function_via_submit() -> None:
    """An ``async def`` task submitted synchronously runs under the worker's own loop."""
    with WorkerPool(1) as pool:
        future = pool.submit(isolate_tasks.async_double, 5)
        pid, value = future.result(HANG_S)
    assert value == 10
    assert pid == future.pid != os.getpid()
    assert_all_gone(pids_of(pool, [future]))


def test_in_worker_only_inside_tasks() -> None:
    """in_worker() is False here and True in a task."""
    assert in_worker() is False
    with WorkerPool(1) as pool:
        assert pool.submit(isolate_tasks.worker_flag).result(HANG_S) is True
    assert_all_gone(pids_of(pool))


def test_isolated_shares_one_default_pool_per_options(default_pools: None) -> None:
    """Functions decorated with the same options share a pool; other options get their own."""
    first_pid, flag, squared = isolate_tasks.iso_square(7)
    assert (flag, squared) == (True, 49)
    assert first_pid != os.getpid()
    outer_pid, inner = isolate_tasks.iso_outer(3)
    # Same options, one worker, no recycling: the same process ran both calls,
    # and the nested isolated call ran inline in it.
    assert outer_pid == first_pid
    assert inner == (first_pid, True, 9)
    fresh = [isolate_tasks.iso_fresh_pid() for _ in range(3)]
    assert len(set(fresh)) == 3  # max_tasks=1 pool: a new worker per call
    assert first_pid not in fresh
    pools = nativeguard.isolate._isolated._default_pools
    assert len(pools) == 2
    submitted = sorted(pool.statistics().tasks_submitted for pool in pools.values())
    assert submitted == [2, 3]  # iso_outer's inner call never reached the pool


def test_isolated_async_function(default_pools: None) -> None:
    """An isolated ``async def`` returns an awaitable that runs it in a worker."""

    async def main() -> list[tuple[int, bool, int]]:
        return list(await asyncio.gather(*(isolate_tasks.iso_async_square(n) for n in (2, 3))))

    results = asyncio.run(main())
    assert [(flag, value) for _, flag, value in results] == [(True, 4), (True, 9)]
    assert {pid for pid, _, _ in results} != {os.getpid()}


def test_isolated_with_explicit_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """@isolated(pool=...) runs in that pool; a nested isolated call runs inline in its worker.

    The decorated function is bound under its own module-level name (as a
    decorator at module level would), so pickle finds it by reference; the
    worker imports the module fresh and runs the undecorated body.
    """
    shared_before = set(nativeguard.isolate._isolated._default_pools)
    with WorkerPool(1) as pool:
        monkeypatch.setattr(
            isolate_tasks, "pooled_cube", isolated(pool=pool)(isolate_tasks.pooled_cube)
        )
        monkeypatch.setattr(
            isolate_tasks, "pooled_outer", isolated(pool=pool)(isolate_tasks.pooled_outer)
        )
        pid, cubed = isolate_tasks.pooled_cube(3)
        outer_pid, inner = isolate_tasks.pooled_outer(4)
    assert cubed == 27
    assert pid == outer_pid != os.getpid()
    assert inner == (pid, True, 16)
    assert pool.statistics().tasks_submitted == 2
    # The nested call ran inline in the worker: no shared pool started here.
    assert set(nativeguard.isolate._isolated._default_pools) == shared_before
    assert_all_gone(pids_of(pool))


def test_isolated_refuses_bad_use() -> None:
    """Unknown or bad options, pool plus options, and lambdas are refused at decoration."""
    shared_before = dict(nativeguard.isolate._isolated._default_pools)
    with pytest.raises(TypeError, match="unknown WorkerPool options for @isolated: bogus"):
        isolated(bogus=1)
    # Values too, by the pool's own checks, before any pool exists.
    with pytest.raises(ValueError, match="max_tasks must be a finite number > 0, got 0"):
        isolated(max_tasks=0)
    with pytest.raises(ValueError, match=r"preload module 'azure\.nope' cannot be found"):
        isolated(preload=["azure.nope"])
    assert nativeguard.isolate._isolated._default_pools == shared_before
    with pytest.raises(TypeError, match="nested or a lambda"):
        isolated(lambda: None)
    with pytest.raises(TypeError, match="pool must be a WorkerPool"):
        isolated(pool="not a pool")  # type: ignore[arg-type]


# ------------------------------------------------------------------ failures


def test_task_exception_comes_back_with_worker_traceback() -> None:
    """The task's own exception type, with the worker's traceback as a note."""
    with WorkerPool(1) as pool:
        future = pool.submit(isolate_tasks.raise_value_error, "boom 7")
        with pytest.raises(ValueError, match="boom 7") as caught:
            future.result(HANG_S)
        # The worker survives a task's exception.
        assert pool.submit(isolate_tasks.getpid).result(HANG_S) == future.pid
    assert str(caught.value) == "boom 7"
    notes = caught.value.__notes__
    assert len(notes) == 1
    assert notes[0].startswith(f"in worker pid {future.pid}:\nTraceback (most recent call last):")
    assert "in raise_value_error" in notes[0]
    assert notes[0].endswith("ValueError: boom 7")
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_failed, stats.crashes) == (1, 1, 0)
    assert_all_gone(pids_of(pool, [future]))


def test_unpicklable_exception_becomes_remote_task_error() -> None:
    """An exception that cannot cross comes back as RemoteTaskError naming its type."""
    with WorkerPool(1) as pool:
        future = pool.submit(isolate_tasks.raise_unpicklable, "held a lock")
        with pytest.raises(RemoteTaskError) as caught:
            future.result(HANG_S)
    error = caught.value
    assert error.type_name == "isolate_tasks.UnpicklableError"
    assert str(error) == "isolate_tasks.UnpicklableError: held a lock"
    assert "UnpicklableError: held a lock" in error.__notes__[0]
    assert_all_gone(pids_of(pool, [future]))


def test_os_exit_is_a_worker_crash() -> None:
    """os._exit(3) in a task: WorkerCrashed with the exit code, and no signal."""
    with WorkerPool(1) as pool:
        future = pool.submit(isolate_tasks.exit_with, 3)
        with pytest.raises(WorkerCrashed) as caught:
            future.result(HANG_S)
        assert pool.submit(isolate_tasks.add, 1, 1).result(HANG_S) == 2
    error = caught.value
    assert (error.exitcode, error.signal) == (3, None)
    assert error.task.function == "isolate_tasks.exit_with"
    assert error.worker.pid == future.pid
    assert f"worker pid {future.pid} exited with code 3" in str(error)
    assert_all_gone(pids_of(pool, [future]))


def test_sigkill_mid_task_fails_that_task_alone_and_pool_heals(tmp_path: Path) -> None:
    """SIGKILL of a busy worker: its task fails, the others finish, the pool replaces it."""
    marker = tmp_path / "victim.pid"
    with WorkerPool(2) as pool:
        victim = pool.submit(isolate_tasks.report_pid_and_sleep, str(marker), 60.0)
        others = [pool.submit(isolate_tasks.sleep_then, 0.2, n) for n in range(4)]
        victim_pid = read_pid(marker)
        os.kill(victim_pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed) as caught:
            victim.result(HANG_S)
        assert [future.result(HANG_S) for future in others] == [0, 1, 2, 3]
        wait_for(lambda: active_idle(pool.statistics()) == 2, "two idle active workers")
        after = [pool.submit(isolate_tasks.getpid) for _ in range(4)]
        after_pids = {future.result(HANG_S) for future in after}
        stats = pool.statistics()
        pids = pids_of(pool, [victim, *others, *after])
    error = caught.value
    assert (error.signal, error.exitcode) == (9, -9)
    assert victim.pid == victim_pid
    assert "was killed by SIGKILL" in str(error)
    assert victim_pid not in after_pids
    assert sum(1 for w in stats.workers if w.role == "active") == 2
    assert (stats.crashes, stats.tasks_completed, stats.tasks_failed) == (1, 8, 1)
    assert [(r.pid, r.reason) for r in stats.retirements] == [(victim_pid, "crashed")]
    assert_all_gone(pids)


def test_segfault_is_a_worker_crash_with_signal_11() -> None:
    """A native segfault kills only the worker; the task fails with signal 11."""
    with WorkerPool(1) as pool:
        future = pool.submit(isolate_tasks.segfault)
        with pytest.raises(WorkerCrashed) as caught:
            future.result(HANG_S)
        assert pool.submit(isolate_tasks.add, 2, 3).result(HANG_S) == 5
    assert (caught.value.signal, caught.value.exitcode) == (signal.SIGSEGV, -11)
    assert "was killed by SIGSEGV" in str(caught.value)
    assert_all_gone(pids_of(pool, [future]))


def test_retry_runs_a_crashed_task_again_on_a_fresh_worker(tmp_path: Path) -> None:
    """retries=1: a task whose first worker crashed succeeds on its second attempt."""
    marker = tmp_path / "first-attempt"
    with WorkerPool(1, retries=1) as pool:
        future = pool.submit(isolate_tasks.crash_first_time, str(marker))
        assert future.result(HANG_S) == "second attempt"
        stats = pool.statistics()
    first_pid = int(marker.read_text())
    assert future.attempts == 2
    assert future.pid is not None
    assert future.pid != first_pid
    assert (stats.retries, stats.crashes, stats.tasks_completed, stats.tasks_failed) == (
        1,
        1,
        1,
        0,
    )
    assert [(r.pid, r.reason) for r in stats.retirements] == [(first_pid, "crashed")]
    assert_all_gone(pids_of(pool, [future]) | {first_pid})


def test_retries_exhausted_raise_worker_crashed() -> None:
    """A task that crashes on every attempt fails after 1 + retries attempts."""
    with WorkerPool(1, retries=2) as pool:
        future = pool.submit(isolate_tasks.exit_with, 4)
        with pytest.raises(WorkerCrashed) as caught:
            future.result(HANG_S)
        stats = pool.statistics()
    assert future.attempts == 3
    assert caught.value.task.attempt == 3
    assert (stats.crashes, stats.retries, stats.tasks_failed) == (3, 2, 1)
    assert_all_gone(pids_of(pool, [future]))


def test_hung_task_is_killed_at_its_timeout() -> None:
    """A task past task_timeout_s fails with TaskTimeout; SIGTERM ends it; the pool goes on."""
    with WorkerPool(1, task_timeout_s=0.5) as pool:
        started = time.monotonic()
        future = pool.submit(isolate_tasks.sleep_then, 60.0, "never")
        with pytest.raises(TaskTimeout) as caught:
            future.result(HANG_S)
        assert time.monotonic() - started < HANG_S
        assert pool.submit(isolate_tasks.add, 1, 2).result(HANG_S) == 3
        stats = pool.statistics()
    assert f"worker pid {future.pid} was killed by SIGTERM" in str(caught.value)
    assert caught.value.task.function == "isolate_tasks.sleep_then"
    assert (stats.timeouts, stats.crashes, stats.tasks_failed) == (1, 0, 1)
    assert [r.reason for r in stats.retirements] == ["timeout"]
    assert_all_gone(pids_of(pool, [future]))


def test_task_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    """A task that ignores SIGTERM is SIGKILLed kill_grace_s later."""
    ready = tmp_path / "ignoring"
    with WorkerPool(1, task_timeout_s=3.0, kill_grace_s=0.5) as pool:
        started = time.monotonic()
        future = pool.submit(isolate_tasks.ignore_sigterm_and_sleep, str(ready), 60.0)
        with pytest.raises(TaskTimeout) as caught:
            future.result(HANG_S)
        assert time.monotonic() - started < HANG_S
        stats = pool.statistics()
    assert ready.exists()  # SIGTERM was ignored before the timeout
    assert f"worker pid {future.pid} was killed by SIGKILL" in str(caught.value)
    assert stats.timeouts == 1
    assert [(r.pid, r.reason) for r in stats.retirements] == [(future.pid, "timeout")]
    assert_all_gone(pids_of(pool, [future]))


def test_statistics_count_each_kind_of_retirement() -> None:
    """crashes, timeouts, recycles by reason and each retirement's reason, counted apart."""
    with WorkerPool(1, max_tasks=2, jitter=0, task_timeout_s=0.5) as pool:
        assert pool.submit(isolate_tasks.add, 1, 1).result(HANG_S) == 2
        second = pool.submit(isolate_tasks.add, 2, 2)
        assert second.result(HANG_S) == 4
        assert second.worker_retired == "max_tasks"
        with pytest.raises(WorkerCrashed):
            pool.submit(isolate_tasks.exit_with, 3).result(HANG_S)
        with pytest.raises(TaskTimeout):
            pool.submit(isolate_tasks.sleep_then, 60.0, None).result(HANG_S)
        assert pool.submit(isolate_tasks.add, 3, 3).result(HANG_S) == 6

        def settled() -> bool:
            stats = pool.statistics()
            return len(stats.retirements) == 3 and any(w.role == "spare" for w in stats.workers)

        wait_for(settled, "three retirements and a new spare")
        during = pool.statistics()
    assert (during.crashes, during.timeouts, dict(during.recycles)) == (1, 1, {"max_tasks": 1})
    assert collections.Counter(r.reason for r in during.retirements) == {
        "max_tasks": 1,
        "crashed": 1,
        "timeout": 1,
    }
    assert (during.tasks_submitted, during.tasks_completed, during.tasks_failed) == (5, 3, 2)
    # One active and one spare at first, then one replacement per retirement.
    assert during.workers_started == 5
    after = pool.statistics()
    # Shutdown stops the last active worker and the spare: "stopped", not recycles.
    reasons = collections.Counter(r.reason for r in after.retirements)
    assert reasons == {"max_tasks": 1, "crashed": 1, "timeout": 1, "stopped": 2}
    assert dict(after.recycles) == {"max_tasks": 1}
    assert after.workers == ()
    assert_all_gone(pids_of(pool))


# ---------------------------------------------------------------- plain data


def test_non_plain_arguments_are_refused_by_submit() -> None:
    """submit() itself refuses arguments that are not plain data, naming where they are."""
    with WorkerPool(1) as pool:
        with pytest.raises(NotPlainDataError) as positional:
            pool.submit(isolate_tasks.echo, threading.Lock())
        with pytest.raises(NotPlainDataError) as keyword:
            pool.submit(isolate_tasks.echo, value=isolate_tasks.Opaque("x"))
        with pytest.raises(NotPlainDataError) as nested:
            pool.submit(
                isolate_tasks.echo, value=[isolate_tasks.LockHolder("held", threading.Lock())]
            )
        stats = pool.statistics()
    assert (positional.value.path, positional.value.type_name) == ("args[0]", "_thread.lock")
    assert (keyword.value.path, keyword.value.type_name) == (
        "kwargs['value']",
        "isolate_tasks.Opaque",
    )
    assert nested.value.path == "kwargs['value'][0].lock"
    assert stats.tasks_submitted == 0
    assert_all_gone(pids_of(pool))


def _nested_function() -> int:
    return 1


def test_lambda_or_nested_function_is_refused_as_fn() -> None:
    """A function the worker cannot import by name is refused with path ``fn``."""

    def nested() -> int:
        return 1

    with WorkerPool(1) as pool:
        for fn in (lambda: 1, nested):
            with pytest.raises(NotPlainDataError) as caught:
                pool.submit(fn)
            assert caught.value.path == "fn"
            assert "cannot be pickled" in str(caught.value)
        assert pool.statistics().tasks_submitted == 0
    assert_all_gone(pids_of(pool))


def test_non_plain_result_names_its_exact_path() -> None:
    """A result with an object deep inside (dataclass, tuple, dataclass) names the exact field."""
    with WorkerPool(1) as pool:
        future = pool.submit(isolate_tasks.report_with_opaque, 3)
        with pytest.raises(NotPlainDataError) as caught:
            future.result(HANG_S)
        with pytest.raises(NotPlainDataError) as lock:
            pool.submit(isolate_tasks.return_lock).result(HANG_S)
    assert caught.value.path == "result.segments[3].raw"
    assert caught.value.type_name == "isolate_tasks.Opaque"
    assert str(caught.value).startswith(
        "result.segments[3].raw is a isolate_tasks.Opaque, not plain data"
    )
    assert (lock.value.path, lock.value.type_name) == ("result", "_thread.lock")
    stats = pool.statistics()
    assert (stats.tasks_failed, stats.crashes) == (2, 0)  # refused in the worker, which lives on
    assert_all_gone(pids_of(pool, [future]))


def test_plain_types_lets_an_extra_type_through() -> None:
    """plain_types= admits a trusted type, in arguments and results alike."""
    with WorkerPool(1, plain_types=[isolate_tasks.Opaque]) as pool:
        report = pool.submit(isolate_tasks.report_with_opaque, 3).result(HANG_S)
        echoed = pool.submit(isolate_tasks.echo, isolate_tasks.Opaque("arg")).result(HANG_S)
    assert report.segments[3].raw == isolate_tasks.Opaque("raw 3")
    assert [part.raw for part in report.segments[:3]] == [b"raw"] * 3
    assert echoed == isolate_tasks.Opaque("arg")
    assert_all_gone(pids_of(pool))


# ----------------------------------------------------------------- lifecycle


def test_shutdown_is_idempotent_and_refuses_new_tasks() -> None:
    """shutdown() twice is fine; submit afterwards raises ClosedResourceError."""
    with WorkerPool(1) as pool:
        assert pool.submit(isolate_tasks.add, 1, 2).result(HANG_S) == 3
        pids = pids_of(pool)
        pool.shutdown()
        pool.shutdown()
        with pytest.raises(ClosedResourceError, match="is shut down; it takes no new tasks"):
            pool.submit(isolate_tasks.add, 1, 2)
    pool.shutdown(cancel_futures=True, terminate=True)
    assert pool.statistics().workers == ()
    assert "closed" in repr(pool)
    assert_all_gone(pids | pids_of(pool))


def test_shutdown_cancel_futures_cancels_queued_tasks() -> None:
    """shutdown(cancel_futures=True) cancels what is queued and lets the running task finish."""
    with WorkerPool(1, warm_spare=False) as pool:
        running = pool.submit(isolate_tasks.sleep_then, 0.5, "finished")
        queued = [pool.submit(isolate_tasks.add, n, n) for n in range(3)]
        wait_for(running.running, "the first task to start")
        pool.shutdown(cancel_futures=True)
    assert running.result(0) == "finished"
    assert [future.cancelled() for future in queued] == [True, True, True]
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_cancelled, stats.tasks_failed) == (1, 3, 0)
    assert_all_gone(pids_of(pool, [running]))


def test_leaving_with_by_exception_kills_running_and_cancels_queued() -> None:
    """An exception in the block: queued tasks cancelled, running ones killed, promptly."""
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^leaving$"), WorkerPool(2) as pool:
        running = [pool.submit(isolate_tasks.sleep_then, 60.0, n) for n in range(2)]
        queued = [pool.submit(isolate_tasks.add, n, n) for n in range(3)]
        for future in running:
            wait_for(future.running, "both long tasks to start")
        pids = pids_of(pool)
        raise RuntimeError("leaving")
    assert time.monotonic() - started < HANG_S
    for future in running:
        with pytest.raises(ClosedResourceError, match="did not finish: the pool was shut down"):
            future.result(0)
    assert [future.cancelled() for future in queued] == [True, True, True]
    stats = pool.statistics()
    assert (stats.tasks_failed, stats.tasks_cancelled, stats.tasks_completed) == (2, 3, 0)
    assert stats.workers == ()
    assert_all_gone(pids | pids_of(pool, running))


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"workers": 0}, ValueError),
        ({"max_tasks": 0}, ValueError),
        ({"jitter": 1.5}, ValueError),
        ({"start_method": "x"}, ValueError),
        ({"preload": "azure.cognitiveservices.speech"}, TypeError),
        ({"retries": -1}, ValueError),
        ({"max_rss_mb": "100"}, TypeError),
        ({"plain_types": [object()]}, TypeError),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], error: type[Exception]) -> None:
    """Bad options fail in the constructor, before any thread or process starts."""
    threads = threading.active_count()
    with pytest.raises(error, match=next(iter(options))):
        WorkerPool(**options)  # type: ignore[arg-type]
    assert threading.active_count() == threads


def test_without_warm_spare_only_active_workers_run() -> None:
    """warm_spare=False: exactly N workers, all active, and tasks still run."""
    with WorkerPool(2, warm_spare=False) as pool:
        results = [pool.submit(isolate_tasks.add, n, 1) for n in range(6)]
        assert [future.result(HANG_S) for future in results] == [1, 2, 3, 4, 5, 6]
        # The first worker may have run all six before the second was started.
        wait_for(lambda: len(pool.statistics().workers) == 2, "the second worker")
        workers = pool.statistics().workers
    assert [w.role for w in workers] == ["active", "active"]
    assert pool.statistics().workers_started == 2
    assert_all_gone(pids_of(pool, results))


def test_max_tasks_one_recycles_after_every_task() -> None:
    """max_tasks=1: every task gets a fresh worker, and every worker retires by max_tasks."""
    tasks = 6
    with WorkerPool(1, max_tasks=1) as pool:
        futures = [pool.submit(isolate_tasks.getpid) for _ in range(tasks)]
        pids = [future.result(HANG_S) for future in futures]
    assert len(set(pids)) == tasks
    assert pids == [future.pid for future in futures]
    assert [future.worker_retired for future in futures] == ["max_tasks"] * tasks
    stats = pool.statistics()
    assert dict(stats.recycles) == {"max_tasks": tasks}
    # Exits are noticed in whatever order the processes end: compare as sets.
    assert {r.pid for r in stats.retirements if r.reason == "max_tasks"} == set(pids)
    assert_all_gone(pids_of(pool, futures))


# ---------------------------------------------------------------- no orphans


def _start_parent() -> tuple[subprocess.Popen[str], list[int], list[psutil.Process]]:
    """Run isolate_parent.py; return it, the worker pids it printed and all its descendants."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "isolate_parent.py")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(_read_line(proc, HANG_S * 2))
        assert "workers" in info, info
        # Fork server, resource tracker and workers (the fork server's children).
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, info["workers"], descendants


def _read_line(proc: subprocess.Popen[str], within_s: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(within_s):
            raise AssertionError(f"isolate_parent.py printed nothing in {within_s} s")
    return proc.stdout.readline()


def _kill_survivors(processes: Iterable[psutil.Process]) -> None:
    """Clean up after a failed orphan check: SIGKILL what is left (psutil refuses reused pids)."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def test_parent_interrupted_by_sigint_leaves_no_worker() -> None:
    """Ctrl-C in the pool's process: it exits through KeyboardInterrupt and kills its workers."""
    proc, workers, descendants = _start_parent()
    try:
        assert len(workers) == 3  # two busy workers and the warm spare
        assert set(workers) <= {p.pid for p in descendants}
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=HANG_S)
        assert proc.returncode == 130
        assert json.loads(out) == {
            "interrupted": True,
            "tasks_failed": 2,
            "workers_left": 0,
            "retirements": ["stopped", "stopped", "stopped"],
        }
        assert_all_gone([*workers, *(p.pid for p in descendants)], within_s=10)
    finally:
        proc.kill()
        proc.wait()
        _kill_survivors(descendants)


def test_parent_killed_by_sigkill_leaves_no_worker() -> None:
    """SIGKILL of the pool's process: the fork server exits and PDEATHSIG ends the workers."""
    proc, workers, descendants = _start_parent()
    try:
        assert len(workers) == 3
        assert set(workers) <= {p.pid for p in descendants}
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=HANG_S) == -signal.SIGKILL
        assert_all_gone([*workers, *(p.pid for p in descendants)], within_s=10)
    finally:
        proc.kill()
        proc.wait()
        _kill_survivors(descendants)


# ------------------------------------------------------ start methods, threads


@pytest.mark.parametrize(
    "method",
    [
        "spawn",
        pytest.param(
            "fork",
            # 3.12+ warns on every fork() of a process with threads (the pool's own).
            marks=pytest.mark.filterwarnings(
                "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
            ),
        ),
    ],
)
def test_other_start_methods_run_and_recycle(method: str) -> None:
    """spawn and fork workers run tasks, recycle and leave nothing behind, like forkserver's."""
    with WorkerPool(1, start_method=method, max_tasks=2, jitter=0) as pool:
        futures = [pool.submit(isolate_tasks.getpid) for _ in range(4)]
        pids = [future.result(HANG_S) for future in futures]
    stats = pool.statistics()  # after exit: every worker's end is counted
    known = pids_of(pool, futures)
    assert [future.worker_retired for future in futures] == [None, "max_tasks"] * 2
    assert pids[0] == pids[1] != pids[2] == pids[3]
    assert all(pid != os.getpid() for pid in pids)
    assert dict(stats.recycles) == {"max_tasks": 2}
    assert_all_gone(known)


def test_many_threads_and_done_callbacks_submit_concurrently() -> None:
    """Submitting from 4 threads and from done-callbacks (the manager's thread) loses nothing."""
    chained: list[TaskFuture[int]] = []
    lock = threading.Lock()

    def chain(future: TaskFuture[int]) -> None:
        # Runs on the pool's manager thread; it must not deadlock on the pool lock.
        follow_up = pool.submit(isolate_tasks.add, future.result(), 1000)
        with lock:
            chained.append(follow_up)

    with WorkerPool(2, max_tasks=15, jitter=0) as pool:
        results: dict[int, TaskFuture[int]] = {}

        def submit_range(start: int) -> None:
            for n in range(start, start + 25):
                future = pool.submit(isolate_tasks.add, n, 0)
                future.add_done_callback(chain)
                with lock:
                    results[n] = future

        threads = [threading.Thread(target=submit_range, args=(k * 25,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {n: f.result(HANG_S) for n, f in results.items()} == {n: n for n in range(100)}
        wait_for(lambda: len(chained) == 100, "100 chained submissions")
        assert sorted(f.result(HANG_S) for f in chained) == [n + 1000 for n in range(100)]
        stats = pool.statistics()
        known = pids_of(pool, [*results.values(), *chained])
    assert (stats.tasks_submitted, stats.tasks_completed, stats.tasks_failed) == (200, 200, 0)
    # Retired workers ran 15 each, the two live ones fewer: 15 * r + a + b == 200, a, b < 15.
    assert dict(stats.recycles) in ({"max_tasks": 12}, {"max_tasks": 13})
    assert_all_gone(known)


def test_workers_dying_at_start_up_break_the_pool_instead_of_looping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three workers in a row dead before ready: queued and new tasks get WorkerStartError."""
    monkeypatch.setenv("ISOLATE_BROKEN_TYPE_PARENT", str(os.getpid()))
    import isolate_broken_type

    with WorkerPool(1, warm_spare=False, plain_types=[isolate_broken_type.Payload]) as pool:
        queued = pool.submit(isolate_tasks.add, 1, 2)
        with pytest.raises(
            WorkerStartError, match="3 worker processes in a row exited with code 7"
        ):
            queued.result(HANG_S)
        with pytest.raises(WorkerStartError, match="cannot start workers"):
            pool.submit(isolate_tasks.add, 1, 2)
        stats = pool.statistics()
    assert [r.reason for r in stats.retirements] == ["start_failed"] * 3
    assert stats.workers_started == 3
    assert_all_gone(r.pid for r in stats.retirements)


def test_plain_types_must_be_importable() -> None:
    class Local:
        pass

    with pytest.raises(TypeError, match="plain_types must be importable classes"):
        WorkerPool(1, plain_types=[Local])
