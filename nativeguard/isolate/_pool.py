"""WorkerPool: the facade of a pool of worker processes recycled before native leaks pile up.

A ``concurrent.futures.Executor``. It checks options and tasks (plain data,
picklable, by name) in the caller's thread and hands them to its
:class:`~._manager.PoolManager`, whose thread owns every process and pipe; a
:class:`~._launcher.Launcher` thread starts workers; the workers run
:func:`~._worker.run_worker`, and both ends speak the message types of
:mod:`._messages`. The split follows loky and pebble: facade, manager,
launcher, messages.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import math
import multiprocessing
import multiprocessing.util  # its exit hook must be registered before ours (see below)
import os
import pickle
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Literal, TypeVar

from .._core._errors import ClosedResourceError, NotPlainDataError
from ._manager import PoolConfig, PoolManager
from ._options import DEFAULT_PRELOAD, StartMethod, check_pool_options, function_name
from ._plain import check_picklable, check_plain
from ._recycle import MB, RecyclePolicy
from ._types import PoolStatistics, Retirement, TaskFuture, TaskInfo, WorkerStatistics
from ._worker import forget_fork_server

__all__ = [
    "DEFAULT_PRELOAD",
    "PoolStatistics",
    "Retirement",
    "TaskFuture",
    "TaskInfo",
    "WorkerPool",
    "WorkerStatistics",
    "check_pool_options",
]

T = TypeVar("T")
_Pool = TypeVar("_Pool", bound="WorkerPool")

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
        if pool._manager.closing:  # shut down without waiting: finish as it was asked to
            pool.shutdown(wait=True)
        else:
            pool.shutdown(wait=True, cancel_futures=True, terminate=True)


class WorkerPool(concurrent.futures.Executor):
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

    ``initializer(*initargs)`` runs in each worker at start, before its first
    task (as in ``concurrent.futures``); a worker whose initializer raises
    exits, and three in a row break the pool with :class:`WorkerStartError`.

    A ``concurrent.futures.Executor``: ``loop.run_in_executor(pool, fn, ...)``
    works. Use as a context manager (``with`` or ``async with``); leaving the
    block waits for the tasks, or on an exception cancels the queued ones and
    kills the running ones. Either way no worker process, nor anything a task
    started, outlives it.
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
        start_method: StartMethod = "forkserver",
        preload: Iterable[str] = DEFAULT_PRELOAD,
        warm_spare: bool = True,
        jitter: float = 0.1,
        plain_types: Iterable[type] = (),
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        # At this point locals() holds exactly the parameters.
        preload, plain = check_pool_options({k: v for k, v in locals().items() if k != "self"})
        policy = RecyclePolicy(
            max_tasks=max_tasks,
            max_rss=None if max_rss_mb is None else int(max_rss_mb * MB),
            max_growth=None if max_growth_mb is None else int(max_growth_mb * MB),
            slope_per_task=None
            if growth_slope_mb_per_task is None
            else growth_slope_mb_per_task * MB,
            slope_window=slope_window,
        )
        config = PoolConfig(
            workers=workers,
            policy=policy,
            jitter=float(jitter),
            task_timeout=task_timeout_s,
            kill_grace=float(kill_grace_s),
            retries=retries,
            warm_spare=warm_spare,
            plain_types=plain,
            start_method=start_method,
            initializer=initializer,
            initargs=initargs,
        )
        if start_method == "forkserver":
            # Process-wide: takes effect when the fork server starts, i.e. for
            # the first forkserver pool (or Process) of this interpreter.
            multiprocessing.get_context("forkserver").set_forkserver_preload(list(preload))
        self._plain_types = plain
        self._pid = os.getpid()
        self._manager = PoolManager(
            config, name=f"{id(self):x}", on_finish=functools.partial(_live_pools.discard, self)
        )
        _live_pools.add(self)
        self._manager.start()

    # ----------------------------------------------------------- public API

    def __repr__(self) -> str:
        state = "closed" if self._manager.closing else "open"
        config = self._manager.config
        return f"<WorkerPool {state} workers={config.workers} method={config.start_method}>"

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
        future: TaskFuture[T] = self._manager.enqueue(function_name(fn), payload, repr(self))
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like ``Executor.map``: all submitted at once, results in order.

        ``chunksize`` is accepted for ``Executor`` compatibility; each item is
        a task of its own (so each is accounted, retried and recycled alone).

        Closing the iterator early (or a task's error) cancels what has not
        started. An item that cannot be submitted (not plain data) raises at
        once and cancels the items before it that have not started: the caller
        gets no handle on them.
        """
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (timeout >= 0 and math.isfinite(timeout))
        ):
            raise (ValueError if isinstance(timeout, (int, float)) else TypeError)(
                f"map()'s timeout must be None or a finite number of seconds >= 0, got {timeout!r}"
            )
        for index, iterable in enumerate(iterables):
            if not isinstance(iterable, Iterable):
                raise TypeError(
                    f"map()'s iterables[{index}] must be iterable, got {type(iterable).__name__}"
                )
        futures: list[TaskFuture[T]] = []
        try:
            for index, args in enumerate(zip(*iterables, strict=False)):
                try:
                    futures.append(self.submit(fn, *args))
                except NotPlainDataError as error:
                    raise _map_item_error(error, index) from None
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
        manager = self._manager
        manager.close(cancel_futures=cancel_futures, terminate=terminate)
        if wait and threading.current_thread() is not manager.thread:
            try:
                manager.thread.join()
            except BaseException:
                # Interrupted while waiting (Ctrl-C): still end every worker.
                manager.close(cancel_futures=True, terminate=True)
                manager.thread.join()
                raise

    close = shutdown

    def statistics(self) -> PoolStatistics:
        """A consistent snapshot of the pool's counters and workers."""
        return self._manager.statistics()

    def __enter__(self: _Pool) -> _Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        failed = exc_type is not None
        self.shutdown(wait=True, cancel_futures=failed, terminate=failed)
        return False

    async def __aenter__(self: _Pool) -> _Pool:
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
        await asyncio.get_running_loop().run_in_executor(None, self._manager.thread.join)
        self.shutdown(wait=True)


def _map_item_error(error: NotPlainDataError, index: int) -> NotPlainDataError:
    """``submit``'s error for ``args[k]...`` restated for map(): ``iterables[k][index]...``."""
    path = re.sub(r"^args\[(\d+)\]", lambda m: f"iterables[{m.group(1)}][{index}]", error.path)
    return NotPlainDataError(
        f"map(): item {index} of the iterables is not plain data: {error}",
        path=path,
        type_name=error.type_name,
    )
