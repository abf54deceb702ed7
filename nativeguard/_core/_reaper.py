"""The ``nativeguard-reaper`` thread: where native teardown runs off the caller's path.

Dropping the last reference to an SDK object runs the native teardown
(``_Handle.__del__`` -> the core's ``*_handle_release``) right there, on the
dropping thread: ~57 ms for a recognizer that ran. A Scope in background mode
hands its strong references to this thread instead, and a Scope closed on a
thread that must not release (an SDK callback thread) hands it the whole
release.

Measured with SDK 1.53 (``threading.current_thread()`` inside a ``recognized``
or ``session_stopped`` handler): SDK callbacks run on native threads Python
did not start, seen as ``threading._DummyThread`` named ``Dummy-N``. Dropping a
recognizer's last reference inside its own callback deadlocks that SDK thread
for good in ``_Handle.__del__``: the handle is never released, not even by
``gc.collect()``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from . import _integration

__all__ = [
    "REAPER_THREAD_NAME",
    "ForeignOrigin",
    "Reaper",
    "drop_all",
    "foreign_origin",
    "get_reaper",
    "get_step_runner",
    "park",
]

REAPER_THREAD_NAME = "nativeguard-reaper"
_DEFAULT_MAX_PENDING = 256
_DRAIN_AT_EXIT_S = 2.0
_DEFAULT_MAX_WORKERS = 16
_IDLE_EXIT_S = 10.0

# Payloads whose drop would have been unsafe (an SDK callback that never
# returned): kept alive on purpose. A leak is reported; a deadlocked SDK thread
# is not.
_parked: list[object] = []


def _report(what: str, exc: BaseException) -> None:
    """Hand an exception nobody can catch to ``sys.unraisablehook`` (pytest reports those).

    CPython's own default hook accepts only its ``UnraisableHookArgs`` type, so
    with that hook in place the traceback is printed to stderr directly; a
    failing hook never kills the worker.
    """
    message = f"Exception in {REAPER_THREAD_NAME} while running {what}"
    try:
        if sys.unraisablehook is sys.__unraisablehook__:
            raise TypeError("the default hook takes only UnraisableHookArgs")
        sys.unraisablehook(
            types.SimpleNamespace(
                exc_type=type(exc),
                exc_value=exc,
                exc_traceback=exc.__traceback__,
                err_msg=message,
                object=None,
            )
        )
    except Exception:
        with contextlib.suppress(Exception):
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            sys.stderr.write(f"{message}:\n{text}")


class Reaper:
    """Daemon worker threads that run release jobs, started on first use.

    Jobs start in submission order. A job runs on an idle worker; when every
    worker is busy a new one starts, up to ``max_workers``: one release stuck
    in the native core (a teardown that waits on a stalled service) must not
    hold up everyone else's. Workers beyond the first end after
    ``_IDLE_EXIT_S`` without work.

    The queue is bounded: a producer that releases faster than the native
    core tears down would otherwise pile up dead-but-not-dropped SDK objects,
    the very memory growth nativeguard exists to stop. ``submit`` refuses
    instead of blocking, and the caller does the work itself (back-pressure).

    The lock is re-entrant: ``Scope.close()`` may run in a signal handler
    that interrupted this very thread inside ``submit``.
    """

    def __init__(self, max_pending: int = _DEFAULT_MAX_PENDING, max_workers: int = 1) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers!r}")
        self.max_pending = max_pending
        self.max_workers = max_workers
        self._cond = threading.Condition(threading.RLock())
        self._jobs: collections.deque[tuple[str, Callable[[], None]]] = collections.deque()
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._busy = 0
        self._exit_hook_registered = False
        self._pid = os.getpid()

    def submit(self, what: str, job: Callable[[], None], *, bounded: bool = True) -> bool:
        """Queue ``job`` for a worker thread; False, and nothing queued, if the queue is full.

        ``bounded=False`` queues past the bound: for work that must not run on
        the calling thread at all. The job must drop its payload itself (clear
        its lists): the caller may still hold the job object when it runs.
        """
        with self._cond:
            if bounded and len(self._jobs) >= self.max_pending:
                return False
            self._jobs.append((what, job))
            self._start_locked()
            self._cond.notify()
        return True

    def held_by_caller(self) -> bool:
        """Whether the calling thread holds this reaper's lock: a signal handler that
        interrupted ``submit`` on this very thread. Its workers cannot take a job
        until the handler returns, so waiting for one would only wait out a timeout."""
        return bool(self._cond._is_owned())  # type: ignore[attr-defined]

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._jobs) + self._busy

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        if self.is_current():
            raise RuntimeError(f"{REAPER_THREAD_NAME} cannot wait for itself")
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def is_current(self) -> bool:
        """Whether the calling thread is one of this reaper's workers; no side effect."""
        ident = threading.get_ident()
        return any(thread.ident == ident for thread in list(self._workers))

    @property
    def thread(self) -> threading.Thread | None:
        """The first worker (the one that never ends), or None before first use."""
        workers = list(self._workers)
        return workers[0] if workers else None

    def threads(self) -> list[threading.Thread]:
        """Every worker thread alive now."""
        return [thread for thread in list(self._workers) if thread.is_alive()]

    def _start_locked(self) -> None:
        self._workers = [thread for thread in self._workers if thread.is_alive()]
        waiting = len(self._jobs)
        if self._idle >= waiting or len(self._workers) >= self.max_workers:
            return
        # Started from whichever thread submits, an SDK callback thread
        # included: Thread.start() makes a new Python thread either way.
        first = not self._workers
        thread = threading.Thread(
            target=self._run, args=(first,), name=REAPER_THREAD_NAME, daemon=True
        )
        self._idle += 1  # counted idle before it runs, so a burst starts no extra worker
        self._workers.append(thread)
        thread.start()
        if not self._exit_hook_registered:
            # A daemon thread frozen mid-teardown at interpreter exit can leave
            # the native core half-released; give queued drops a bounded chance.
            atexit.register(self._drain_at_exit)
            self._exit_hook_registered = True

    def _drain_at_exit(self) -> None:
        if self._pid != os.getpid():
            return  # a forked child: the workers, and their jobs, are the parent's
        if self._workers and not self.is_current() and not self.wait_idle(_DRAIN_AT_EXIT_S):
            sys.stderr.write(
                f"nativeguard: {self.pending()} release job(s) were still running on the "
                f"{REAPER_THREAD_NAME} threads when the process exited after waiting "
                f"{_DRAIN_AT_EXIT_S:g} s; the native objects they held were not released\n"
            )

    def _run(self, permanent: bool) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    if not self._cond.wait(None if permanent else _IDLE_EXIT_S) and not (
                        self._jobs or permanent
                    ):
                        self._idle -= 1
                        me = threading.get_ident()
                        self._workers = [t for t in self._workers if t.ident != me]
                        return
                what, job = self._jobs.popleft()
                self._idle -= 1
                self._busy += 1
            try:
                job()
            except BaseException as exc:  # the reaper must survive any job
                _report(what, exc)
            finally:
                # The job (and anything its closure still holds) goes here, not
                # when the next job overwrites the variable.
                del job, what
                with self._cond:
                    self._busy -= 1
                    self._idle += 1
                    self._cond.notify_all()


_reaper = Reaper(max_workers=_DEFAULT_MAX_WORKERS)
_step_runner = Reaper(max_pending=_DEFAULT_MAX_PENDING, max_workers=_DEFAULT_MAX_WORKERS)


def get_reaper() -> Reaper:
    """The process-wide reaper every Scope hands work to.

    No lock: reading a module global is atomic, and a lock here could be held
    by the very code a signal handler interrupted.
    """
    return _reaper


def get_step_runner() -> Reaper:
    """The workers that run single release steps, each waited for with a bound.

    Apart from :func:`get_reaper`: a release job waits for its steps, so they
    must never queue behind release jobs (with one worker that would wait for
    itself).
    """
    return _step_runner


def _reset_after_fork() -> None:
    # The child has no reaper thread, and the old lock may have been held by it
    # at fork time. Jobs queued in the parent are the parent's business: keep
    # them undropped rather than run native teardown of the parent's handles.
    global _reaper, _step_runner  # noqa: PLW0603
    _parked.extend((_reaper, _step_runner))
    _reaper = Reaper(_reaper.max_pending, _reaper.max_workers)
    _step_runner = Reaper(_step_runner.max_pending, _step_runner.max_workers)


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_reset_after_fork)


# -- threads that must not release --------------------------------------------


@dataclass
class ForeignOrigin:
    """A close() that ran on a thread Python did not start.

    ``frame`` is the outermost Python frame of that thread, i.e. the SDK's
    ctypes callback trampoline when ``sdk_callback`` is true. Holding it does
    two things: ``frame.clear()`` raises ``RuntimeError`` while the frame still
    executes (documented), which tells when the callback has returned; and once
    it has returned, the frame object owns the trampoline's locals (``obj``, the
    recognizer whose event fired), so its reference is not dropped on the SDK
    thread but here, by ``clear()``, on the reaper.
    """

    thread_name: str
    frame: FrameType | None
    sdk_callback: bool
    integration: str = ""
    """Name of the integration whose SDK runs the callback ("" if none)."""

    def describe(self) -> str:
        if self.sdk_callback:
            return (
                f"an SDK callback thread of the {self.integration} integration ({self.thread_name})"
            )
        return f"a thread not started by Python's threading module ({self.thread_name})"

    def wait_returned(self, timeout: float) -> bool:
        """Wait until the callback that closed the scope has returned; False on timeout.

        Non-SDK foreign threads are not waited for: nothing says they return.
        """
        frame = self.frame
        if frame is None or not self.sdk_callback:
            self.frame = None
            return True
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                frame.clear()
            except RuntimeError:  # still executing on the SDK thread
                if time.monotonic() >= deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.01)
            else:
                self.frame = None
                return True

    def park(self) -> None:
        """Keep the frame (and what it will own) alive for good: see ``_parked``."""
        if self.frame is not None:
            _parked.append(self.frame)
            self.frame = None


def park(refs: list[Any]) -> None:
    """Keep ``refs`` alive for good instead of dropping them (see ``_parked``); empties ``refs``."""
    _parked.extend(refs)
    refs.clear()


def _python_thread() -> tuple[bool, str]:
    """(started by Python's threading module, name) of the calling thread.

    ``threading.current_thread()`` is avoided on purpose: on a foreign thread it
    registers a ``_DummyThread`` in ``threading.enumerate()`` for good (until a
    new thread reuses the ident), which is a side effect a library should not
    leave on the SDK's threads.
    """
    ident = threading.get_ident()
    # threading's own table of running threads (a dict lookup, where enumerate()
    # copies it under a lock: ~5 us on every close()); the scan is the fallback.
    active = getattr(threading, "_active", None)
    known = active.get(ident) if isinstance(active, dict) else None
    if isinstance(known, threading.Thread):
        return not isinstance(known, threading._DummyThread), known.name
    for thread in threading.enumerate():
        if thread.ident == ident:
            return not isinstance(thread, threading._DummyThread), thread.name
    return False, f"native thread {threading.get_native_id()}"


def foreign_origin() -> ForeignOrigin | None:
    """Describe the calling thread if Python did not start it (SDK callbacks); else None."""
    started_by_python, name = _python_thread()
    if started_by_python:
        return None
    frame: FrameType | None = sys._getframe(1)
    outermost = None
    while frame is not None:
        outermost, frame = frame, frame.f_back
    owner = _integration.callback_integration(outermost)
    return ForeignOrigin(name, outermost, owner is not None, owner.name if owner else "")


def drop_all(refs: list[Any]) -> int:
    """Drop every reference in ``refs``, last first, on the calling thread; how many.

    Each ``del`` may be the last reference, so the native teardown runs inside
    this loop, on this thread.
    """
    dropped = 0
    while refs:
        obj = refs.pop()
        del obj
        dropped += 1
    return dropped
