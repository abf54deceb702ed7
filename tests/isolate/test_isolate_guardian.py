"""The pool's template process (zygote and guardian): exact process, fd and thread accounting.

Each pool has one template process (``ng-template``), started through the
pool's start method (a child of the fork server, or of this process under
fork/spawn); every worker is a child of it, forked on request. These tests
count processes by pid: during the pool's life there is exactly one template
and its children are exactly the pool's workers, however many were recycled;
after ``shutdown()`` none of them is left, not even as a zombie, and this
process has the fds and threads it had before. A worker SIGKILLed mid-task
fails only its task (with the signal in its exit code); a killed template
takes its workers with it and the pool starts a new one; the template stays
single-threaded and leaks no fd while it forks for a busy pool.
"""

from __future__ import annotations

import multiprocessing.forkserver
import os
import signal
import threading
from pathlib import Path

import isolate_orphan_tasks
import isolate_tasks
import psutil
import pytest
from isolate_support import HANG_S, assert_all_gone, pids_of, read_pid, wait_for

import nativeguard.isolate._launcher
from nativeguard.isolate import WorkerCrashed, WorkerPool

pytestmark = [pytest.mark.usefixtures("fork_server"), pytest.mark.timeout(60)]


def _fork_server() -> psutil.Process:
    pid = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    assert isinstance(pid, int)
    return psutil.Process(pid)


def _children(process: psutil.Process) -> dict[int, str]:
    """A process's live children (zombies included: they count as left behind)."""
    found = {}
    for child in process.children():
        try:
            found[child.pid] = f"{child.name()}/{child.status()}"
        except psutil.NoSuchProcess:
            continue
    return found


def _settled(pool: WorkerPool, count: int) -> bool:
    workers = pool.statistics().workers
    return len(workers) == count and all(w.state == "idle" for w in workers)


def _template_of(pool: WorkerPool) -> psutil.Process:
    templates = {psutil.Process(w.pid).ppid() for w in pool.statistics().workers if w.pid}
    assert len(templates) == 1, templates
    return psutil.Process(templates.pop())


def _fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_one_template_per_pool_its_children_are_the_workers_and_nothing_is_left() -> None:
    server = _fork_server()
    before = _children(server)
    fds, threads = _fds(), _threads()
    with WorkerPool(2, max_tasks=2, jitter=0) as pool:
        futures = [pool.submit(isolate_tasks.getpid) for _ in range(12)]
        assert [f.result(HANG_S) for f in futures] == [f.pid for f in futures]
        wait_for(lambda: _settled(pool, 3), "two idle workers and the warm spare")
        workers = {w.pid for w in pool.statistics().workers}
        ours = {pid: what for pid, what in _children(server).items() if pid not in before}
        # Exactly one new child of the fork server: the template; its children are
        # exactly the three workers (the retired ones were reaped).
        assert len(ours) == 1, ours
        ((template_pid, what),) = ours.items()
        assert what.startswith("ng-template/"), ours
        template = psutil.Process(template_pid)
        assert set(_children(template)) == workers
        assert all(psutil.Process(pid).name() != "ng-template" for pid in workers)
        started = pool.statistics().workers_started
    assert started >= 6 + 1  # twelve tasks, two per worker: one template forked them all
    assert _children(server) == before
    assert_all_gone(pids_of(pool, futures) | {template_pid})
    # This process holds what it held before: no pipe, pidfd or thread of the pool.
    assert _fds() == fds
    # A joined thread's OS thread ends a moment after join() returns: wait for that.
    wait_for(lambda: _threads() == threads, f"{threads} threads, as before the pool")


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
def test_under_fork_and_spawn_the_template_is_this_process_child_and_reaped(method: str) -> None:
    """fork/spawn: the template is this process's child, the workers are its; none is left."""
    me = psutil.Process()
    before = set(_children(me))
    fds = _fds()
    with WorkerPool(1, max_tasks=2, jitter=0, start_method=method) as pool:  # type: ignore[arg-type]
        futures = [pool.submit(isolate_tasks.getpid) for _ in range(4)]
        assert [f.result(HANG_S) for f in futures] == [f.pid for f in futures]
        wait_for(lambda: _settled(pool, 2), "the active worker and the warm spare")
        ours = {pid: what for pid, what in _children(me).items() if pid not in before}
        assert len(ours) == 1, ours
        ((template_pid, what),) = ours.items()
        assert what.startswith("ng-template/"), ours
        workers = {w.pid for w in pool.statistics().workers}
        assert set(_children(psutil.Process(template_pid))) == workers
    left = {pid: what for pid, what in _children(me).items() if pid not in before}
    assert left == {}
    assert_all_gone(pids_of(pool, futures) | {template_pid})
    assert _fds() == fds


def test_a_worker_killed_mid_task_has_its_process_group_killed(tmp_path: Path) -> None:
    marker = tmp_path / "child"
    with WorkerPool(1) as pool:
        future = pool.submit(isolate_orphan_tasks.leave_child_then_die, str(marker), 300.0)
        with pytest.raises(WorkerCrashed) as crash:
            future.result(HANG_S)
        assert crash.value.exitcode == -signal.SIGKILL
        child = read_pid(marker)
        assert_all_gone([child])
        assert pool.submit(isolate_tasks.add, 1, 2).result(HANG_S) == 3
    assert_all_gone(pids_of(pool, [future]))


def test_a_worker_sigkilled_from_outside_fails_its_task_alone(tmp_path: Path) -> None:
    started = tmp_path / "started"
    with WorkerPool(2, jitter=0) as pool:
        wait_for(lambda: _settled(pool, 3), "two idle workers and the warm spare")
        template = _template_of(pool)
        victim = pool.submit(isolate_tasks.report_pid_and_sleep, str(started), 60.0)
        other = pool.submit(isolate_tasks.sleep_then, 0.5, "other")
        os.kill(read_pid(started), signal.SIGKILL)
        with pytest.raises(WorkerCrashed) as crash:
            victim.result(HANG_S)
        assert crash.value.exitcode == -signal.SIGKILL
        assert "killed by SIGKILL" in str(crash.value)
        assert other.result(HANG_S) == "other"
        assert pool.submit(isolate_tasks.add, 2, 3).result(HANG_S) == 5
        assert _template_of(pool).pid == template.pid  # the template was not involved
        stats = pool.statistics()
    assert (stats.crashes, stats.tasks_failed, stats.tasks_completed) == (1, 1, 2)
    assert_all_gone(pids_of(pool, [victim, other]) | {template.pid})


def test_a_killed_template_takes_its_workers_and_the_pool_starts_a_new_one(
    tmp_path: Path,
) -> None:
    started = tmp_path / "started"
    with WorkerPool(2, jitter=0) as pool:
        wait_for(lambda: _settled(pool, 3), "two idle workers and the warm spare")
        template = _template_of(pool)
        old_workers = {w.pid for w in pool.statistics().workers}
        busy = pool.submit(isolate_tasks.report_pid_and_sleep, str(started), 60.0)
        read_pid(started)
        template.kill()
        with pytest.raises(WorkerCrashed, match="code unknown"):
            busy.result(HANG_S)
        assert_all_gone(old_workers)  # they died with it (PR_SET_PDEATHSIG)
        assert pool.submit(isolate_tasks.add, 2, 3).result(HANG_S) == 5
        wait_for(lambda: _settled(pool, 3), "new workers")
        new_template = _template_of(pool)
        assert new_template.pid != template.pid
        stats = pool.statistics()
    assert stats.crashes == 3  # the busy worker and the two idle ones
    assert_all_gone(pids_of(pool, [busy]) | {template.pid, new_template.pid})


def test_the_template_forks_while_the_pool_is_busy_single_threaded_and_leaking_no_fd() -> None:
    """Every task recycles its worker (max_tasks=1) while two others run: the template forks
    ~60 times under load. Sampled all along it has one thread; settled, before and after, its
    fds are its own few plus exactly two per live worker (a pidfd and the status pipe)."""
    samples: list[int] = []
    stop = threading.Event()
    with WorkerPool(2, max_tasks=1, jitter=0) as pool:
        wait_for(lambda: _settled(pool, 3), "two idle workers and the warm spare")
        template = _template_of(pool)
        first_fds = template.num_fds() - 2 * len(template.children())

        def sample() -> None:
            while not stop.is_set():
                try:
                    samples.append(template.num_threads())
                except psutil.Error:
                    return
                stop.wait(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            futures = [pool.submit(isolate_tasks.sleep_then, 0.005, i) for i in range(60)]
            assert [f.result(HANG_S) for f in futures] == list(range(60))
        finally:
            stop.set()
            sampler.join()
        wait_for(lambda: _settled(pool, 3), "two idle workers and the warm spare")
        settled_fds = template.num_fds() - 2 * len(template.children())
        stats = pool.statistics()
    assert stats.workers_started >= 60 + 3
    assert len({f.pid for f in futures}) == 60  # a fresh worker per task
    assert samples, "the sampler saw nothing"
    assert set(samples) == {1}
    assert settled_fds == first_fds
    assert_all_gone(pids_of(pool, futures) | {template.pid})


def test_without_a_template_workers_are_processes_of_the_start_method(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where no template can run (not Linux), each worker is a multiprocessing.Process: here a
    child of the fork server. Tasks, recycles, crashes and exit codes work the same way."""
    monkeypatch.setattr(nativeguard.isolate._launcher, "TEMPLATED", False)
    server = _fork_server()
    with WorkerPool(1, max_tasks=2, jitter=0, warm_spare=False) as pool:
        futures = [pool.submit(isolate_tasks.getpid) for _ in range(4)]
        assert [f.result(HANG_S) for f in futures] == [f.pid for f in futures]
        assert len({f.pid for f in futures}) == 2
        crash = pool.submit(isolate_tasks.exit_with, 3)
        with pytest.raises(WorkerCrashed) as error:
            crash.result(HANG_S)
        assert error.value.exitcode == 3
        worker = pool.submit(isolate_tasks.getpid).result(HANG_S)
        assert psutil.Process(worker).ppid() == server.pid
        assert psutil.Process(worker).name() != "ng-template"
    assert_all_gone(pids_of(pool, [*futures, crash]))
