"""WorkerPool: worker processes that are recycled before native leaks pile up.

One manager thread owns every process and pipe. It waits on the workers'
pipes, their process sentinels and a wake-up pipe at once
(``multiprocessing.connection.wait``), so a worker that dies is noticed at the
moment it dies, whichever way, and only the task it ran fails. Callers only
touch the task queue (under a lock) and their futures.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import functools
import importlib.util
import itertools
import math
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.util  # its exit hook must be registered before ours (see below)
import os
import pickle
import random
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from types import MappingProxyType, TracebackType
from typing import Any, Generic, Literal, TypeVar

from .._errors import (
    ClosedResourceError,
    RemoteTaskError,
    TaskTimeout,
    WorkerCrashed,
    WorkerStartError,
    add_note,
)
from .._redact import redact_text
from ._messages import RunTask, StopWorker, TaskReport, WorkerReady
from ._plain import check_picklable, check_plain
from ._recycle import MB, RecyclePolicy
from ._worker import WorkerSettings, forget_fork_server, run_worker

__all__ = [
    "DEFAULT_PRELOAD",
    "PoolStatistics",
    "Retirement",
    "TaskFuture",
    "TaskInfo",
    "WorkerPool",
    "WorkerStatistics",
]

T = TypeVar("T")

DEFAULT_PRELOAD: tuple[str, ...] = ("azure.cognitiveservices.speech", "nativeguard.isolate._worker")
"""Imported once in the fork server so each worker starts with them loaded.

Measured safe for the Azure Speech SDK 1.53: importing it (and building a
SpeechConfig) starts no native thread, so the fork server stays single-threaded
and forking it is sound. ``WorkerPool`` checks the fork server's thread count
and warns if a preloaded module ever breaks that.
"""

_STOP_GRACE_S = 5.0  # a retiring or stopped worker gets this long to exit before SIGKILL
_MAX_WAIT_S = 3600.0  # the manager re-plans at least this often (poll() takes at most ~24 days)
_MAX_START_FAILURES = 3  # consecutive failed starts (or deaths before "ready") break the pool
_START_RETRY_DELAYS_S = (0.2, 1.0)  # after the 1st and 2nd failed start in a row
_RETIREMENTS_KEPT = 64
_RETIREMENTS_SHOWN = 8  # in str(statistics)
_StartMethod = Literal["forkserver", "spawn", "fork"]


def _signal_name(number: int) -> str:
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
        shown = self.retirements[-_RETIREMENTS_SHOWN:]
        if shown:
            lines.append(
                f"workers that ended (newest last, {len(shown)} of {len(self.retirements)}):"
            )
        for gone in shown:
            lines.append(
                f"  pid {gone.pid} {gone.reason} after {gone.tasks_run} tasks, RSS "
                f"{_format_mb(gone.rss_mb)}: {gone.detail}"
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


@dataclass
class _Task:
    info: TaskInfo
    payload: bytes
    future: TaskFuture[Any]
    deadline: float | None = None
    started: bool = False


@dataclass
class _Worker:
    process: Any  # multiprocessing.process.BaseProcess (its Popen varies by start method)
    conn: Connection
    role: str
    policy: RecyclePolicy
    state: str = "starting"
    task: _Task | None = None
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
    pidfd: int | None = None  # fork/spawn: readable when the process ends (see _launch)
    violation: str | None = None
    """Why the manager killed it: it broke the protocol (see ``_receive``)."""

    @property
    def sentinel(self) -> int:
        return self.process.sentinel if self.pidfd is None else self.pidfd

    def close(self) -> None:
        self.conn.close()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None

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
class _Counters:
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


_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    # A child of os.fork() in this process (a pre-forking server) can neither
    # use this process's pools (they refuse) nor its fork server: let a pool it
    # starts get a fork server of its own.
    os.register_at_fork(after_in_child=forget_fork_server)


@atexit.register
def _shutdown_live_pools() -> None:
    # Registered after multiprocessing's own exit hook, so it runs before it:
    # that hook joins non-daemon children and would wait on our idle workers.
    for pool in list(_live_pools):
        if pool._pid != os.getpid():
            continue  # inherited through fork(): not this process's to end
        if pool._closing:  # shut down without waiting: finish as it was asked to
            pool.shutdown(wait=True)
        else:
            pool.shutdown(wait=True, cancel_futures=True, terminate=True)


def _check_limit(name: str, value: float | None, *, integer: bool = False) -> None:
    if value is None:
        return
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind} or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _function_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def check_pool_options(options: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[type, ...]]:
    """Refuse a bad WorkerPool option by name, before any thread or process starts.

    ``options`` maps every ``WorkerPool`` parameter to its value (``@isolated``
    checks its options at decoration with it). Returns ``preload`` and
    ``plain_types`` as tuples: they may be one-shot iterables.
    """
    workers = options["workers"]
    max_tasks = options["max_tasks"]
    max_rss_mb = options["max_rss_mb"]
    max_growth_mb = options["max_growth_mb"]
    growth_slope_mb_per_task = options["growth_slope_mb_per_task"]
    slope_window = options["slope_window"]
    task_timeout_s = options["task_timeout_s"]
    kill_grace_s = options["kill_grace_s"]
    retries = options["retries"]
    start_method = options["start_method"]
    preload = options["preload"]
    warm_spare = options["warm_spare"]
    jitter = options["jitter"]
    plain_types = options["plain_types"]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    _check_limit("max_tasks", max_tasks, integer=True)
    _check_limit("max_rss_mb", max_rss_mb)
    _check_limit("max_growth_mb", max_growth_mb)
    _check_limit("growth_slope_mb_per_task", growth_slope_mb_per_task)
    _check_limit("task_timeout_s", task_timeout_s)
    if kill_grace_s is None:
        raise TypeError("kill_grace_s must be a number > 0, got None")
    _check_limit("kill_grace_s", kill_grace_s)
    if not isinstance(warm_spare, bool):
        raise TypeError(f"warm_spare must be True or False, got {warm_spare!r}")
    if isinstance(slope_window, bool) or not isinstance(slope_window, int) or slope_window < 3:
        raise ValueError(f"slope_window must be an int >= 3, got {slope_window!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
        raise ValueError(f"jitter must be a number in [0, 1), got {jitter!r}")
    if start_method not in ("forkserver", "spawn", "fork"):
        raise ValueError(
            f"start_method must be 'forkserver', 'spawn' or 'fork', got {start_method!r}"
        )
    if isinstance(preload, str):
        raise TypeError("preload must be an iterable of module names, not one str")
    preload = tuple(preload)
    if not all(isinstance(name, str) and name for name in preload):
        raise TypeError(f"preload must hold module names, got {preload!r}")
    for name in preload:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ValueError(f"preload module {name!r} cannot be found (misspelt?)")
    if isinstance(plain_types, type):
        raise TypeError(
            f"plain_types must be an iterable of types: plain_types=[{plain_types.__name__}]"
        )
    plain = tuple(plain_types)
    if not all(isinstance(kind, type) for kind in plain):
        raise TypeError(f"plain_types must hold types, got {plain!r}")
    try:
        pickle.dumps(plain)
    except Exception as error:  # workers get them by pickle, i.e. by import
        raise TypeError(
            f"plain_types must be importable classes (module level): {error}"
        ) from error

    return preload, plain


class WorkerPool:
    """Worker processes for code whose leaks live in native memory.

    Each task runs in a worker process. After each task the worker measures its
    current RSS and retires (between tasks, gracefully) when it ran
    ``max_tasks`` (each worker's limit lowered at random by up to ``jitter``
    so workers do not all restart together), or is above ``max_rss_mb``, or
    grew more than ``max_growth_mb`` since its first task, or grows faster
    than ``growth_slope_mb_per_task`` over its last ``slope_window`` tasks;
    memory limits count only after gc and ``malloc_trim`` failed to bring it
    back. With ``warm_spare`` one started, idle worker waits to take over, so
    a task does not wait for a start-up after a recycle.

    A task whose worker dies fails alone with :class:`WorkerCrashed` (after
    ``retries`` re-runs on fresh workers); one past ``task_timeout_s`` is
    killed (SIGTERM, ``kill_grace_s``, SIGKILL) and fails with
    :class:`TaskTimeout`. Arguments and results must be plain data
    (:class:`NotPlainDataError` otherwise); ``plain_types`` adds types that
    count as plain.

    Use as a context manager (``with`` or ``async with``); leaving the block
    waits for the tasks, or on an exception cancels the queued ones and kills
    the running ones. Either way no worker process outlives it.
    """

    def __init__(
        self,
        workers: int = 1,
        *,
        max_tasks: int | None = None,
        max_rss_mb: float | None = None,
        max_growth_mb: float | None = None,
        growth_slope_mb_per_task: float | None = None,
        slope_window: int = 10,
        task_timeout_s: float | None = None,
        kill_grace_s: float = 2.0,
        retries: int = 0,
        start_method: _StartMethod = "forkserver",
        preload: Iterable[str] = DEFAULT_PRELOAD,
        warm_spare: bool = True,
        jitter: float = 0.1,
        plain_types: Iterable[type] = (),
    ) -> None:
        # At this point locals() holds exactly the parameters.
        preload, plain = check_pool_options({k: v for k, v in locals().items() if k != "self"})

        self._workers_wanted = workers
        self._max_tasks = max_tasks
        self._jitter = float(jitter)
        self._policy = RecyclePolicy(
            max_tasks=max_tasks,
            max_rss=None if max_rss_mb is None else int(max_rss_mb * MB),
            max_growth=None if max_growth_mb is None else int(max_growth_mb * MB),
            slope_per_task=None
            if growth_slope_mb_per_task is None
            else growth_slope_mb_per_task * MB,
            slope_window=slope_window,
        )
        self._task_timeout = task_timeout_s
        self._kill_grace = float(kill_grace_s)
        self._retries = retries
        self._warm_spare = warm_spare
        self._plain_types = plain
        self._start_method = start_method
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Process-wide: takes effect when the fork server starts, i.e. for
            # the first forkserver pool (or Process) of this interpreter.
            self._context.set_forkserver_preload(list(preload))
        self._preload = preload

        self._lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._workers: list[_Worker] = []
        self._counters = _Counters()
        self._ids = itertools.count(1)
        self._closing = False
        self._cancel_on_close = False
        self._terminate_on_close = False
        self._broken: BaseException | None = None
        self._start_failures = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_open = True
        self._launching = 0  # processes asked of the launcher, not yet started
        self._launcher_done = False
        self._launch_wanted = threading.Condition(self._lock)
        self._launcher = threading.Thread(
            target=self._launch_loop, name=f"nativeguard-launcher-{id(self):x}", daemon=True
        )
        self._thread = threading.Thread(
            target=self._manage, name=f"nativeguard-pool-{id(self):x}", daemon=True
        )
        self._pid = os.getpid()
        _live_pools.add(self)
        self._launcher.start()
        self._thread.start()

    # ----------------------------------------------------------- public API

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"<WorkerPool {state} workers={self._workers_wanted} method={self._start_method}>"

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; the future carries the result and accounting.

        ``fn`` must be importable by the worker (module level, not a lambda);
        arguments must be plain data. An ``async def`` function is run with
        ``asyncio.run`` in the worker.
        """
        if os.getpid() != self._pid:
            # Its threads did not survive fork(); its lock may be held forever.
            raise ClosedResourceError(
                f"{self!r} belongs to process {self._pid}, not to this forked child "
                f"{os.getpid()}: create a WorkerPool in the process that uses it"
            )
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if isinstance(fn, functools.partial):  # its bound arguments cross like any others
            check_plain(fn.args, "fn.args", self._plain_types)
            check_plain(fn.keywords, "fn.keywords", self._plain_types)
        check_plain(args, "args", self._plain_types)
        check_plain(kwargs, "kwargs", self._plain_types)
        try:
            payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            # Pickled once on the way in; only a failure is worth a second try,
            # to name fn when it is the part that cannot cross.
            check_picklable(fn, "fn")
            payload = check_picklable((fn, args, kwargs), "arguments")
        with self._lock:
            if self._broken is not None:
                raise WorkerStartError(
                    f"{self!r} cannot start workers: {self._broken}"
                ) from self._broken
            if self._closing:
                raise ClosedResourceError(f"{self!r} is shut down; it takes no new tasks")
            info = TaskInfo(next(self._ids), _function_name(fn))
            future: TaskFuture[T] = TaskFuture(info)
            self._queue.append(_Task(info, payload, future))
            self._counters.submitted += 1
            self._wake_locked()
        return future

    def map(
        self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None
    ) -> Iterator[T]:
        """Like ``Executor.map``: all submitted at once, results in order.

        Closing the iterator early (or a task's error) cancels what has not
        started. An item that cannot be submitted (not plain data) raises at
        once and cancels the items before it that have not started: the caller
        gets no handle on them.
        """
        futures: list[TaskFuture[T]] = []
        try:
            for args in zip(*iterables, strict=False):
                futures.append(self.submit(fn, *args))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        end = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[T]:
            try:
                for future in futures:
                    left = None if end is None else max(0.0, end - time.monotonic())
                    yield future.result(left)
            finally:
                for future in futures:
                    future.cancel()

        return results()

    async def asubmit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``await`` a task's result without blocking the event loop.

        Cancelling the awaiting task cancels the task if it has not started; a
        running task finishes in its worker and its result is dropped.
        """
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, terminate: bool = False
    ) -> None:
        """Take no new tasks, finish (or cancel) the queued ones, and end every worker.

        Idempotent. ``cancel_futures`` cancels queued tasks; ``terminate``
        also kills running ones (their futures fail with ClosedResourceError).
        With ``wait`` it returns once every worker process has exited.
        """
        with self._lock:
            self._closing = True
            self._cancel_on_close |= cancel_futures or terminate
            self._terminate_on_close |= terminate
            self._wake_locked()
        if wait and threading.current_thread() is not self._thread:
            try:
                self._thread.join()
            except BaseException:
                # Interrupted while waiting (Ctrl-C): still end every worker.
                with self._lock:
                    self._cancel_on_close = self._terminate_on_close = True
                    self._wake_locked()
                self._thread.join()
                raise

    close = shutdown

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

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failed = exc_type is not None
        self.shutdown(wait=True, cancel_futures=failed, terminate=failed)

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failed = exc_type is not None
        self.shutdown(wait=False, cancel_futures=failed, terminate=failed)
        # Waiting for workers to finish must not block the event loop.
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self.shutdown(wait=True)

    # ------------------------------------------------------ manager thread

    def _wake_locked(self) -> None:
        if self._wake_open:
            with contextlib.suppress(BlockingIOError):  # already pending: one byte is enough
                os.write(self._wake_w, b"\0")

    def _manage(self) -> None:
        try:
            while True:
                settle: list[tuple[TaskFuture[Any], Callable[[], object]]] = []
                with self._lock:
                    if self._finished_locked():
                        break
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
            _live_pools.discard(self)
            with self._lock:
                self._wake_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _finished_locked(self) -> bool:
        return self._closing and not self._queue and not self._workers and not self._launching

    def _plan_locked(self, settle: list[tuple[TaskFuture[Any], Callable[[], object]]]) -> None:
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

    def _kill(self, worker: _Worker, now: float) -> None:
        """SIGTERM now, SIGKILL after the grace period."""
        with contextlib.suppress(OSError, ValueError):
            worker.process.terminate()
        worker.kill_at = now + self._kill_grace

    def _send_stop(self, worker: _Worker, now: float) -> None:
        with contextlib.suppress(OSError):  # already gone: its sentinel will tell
            worker.conn.send(StopWorker())
        worker.kill_at = now + _STOP_GRACE_S

    def _fill_locked(self, *, spare: bool) -> None:
        """Promote spares to active workers, and ask the launcher for what is still missing.

        New processes join as spares and are promoted here on the next pass.
        """
        active = sum(1 for w in self._workers if w.role == "active")
        spares = [w for w in self._workers if w.role == "spare"]
        while active < self._workers_wanted and spares:
            spares.pop(0).role = "active"
            active += 1
        missing = self._workers_wanted - active
        if spare and self._warm_spare and not spares:
            missing += 1
        if missing > self._launching:
            self._launching = missing
            self._launch_wanted.notify()

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

    def _launch_loop(self) -> None:
        """The launcher thread: start worker processes the manager asked for.

        Starting one takes milliseconds (the fork server round trip); done by
        the manager, a task submitted meanwhile would wait for it, which is the
        latency the warm spare exists to avoid. Under ``fork`` this thread is
        the workers' parent, so it lives until the manager is done with them
        (PR_SET_PDEATHSIG fires when the forking *thread* exits).
        """
        while True:
            with self._lock:
                while not self._launching and not self._launcher_done:
                    self._launch_wanted.wait()
                if self._launcher_done:
                    return
                policy = self._worker_policy()
            try:
                worker, error = self._launch(policy)
            except Exception as unexpected:  # the launcher must never die of one start
                worker, error = None, WorkerStartError(f"starting a worker failed: {unexpected!r}")
                error.__cause__ = unexpected
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
                self._wake_locked()
            if worker is not None and self._start_method == "forkserver":
                _check_forkserver_threads()

    def _launch(self, policy: RecyclePolicy) -> tuple[_Worker | None, WorkerStartError | None]:
        try:
            parent_end, child_end = self._context.Pipe(duplex=True)
        except OSError as error:  # EMFILE, ENFILE: no fds for the worker's pipe
            failure = WorkerStartError(f"creating a worker's pipe failed: {error!r}")
            failure.__cause__ = error
            return None, failure
        process = self._context.Process(  # type: ignore[attr-defined]
            target=run_worker,
            args=(child_end, WorkerSettings(policy, self._plain_types, self._pid)),
            name="nativeguard-worker",
        )
        try:
            process.start()
        except Exception as error:
            parent_end.close()
            failure = WorkerStartError(f"starting a worker process failed: {error!r}")
            failure.__cause__ = error
            return None, failure
        finally:
            child_end.close()  # the child has its own copy (or there is no child)
        # Only the manager may poll a worker: multiprocessing's active_children() (run by
        # every Process.start(), from any thread) would race it for the exit status
        # (forkserver: one read of a pipe; the loser gets "255").
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        worker = _Worker(process, parent_end, "spare", policy)
        if self._start_method != "forkserver" and hasattr(os, "pidfd_open"):
            # Under fork/spawn the sentinel is a pipe the worker's own children
            # inherit: a task's long-lived child would hide the worker's exit.
            with contextlib.suppress(OSError):
                worker.pidfd = os.pidfd_open(process.pid)
        return worker, None

    def _dispatch_locked(
        self, now: float, settle: list[tuple[TaskFuture[Any], Callable[[], object]]]
    ) -> None:
        for worker in self._workers:
            if worker.role != "active" or worker.state != "idle" or worker.stopping:
                continue
            task = self._next_task_locked()
            if task is None:
                return
            task.future.attempts += 1
            try:
                worker.conn.send(RunTask(task.info.id, task.payload))
            except OSError:  # the worker just died; its sentinel will retire it
                self._queue.appendleft(task)
                worker.state = "exiting"
                continue
            worker.state = "busy"
            worker.task = task
            task.deadline = None if self._task_timeout is None else now + self._task_timeout

    def _next_task_locked(self) -> _Task | None:
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

    def _wait_and_handle(self) -> None:
        with self._lock:
            conns = {w.conn: w for w in self._workers if not w.conn.closed}
            sentinels = {w.sentinel: w for w in self._workers}
            deadlines = [w.kill_at for w in self._workers if w.kill_at is not None]
            deadlines += [
                w.task.deadline
                for w in self._workers
                if w.task is not None and w.task.deadline is not None and not w.timed_out
            ]
        timeout = None
        if deadlines:
            timeout = min(_MAX_WAIT_S, max(0.0, min(deadlines) - time.monotonic()))
        ready = wait([self._wake_r, *conns, *sentinels], timeout)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        settle: list[tuple[TaskFuture[Any], Callable[[], object]]] = []
        # Messages before deaths: a worker's last report is in its pipe when it exits.
        for conn, worker in conns.items():
            if conn in ready:
                self._receive(worker, settle)
        for sentinel, worker in sentinels.items():
            if sentinel in ready:
                while not worker.conn.closed and self._poll(worker):
                    self._receive(worker, settle)
                self._exited(worker, settle)
        _resolve(settle)

    @staticmethod
    def _poll(worker: _Worker) -> bool:
        try:
            return worker.conn.poll()
        except (OSError, EOFError):
            return False

    def _receive(
        self, worker: _Worker, settle: list[tuple[TaskFuture[Any], Callable[[], object]]]
    ) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            worker.conn.close()  # the sentinel tells how it ended
            return
        with self._lock:
            if isinstance(message, WorkerReady):
                worker.rss, worker.peak = message.rss, message.peak_rss
                worker.state = "exiting" if worker.stopping else "idle"
                self._start_failures = 0
                return
            if isinstance(message, TaskReport):
                task = worker.task
                if task is not None and task.info.id == message.task_id:
                    self._report(worker, message, settle)
                    return
                violation = f"reported task {message.task_id} while running {task and task.info}"
            else:
                violation = f"sent an unexpected {type(message).__name__}"
            # Only a process that is not the worker's own loop (a task's forked
            # child, a task writing to the pipe) can do this: one worker broke,
            # not the pool. Its task fails as a crash, naming why.
            worker.violation = violation
        with contextlib.suppress(OSError, ValueError):
            worker.process.kill()

    def _report(
        self,
        worker: _Worker,
        report: TaskReport,
        settle: list[tuple[TaskFuture[Any], Callable[[], object]]],
    ) -> None:
        task = worker.task
        worker.task = None
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
        elif worker.state == "busy":
            worker.state = "idle"
        assert task is not None  # _receive checked that it reports its own task
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

    def _exited(
        self, worker: _Worker, settle: list[tuple[TaskFuture[Any], Callable[[], object]]]
    ) -> None:
        worker.process.join(0)
        if worker.process.exitcode is None:
            # fork/spawn: the sentinel pipe closes as the child exits, a moment
            # before waitpid() can reap it; without this wait it stays a zombie.
            worker.process.join(_STOP_GRACE_S)
        exitcode = worker.process.exitcode
        worker.close()
        with self._lock:
            self._workers.remove(worker)
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
                        f"{_format_mb(stats.rss_mb)} after the last one)",
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
        settle: list[tuple[TaskFuture[Any], Callable[[], object]]] = []
        with self._lock:
            self._closing = True
            broken = RuntimeError(f"the pool's manager thread failed: {error!r}")
            broken.__cause__ = error
            tasks = list(self._queue) + [w.task for w in self._workers if w.task is not None]
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
            worker.close()
            self._workers.remove(worker)


def _format_mb(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f} MB"


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exited (code unknown)"
    if exitcode < 0:
        return f"was killed by {_signal_name(-exitcode)}"
    return f"exited with code {exitcode}"


def _closed_error(task: _Task) -> ClosedResourceError:
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


def _resolve(settle: list[tuple[TaskFuture[Any], Callable[[], object]]]) -> None:
    # Outside the pool's lock: done-callbacks may call back into the pool.
    for future, action in settle:
        if future.done():  # cancelled meanwhile (only queued futures can be)
            continue
        # A queued future may also be cancelled between that check and this call.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            action()


_checked_fork_servers: set[int] = set()


def _check_forkserver_threads() -> None:
    """Warn if the fork server has more than one thread: forking it would then be unsound.

    Threads could only have come from its preload, so each fork server is read once.
    """
    pid = getattr(getattr(multiprocessing.forkserver, "_forkserver", None), "_forkserver_pid", None)
    if not pid or pid in _checked_fork_servers:
        return
    _checked_fork_servers.add(pid)
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            threads = next(
                (int(line.split()[1]) for line in status if line.startswith("Threads:")), 1
            )
    except OSError:
        return
    if threads > 1:
        warnings.warn(
            f"the multiprocessing fork server (pid {pid}) has {threads} threads: a preloaded "
            "module started threads, so forked workers may inherit locks held by threads that "
            "do not exist in them; remove it from preload",
            RuntimeWarning,
            stacklevel=4,
        )
