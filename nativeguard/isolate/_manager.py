"""The manager: one thread that owns a pool's worker processes, pipes and task queue.

It waits on the workers' pipes, their process sentinels and a wake-up pipe at
once (``multiprocessing.connection.wait``), so a worker that dies is noticed
at the moment it dies, whichever way, and only the task it ran fails. It
plans (promote spares, dispatch, stop, kill at deadlines), asks the
:class:`~._launcher.Launcher` for new workers, and settles futures outside
its lock. The facade (:class:`~._pool.WorkerPool`) only enqueues tasks, asks
for a shutdown and reads statistics.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import os
import pickle
import random
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import MappingProxyType
from typing import Any

from .._core._errors import (
    ClosedResourceError,
    RemoteTaskError,
    TaskTimeout,
    WorkerCrashed,
    WorkerStartError,
    add_note,
)
from .._core._redact import redact_text
from ._launcher import Launcher
from ._messages import RunTask, StopWorker, TaskReport, TaskSkipped, WorkerReady, receive, send
from ._recycle import MB, RecyclePolicy
from ._template import ForkedProcess
from ._types import (
    PoolStatistics,
    Retirement,
    TaskFuture,
    TaskInfo,
    WorkerStatistics,
    format_mb,
    signal_name,
)
from ._worker import take_claim

__all__ = ["ClaimPipe", "PoolConfig", "PoolManager", "Task", "Worker"]

_STOP_GRACE_S = 5.0  # a retiring or stopped worker gets this long to exit before SIGKILL
_MAX_WAIT_S = 3600.0  # the manager re-plans at least this often (poll() takes at most ~24 days)
_MAX_START_FAILURES = 3  # consecutive failed starts (or deaths before "ready") break the pool
_START_RETRY_DELAYS_S = (0.2, 1.0)  # after the 1st and 2nd failed start in a row
_RETIREMENTS_KEPT = 64

Settle = list[tuple[TaskFuture[Any], Callable[[], object]]]


@dataclass(frozen=True)
class PoolConfig:
    """A pool's checked options, as the manager and the launcher use them."""

    workers: int
    policy: RecyclePolicy
    jitter: float
    task_timeout: float | None
    kill_grace: float
    retries: int
    warm_spare: bool
    plain_types: tuple[type, ...]
    start_method: str
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()


class ClaimPipe:
    """The pool's ends of a worker's claim pipe: one token per task sent ahead.

    The worker runs a task sent ahead only if it takes the token; ``take()``
    (from a caller's ``cancel()``, or the manager) takes it first if it can.
    Locked, so a ``cancel()`` racing the worker's end never reads an fd that
    was closed and reused meanwhile.
    """

    def __init__(self, reader: Connection, writer: Connection) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = threading.Lock()

    def put(self) -> None:
        with self._lock:
            os.write(self._writer.fileno(), b"\0")  # OSError if closed: the caller handles it

    def take(self) -> bool:
        with self._lock:
            if self._reader.closed:
                return False
            return take_claim(self._reader.fileno())

    def close(self) -> None:
        with self._lock:
            self._reader.close()
            self._writer.close()


@dataclass
class Task:
    info: TaskInfo
    payload: bytes
    future: TaskFuture[Any]
    deadline: float | None = None
    started: bool = False
    ahead: bool = False  # sent to a busy worker, not known yet whether that worker claimed it
    stolen: bool = False  # taken back from that worker (its token) for an idle one
    cancelling: bool = False  # a shutdown cancelled it (and counted it) while it was ahead


@dataclass
class Worker:
    process: Any  # multiprocessing.process.BaseProcess (its Popen varies by start method)
    conn: Connection
    role: str
    policy: RecyclePolicy
    claims: ClaimPipe | None = None  # see RunTask.ahead
    state: str = "starting"
    task: Task | None = None
    queued: Task | None = None
    """Sent ahead while ``task`` runs, so the worker starts it without waiting for the manager.

    It leaves this slot when the worker's report of ``task`` says whether the
    worker claimed it; until then no other task is sent ahead to this worker
    (its claim pipe holds one token at a time).
    """
    tasks_run: int = 0
    rss: int | None = None
    peak: int | None = None
    baseline: int | None = None
    remedies: int = 0
    released: int = 0
    kill_at: float | None = None
    timed_out: bool = False
    stopping: bool = False
    retire_reason: str | None = None
    retire_detail: str = ""
    violation: str | None = None
    """Why the manager killed it: it broke the protocol (see ``_receive``)."""

    @property
    def sentinel(self) -> int:
        """Readable once the process ended (forked by a template: once its exit code is known)."""
        return self.process.sentinel  # type: ignore[no-any-return]

    def close(self) -> None:
        self.conn.close()
        if self.claims is not None:
            self.claims.close()
        if isinstance(self.process, ForkedProcess):
            self.process.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid  # type: ignore[no-any-return]

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            pid=self.pid,
            role=self.role,
            state=self.state,
            tasks_run=self.tasks_run,
            rss_mb=None if self.rss is None else self.rss / MB,
            peak_rss_mb=None if self.peak is None else self.peak / MB,
            baseline_rss_mb=None if self.baseline is None else self.baseline / MB,
            remedies=self.remedies,
            max_tasks=self.policy.max_tasks,
        )


@dataclass
class Counters:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    crashes: int = 0
    timeouts: int = 0
    retries: int = 0
    started: int = 0
    remedies: int = 0
    released: int = 0
    recycles: collections.Counter[str] = field(default_factory=collections.Counter)
    retirements: collections.deque[Retirement] = field(
        default_factory=lambda: collections.deque(maxlen=_RETIREMENTS_KEPT)
    )


class PoolManager:
    """Owns the queue, the workers and their processes; runs the manager and launcher threads."""

    def __init__(self, config: PoolConfig, *, name: str, on_finish: Callable[[], None]) -> None:
        self.config = config
        self._workers_wanted = config.workers
        self._max_tasks = config.policy.max_tasks
        self._jitter = config.jitter
        self._policy = config.policy
        self._task_timeout = config.task_timeout
        self._kill_grace = config.kill_grace
        self._retries = config.retries
        self._warm_spare = config.warm_spare
        self._on_finish = on_finish

        self._lock = threading.Lock()
        self._queue: collections.deque[Task] = collections.deque()
        self._workers: list[Worker] = []
        self._counters = Counters()
        self._ids = itertools.count(1)
        self._closing = False
        self._cancel_on_close = False
        self._terminate_on_close = False
        self._broken: BaseException | None = None
        self._start_failures = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        # One selector for the manager's life (epoll on Linux), kept in step with
        # the workers: building one per wait cost ~20 us per task.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._watched: dict[int, tuple[str, Worker]] = {}
        self._watch_stale = True  # a worker came or went, or a pipe closed: re-register
        # Whether the next pass must plan: False only after routine reports, whose
        # next task went out as they were handled (see _routine). A full pass per
        # task was ~20 us of the manager's CPU for a 1 ms task.
        self._plan_needed = True
        os.set_blocking(self._wake_w, False)
        self._wake_open = True
        self._wake_pending = False
        self._launching = 0  # processes asked of the launcher, not yet started
        self._launcher_done = False
        self._launch_wanted = threading.Condition(self._lock)
        self._launcher = Launcher(
            self,
            start_method=config.start_method,
            plain_types=config.plain_types,
            initializer=config.initializer,
            initargs=config.initargs,
            name=f"nativeguard-launcher-{name}",
        )
        self.thread = threading.Thread(
            target=self._run, name=f"nativeguard-pool-{name}", daemon=True
        )

    def start(self) -> None:
        self._launcher.start()
        self.thread.start()

    # ------------------------------------------------- the facade's requests

    @property
    def closing(self) -> bool:
        return self._closing

    def enqueue(self, function: str, payload: bytes, owner: str) -> TaskFuture[Any]:
        """Queue one pickled task; ``owner`` (the pool's repr) names it in refusals."""
        with self._lock:
            if self._broken is not None:
                raise WorkerStartError(
                    f"{owner} cannot start workers: {self._broken}"
                ) from self._broken
            if self._closing:
                raise ClosedResourceError(f"{owner} is shut down; it takes no new tasks")
            info = TaskInfo(next(self._ids), function)
            future: TaskFuture[Any] = TaskFuture(info)
            self._queue.append(Task(info, payload, future))
            self._counters.submitted += 1
            self._wake_locked()
        return future

    def close(self, *, cancel_futures: bool, terminate: bool) -> None:
        """Take no new tasks; cancel queued ones and kill running ones as asked. Returns at once."""
        with self._lock:
            self._closing = True
            self._cancel_on_close |= cancel_futures or terminate
            self._terminate_on_close |= terminate
            self._wake_locked()

    def statistics(self) -> PoolStatistics:
        """A consistent snapshot of the pool's counters and workers."""
        with self._lock:
            c = self._counters
            return PoolStatistics(
                workers=tuple(worker.statistics() for worker in self._workers),
                tasks_submitted=c.submitted,
                tasks_completed=c.completed,
                tasks_failed=c.failed,
                tasks_cancelled=c.cancelled,
                crashes=c.crashes,
                timeouts=c.timeouts,
                retries=c.retries,
                recycles=MappingProxyType(dict(c.recycles)),
                retirements=tuple(c.retirements),
                workers_started=c.started,
                remedies=c.remedies,
                remedy_released_mb=c.released / MB,
            )

    # ----------------------------------------------- the launcher's requests

    def next_launch(self) -> RecyclePolicy | None:
        """Block until a worker is wanted; its policy, or None once the manager is done."""
        with self._lock:
            while not self._launching and not self._launcher_done:
                self._launch_wanted.wait()
            if self._launcher_done:
                return None
            return self._worker_policy()

    def launched(self, worker: Worker | None, error: WorkerStartError | None) -> None:
        """Take a started worker (or count a failed start, waiting before the next try)."""
        if error is not None:
            with self._lock:
                self._start_failures += 1
                failures = self._start_failures
                if failures < _MAX_START_FAILURES:
                    # A transient cause (EMFILE, a fork server restarting) may
                    # pass; a shutdown ends the wait (which releases the lock).
                    self._launch_wanted.wait_for(
                        lambda: self._launcher_done, _START_RETRY_DELAYS_S[failures - 1]
                    )
                elif self._broken is None:
                    self._broken = WorkerStartError(
                        f"{failures} worker starts in a row failed; the last: {error}"
                    )
                    self._broken.__cause__ = error
        with self._lock:
            self._launching -= 1
            if worker is not None:
                self._counters.started += 1
                self._workers.append(worker)
                self._watch_stale = True
            self._wake_locked()

    # ------------------------------------------------------ manager thread

    def _worker_policy(self) -> RecyclePolicy:
        limit = self._max_tasks
        if limit is not None and self._jitter:
            limit = max(1, limit - int(random.random() * self._jitter * limit))
        return RecyclePolicy(
            max_tasks=limit,
            max_rss=self._policy.max_rss,
            max_growth=self._policy.max_growth,
            slope_per_task=self._policy.slope_per_task,
            slope_window=self._policy.slope_window,
        )

    def _wake_locked(self) -> None:
        # One byte per planning pass is enough: a burst of submits costs one
        # write and one manager wake-up, not one each. Cleared (under the lock)
        # as the next pass starts, so a submit after that wakes the manager again.
        if self._wake_open and not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(BlockingIOError):  # already in the pipe
                os.write(self._wake_w, b"\0")

    def _run(self) -> None:
        try:
            while True:
                settle: Settle = []
                with self._lock:
                    self._wake_pending = False
                    if self._finished_locked():
                        break
                    if self._plan_needed or self._closing:
                        self._plan_needed = False
                        self._plan_locked(settle)
                _resolve(settle)
                self._wait_and_handle()
        except BaseException as error:  # a bug here must not strand callers on futures
            self._fail_everything(error)
            raise
        finally:
            with self._lock:
                self._launcher_done = True
                self._launch_wanted.notify()
            self._launcher.join()
            self._reap_all()
            self._launcher.close()  # the template, once no worker is left to fork or guard
            self._on_finish()
            with self._lock:
                self._wake_open = False
                self._selector.close()
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _finished_locked(self) -> bool:
        return self._closing and not self._queue and not self._workers and not self._launching

    def _plan_locked(self, settle: Settle) -> None:
        """Start, promote, dispatch, stop and kill as the state asks."""
        now = time.monotonic()
        if self._closing and self._cancel_on_close:
            while self._queue:
                task = self._queue.popleft()
                if not task.started:
                    # Off the queue, nothing else can start or settle it; cancel it
                    # outside the lock: Future.cancel() runs the done-callbacks.
                    self._counters.cancelled += 1
                    settle.append((task.future, task.future.cancel))
                else:
                    self._counters.failed += 1
                    settle.append((task.future, _failer(task.future, _closed_error(task))))
            for worker in self._workers:
                for task in (worker.queued, worker.task):  # type: ignore[assignment]
                    if (
                        task is not None
                        and task.ahead
                        and not task.stolen
                        and not task.cancelling
                        and worker.claims is not None
                        and worker.claims.take()
                    ):
                        # Sent ahead and not claimed: the worker will skip it.
                        task.cancelling = True
                        task.future._claim = None
                        self._counters.cancelled += 1
                        settle.append((task.future, task.future.cancel))
        if self._closing and self._terminate_on_close:
            for worker in self._workers:
                if worker.task is not None and not worker.stopping:
                    worker.stopping = True
                    self._kill(worker, now)
        if self._broken is not None:
            while self._queue:
                task = self._queue.popleft()
                if not task.started and task.future.cancelled():
                    self._counters.cancelled += 1
                    continue
                self._counters.failed += 1
                settle.append((task.future, _failer(task.future, self._broken)))
        if self._broken is None and (not self._closing or self._queue):
            self._fill_locked(spare=False)
        self._dispatch_locked(now, settle)
        if self._broken is None and not self._closing:
            # The spare after dispatch: starting a process takes milliseconds
            # that a task waiting for a promoted spare should not wait for.
            self._fill_locked(spare=True)
        if self._closing and not self._queue:
            for worker in self._workers:
                if worker.task is None and not worker.stopping:
                    worker.stopping = True
                    worker.state = "exiting"
                    self._send_stop(worker, now)
        for worker in self._workers:
            deadline = None if worker.task is None else worker.task.deadline
            if deadline is not None and not worker.timed_out and now >= deadline:
                worker.timed_out = True
                self._kill(worker, now)
            if worker.kill_at is not None and now >= worker.kill_at:
                worker.kill_at = None
                with contextlib.suppress(OSError, ValueError):
                    worker.process.kill()

    def _kill(self, worker: Worker, now: float) -> None:
        """SIGTERM now, SIGKILL after the grace period."""
        with contextlib.suppress(OSError, ValueError):
            worker.process.terminate()
        worker.kill_at = now + self._kill_grace

    def _send_stop(self, worker: Worker, now: float) -> None:
        with contextlib.suppress(OSError):  # already gone: its sentinel will tell
            send(worker.conn, StopWorker())
        worker.kill_at = now + _STOP_GRACE_S

    def _fill_locked(self, *, spare: bool) -> None:
        """Promote spares to active workers, and ask the launcher for what is still missing.

        New processes join as spares and are promoted here on the next pass.
        Besides the warm spare, a worker running its last task by ``max_tasks``
        gets its replacement started now, while that task runs: when it
        retires, a started worker takes over at once (with or without
        ``warm_spare``), and no start-up competes for the CPU with the
        hand-over itself (the finished task's caller, the next dispatch).
        """
        active = sum(1 for w in self._workers if w.role == "active")
        # Ready spares first: one still starting would hold up the task it gets
        # while another is idle (processes join in the order they were forked,
        # not the order they got ready).
        spares = sorted(
            (w for w in self._workers if w.role == "spare"), key=lambda w: w.state != "idle"
        )
        while active < self._workers_wanted and spares:
            spares.pop(0).role = "active"
            active += 1
        missing = self._workers_wanted - active
        if spare:
            wanted = int(self._warm_spare) + self._leaving_locked()
            missing += max(0, wanted - len(spares))
        if missing > self._launching:
            self._launching = missing
            self._launch_wanted.notify()

    def _leaving_locked(self) -> int:
        """Active workers that retire by ``max_tasks`` when their current task ends."""
        leaving = 0
        for worker in self._workers:
            limit = worker.policy.max_tasks
            if (
                limit is not None
                and worker.role == "active"
                and worker.task is not None
                and not worker.stopping
                and worker.tasks_run + 1 >= limit
            ):
                leaving += 1
        return leaving

    def _dispatch_locked(self, now: float, settle: Settle) -> None:
        for worker in self._workers:
            if worker.role != "active" or worker.state != "idle" or worker.stopping:
                continue
            # The queue first: stealing in steady state would cascade (the robbed
            # worker idles and robs the next). A task sent ahead is stolen when the
            # queue is empty, so none waits behind a long task while a worker idles.
            task = self._next_task_locked() or self._steal_locked()
            if task is None:
                return
            task.future.attempts += 1
            try:
                send(worker.conn, RunTask(task.info.id, task.payload))
            except OSError:  # the worker just died; its sentinel will retire it
                self._queue.appendleft(task)
                worker.state = "exiting"
                continue
            worker.state = "busy"
            worker.task = task
            task.deadline = None if self._task_timeout is None else now + self._task_timeout
            limit = worker.policy.max_tasks
            if limit is not None and worker.tasks_run + 1 >= limit:
                self._plan_needed = True  # its replacement starts while this last task runs
        if self._task_timeout is None and not (self._closing and self._cancel_on_close):
            self._send_ahead_locked()

    def _send_ahead_locked(self) -> None:
        """One queued task ahead to each busy worker, so it starts it without a round trip.

        The manager's round trip (the worker's report in, the next task out) is
        ~0.1-0.2 ms, most of a 1 ms task's overhead. A task sent ahead stays
        cancellable and movable: the worker runs it only if it takes its claim
        token (one byte in the worker's claim pipe, written with the task), and
        ``cancel()``, or an idle worker stealing it, takes the token first if it
        can. Not with a task timeout (the clock starts when the task does), nor
        for a retry (running already), nor to a worker whose next task is its last.
        """
        if not self._queue:
            return
        active = [w for w in self._workers if w.role == "active"]
        if len(active) < self._workers_wanted or any(w.state != "busy" for w in active):
            return  # a worker is idle or about to be: it takes the queue's head
        for worker in self._workers:
            if (
                worker.role != "active"
                or worker.state != "busy"
                or worker.stopping
                or worker.timed_out
                or worker.queued is not None
                or worker.task is None
                or worker.task.ahead
                or worker.claims is None
            ):
                continue
            limit = worker.policy.max_tasks
            if limit is not None and worker.tasks_run + 1 >= limit:
                continue
            while self._queue and not self._queue[0].started:
                task = self._queue.popleft()
                future = task.future
                # The claim first: a cancel() from now on goes through the token.
                future._claim = worker.claims.take
                if future.cancelled():  # cancelled before: drop it
                    future._claim = None
                    self._counters.cancelled += 1
                    continue
                future.attempts += 1
                task.ahead = True
                worker.queued = task
                try:
                    worker.claims.put()
                    send(worker.conn, RunTask(task.info.id, task.payload, ahead=True))
                except OSError:  # the worker just died; its sentinel will retire it
                    worker.queued = None
                    self._take_back_locked(task, worker)
                    worker.state = "exiting"
                break
            if not self._queue:
                return

    def _stealable_locked(self) -> bool:
        return any(w.queued is not None and not w.queued.stolen for w in self._workers)

    def _steal_locked(self) -> Task | None:
        """A task sent ahead to a busy worker that has not claimed it, for an idle worker.

        Without this a task could wait behind a long one while other workers
        idle. Its token is taken here; the busy worker skips it when it gets to it.
        """
        candidates = [w for w in self._workers if w.queued is not None and not w.queued.stolen]
        candidates.sort(key=lambda w: w.queued.info.id if w.queued is not None else 0)
        for other in candidates:
            task = other.queued
            if task is None or task.stolen or other.claims is None or not other.claims.take():
                continue
            task.stolen = True
            task.future._claim = None
            if not task.future.set_running_or_notify_cancel():  # pragma: no cover - cancel()
                self._counters.cancelled += 1  # would have taken the token first
                continue
            return Task(task.info, task.payload, task.future, started=True)
        return None

    def _take_back_locked(self, task: Task, worker: Worker) -> bool:
        """Settle a task sent ahead to ``worker`` that the worker will not claim now.

        Back to the queue's head if its token is still there; counted as
        cancelled if a ``cancel()`` took it. Returns False if the worker took it:
        then it ran (or runs) there.
        """
        if task.stolen:
            return True
        if task.cancelling:  # its token was taken (and it counted) at the shutdown
            task.ahead = False
            return True
        took = worker.claims is not None and worker.claims.take()
        task.future._claim = None
        task.ahead = False
        if took:
            task.future.attempts -= 1
            self._queue.appendleft(task)
            return True
        if task.future.cancelled():
            self._counters.cancelled += 1
            return True
        return False

    def _skipped_locked(self, task: Task) -> None:
        """The worker found a task's token gone: stolen, or cancelled, so it did not run it."""
        task.future._claim = None
        task.ahead = False
        if task.stolen or task.cancelling:
            return
        if task.future.cancelled():
            self._counters.cancelled += 1
        else:  # pragma: no cover - a cancel() that took the token cancels the future
            task.future.attempts -= 1
            self._queue.appendleft(task)

    def _next_task_locked(self) -> Task | None:
        """The first queued task that was not cancelled meanwhile, marked running."""
        while self._queue:
            task = self._queue.popleft()
            if task.started:
                return task  # a retry: already running as far as its future knows
            if task.future.set_running_or_notify_cancel():
                task.started = True
                return task
            self._counters.cancelled += 1
        return None

    def _watch_locked(self) -> None:
        """Register each worker's pipe (while open) and end sentinel; nothing else."""
        if not self._watch_stale:
            return
        self._watch_stale = False
        wanted: dict[int, tuple[str, Worker]] = {}
        for worker in self._workers:
            if not worker.conn.closed:
                wanted[worker.conn.fileno()] = ("message", worker)
            wanted[worker.sentinel] = ("end", worker)
        for fd, (kind, worker) in list(self._watched.items()):
            now = wanted.get(fd)
            if now is None or now[0] != kind or now[1] is not worker:
                self._selector.unregister(fd)
                del self._watched[fd]
        for fd, data in wanted.items():
            if fd not in self._watched:
                self._selector.register(fd, selectors.EVENT_READ, data)
                self._watched[fd] = data

    def _unwatch(self, worker: Worker, *, only_messages: bool = False) -> None:
        """Unregister ``worker``'s fds before they are closed (their numbers get reused)."""
        self._watch_stale = True
        for fd, (kind, watched) in list(self._watched.items()):
            if watched is worker and (kind == "message" or not only_messages):
                self._selector.unregister(fd)
                del self._watched[fd]

    def _wait_and_handle(self) -> None:
        with self._lock:
            self._watch_locked()
            deadlines = [w.kill_at for w in self._workers if w.kill_at is not None]
            deadlines += [
                w.task.deadline
                for w in self._workers
                if w.task is not None and w.task.deadline is not None and not w.timed_out
            ]
        timeout = None
        if deadlines:
            timeout = min(_MAX_WAIT_S, max(0.0, min(deadlines) - time.monotonic()))
        messages: list[Worker] = []
        ended: list[Worker] = []
        events = self._selector.select(timeout)
        if not events:
            self._plan_needed = True  # a deadline
        for key, _events in events:
            if key.data is None:
                self._plan_needed = True
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            else:
                kind, worker = key.data
                (messages if kind == "message" else ended).append(worker)
        settle: Settle = []
        # Messages before deaths: a worker's last report is in its pipe when it exits.
        for worker in messages:
            if not worker.conn.closed:
                self._receive(worker, settle)
        if ended:
            self._plan_needed = True
        for worker in ended:
            while not worker.conn.closed and self._poll(worker):
                self._receive(worker, settle)
            self._exited(worker, settle)
        _resolve(settle)

    @staticmethod
    def _poll(worker: Worker) -> bool:
        try:
            return worker.conn.poll()
        except (OSError, EOFError):
            return False

    def _receive(self, worker: Worker, settle: Settle) -> None:
        self._plan_needed = True  # unless it is a routine report (below)
        try:
            message = receive(worker.conn)
        except (EOFError, OSError):
            self._unwatch(worker, only_messages=True)
            worker.conn.close()  # the sentinel tells how it ended
            return
        except Exception as error:  # bytes that are no message: a task wrote to the pipe
            message = _Unreadable(error)
        with self._lock:
            if isinstance(message, WorkerReady):
                worker.rss, worker.peak = message.rss, message.peak_rss
                worker.state = "exiting" if worker.stopping else "idle"
                self._start_failures = 0
                return
            if isinstance(message, TaskSkipped):
                task = worker.task
                if task is not None and task.ahead and task.info.id == message.task_id:
                    worker.task = None
                    self._skipped_locked(task)
                    if worker.state == "busy":
                        worker.state = "idle"
                    if self._queue or any(w.queued for w in self._workers):
                        self._dispatch_locked(time.monotonic(), settle)
                    return
                violation = f"skipped task {message.task_id} while running {task and task.info}"
            elif isinstance(message, TaskReport):
                task = worker.task
                if task is not None and task.info.id == message.task_id:
                    self._report(worker, message, settle)
                    if self._queue or (worker.state == "idle" and self._stealable_locked()):
                        # The next task goes out now, before the futures are settled
                        # (their callers wake and take the GIL): the worker's idle
                        # gap is one message, not a whole manager pass.
                        self._dispatch_locked(time.monotonic(), settle)
                    self._plan_needed = not self._routine(worker, message)
                    return
                violation = f"reported task {message.task_id} while running {task and task.info}"
            elif isinstance(message, _Unreadable):
                violation = f"sent bytes that are no message ({message.error!r})"
            else:
                violation = f"sent an unexpected {type(message).__name__}"
            # Only a process that is not the worker's own loop (a task's forked
            # child, a task writing to the pipe) can do this: one worker broke,
            # not the pool. Its task fails as a crash, naming why.
            worker.violation = violation
        with contextlib.suppress(OSError, ValueError):
            worker.process.kill()

    @staticmethod
    def _routine(worker: Worker, report: TaskReport) -> bool:
        """A report after which a planning pass has nothing to do.

        Its next task (if any) went out as it was handled; nothing retires,
        times out or stops, and the worker's next task is not its last by
        ``max_tasks`` (that one's replacement starts in the planning pass).
        """
        limit = worker.policy.max_tasks
        return (
            report.retire is None
            and not worker.timed_out
            and not worker.stopping
            and (limit is None or worker.tasks_run + 1 < limit)
        )

    def _report(
        self,
        worker: Worker,
        report: TaskReport,
        settle: Settle,
    ) -> None:
        task = worker.task
        worker.task = None
        ahead = worker.queued
        retiring = report.retire is not None or worker.timed_out
        if ahead is not None and report.next_task == ahead.info.id:
            worker.queued = None
            if report.next_claimed:
                # It runs now: as far as its future knows it starts now, as it would
                # have had it been sent now.
                ahead.ahead = False
                ahead.future._claim = None
                ahead.started = ahead.future.set_running_or_notify_cancel()
                worker.task = ahead
            else:
                self._skipped_locked(ahead)
        elif ahead is not None and retiring:
            worker.queued = None
            self._take_back_locked(ahead, worker)  # it exits without reading it
        elif ahead is not None:
            # Not read before the report: the worker claims (or skips) it next, and
            # says so by its report (or a TaskSkipped).
            worker.queued = None
            worker.task = ahead
        worker.tasks_run += 1
        worker.rss, worker.peak = report.rss_after, report.peak_rss
        worker.baseline = report.baseline
        self._counters.remedies += report.remedies - worker.remedies
        self._counters.released += report.released - worker.released
        worker.remedies, worker.released = report.remedies, report.released
        if report.retire is not None:
            worker.role = "retiring"
            worker.state = "exiting"
            worker.retire_reason, worker.retire_detail = report.retire, report.detail
            worker.kill_at = time.monotonic() + _STOP_GRACE_S
        elif worker.timed_out:
            worker.role, worker.state = "retiring", "exiting"  # SIGKILL is on its way
        elif worker.state == "busy" and worker.task is None:
            worker.state = "idle"
        assert task is not None  # _receive checked that it reports its own task
        task.future._claim = None
        task.ahead = False
        # A report that beats the timeout's SIGKILL is a finished task: it counts.
        future = task.future
        future.pid = worker.pid
        future.rss_before_mb = report.rss_before / MB
        future.rss_after_mb = report.rss_after / MB
        future.rss_delta_mb = (report.rss_after - report.rss_before) / MB
        future.duration_s = report.duration_s
        future.worker_retired = report.retire
        if report.ok:
            self._counters.completed += 1
            settle.append((future, _result_setter(future, report.payload, worker.pid)))
        else:
            self._counters.failed += 1
            settle.append((future, _error_setter(future, report, worker.pid)))

    def _exited(self, worker: Worker, settle: Settle) -> None:
        worker.process.join(0)
        if worker.process.exitcode is None:
            # fork/spawn: the sentinel pipe closes as the child exits, a moment
            # before waitpid() can reap it; without this wait it stays a zombie.
            worker.process.join(_STOP_GRACE_S)
        exitcode = worker.process.exitcode
        with self._lock:
            self._workers.remove(worker)
            # Tasks sent ahead that it never claimed go back to the queue (or stay
            # cancelled); one it claimed ran there, and shares its fate below.
            if worker.queued is not None:
                queued, worker.queued = worker.queued, None
                if not self._take_back_locked(queued, worker):  # pragma: no cover - the
                    # worker claims only after reporting its task, so not while it runs.
                    settle.append((queued.future, _failer(queued.future, _lost_error(queued))))
            ahead = worker.task
            if ahead is not None and ahead.ahead and self._take_back_locked(ahead, worker):
                worker.task = None
        self._unwatch(worker)
        worker.close()
        with self._lock:
            stats = worker.statistics()
            task = worker.task
            how = _describe_exit(exitcode)
            if worker.violation is not None:
                how = f"{how}, killed by the pool because it {worker.violation}"
            if worker.retire_reason is not None:
                reason, detail = worker.retire_reason, worker.retire_detail
                self._counters.recycles[reason] += 1
            elif task is not None and worker.timed_out:
                reason, detail = "timeout", f"killed after {self._task_timeout} s ({how})"
                self._counters.timeouts += 1
                self._counters.failed += 1
                timeout = TaskTimeout(
                    f"{task.info} ran longer than task_timeout_s={self._task_timeout}; "
                    f"worker pid {worker.pid} {how}",
                    task=task.info,
                    worker=stats,
                )
                task.future.pid = worker.pid
                settle.append((task.future, _failer(task.future, timeout)))
            elif task is not None and worker.stopping and self._terminate_on_close:
                reason, detail = "stopped", f"killed at shutdown ({how})"
                self._counters.failed += 1
                task.future.pid = worker.pid
                settle.append((task.future, _failer(task.future, _closed_error(task))))
            elif task is not None:
                reason, detail = "crashed", how
                self._counters.crashes += 1
                if task.future.attempts <= self._retries:
                    self._counters.retries += 1
                    task.info = TaskInfo(task.info.id, task.info.function, task.info.attempt + 1)
                    task.deadline = None
                    self._queue.appendleft(task)  # next free (fresh) worker
                else:
                    self._counters.failed += 1
                    error = WorkerCrashed(
                        f"{task.info}: worker pid {worker.pid} {how} while running it "
                        f"(after {worker.tasks_run} earlier tasks, RSS "
                        f"{format_mb(stats.rss_mb)} after the last one)",
                        exitcode=exitcode,
                        task=task.info,
                        worker=stats,
                    )
                    task.future.pid = worker.pid
                    settle.append((task.future, _failer(task.future, error)))
            elif worker.timed_out:
                reason, detail = "timeout", f"its task finished as it was being killed ({how})"
            elif worker.stopping:
                reason, detail = "stopped", how
            elif worker.state == "starting":
                reason, detail = "start_failed", how
                self._start_failures += 1
                if self._start_failures >= _MAX_START_FAILURES:
                    self._broken = WorkerStartError(
                        f"{self._start_failures} worker processes in a row {how} before "
                        "they were ready (see their stderr)"
                    )
            else:
                reason, detail = "died_idle", how
                self._counters.crashes += 1
            self._counters.retirements.append(
                Retirement(
                    stats.pid, reason, detail, stats.tasks_run, stats.rss_mb, stats.peak_rss_mb
                )
            )

    def _fail_everything(self, error: BaseException) -> None:
        settle: Settle = []
        with self._lock:
            self._closing = True
            broken = RuntimeError(f"the pool's manager thread failed: {error!r}")
            broken.__cause__ = error
            tasks = list(self._queue) + [w.task for w in self._workers if w.task is not None]
            tasks += [w.queued for w in self._workers if w.queued is not None]
            self._queue.clear()
            for task in tasks:
                settle.append((task.future, _failer(task.future, broken)))
        _resolve(settle)

    def _reap_all(self) -> None:
        """Last resort on the way out: no process may outlive the manager thread."""
        for worker in list(self._workers):
            with contextlib.suppress(OSError, ValueError):
                worker.process.kill()
            worker.process.join(_STOP_GRACE_S)
            self._unwatch(worker)
            worker.close()
            self._workers.remove(worker)


@dataclass(frozen=True)
class _Unreadable:
    """What a worker's pipe carried when it could not be unpickled."""

    error: Exception


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exited (code unknown)"
    if exitcode < 0:
        return f"was killed by {signal_name(-exitcode)}"
    return f"exited with code {exitcode}"


def _lost_error(task: Task) -> WorkerCrashed:
    return WorkerCrashed(f"{task.info} was lost with its worker", exitcode=None, task=task.info)


def _closed_error(task: Task) -> ClosedResourceError:
    return ClosedResourceError(f"{task.info} did not finish: the pool was shut down")


def _failer(future: TaskFuture[Any], error: BaseException) -> Callable[[], None]:
    return lambda: future.set_exception(error)


def _result_setter(future: TaskFuture[Any], payload: bytes, pid: int | None) -> Callable[[], None]:
    def settle() -> None:
        try:
            value = pickle.loads(payload)
        except Exception as error:
            failure = RemoteTaskError(
                redact_text(
                    f"{future.task}: the result from worker pid {pid} could not be unpickled "
                    f"here: {error!r}"
                ),
                type_name=type(error).__qualname__,
            )
            failure.__cause__ = error
            future.set_exception(failure)
            return
        future.set_result(value)

    return settle


def _error_setter(
    future: TaskFuture[Any], report: TaskReport, pid: int | None
) -> Callable[[], None]:
    def settle() -> None:
        try:
            error = pickle.loads(report.payload)
        except Exception as unpickling:
            error = RemoteTaskError(
                redact_text(
                    f"{future.task} failed in worker pid {pid}; its exception could not be "
                    f"unpickled here: {unpickling!r}"
                ),
                type_name="unknown",
            )
        if not isinstance(error, BaseException):
            error = RemoteTaskError(
                redact_text(f"{future.task} failed: {error!r}"), type_name="unknown"
            )
        if report.traceback:
            # Masked in the worker already; again here, for a worker of another version.
            add_note(error, f"in worker pid {pid}:\n{redact_text(report.traceback.rstrip())}")
        future.set_exception(error)

    return settle


def _resolve(settle: Settle) -> None:
    # Outside the pool's lock: done-callbacks may call back into the pool.
    for future, action in settle:
        if future.done():  # cancelled meanwhile (only queued futures can be)
            continue
        # A queued future may also be cancelled between that check and this call.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            action()


_checked_fork_servers: set[int] = set()
