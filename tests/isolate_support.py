"""What the pool tests share: bounded waits and proof that worker processes are gone."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from nativeguard.isolate import TaskFuture, WorkerPool

# Upper bounds that only prove "did not hang"; never a performance claim.
HANG_S = 20.0


def _gone(pid: int) -> bool:
    """True if ``pid`` no longer runs: absent, or a zombie someone else has to reap."""
    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE:
            return False
        return process.ppid() != os.getpid()
    except psutil.NoSuchProcess:
        return True


def assert_all_gone(pids: Iterable[int | None], within_s: float = 10.0) -> None:
    """Poll until every pid is gone; fail naming the survivors."""
    wanted = {pid for pid in pids if pid is not None}
    assert wanted, "no pids collected: the test would prove nothing"
    deadline = time.monotonic() + within_s
    alive = wanted
    while True:
        alive = {pid for pid in alive if not _gone(pid)}
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert alive == set(), f"worker processes still alive: {sorted(alive)}"


def pids_of(pool: WorkerPool, futures: Iterable[TaskFuture[object]] = ()) -> set[int]:
    """Every worker pid known now: the pool's current workers, its retired ones, the futures'."""
    stats = pool.statistics()
    pids = {w.pid for w in stats.workers} | {r.pid for r in stats.retirements}
    pids |= {f.pid for f in futures}
    return {pid for pid in pids if pid is not None}


def wait_for(condition: Callable[[], object], what: str, within_s: float = HANG_S) -> None:
    """Poll ``condition()`` until true; fail with ``what`` after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def read_pid(path: Path) -> int:
    """The pid a task wrote to ``path`` (waits for the file)."""
    wait_for(path.exists, f"the task to write {path.name}")
    return int(path.read_text())
