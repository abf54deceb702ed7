"""Memory and native resources of a running service: sampled, logged, bounded, exported.

``nativeguard soak`` answers "does this function leak?" before deployment; a
:class:`Monitor` answers "is this process growing?" in production, with the
same readings: RSS, glibc's heap in use and the free heap it keeps, native
handles per integration and type (the Speech SDK core's own table, labelled
``integration="azure_speech"``), live tracked SDK objects per type, threads
and file descriptors.

- A sampler thread (``interval_s``) or a per-N-requests hook
  (:meth:`Monitor.request_done`) takes a reading; each is logged through
  ``logging.getLogger("nativeguard")`` with structured fields (the record's
  ``nativeguard`` attribute: numbers and type names only, never values,
  arguments or configuration, so no secret can reach a log).
- The last ``history`` readings are kept (a ``deque``: bounded memory).
- Each metric's slope per hour over the last ``slope_window`` readings
  (Theil-Sen on the readings' times, robust to one spike) is checked against
  ``slope_limits``; crossing one logs a warning and issues a
  :class:`MemoryGrowthWarning` once, until the slope falls back below.
- With ``prometheus=True`` (``pip install 'nativeguard[monitor]'``) a collector
  serves the latest reading at scrape time: ``nativeguard_rss_bytes``,
  ``nativeguard_heap_in_use_bytes``, ``nativeguard_heap_retained_bytes``,
  ``nativeguard_native_resources{integration,type}``,
  ``nativeguard_live_objects{type}``, ``nativeguard_threads``,
  ``nativeguard_fds``, ``nativeguard_releases_total`` (every scope this
  process released since the Monitor started: managed blocks, ``@guarded``
  calls, one-call helpers, from :func:`nativeguard.scopes_released`; plus what
  :meth:`Monitor.record_release` added) and
  ``nativeguard_worker_retirements_total{reason}`` (of the pools given to
  :meth:`Monitor.watch_pool`, and what :meth:`Monitor.record_retirement`
  counted).
- Server processes that retire by nativeguard's policy (Celery prefork
  children, gunicorn workers: :mod:`nativeguard.celery`,
  :mod:`nativeguard.gunicorn`) decide it in the process that leaves, not in
  the one that serves ``/metrics``. They call :func:`count_retirement`,
  which counts in this process's open Monitors and, in prometheus-client's
  multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, the standard for
  pre-fork servers), in a multiprocess counter: its file outlives the process,
  and ``prometheus_client.multiprocess.MultiProcessCollector`` in whichever
  process exports sums every process's count. In that mode both counters
  (``nativeguard_releases_total`` too) are multiprocess counters, exported by
  that collector and not by the Monitor's own (one source per metric).

After ``fork()`` a child's copy of a Monitor has no sampler thread (threads do
not survive a fork): it can take readings, and ``start()`` its own thread.

A reading is one :func:`nativeguard.verify.snapshot` (a registry copy, the
SDK's handle table, ``/proc``; benchmarks/verify_cost.py measures it) plus one
``mallinfo2``; the first one enables the live-object registry, which walks the
heap once.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import statistics
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._core._errors import NativeGuardError
from ._core._malloc import heap_stats
from ._core._redact import redact_text
from ._core._scope import scopes_released
from .verify import snapshot

if TYPE_CHECKING:
    from .isolate import WorkerPool

__all__ = [
    "DEFAULT_SLOPE_LIMITS",
    "INTEGRATION",
    "LOGGER_NAME",
    "MULTIPROC_ENV",
    "RETIREMENT_REASONS",
    "MemoryGrowthWarning",
    "Monitor",
    "MonitorSample",
    "MonitorStateError",
    "count_retirement",
]

LOGGER_NAME = "nativeguard"
INTEGRATION = "azure_speech"
"""The ``integration`` label of the Speech SDK core's handle table (every integration's
native resources carry their own integration's name)."""
_MB = 1 << 20
_HOUR = 3600.0

DEFAULT_SLOPE_LIMITS: Mapping[str, float] = {
    "rss_bytes": 64.0 * _MB,
    "heap_in_use_bytes": 64.0 * _MB,
    "native_resources": 100.0,
    "live_objects": 100.0,
    "threads": 20.0,
    "fds": 20.0,
}
"""Growth per hour, per metric, that warns. The field reports: hundreds of MB an hour."""

_METRICS = frozenset(
    {
        "rss_bytes",
        "heap_in_use_bytes",
        "heap_retained_bytes",
        "python_allocated_blocks",
        "native_resources",
        "live_objects",
        "threads",
        "fds",
    }
)


RETIREMENT_REASONS: frozenset[str] = frozenset(
    {
        # The recycling policy (WorkerPool, nativeguard.celery, nativeguard.gunicorn).
        "max_tasks",
        "max_rss",
        "max_growth",
        "growth_slope",
        # What else ends a WorkerPool worker (nativeguard.isolate.Retirement.reason).
        "crashed",
        "timeout",
        "died_idle",
        "start_failed",
        "stopped",
    }
)
"""The ``reason`` label values of ``nativeguard_worker_retirements_total``: a closed set, so
a label can never carry an unbounded or secret value."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's multiprocess mode: the directory every process's counter files go to."""

_REASON_SHAPE = re.compile(r"[a-z_]{1,32}")


class MemoryGrowthWarning(RuntimeWarning):
    """A monitored metric grows faster than its limit per hour."""


class MonitorStateError(NativeGuardError, RuntimeError):
    """A Monitor used in a state that does not allow it (closed, already started)."""


@dataclass(frozen=True)
class MonitorSample:
    """One reading of the process. ``native`` is by integration, then type."""

    time: float
    """``time.time()`` of the reading."""
    monotonic: float
    rss_bytes: int
    heap_in_use_bytes: int | None
    heap_retained_bytes: int | None
    python_allocated_blocks: int
    native: Mapping[str, Mapping[str, int]]
    instances: Mapping[str, int]
    threads: int
    """OS threads of the process (nativeguard's reaper left out)."""
    fds: int

    @property
    def native_resources(self) -> int:
        return sum(sum(types.values()) for types in self.native.values())

    @property
    def live_objects(self) -> int:
        return sum(self.instances.values())

    def value(self, metric: str) -> float | None:
        """The figure a slope limit names (``native_resources``, ``live_objects``: totals)."""
        if metric not in _METRICS:
            raise KeyError(f"no metric {metric!r}; one of {', '.join(sorted(_METRICS))}")
        value = getattr(self, metric)
        return None if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["native"] = {k: dict(v) for k, v in self.native.items()}
        data["instances"] = dict(self.instances)
        return data


def read_sample() -> MonitorSample:
    """Take one reading now (the monitor's own reader, usable alone)."""
    snap = snapshot()
    heap = heap_stats()
    return MonitorSample(
        time=time.time(),
        monotonic=time.monotonic(),
        rss_bytes=snap.rss_bytes,
        heap_in_use_bytes=heap.in_use_bytes,
        heap_retained_bytes=heap.free_bytes,
        python_allocated_blocks=snap.allocated_blocks,
        native={name: dict(counts) for name, counts in snap.native_by_integration.items()},
        instances=dict(snap.instances),
        threads=snap.os_threads,
        fds=snap.fds,
    )


def _slope_per_hour(points: Iterable[tuple[float, float]]) -> float:
    """Theil-Sen slope of (monotonic seconds, value) points, per hour; 0.0 below two points."""
    data = list(points)
    slopes = [
        (data[j][1] - data[i][1]) / (data[j][0] - data[i][0])
        for i in range(len(data))
        for j in range(i + 1, len(data))
        if data[j][0] > data[i][0]
    ]
    return float(statistics.median(slopes)) * _HOUR if slopes else 0.0


def _check_number(name: str, value: object, *, minimum: float, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not value >= minimum:
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= {minimum:g}, got {value!r}")


def _check_reason(reason: object) -> str:
    """``reason`` if it is one of :data:`RETIREMENT_REASONS`; the error never echoes a value
    that does not look like a reason (it could be anything, a secret included)."""
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str, got {type(reason).__name__}")
    if reason not in RETIREMENT_REASONS:
        shown = repr(reason) if _REASON_SHAPE.fullmatch(reason) else f"a str of {len(reason)} chars"
        raise ValueError(
            f"reason must be one of {', '.join(sorted(RETIREMENT_REASONS))}; got {shown}"
        )
    return reason


def _multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, when that mode is on (else None)."""
    return os.environ.get(MULTIPROC_ENV) or None


class _SharedCounters:
    """The two counters as prometheus-client multiprocess counters (created on first use).

    Each process writes its own ``counter_<pid>.db`` in ``PROMETHEUS_MULTIPROC_DIR``;
    the file outlives the process, and ``MultiProcessCollector`` sums them all.
    """

    lock = threading.Lock()
    retirements: Any = None
    releases: Any = None

    @classmethod
    def get(cls) -> tuple[Any, Any]:
        path = _multiprocess_dir()
        if path is None:
            raise MonitorStateError(f"{MULTIPROC_ENV} is not set: no multiprocess counters")
        if not os.path.isdir(path):
            raise MonitorStateError(
                f"{MULTIPROC_ENV}={path!r} is not a directory: create it (empty) before the "
                "server starts, as prometheus-client's multiprocess mode requires"
            )
        with cls.lock:
            if cls.retirements is None:
                try:
                    import prometheus_client  # noqa: PLC0415
                    from prometheus_client import values  # noqa: PLC0415
                except ImportError as error:
                    raise ImportError(
                        f"{MULTIPROC_ENV} is set, and counting across processes needs "
                        f"prometheus-client: pip install 'nativeguard[monitor]' ({error})"
                    ) from None
                if not getattr(values.ValueClass, "_multiprocess", False):
                    raise MonitorStateError(
                        f"{MULTIPROC_ENV} is set, but prometheus_client was imported before it "
                        "was, so its metrics are not multiprocess ones: set it in the "
                        "environment the server starts with"
                    )
                cls.retirements = prometheus_client.Counter(
                    "nativeguard_worker_retirements",
                    "Server worker processes retired by nativeguard's policy, by reason",
                    labelnames=("reason",),
                    registry=None,
                )
                cls.releases = prometheus_client.Counter(
                    "nativeguard_releases",
                    "Scopes released (blocks, guarded calls, helpers; Monitor.record_release)",
                    registry=None,
                )
            return cls.retirements, cls.releases


def count_retirement(reason: str, count: int = 1) -> None:
    """Count ``count`` worker retirements for ``reason``, process-wide and across processes.

    ``reason`` is one of :data:`RETIREMENT_REASONS`. Counted in every open
    :class:`Monitor` of this process and, with ``PROMETHEUS_MULTIPROC_DIR``
    set, in the multiprocess counter ``nativeguard_worker_retirements_total``
    that the exporting process reads (the count survives this process's exit).
    :mod:`nativeguard.celery` and :mod:`nativeguard.gunicorn` call it in the
    process that leaves, once, when the policy decides. Raises ``TypeError`` /
    ``ValueError`` for a bad argument, and :class:`MonitorStateError` /
    ``ImportError`` when multiprocess mode is set but cannot work (the message
    says why).
    """
    _check_reason(reason)
    _check_number("count", count, minimum=0, integer=True)
    if _multiprocess_dir() is not None and count:
        retirements, _ = _SharedCounters.get()
        retirements.labels(reason).inc(count)
    for monitor in list(_live_monitors):
        if not monitor.closed:
            monitor._count_retirement(reason, count, shared=False)


class Monitor:
    """Samples this process periodically (or every N requests); logs, keeps, warns, exports.

    Use as a context manager, or :meth:`start` and :meth:`close`. ``interval_s``
    None means no thread: readings come from :meth:`sample` or
    :meth:`request_done` (every ``every_requests`` calls). ``slope_limits``
    maps metric names (see :data:`DEFAULT_SLOPE_LIMITS`; also
    ``"heap_retained_bytes"`` and ``"python_allocated_blocks"``) to growth per
    hour; ``None`` switches slope warnings off. ``prometheus=True`` registers
    a collector in ``registry`` (prometheus-client's default one when None),
    removed again by :meth:`close`.
    """

    def __init__(
        self,
        *,
        interval_s: float | None = 30.0,
        every_requests: int | None = None,
        history: int = 720,
        slope_window: int = 20,
        slope_limits: Mapping[str, float] | None = DEFAULT_SLOPE_LIMITS,
        logger: logging.Logger | None = None,
        log_level: int = logging.INFO,
        prometheus: bool = False,
        registry: Any = None,
    ) -> None:
        if interval_s is not None:
            _check_number("interval_s", interval_s, minimum=0.01)
        if every_requests is not None:
            _check_number("every_requests", every_requests, minimum=1, integer=True)
        _check_number("history", history, minimum=2, integer=True)
        _check_number("slope_window", slope_window, minimum=3, integer=True)
        if slope_window > history:
            raise ValueError(f"slope_window ({slope_window}) cannot exceed history ({history})")
        limits = dict(slope_limits or {})
        for metric, limit in limits.items():
            if metric not in _METRICS:
                raise ValueError(
                    f"slope_limits: no metric {metric!r}; one of {', '.join(sorted(_METRICS))}"
                )
            _check_number(f"slope_limits[{metric!r}]", limit, minimum=0)
        if logger is not None and not isinstance(logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger, got {type(logger).__name__}")
        self.interval_s = interval_s
        self.every_requests = every_requests
        self.slope_window = slope_window
        self.slope_limits: Mapping[str, float] = limits
        self.logger = logger if logger is not None else logging.getLogger(LOGGER_NAME)
        self.log_level = log_level
        self._history: collections.deque[MonitorSample] = collections.deque(maxlen=history)
        self._lock = threading.Lock()
        self._sample_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._started = False
        self._requests = 0
        self._releases = 0
        self._scopes_baseline = scopes_released()
        self._scopes_shared = self._scopes_baseline
        """In multiprocess mode: the process count already added to the shared counter."""
        self._warning: dict[str, bool] = {}
        self._pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()
        self._pool_retired: collections.Counter[str] = collections.Counter()
        self._recorded: collections.Counter[str] = collections.Counter()
        # In multiprocess mode the counters live in prometheus-client's files (one source).
        self._multiprocess = _multiprocess_dir() is not None
        self._collector: Any = None
        self._registry: Any = None
        if prometheus:
            self._register(registry)
        _live_monitors.add(self)

    def _after_fork_in_child(self) -> None:
        """The sampler thread did not survive fork(); a lock it held never would be released."""
        self._lock = threading.Lock()
        self._sample_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._started = False  # the child may start() its own sampler

    # --------------------------------------------------------------- state

    def start(self) -> Monitor:
        """Take a first reading and start the sampler thread (if ``interval_s`` is set)."""
        with self._lock:
            if self._closed:
                raise MonitorStateError("this Monitor is closed; create a new one")
            if self._started:
                raise MonitorStateError("this Monitor is already started")
            self._started = True
            if self.interval_s is not None:
                self._thread = threading.Thread(
                    target=self._run, name="nativeguard-monitor", daemon=True
                )
        self.sample()
        if self._thread is not None:
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (waiting up to ``timeout``) and unregister the collector; idempotent."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._collector is not None and self._registry is not None:
            with contextlib.suppress(KeyError):  # already unregistered by its owner
                self._registry.unregister(self._collector)
            self._collector = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Monitor:
        import asyncio  # noqa: PLC0415

        # The first reading may walk the heap once: off the event loop.
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import asyncio  # noqa: PLC0415

        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._thread else "idle")
        return f"<Monitor {state} samples={len(self._history)} interval_s={self.interval_s}>"

    # ------------------------------------------------------------ readings

    def _run(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a sampler thread must survive one bad reading; logged, not lost
                self.logger.exception("nativeguard monitor: a reading failed")

    def sample(self) -> MonitorSample:
        """Take a reading now: keep it, log it, check the slopes; returns it."""
        if self._closed:
            raise MonitorStateError("this Monitor is closed; create a new one")
        with self._sample_lock:
            reading = read_sample()
            with self._lock:
                self._history.append(reading)
                window = list(self._history)[-self.slope_window :]
            self._poll_pools()
            self._push_releases()
            self._log(reading)
            self._check_slopes(window)
        return reading

    def request_done(self) -> MonitorSample | None:
        """Count one request; every ``every_requests``-th takes a reading (returned), else None."""
        if self.every_requests is None:
            raise MonitorStateError("request_done() needs Monitor(every_requests=N)")
        with self._lock:
            self._requests += 1
            due = self._requests % self.every_requests == 0
        return self.sample() if due else None

    def _push_releases(self) -> None:
        """Multiprocess mode: add this process's scope releases since the last push."""
        if not self._multiprocess:
            return
        now = scopes_released()
        with self._lock:
            grown, self._scopes_shared = now - self._scopes_shared, now
        if grown > 0:
            _SharedCounters.get()[1].inc(grown)

    def record_release(self, count: int = 1) -> None:
        """Add ``count`` releases this process did not see (``nativeguard_releases_total``).

        Scopes released in this process are counted already
        (:func:`nativeguard.scopes_released`); this adds releases done elsewhere,
        e.g. reported by a worker process without a Monitor.
        """
        _check_number("count", count, minimum=0, integer=True)
        if self._multiprocess and count:
            _SharedCounters.get()[1].inc(count)
        with self._lock:
            self._releases += count

    def record_retirement(self, reason: str, count: int = 1) -> None:
        """Count ``count`` retirements for ``reason`` (``nativeguard_worker_retirements_total``).

        ``reason`` is one of :data:`RETIREMENT_REASONS` (``"max_growth"``,
        ``"crashed"``, ...). :func:`count_retirement` counts in every open
        Monitor of the process at once (what the Celery and gunicorn hooks use).
        """
        _check_reason(reason)
        _check_number("count", count, minimum=0, integer=True)
        if self._closed:
            raise MonitorStateError("this Monitor is closed; create a new one")
        self._count_retirement(reason, count, shared=self._multiprocess)

    def _count_retirement(self, reason: str, count: int, *, shared: bool) -> None:
        if shared and count:
            _SharedCounters.get()[0].labels(reason).inc(count)
        with self._lock:
            self._recorded[reason] += count

    def watch_pool(self, pool: WorkerPool) -> None:
        """Count ``pool``'s worker retirements by reason (held weakly)."""
        from .isolate import WorkerPool  # noqa: PLC0415

        if not isinstance(pool, WorkerPool):
            raise TypeError(f"watch_pool() takes a WorkerPool, got {type(pool).__name__}")
        with self._lock:
            self._pools.add(pool)

    def _poll_pools(self) -> None:
        counts: collections.Counter[str] = collections.Counter()
        for pool in list(self._pools):
            stats = pool.statistics()
            counts.update(dict(stats.recycles))
            counts["crashed"] += stats.crashes
            counts["timeout"] += stats.timeouts
        grown: dict[str, int] = {}
        with self._lock:
            # Never decrease (a pool that was collected keeps its count).
            for reason, count in counts.items():
                if count > self._pool_retired[reason]:
                    grown[reason] = count - self._pool_retired[reason]
                    self._pool_retired[reason] = count
        if self._multiprocess:
            retirements = _SharedCounters.get()[0]
            for reason, count in grown.items():
                retirements.labels(reason).inc(count)

    @property
    def history(self) -> tuple[MonitorSample, ...]:
        """The kept readings, oldest first (at most ``history``)."""
        with self._lock:
            return tuple(self._history)

    @property
    def releases(self) -> int:
        """Scopes this process released since the Monitor started, plus :meth:`record_release`."""
        return self._releases + scopes_released() - self._scopes_baseline

    @property
    def retirements(self) -> dict[str, int]:
        """This process's counts by reason: watched pools plus :meth:`record_retirement`."""
        with self._lock:
            total = self._pool_retired + self._recorded  # Counter "+" drops zeros
            return dict(total)

    def slopes(self) -> dict[str, float]:
        """Each metric's growth per hour over the last ``slope_window`` readings."""
        with self._lock:
            window = list(self._history)[-self.slope_window :]
        return self._slopes(window)

    @staticmethod
    def _slopes(window: list[MonitorSample]) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in sorted(_METRICS):
            points = [(s.monotonic, s.value(metric)) for s in window]
            known = [(t, v) for t, v in points if v is not None]
            out[metric] = _slope_per_hour(known)
        return out

    def _check_slopes(self, window: list[MonitorSample]) -> None:
        if len(window) < self.slope_window or not self.slope_limits:
            return
        slopes = self._slopes(window)
        for metric, limit in self.slope_limits.items():
            slope = slopes[metric]
            over = slope > limit
            if over and not self._warning.get(metric):
                message = (
                    f"nativeguard: {metric} grows {_per_hour(metric, slope)} per hour over the "
                    f"last {len(window)} readings (limit {_per_hour(metric, limit)})"
                )
                self.logger.warning(
                    message,
                    extra={
                        "nativeguard": {
                            "event": "growth",
                            "metric": metric,
                            "slope_per_hour": slope,
                            "limit_per_hour": limit,
                            "readings": len(window),
                        }
                    },
                )
                warnings.warn(message, MemoryGrowthWarning, stacklevel=2)
            self._warning[metric] = over

    def _log(self, reading: MonitorSample) -> None:
        if not self.logger.isEnabledFor(self.log_level):
            return
        fields = {
            "event": "sample",
            "rss_bytes": reading.rss_bytes,
            "heap_in_use_bytes": reading.heap_in_use_bytes,
            "heap_retained_bytes": reading.heap_retained_bytes,
            "python_allocated_blocks": reading.python_allocated_blocks,
            "native_resources": {
                integration: {redact_text(t): n for t, n in types.items()}
                for integration, types in reading.native.items()
            },
            "live_objects": {redact_text(t): n for t, n in reading.instances.items()},
            "threads": reading.threads,
            "fds": reading.fds,
            "releases_total": self.releases,
        }
        self.logger.log(
            self.log_level,
            "nativeguard memory: rss=%.1fMB heap_in_use=%s retained=%s native=%d objects=%d "
            "threads=%d fds=%d",
            reading.rss_bytes / _MB,
            _mb(reading.heap_in_use_bytes),
            _mb(reading.heap_retained_bytes),
            reading.native_resources,
            reading.live_objects,
            reading.threads,
            reading.fds,
            extra={"nativeguard": fields},
        )

    # ---------------------------------------------------------- prometheus

    def _register(self, registry: Any) -> None:
        try:
            from prometheus_client import REGISTRY  # noqa: PLC0415
        except ImportError as error:
            raise ImportError(
                "Monitor(prometheus=True) needs prometheus-client: "
                f"pip install 'nativeguard[monitor]' ({error})"
            ) from None
        target = REGISTRY if registry is None else registry
        collector = _Collector(self)
        try:
            target.register(collector)
        except ValueError as error:  # prometheus-client: "Duplicated timeseries ..."
            raise ValueError(
                "Monitor(prometheus=True): this registry already exports nativeguard's "
                "metrics (another Monitor registered them: close it, or pass registry=...): "
                f"{error}"
            ) from None
        self._registry, self._collector = target, collector

    def _latest(self) -> MonitorSample | None:
        with self._lock:
            return self._history[-1] if self._history else None


_live_monitors: weakref.WeakSet[Monitor] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for monitor in list(_live_monitors):
        monitor._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_reset_after_fork)


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / _MB:.1f}MB"


def _per_hour(metric: str, value: float) -> str:
    if metric.endswith("_bytes"):
        return f"{value / _MB:+.1f} MB"
    return f"{value:+.1f}"


_METRIC_NAMES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("nativeguard_rss_bytes", "gauge", ()),
    ("nativeguard_heap_in_use_bytes", "gauge", ()),
    ("nativeguard_heap_retained_bytes", "gauge", ()),
    ("nativeguard_native_resources", "gauge", ("integration", "type")),
    ("nativeguard_live_objects", "gauge", ("type",)),
    ("nativeguard_threads", "gauge", ()),
    ("nativeguard_fds", "gauge", ()),
    ("nativeguard_releases", "counter", ()),
    ("nativeguard_worker_retirements", "counter", ("reason",)),
)


class _Collector:
    """prometheus-client custom collector: the latest reading, built at scrape time."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = weakref.ref(monitor)

    def describe(self) -> list[Any]:
        """The metric names, without values: lets the registry refuse a second Monitor."""
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        monitor = self._monitor()
        shared = monitor is not None and monitor._multiprocess
        families: list[Any] = []
        for name, kind, labels in _METRIC_NAMES:
            if shared and kind == "counter":
                continue  # MultiProcessCollector exports these
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            families.append(family(name, "", labels=labels))
        return families

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        monitor = self._monitor()
        if monitor is None:
            return
        reading = monitor._latest()
        if reading is not None:
            yield GaugeMetricFamily(
                "nativeguard_rss_bytes", "Resident set size of this process", reading.rss_bytes
            )
            if reading.heap_in_use_bytes is not None:
                yield GaugeMetricFamily(
                    "nativeguard_heap_in_use_bytes",
                    "glibc heap allocated and not freed (mallinfo2)",
                    reading.heap_in_use_bytes,
                )
            if reading.heap_retained_bytes is not None:
                yield GaugeMetricFamily(
                    "nativeguard_heap_retained_bytes",
                    "Freed heap glibc keeps for reuse (mallinfo2 fordblks)",
                    reading.heap_retained_bytes,
                )
            native = GaugeMetricFamily(
                "nativeguard_native_resources",
                "Live native resources by integration and type (the SDK core's handle table)",
                labels=("integration", "type"),
            )
            for integration, types in sorted(reading.native.items()):
                for type_name, count in sorted(types.items()):
                    native.add_metric((integration, type_name), count)
            yield native
            live = GaugeMetricFamily(
                "nativeguard_live_objects",
                "Live tracked SDK objects by type",
                labels=("type",),
            )
            for type_name, count in sorted(reading.instances.items()):
                live.add_metric((type_name,), count)
            yield live
            yield GaugeMetricFamily("nativeguard_threads", "OS threads", reading.threads)
            yield GaugeMetricFamily("nativeguard_fds", "Open file descriptors", reading.fds)
        if monitor._multiprocess:
            return  # the counters are multiprocess ones: MultiProcessCollector exports them
        yield CounterMetricFamily(
            "nativeguard_releases",
            "Scopes released (blocks, guarded calls, helpers; Monitor.record_release)",
            monitor.releases,
        )
        retired = CounterMetricFamily(
            "nativeguard_worker_retirements",
            "Worker processes retired (watched WorkerPools, record_retirement), by reason",
            labels=("reason",),
        )
        for reason, count in sorted(monitor.retirements.items()):
            retired.add_metric((reason,), count)
        yield retired
