"""Process isolation for leaks that live inside native code: recycled worker processes.

:class:`WorkerPool` runs tasks in worker processes that retire (gracefully,
between tasks) by task count, current RSS, growth since their first task or a
fitted growth slope, after gc and ``malloc_trim`` had their chance; a warm
spare takes over without start-up delay. A task whose worker dies fails alone
(:class:`WorkerCrashed`), a hung one is killed (:class:`TaskTimeout`), and
results must be plain data (:class:`NotPlainDataError`). :func:`isolated` turns
a function into one that runs in such a pool.
"""

from __future__ import annotations

from .._core._errors import (
    NotPlainDataError,
    RemoteTaskError,
    TaskTimeout,
    WorkerCrashed,
    WorkerStartError,
)
from ._isolated import isolated, shutdown_isolated_pools
from ._plain import check_plain
from ._pool import (
    DEFAULT_PRELOAD,
    PoolStatistics,
    Retirement,
    TaskFuture,
    TaskInfo,
    WorkerPool,
    WorkerStatistics,
)
from ._recycle import MB
from ._worker import in_worker

__all__ = [
    "DEFAULT_PRELOAD",
    "MB",
    "NotPlainDataError",
    "PoolStatistics",
    "RemoteTaskError",
    "Retirement",
    "TaskFuture",
    "TaskInfo",
    "TaskTimeout",
    "WorkerCrashed",
    "WorkerPool",
    "WorkerStartError",
    "WorkerStatistics",
    "check_plain",
    "in_worker",
    "isolated",
    "shutdown_isolated_pools",
]
