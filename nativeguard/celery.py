"""nativeguard in Celery workers: per-task release, prefork children recycled by native growth.

Celery recycles a pool child only by count (``worker_max_tasks_per_child``)
or by a fixed RSS ceiling checked after each task
(``worker_max_memory_per_child``), blind to what is garbage, what is free heap
glibc keeps, and whether the process is still growing. :func:`install` gives a
Celery app the policy of :class:`~nativeguard.isolate.WorkerPool`, with the
same options and meaning, run in each prefork child after each task:

* with ``guard_tasks``, each task body runs as a :func:`nativeguard.guarded`
  call: every SDK object (of every registered integration) it created is
  released when it ends, success or failure;
* after each task the child measures itself; gc and ``malloc_trim`` run
  before a memory limit may retire it; the task's native deltas
  (:class:`~nativeguard._serving.UnitDeltas`) are stored next to its result
  (:func:`native_deltas`) before the result itself, and sent as a
  ``task-nativeguard`` event when the worker sends task events (``-E``);
* a child the policy retires leaves by billiard's own recycling path, the one
  ``worker_max_tasks_per_child`` uses: after its result was written and the
  parent has read it (so the result is stored and, with ``acks_late``, the
  message acknowledged), between two tasks; the pool starts its replacement;
* each retirement is counted by reason for :mod:`nativeguard.monitor`
  (:func:`~nativeguard.monitor.count_retirement`, in the child when the
  policy decides): with ``PROMETHEUS_MULTIPROC_DIR`` set, the exporting process
  shows ``nativeguard_worker_retirements_total{reason}`` summed over every child;
  a child that crashed (SIGKILL, segfault, the OOM killer) is counted by the
  worker's parent process as ``"crashed"``.

Only the prefork pool runs tasks in child processes that can be recycled:
``install`` refuses an app configured for another pool, and a worker started
with ``-P threads|solo|gevent|eventlet`` refuses to start, naming the pool
(:class:`UnsupportedPoolError`).

This module is ``nativeguard.celery``; it imports the real ``celery`` package
by absolute import (``from __future__ import annotations`` code never does
implicit relative imports), so it does not shadow it.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

try:
    import billiard.pool
    import celery
    import celery.concurrency.asynpool
    import celery.concurrency.prefork
    from celery import bootsteps, signals
    from celery.app.trace import build_tracer
    from celery.backends.base import DisabledBackend
except ImportError as _missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"nativeguard.celery needs Celery (pip install 'nativeguard[celery]'): {_missing}"
    ) from _missing

from nativeguard._core._errors import NativeGuardError
from nativeguard._core._guarded import GuardStatistics, guarded
from nativeguard._serving import ProcessRecycler, UnitDeltas, check_options, recycle_policy
from nativeguard.isolate._recycle import RecyclePolicy
from nativeguard.monitor import count_retirement

__all__ = [
    "DELTAS_STATE",
    "DELTAS_SUFFIX",
    "EVENT_TYPE",
    "CeleryGuard",
    "UnitDeltas",
    "UnsupportedPoolError",
    "install",
    "native_deltas",
]

EVENT_TYPE = "task-nativeguard"
"""The Celery event type each guarded task sends (with the worker's task events on)."""

DELTAS_SUFFIX = ".nativeguard"
"""A task's deltas are stored in the result backend under ``task_id + DELTAS_SUFFIX``."""

_SUPPORTED_POOLS = ("prefork",)
_UNSUPPORTED_POOLS = ("solo", "threads", "gevent", "eventlet", "processes", "custom")
DELTAS_STATE = "NATIVEGUARD"
"""The state the deltas are stored with: not a ready state, so a retried task's later run
overwrites its earlier one (Celery keeps the first SUCCESS it stored under an id)."""
_WRAPPED = "__nativeguard_run__"
_EVENT_OWN = frozenset({"pid", "hostname", "timestamp", "clock", "utcoffset", "type", "uuid"})

logger = logging.getLogger("nativeguard.celery")


class UnsupportedPoolError(NativeGuardError, ValueError):
    """The Celery worker pool cannot recycle processes (only ``prefork`` can)."""


@dataclass(frozen=True)
class CeleryGuard:
    """What :func:`install` set up for one app (returned by it; also ``app.nativeguard``)."""

    app: Any
    policy: RecyclePolicy
    guard_tasks: bool


@dataclass
class _Child:
    """This pool child's state (one per process; tasks run one at a time in prefork)."""

    guard: CeleryGuard
    recycler: ProcessRecycler
    send_events: bool
    depth: int = 0
    retirement_counted: bool = False


class _State:
    """Process-wide: which apps are guarded, this child's state, the worker's event setting."""

    lock: ClassVar[threading.Lock] = threading.Lock()
    guards: ClassVar[weakref.WeakKeyDictionary[Any, CeleryGuard]] = weakref.WeakKeyDictionary()
    child: ClassVar[_Child | None] = None
    task_events: ClassVar[bool] = False


def _pool_name(value: object) -> str:
    """A pool as the user named it: its -P alias where it has one, else its path."""
    if isinstance(value, str):
        return repr(value)
    module = getattr(value, "__module__", "")
    name = getattr(value, "__qualname__", type(value).__qualname__)
    path = f"{module}:{name}"
    aliases = celery.concurrency.get_available_pool_names()
    for alias in aliases:
        if celery.concurrency.ALIASES.get(alias) == path:
            return f"{alias!r} ({path})"
    return path


def _check_pool(value: object, where: str) -> None:
    """Refuse anything but the prefork pool (an alias, or the TaskPool class or a subclass)."""
    if isinstance(value, str):
        alias = value.strip().lower()
        if alias in _SUPPORTED_POOLS or value == "celery.concurrency.prefork:TaskPool":
            return
    elif isinstance(value, type) and issubclass(value, celery.concurrency.prefork.TaskPool):
        return
    raise UnsupportedPoolError(
        f"nativeguard.celery supports only the prefork pool, but {where} is "
        f"{_pool_name(value)}: the solo, threads, gevent and eventlet pools run tasks in "
        "the worker's own process, which cannot be recycled between tasks "
        "(run the worker with -P prefork)"
    )


def install(
    app: Any,
    *,
    max_tasks: int | None = None,
    max_rss_mb: float | None = None,
    max_growth_mb: float | None = None,
    growth_slope_mb_per_task: float | None = None,
    guard_tasks: bool = True,
) -> CeleryGuard:
    """Guard ``app``'s tasks and recycle its prefork children by the WorkerPool policy.

    Options mean what they mean for :class:`~nativeguard.isolate.WorkerPool`,
    per pool child: retire after ``max_tasks`` tasks (exact, no jitter), or
    when current RSS is above ``max_rss_mb``, or grew more than
    ``max_growth_mb`` since the child's first task, or grows faster than
    ``growth_slope_mb_per_task`` over its last 10 tasks; memory limits count
    only after gc and ``malloc_trim`` did not bring it back. All ``None``: no
    recycling, only the per-task guard and deltas.

    Call it where the app is defined (the worker imports that module), once
    per app. Raises :class:`UnsupportedPoolError` when ``app.conf.worker_pool``
    names a pool other than prefork; ``TypeError`` / ``ValueError`` naming a
    bad option.
    """
    if not isinstance(app, celery.Celery):
        raise TypeError(f"app must be a celery.Celery application, got {type(app).__name__}")
    check_options(
        max_tasks=max_tasks,
        max_rss_mb=max_rss_mb,
        max_growth_mb=max_growth_mb,
        growth_slope_mb_per_task=growth_slope_mb_per_task,
        guard_tasks=guard_tasks,
    )
    _check_pool(app.conf.worker_pool, "app.conf.worker_pool")
    guard = CeleryGuard(
        app=app,
        policy=recycle_policy(
            max_tasks=max_tasks,
            max_rss_mb=max_rss_mb,
            max_growth_mb=max_growth_mb,
            growth_slope_mb_per_task=growth_slope_mb_per_task,
        ),
        guard_tasks=guard_tasks,
    )
    with _State.lock:
        if app in _State.guards:
            raise RuntimeError(
                f"nativeguard.celery.install() was already called for app {app.main!r}"
            )
        _State.guards[app] = guard
    app.steps["worker"].add(_NativeGuardStep)
    return guard


def native_deltas(task: Any, *, app: Any | None = None) -> dict[str, Any] | None:
    """The stored deltas of a finished task (an ``AsyncResult`` or a task id), or ``None``.

    ``None`` when none were stored: the task has not finished, ran without
    :func:`install`, ignores its result, or the app has no result backend.
    """
    task_id = task if isinstance(task, str) else getattr(task, "id", None)
    if not isinstance(task_id, str):
        raise TypeError(f"task must be an AsyncResult or a task id, got {type(task).__name__}")
    if app is None:
        app = getattr(task, "app", None) or celery.current_app._get_current_object()
    meta = app.backend.get_task_meta(task_id + DELTAS_SUFFIX)
    if meta.get("status") != DELTAS_STATE:
        return None
    value = meta.get("result")
    return value if isinstance(value, dict) else None


# -- the worker (parent) side -------------------------------------------------


class _NativeGuardStep(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: refuse a non-prefork pool; give the pool children that can retire."""

    requires = ("celery.worker.components:Pool",)

    def create(self, w: Any) -> None:
        if w.app not in _State.guards:
            return
        _check_pool(w.pool_cls, "the worker's pool (-P / worker_pool)")
        _State.task_events = bool(getattr(w, "task_events", False))
        pool = w.pool
        pool.Pool = _RetiringAsynPool
        pool.BlockingPool = _RetiringBlockingPool


def _retire_between_jobs(receive: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a pool child's job receiver: leave, as maxtasks does, when the policy says so."""

    def wait_for_job(*args: Any, **kwargs: Any) -> Any:
        child = _State.child
        if child is not None and child.recycler.retiring is not None:
            decision = child.recycler.retiring
            logger.info(
                "nativeguard: pool child %d retires after %d tasks (%s): %s",
                child.recycler.pid,
                child.recycler.units,
                decision.reason,
                decision.detail,
            )
            # billiard's child replaced sys.exit with one that records the code:
            # EX_RECYCLE is the exit of a child recycled by maxtasks, not a failure.
            sys.exit(billiard.pool.EX_RECYCLE)
        return receive(*args, **kwargs)

    return wait_for_job


class _RetiringAsynWorker(celery.concurrency.asynpool.Worker):  # type: ignore[misc]
    wait_for_job: Callable[..., Any]

    def _make_child_methods(self, *args: Any, **kwargs: Any) -> None:
        super()._make_child_methods(*args, **kwargs)
        self.wait_for_job = _retire_between_jobs(self.wait_for_job)


class _RetiringBlockingWorker(billiard.pool.Worker):  # type: ignore[misc]
    wait_for_job: Callable[..., Any]

    def _make_child_methods(self, *args: Any, **kwargs: Any) -> None:
        super()._make_child_methods(*args, **kwargs)
        self.wait_for_job = _retire_between_jobs(self.wait_for_job)


_CLEAN_EXITS = (billiard.pool.EX_OK, billiard.pool.EX_RECYCLE)


def _join_and_count_crashes(pool: Any, join: Callable[[bool], Any], shutdown: bool) -> Any:
    """billiard's reaping of exited children, counting each that crashed (``"crashed"``).

    A child that ended by a signal or an error exit, and that the pool did not
    end itself (time limits, terminate), crashed: SIGKILL, a segfault, the OOM
    killer. Counted in the parent, which is the only one that sees it.
    """
    exited = []
    for worker in list(pool._pool):
        # exitcode polls the child; billiard's own pass below reads the same cached code.
        if worker._popen is not None and worker.exitcode is not None:
            exited.append((worker.exitcode, getattr(worker, "_controlled_termination", False)))
    result = join(shutdown)
    if not shutdown:
        crashed = sum(
            1 for code, controlled in exited if code not in _CLEAN_EXITS and not controlled
        )
        if crashed:
            _count_retirement("crashed", crashed)
    return result


class _RetiringAsynPool(celery.concurrency.asynpool.AsynPool):  # type: ignore[misc]
    Worker = _RetiringAsynWorker

    def _join_exited_workers(self, shutdown: bool = False) -> Any:
        return _join_and_count_crashes(self, super()._join_exited_workers, shutdown)


class _RetiringBlockingPool(billiard.pool.Pool):  # type: ignore[misc]
    Worker = _RetiringBlockingWorker

    def _join_exited_workers(self, shutdown: bool = False) -> Any:
        return _join_and_count_crashes(self, super()._join_exited_workers, shutdown)


# -- the pool child side --------------------------------------------------------


def _on_child_start(sender: Any = None, **_: Any) -> None:
    # current_app is a proxy: the app object itself is what install() keyed on.
    app = celery.current_app._get_current_object()
    guard = _State.guards.get(app)
    if guard is None:
        return
    _State.child = _Child(guard, ProcessRecycler(guard.policy), _State.task_events)
    hostname = sender
    for name, task in app.tasks.items():
        if name.startswith("celery."):
            continue  # Celery's own (chord unlock, backend cleanup, ...)
        if getattr(task, _WRAPPED, None) is None:
            original = task.run
            setattr(task, _WRAPPED, original)
            task.run = _measured(task, original, guard.guard_tasks)
        # Rebuild the tracer, as Celery's process_initializer just did, so it calls our run.
        task.__trace__ = build_tracer(name, task, app.loader, hostname, app=app)


signals.worker_process_init.connect(_on_child_start, weak=False)


def _measured(task: Any, run: Callable[..., Any], guard_tasks: bool) -> Callable[..., Any]:
    released: list[GuardStatistics] = []
    body = guarded(on_release=released.append)(run) if guard_tasks else run

    def measured_run(*args: Any, **kwargs: Any) -> Any:
        child = _State.child
        if child is None or child.depth:
            return run(*args, **kwargs)  # outside a guarded child, or a task called by a task
        released.clear()
        before = child.recycler.begin()
        child.depth += 1
        try:
            return body(*args, **kwargs)
        finally:
            child.depth -= 1
            guard = released[-1] if released else None
            released.clear()
            try:
                deltas = child.recycler.end(before, guard)
            except Exception:
                # The task's own outcome stands: a failed measurement is logged, not raised.
                logger.exception("nativeguard: could not measure task %s", task.name)
            else:
                if deltas.retire is not None and not child.retirement_counted:
                    # Before the result is sent: a client that saw it sees the count.
                    child.retirement_counted = True
                    _count_retirement(deltas.retire)
                _publish(task, child, deltas)

    measured_run.__name__ = getattr(run, "__name__", "run")
    measured_run.__doc__ = getattr(run, "__doc__", None)
    return measured_run


def _count_retirement(reason: str, count: int = 1) -> None:
    """Count retirements for the monitor; a failure to count is logged and stops nothing."""
    try:
        count_retirement(reason, count)
    except Exception:
        logger.exception("nativeguard: could not count the retirement (%s) for the monitor", reason)


def _publish(task: Any, child: _Child, deltas: UnitDeltas) -> None:
    """Store the deltas next to the task's result (before it) and send the event."""
    data = deltas.as_dict()
    data["task"] = task.name
    request = task.request
    task_id = getattr(request, "id", None)
    if task_id is None:
        return
    backend = task.backend
    ignored = bool(task.ignore_result or getattr(request, "ignore_result", False))
    if not ignored and not isinstance(backend, DisabledBackend):
        try:
            backend.store_result(task_id + DELTAS_SUFFIX, data, DELTAS_STATE)
        except Exception:
            logger.exception("nativeguard: could not store the deltas of task %s", task_id)
    if child.send_events:
        try:
            # The dispatcher adds the sender's pid (this child's) itself.
            fields = {key: value for key, value in data.items() if key not in _EVENT_OWN}
            task.send_event(EVENT_TYPE, **fields)
        except Exception:
            logger.exception("nativeguard: could not send the %s event of %s", EVENT_TYPE, task_id)
