"""The pool's one guardian: exact process accounting, and a crashed worker's leftovers end.

Each pool has a single guardian process (``ng-guardian``, a child of the fork
server like the workers) instead of one per worker. These tests count the
fork server's children by pid: during the pool's life they are its workers
and exactly one guardian, however many workers were recycled; after
``shutdown()`` none of them is left, not even as a zombie. A worker killed in
the middle of a task has what it started in its process group killed by the
guardian.
"""

from __future__ import annotations

import multiprocessing.forkserver
from pathlib import Path

import isolate_orphan_tasks
import isolate_tasks
import psutil
import pytest
from isolate_support import HANG_S, assert_all_gone, pids_of, read_pid, wait_for

from nativeguard.isolate import WorkerCrashed, WorkerPool

pytestmark = [pytest.mark.usefixtures("fork_server"), pytest.mark.timeout(60)]


def _fork_server() -> psutil.Process:
    pid = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    assert isinstance(pid, int)
    return psutil.Process(pid)


def _children(server: psutil.Process) -> dict[int, str]:
    """The fork server's live children (zombies included: they count as left behind)."""
    found = {}
    for child in server.children():
        try:
            found[child.pid] = f"{child.name()}/{child.status()}"
        except psutil.NoSuchProcess:
            continue
    return found


def test_one_guardian_per_pool_however_many_workers_and_nothing_left_after_close() -> None:
    server = _fork_server()
    before = _children(server)
    with WorkerPool(2, max_tasks=2, jitter=0) as pool:
        futures = [pool.submit(isolate_tasks.getpid) for _ in range(12)]
        assert [f.result(HANG_S) for f in futures] == [f.pid for f in futures]

        def settled() -> bool:
            workers = pool.statistics().workers
            return len(workers) == 3 and all(w.state == "idle" for w in workers)

        wait_for(settled, "two idle workers and the warm spare")
        workers = {w.pid for w in pool.statistics().workers}
        ours = {pid: what for pid, what in _children(server).items() if pid not in before}
        guardians = {pid for pid, what in ours.items() if what.startswith("ng-guardian/")}
        # Exactly the three workers and one guardian; the retired workers are gone.
        assert len(guardians) == 1, ours
        assert set(ours) == workers | guardians, ours
        started = pool.statistics().workers_started
    assert started >= 6 + 1  # twelve tasks, two per worker: one guardian served them all
    assert _children(server) == before
    assert_all_gone(pids_of(pool, futures) | guardians)


def test_a_worker_killed_mid_task_has_its_process_group_killed(tmp_path: Path) -> None:
    marker = tmp_path / "child"
    with WorkerPool(1) as pool:
        future = pool.submit(isolate_orphan_tasks.leave_child_then_die, str(marker), 300.0)
        with pytest.raises(WorkerCrashed):
            future.result(HANG_S)
        child = read_pid(marker)
        assert_all_gone([child])
        assert pool.submit(isolate_tasks.add, 1, 2).result(HANG_S) == 3
    assert_all_gone(pids_of(pool, [future]))


@pytest.mark.parametrize(
    "method",
    [
        "spawn",
        pytest.param(
            "fork",
            marks=pytest.mark.filterwarnings(
                "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
            ),
        ),
    ],
)
def test_under_fork_and_spawn_the_guardian_is_this_process_child_and_reaped(method: str) -> None:
    """fork/spawn: workers and the guardian are this process's children; none is left, no zombie."""
    me = psutil.Process()
    before = {child.pid for child in me.children()}
    with WorkerPool(1, max_tasks=2, jitter=0, start_method=method) as pool:  # type: ignore[arg-type]
        futures = [pool.submit(isolate_tasks.getpid) for _ in range(4)]
        assert [f.result(HANG_S) for f in futures] == [f.pid for f in futures]

        def settled() -> bool:
            workers = pool.statistics().workers
            return len(workers) == 2 and all(w.state == "idle" for w in workers)

        wait_for(settled, "the active worker and the warm spare")
        ours = {c.pid: c.name() for c in me.children() if c.pid not in before}
        guardians = {pid for pid, name in ours.items() if name == "ng-guardian"}
        assert len(guardians) == 1, ours
        # Exactly the two workers and the guardian: the retired ones were reaped.
        assert set(ours) == {w.pid for w in pool.statistics().workers} | guardians, ours
    left = [(c.pid, c.status()) for c in me.children() if c.pid not in before]
    assert left == []
    assert_all_gone(pids_of(pool, futures) | guardians)
