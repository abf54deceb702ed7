"""Tasks sent ahead to busy workers: still cancellable, never stranded behind a long task.

WorkerPool sends one queued task ahead to each busy worker so it starts it
without waiting for the manager. These tests pin what that must not change:
a task sent ahead and then cancelled never runs, and one sent ahead to a
worker busy with a long task is taken back by a worker that goes idle.
"""

from __future__ import annotations

from pathlib import Path

import isolate_adversarial_tasks as tasks
import pytest
from isolate_support import HANG_S, assert_all_gone, pids_of, wait_for

from nativeguard.isolate import WorkerPool

pytestmark = [pytest.mark.usefixtures("fork_server"), pytest.mark.timeout(60)]


def sent_ahead(future: object) -> bool:
    return getattr(future, "_claim", None) is not None


def test_a_task_sent_ahead_and_cancelled_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with WorkerPool(1, warm_spare=False) as pool:
        first = pool.submit(tasks.sleep_then, 0.5, "first")
        wait_for(first.running, "the first task to start")
        second = pool.submit(tasks.touch_after, 0.0, str(marker))
        wait_for(lambda: sent_ahead(second), "the second task to be sent ahead")
        assert not second.running()
        assert second.cancel()
        assert first.result(HANG_S) == "first"
        third = pool.submit(tasks.add, 1, 2)
        assert third.result(HANG_S) == 3
    assert second.cancelled()
    assert not marker.exists()
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_cancelled, stats.tasks_failed) == (2, 1, 0)
    assert_all_gone(pids_of(pool, [first, third]))


def test_a_task_sent_ahead_of_a_long_one_is_taken_by_an_idle_worker() -> None:
    pool = WorkerPool(2, warm_spare=False)
    try:
        long = pool.submit(tasks.sleep_then, 40.0, "long")
        short = pool.submit(tasks.sleep_then, 0.3, "short")
        wait_for(lambda: long.running() and short.running(), "both to start")
        behind = [pool.submit(tasks.add, n, n) for n in range(2)]
        wait_for(lambda: all(sent_ahead(f) for f in behind), "both to be sent ahead")
        # One of them waits behind the 40 s task; the worker of the short one
        # runs its own and then takes the other back.
        assert [f.result(HANG_S) for f in behind] == [0, 2]
        assert short.result(HANG_S) == "short"
        assert {f.pid for f in behind} == {short.pid}
        assert long.running()
    finally:
        pool.shutdown(cancel_futures=True, terminate=True)
    assert_all_gone(pids_of(pool, [long, short, *behind]))


@pytest.mark.parametrize("warm_spare", [False, True])
def test_a_worker_on_its_last_task_has_its_replacement_started_before_it_retires(
    tmp_path: Path, warm_spare: bool
) -> None:
    """max_tasks: the replacement starts while the last task runs, and takes the next task.

    Exact accounting: one worker per retirement plus the ones asked for, each
    ended once (by max_tasks or at shutdown), none left behind.
    """
    release = tmp_path / "release"
    with WorkerPool(1, max_tasks=2, jitter=0, warm_spare=warm_spare) as pool:
        first = pool.submit(tasks.getpid)
        assert first.result(HANG_S) == first.pid
        last = pool.submit(tasks.wait_for_file, str(release), "last")
        wait_for(last.running, "the last task to start")

        def replacement_ready() -> bool:
            workers = pool.statistics().workers
            ready = [w for w in workers if w.role == "spare" and w.state == "idle"]
            return len(ready) == 1 + warm_spare

        # The old worker is still busy with its last task, and will retire after it.
        wait_for(replacement_ready, "the replacement to start while the last task runs")
        busy = [w for w in pool.statistics().workers if w.role == "active"]
        assert [(w.pid, w.state, w.tasks_run) for w in busy] == [(first.pid, "busy", 1)]
        spares = {w.pid for w in pool.statistics().workers if w.role == "spare"}
        release.write_text("go")
        assert last.result(HANG_S) == "last"
        assert last.worker_retired == "max_tasks"
        after = pool.submit(tasks.getpid)
        assert after.result(HANG_S) in spares
        stats = pool.statistics()
    assert stats.workers_started == 2 + warm_spare
    assert dict(stats.recycles) == {"max_tasks": 1}
    final = pool.statistics()
    reasons = sorted(r.reason for r in final.retirements)
    assert reasons == ["max_tasks"] + ["stopped"] * (1 + warm_spare)
    assert final.workers == ()
    assert len({r.pid for r in final.retirements}) == final.workers_started
    assert_all_gone(pids_of(pool, [first, last, after]))


def test_a_ready_spare_takes_over_before_one_still_starting(tmp_path: Path) -> None:
    """Two spares, the first started still in its start-up: the ready one gets the next task."""
    flag, release, go = tmp_path / "hold", tmp_path / "release", tmp_path / "go"
    pool = WorkerPool(
        1, max_tasks=1, jitter=0, initializer=tasks.hold_once, initargs=(str(flag), str(release))
    )
    try:
        assert pool.submit(tasks.add, 1, 1).result(HANG_S) == 2

        def idle(count: int) -> bool:
            return sum(w.state == "idle" for w in pool.statistics().workers) == count

        wait_for(lambda: idle(2), "the active worker and the warm spare")
        flag.write_text("")
        # The next replacement (started while this task runs) holds in its start-up.
        assert pool.submit(tasks.add, 2, 2).result(HANG_S) == 4
        wait_for(lambda: not flag.exists(), "a worker to start and hold")
        held = [w.pid for w in pool.statistics().workers if w.state == "starting"]
        assert len(held) == 1
        # This task's replacement starts normally: then two spares, the held one first.
        slow = pool.submit(tasks.wait_for_file, str(go), "slow")
        wait_for(lambda: idle(1) and slow.running(), "a second spare, ready")
        go.write_text("")
        assert slow.result(HANG_S) == "slow"
        after = pool.submit(tasks.getpid)
        assert after.result(HANG_S) not in held  # did not wait for the held worker
        assert [w.state for w in pool.statistics().workers if w.pid in held] == ["starting"]
        release.write_text("")
        wait_for(lambda: idle(2), "the held worker to be ready too")
    finally:
        release.write_text("")
        pool.shutdown(cancel_futures=True, terminate=True)
    assert_all_gone(pids_of(pool, [slow, after]) | set(held))
