"""The pool's public data types: what a task is, how a worker and the pool look, a task's future.

Shared by the facade (:mod:`._pool`), which hands them out, and the manager
(:mod:`._manager`), which fills them in.
"""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "RETIREMENTS_SHOWN",
    "PoolStatistics",
    "Retirement",
    "TaskFuture",
    "TaskInfo",
    "WorkerStatistics",
    "format_mb",
    "signal_name",
]

T = TypeVar("T")

RETIREMENTS_SHOWN = 8  # in str(statistics)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class TaskInfo:
    """Which task: its number in the pool, the function, and the attempt (1 unless retried)."""

    id: int
    function: str
    attempt: int = 1

    def __str__(self) -> str:
        again = f", attempt {self.attempt}" if self.attempt > 1 else ""
        return f"task {self.id} ({self.function}{again})"


@dataclass(frozen=True)
class WorkerStatistics:
    """One worker process as last measured (after its latest task).

    ``role`` is ``"active"`` (takes tasks), ``"spare"`` (warm, waiting to
    replace a retiring worker) or ``"retiring"``; ``state`` is ``"starting"``,
    ``"idle"``, ``"busy"`` or ``"exiting"``. RSS is current, not peak, except
    ``peak_rss_mb``. ``max_tasks`` is this worker's own limit (jittered).
    """

    pid: int | None
    role: str
    state: str
    tasks_run: int
    rss_mb: float | None
    peak_rss_mb: float | None
    baseline_rss_mb: float | None
    remedies: int
    max_tasks: int | None


@dataclass(frozen=True)
class Retirement:
    """A worker that left the pool: why, and how it looked then.

    ``reason`` is ``"max_tasks"``, ``"max_rss"``, ``"max_growth"`` or
    ``"growth_slope"`` for a graceful recycle, else ``"crashed"``,
    ``"timeout"``, ``"died_idle"``, ``"start_failed"`` or ``"stopped"``.
    """

    pid: int | None
    reason: str
    detail: str
    tasks_run: int
    rss_mb: float | None
    peak_rss_mb: float | None


@dataclass(frozen=True)
class PoolStatistics:
    """Counters over the pool's life, and its current workers.

    ``recycles`` counts graceful retirements by reason; crashes and timeouts
    are counted apart. ``remedies`` is how often a worker ran gc + malloc_trim
    (after its first task, and before a memory limit could retire it) and
    ``remedy_released_mb`` what those gave back.
    """

    workers: tuple[WorkerStatistics, ...]
    tasks_submitted: int
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    crashes: int
    timeouts: int
    retries: int
    recycles: Mapping[str, int]
    retirements: tuple[Retirement, ...]
    workers_started: int
    remedies: int
    remedy_released_mb: float

    def __str__(self) -> str:
        lines = [
            f"tasks: {self.tasks_submitted} submitted, {self.tasks_completed} completed, "
            f"{self.tasks_failed} failed, {self.tasks_cancelled} cancelled, "
            f"{self.retries} retried",
            f"workers: {self.workers_started} started; crashes {self.crashes}, "
            f"timeouts {self.timeouts}; recycles "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.recycles.items())) or "none"),
            f"remedies (gc + malloc_trim): {self.remedies}, released "
            f"{self.remedy_released_mb:.1f} MB",
        ]
        shown = self.retirements[-RETIREMENTS_SHOWN:]
        if shown:
            lines.append(
                f"workers that ended (newest last, {len(shown)} of {len(self.retirements)}):"
            )
        for gone in shown:
            lines.append(
                f"  pid {gone.pid} {gone.reason} after {gone.tasks_run} tasks, RSS "
                f"{format_mb(gone.rss_mb)}: {gone.detail}"
            )
        if self.workers:
            lines.append("workers now:")
        for worker in self.workers:
            rss = "?" if worker.rss_mb is None else f"{worker.rss_mb:.1f}"
            peak = "?" if worker.peak_rss_mb is None else f"{worker.peak_rss_mb:.1f}"
            lines.append(
                f"  pid {worker.pid} {worker.role}/{worker.state}: {worker.tasks_run} tasks, "
                f"RSS {rss} MB (peak {peak} MB)"
            )
        return "\n".join(lines)


class TaskFuture(concurrent.futures.Future[T], Generic[T]):
    """A ``concurrent.futures.Future`` that also tells where and at what memory cost it ran.

    Filled in before the result is set: ``pid`` of the worker (the last one,
    if retried), ``rss_before_mb``/``rss_after_mb``/``rss_delta_mb`` around
    the task (after is measured after any remedies), ``duration_s`` inside the
    worker, ``attempts``, and ``worker_retired`` (the reason, if the worker
    retired right after this task).
    """

    def __init__(self, task: TaskInfo) -> None:
        super().__init__()
        self.task = task
        self.pid: int | None = None
        self.rss_before_mb: float | None = None
        self.rss_after_mb: float | None = None
        self.rss_delta_mb: float | None = None
        self.duration_s: float | None = None
        self.attempts = 0
        self.worker_retired: str | None = None
        # Set while the task was sent ahead to a busy worker: takes the task's
        # claim token, True if the worker had not taken it (so it will not run).
        self._claim: Callable[[], bool] | None = None

    def cancel(self) -> bool:
        """Cancel the task if it has not started (queued, or sent ahead and not yet claimed)."""
        claim = self._claim
        if claim is not None and not self.done() and not self.running():
            if not claim():
                return False  # the worker claimed it: it runs
            self._claim = None
        return super().cancel()


def format_mb(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f} MB"
