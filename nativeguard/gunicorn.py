"""nativeguard in gunicorn: web workers retire between requests by native growth, not by count.

gunicorn recycles a worker after ``max_requests`` requests, whether it leaks
or not. :func:`install` puts the :class:`~nativeguard.isolate.WorkerPool`
policy (same options, same meaning, judged per worker after each request, gc
and ``malloc_trim`` first) into a gunicorn config file's hooks::

    # gunicorn.conf.py
    import nativeguard.gunicorn
    nativeguard.gunicorn.install(globals(), max_growth_mb=64, growth_slope_mb_per_task=0.5)

* sync and gthread workers: ``post_request`` runs the policy; a worker to
  retire gets ``worker.alive = False``, gunicorn's own graceful path (the one
  ``max_requests`` uses): it finishes the request, exits, and the arbiter
  starts a replacement;
* uvicorn workers (``uvicorn_worker.UvicornWorker``, or the deprecated
  ``uvicorn.workers.UvicornWorker``): ``post_worker_init`` wraps the ASGI app
  so the policy runs after each HTTP request; a worker to retire sends itself
  SIGTERM, which uvicorn handles as a graceful shutdown (in-flight requests
  finish), and the arbiter replaces it;
* gevent, eventlet and tornado workers are refused at start
  (:class:`UnsupportedWorkerError`, from ``on_starting``).

Each retirement is counted by reason for :mod:`nativeguard.monitor`
(:func:`~nativeguard.monitor.count_retirement`, in the worker when the
policy decides): with ``PROMETHEUS_MULTIPROC_DIR`` set (prometheus-client's
multiprocess mode, the usual one under gunicorn), whichever process exports
with ``MultiProcessCollector`` shows ``nativeguard_worker_retirements_total``
summed over every worker, those that already left included.

Hooks the config already defined (assigned before ``install``) still run,
before ours.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from nativeguard._core._errors import NativeGuardError
from nativeguard._serving import ProcessRecycler, UnitDeltas, check_options, recycle_policy
from nativeguard.isolate._recycle import RecyclePolicy
from nativeguard.monitor import count_retirement

__all__ = ["GunicornGuard", "UnsupportedWorkerError", "install"]

_SUPPORTED = ("sync", "gthread", "uvicorn")
_ASGI_WORKERS = ("uvicorn_worker.UvicornWorker", "uvicorn_worker.UvicornH11Worker")

logger = logging.getLogger("nativeguard.gunicorn")

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class UnsupportedWorkerError(NativeGuardError, ValueError):
    """The gunicorn worker class cannot be recycled between requests by this hook."""


def _worker_kind(worker_class: object) -> str | None:
    """``"sync"``, ``"gthread"``, ``"uvicorn"``, or None for anything else."""
    if isinstance(worker_class, type):
        name = f"{worker_class.__module__}.{worker_class.__qualname__}"
    else:
        name = str(worker_class)
    lowered = name.lower()
    if "uvicorn" in lowered:
        return "uvicorn"
    if lowered in ("sync", "gunicorn.workers.sync.syncworker", "egg:gunicorn#sync"):
        return "sync"
    if lowered in ("gthread", "gunicorn.workers.gthread.threadworker", "egg:gunicorn#gthread"):
        return "gthread"
    return None


class GunicornGuard:
    """The hooks :func:`install` puts into a gunicorn config (one recycler per worker process)."""

    def __init__(self, policy: RecyclePolicy, *, chained: dict[str, Callable[..., Any]]) -> None:
        self.policy = policy
        self._chained = chained
        self._recycler: ProcessRecycler | None = None
        self._lock = threading.Lock()  # gthread workers finish requests on several threads
        self._signalled = False

    # -- master --
    def on_starting(self, server: Any) -> None:
        self._call_chained("on_starting", server)
        worker_class = server.cfg.worker_class_str
        if _worker_kind(worker_class) is None:
            raise UnsupportedWorkerError(
                f"nativeguard.gunicorn supports the sync, gthread and uvicorn workers, but "
                f"worker_class is {worker_class!r}: its greenlets or callbacks share one process "
                "whose memory cannot be judged per request (use sync, gthread or "
                "uvicorn_worker.UvicornWorker)"
            )

    # -- worker --
    def post_worker_init(self, worker: Any) -> None:
        self._call_chained("post_worker_init", worker)
        self._recycler = ProcessRecycler(self.policy)
        self._signalled = False
        if _worker_kind(type(worker)) == "uvicorn":
            worker.wsgi = self.asgi(worker.wsgi, worker)

    def post_request(self, worker: Any, req: Any, environ: Any, resp: Any) -> None:
        self._call_chained("post_request", worker, req, environ, resp)
        deltas = self._after_request(worker)
        if deltas is not None and deltas.retire is not None and worker.alive:
            worker.alive = False  # gunicorn's graceful exit, as for max_requests

    def asgi(self, app: _ASGIApp, worker: Any) -> _ASGIApp:
        """``app`` with the policy run after each HTTP request (uvicorn workers)."""

        async def guarded_app(scope: _Scope, receive: _Receive, send: _Send) -> None:
            try:
                await app(scope, receive, send)
            finally:
                if scope.get("type") == "http":
                    deltas = self._after_request(worker)
                    if deltas is not None and deltas.retire is not None:
                        self._retire_uvicorn()

        return guarded_app

    # -- internals --
    def _after_request(self, worker: Any) -> UnitDeltas | None:
        recycler = self._recycler
        if recycler is None or recycler.pid != os.getpid():
            return None  # not a worker we initialised (or a child it forked)
        with self._lock:
            if recycler.retiring is not None:
                return None  # already leaving: judge nothing more
            deltas = recycler.end(recycler.begin(), None)
        if deltas.retire is not None:
            # Counted before it is logged: once the log says so, a scrape shows it.
            try:
                count_retirement(deltas.retire)
            except Exception:
                logger.exception(
                    "nativeguard: could not count the retirement (%s) for the monitor",
                    deltas.retire,
                )
            logger.info(
                "nativeguard: gunicorn worker %d retires after %d requests (%s): %s",
                recycler.pid,
                recycler.units,
                deltas.retire,
                deltas.detail,
            )
            log = getattr(worker, "log", None)
            if log is not None:
                log.info(
                    "nativeguard: worker %d retires after %d requests (%s): %s",
                    recycler.pid,
                    recycler.units,
                    deltas.retire,
                    deltas.detail,
                )
        return deltas

    def _retire_uvicorn(self) -> None:
        if not self._signalled:
            self._signalled = True
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn: graceful shutdown

    def _call_chained(self, name: str, *args: Any) -> None:
        hook = self._chained.get(name)
        if hook is not None:
            hook(*args)


def install(
    config: MutableMapping[str, Any],
    *,
    max_tasks: int | None = None,
    max_rss_mb: float | None = None,
    max_growth_mb: float | None = None,
    growth_slope_mb_per_task: float | None = None,
) -> GunicornGuard:
    """Set the ``on_starting``, ``post_worker_init`` and ``post_request`` hooks in ``config``.

    ``config`` is a gunicorn config file's namespace (``globals()``). The
    options mean what they mean for ``WorkerPool``, per worker, with
    "task" read as "request": ``max_tasks`` retires after that many requests.
    Raises ``TypeError`` / ``ValueError`` naming a bad option.
    """
    if not isinstance(config, MutableMapping):
        raise TypeError(
            f"config must be the gunicorn config module's namespace (globals()), "
            f"got {type(config).__name__}"
        )
    check_options(
        max_tasks=max_tasks,
        max_rss_mb=max_rss_mb,
        max_growth_mb=max_growth_mb,
        growth_slope_mb_per_task=growth_slope_mb_per_task,
        guard_tasks=False,
    )
    names = ("on_starting", "post_worker_init", "post_request")
    chained: dict[str, Callable[..., Any]] = {}
    for name in names:
        existing = config.get(name)
        if existing is None:
            continue
        if not callable(existing):
            raise TypeError(f"config[{name!r}] must be callable, got {type(existing).__name__}")
        if isinstance(getattr(existing, "__self__", None), GunicornGuard):
            raise RuntimeError("nativeguard.gunicorn.install() was already called for this config")
        chained[name] = existing
    guard = GunicornGuard(
        recycle_policy(
            max_tasks=max_tasks,
            max_rss_mb=max_rss_mb,
            max_growth_mb=max_growth_mb,
            growth_slope_mb_per_task=growth_slope_mb_per_task,
        ),
        chained=chained,
    )
    for name in names:
        config[name] = getattr(guard, name)
    return guard
