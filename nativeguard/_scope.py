"""The engine under every guard: a Scope owns objects and releases them on exit."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import os
import sys
import threading
import time
import traceback
import tracemalloc
import warnings
import weakref
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Literal, TypeVar

from . import _malloc
from ._adapters import adapter_for, event_signals
from ._errors import (
    AsyncReleaseRequired,
    ClosedResourceError,
    ReleaseError,
    ReleaseTimeout,
    add_note,
)
from ._reaper import (
    REAPER_THREAD_NAME,
    ForeignOrigin,
    drop_all,
    foreign_origin,
    get_reaper,
    park,
)

__all__ = [
    "ReleaseMode",
    "Scope",
    "ScopeStatistics",
    "creation_tracebacks_enabled",
    "set_creation_tracebacks",
]

T = TypeVar("T")
ReleaseMode = Literal["inline", "background"]

_RELEASE_MODES: tuple[ReleaseMode, ...] = ("inline", "background")
_DEFAULT_STEP_TIMEOUT_S = 5.0
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# Scope life cycle. adopt() is accepted until the drop phase begins.
_OPEN, _RELEASING, _DROPPING, _RELEASED = "open", "releasing", "dropping", "released"


@dataclass(frozen=True, slots=True)
class ScopeStatistics:
    """What a Scope did on release: the final state, once ``released`` is true."""

    objects_tracked: int
    signals_disconnected: int
    callbacks_dropped: int
    release_steps_run: int
    release_errors: int
    collections: tuple[int, ...]
    """Generations collected, in order; empty when every object died by refcount."""
    collection_seconds: float
    survivors: int
    """Tracked objects still alive after release: someone else holds them."""
    release_seconds: float
    """Time close()/aclose() kept its caller; the reaper thread's share is ``reaper_seconds``."""
    release_mode: ReleaseMode = "inline"
    deferred: bool = False
    """close() ran on a thread that must not release (SDK callback): all of it ran on the reaper."""
    objects_adopted: int = 0
    reaper_dropped: int = 0
    """Strong references dropped on the reaper thread (each may or may not have been the last)."""
    reaper_queue_full: bool = False
    """Background mode found the reaper's queue full and dropped on the closing thread instead."""
    reaper_seconds: float = 0.0
    trim_attempted: bool = False
    bytes_trimmed: int = 0
    """RSS that ``malloc_trim`` gave back to the OS after the release."""
    trim_available: bool = False
    """Whether this process's allocator can be trimmed at all (glibc)."""


@dataclass
class _Tracked:
    ref: weakref.ReferenceType[Any]
    type_name: str
    warning: weakref.finalize[..., Any]


@dataclass
class _Release:
    """One release in progress, handed from the closing thread to the reaper when needed."""

    tracked: list[_Tracked]
    callbacks: list[tuple[weakref.ReferenceType[Any], Callable[..., Any]]]
    finalizers: list[Callable[[], None]]
    hold_tracked: bool
    """Keep tracked objects in ``keep`` instead of dropping them inline."""
    keep: list[Any] = field(default_factory=list)
    """Strong references dropped in the drop phase, on the reaper unless inline."""
    errors: list[Exception] = field(default_factory=list)
    raised_by_close: int = 0
    steps_run: int = 0
    signals_disconnected: int = 0
    callbacks_dropped: int = 0
    adopted: int = 0
    deferred: bool = False
    queue_full: bool = False
    reaper_dropped: int = 0
    caller_seconds: float = 0.0


class Scope:
    """Owns registered objects by weak reference and releases them on exit.

    On close, in reverse registration order: run the object's adapter steps
    (stop recognition, close, shutdown) with a bounded wait each, disconnect
    every SDK event signal it holds and drop the callbacks connected through
    the scope; run the finalizers; drop the adopted references. Then collect
    garbage only if a tracked object is still alive, and optionally trim the
    heap. ``close()`` is idempotent and always runs every step; failures are
    raised afterwards as one :class:`ReleaseError`.

    ``release="inline"`` (default): everything happens in close(), so native
    handles are back to baseline when the with-block ends.
    ``release="background"``: the steps still run in close() (no callback fires
    after it), but the scope's strong references go to the ``nativeguard-reaper``
    thread, where the last drop runs the native teardown (~57 ms for a recognizer
    that ran); :meth:`wait_released` waits for it. ``statistics()`` raises until
    then, because survivors can only be judged once the reaper has dropped.

    Whatever the mode, a close() on a thread Python did not start (an SDK
    callback) releases nothing there: it warns and defers everything to the
    reaper. Releasing on the SDK's own thread deadlocks it.
    """

    def __init__(
        self,
        *,
        step_timeout_s: float = _DEFAULT_STEP_TIMEOUT_S,
        release: ReleaseMode = "inline",
        trim_threshold_bytes: int | None = None,
    ) -> None:
        if step_timeout_s <= 0:
            raise ValueError(f"step_timeout_s must be > 0, got {step_timeout_s!r}")
        if release not in _RELEASE_MODES:
            raise ValueError(f"release must be 'inline' or 'background', got {release!r}")
        if trim_threshold_bytes is not None and (
            not isinstance(trim_threshold_bytes, int) or trim_threshold_bytes < 0
        ):
            raise ValueError(
                f"trim_threshold_bytes must be None or an int >= 0, got {trim_threshold_bytes!r}"
            )
        self._step_timeout_s = step_timeout_s
        self._release_mode: ReleaseMode = release
        self._trim_threshold_bytes = trim_threshold_bytes
        self._lock = threading.Lock()
        self._tracked: list[_Tracked] = []
        self._callbacks: list[tuple[weakref.ReferenceType[Any], Callable[..., Any]]] = []
        self._finalizers: list[Callable[[], None]] = []
        self._adopted: list[Any] = []
        self._state = _OPEN
        self._closed_at: str | None = None
        self._entered = False
        self._statistics: ScopeStatistics | None = None
        self._released = threading.Event()
        self._late_errors: list[Exception] = []
        self._deferred_from: int | None = None

    @property
    def release_mode(self) -> ReleaseMode:
        return self._release_mode

    # -- registration ----------------------------------------------------

    def register(self, obj: T) -> T:
        """Track ``obj`` (weakly) for release; returns it unchanged.

        If ``obj`` dies before the scope releases it, a ``ResourceWarning``
        says where it was registered (created, with tracemalloc on).
        """
        self._check_open("register an object in")
        try:
            ref = weakref.ref(obj)
        except TypeError:
            raise TypeError(
                f"Scope tracks objects by weak reference; {type(obj).__name__} does not "
                "support weak references"
            ) from None
        with self._lock:
            if any(t.ref() is obj for t in self._tracked):
                return obj
        type_name = type(obj).__qualname__
        warning = weakref.finalize(obj, _warn_collected, type_name, _Origin.of(obj))
        warning.atexit = False  # alive at exit is not "collected before release"
        with self._lock:
            closed = self._closed_at is not None
            duplicate = any(t.ref() is obj for t in self._tracked)  # a racing register()
            if not (closed or duplicate):
                self._tracked.append(_Tracked(ref, type_name, warning))
        if closed or duplicate:
            warning.detach()
            self._check_open("register an object in")  # raises if closed meanwhile
        return obj

    def connect(self, signal: Any, callback: Callable[..., Any]) -> None:
        """Connect ``callback`` to an SDK event ``signal`` and remember it for release."""
        self._check_open("connect a callback through")
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        connect = getattr(signal, "connect", None)
        if not callable(connect):
            raise TypeError(f"{type(signal).__name__} is not an event signal (no connect())")
        connect(callback)
        with self._lock:
            self._callbacks.append((weakref.ref(signal), callback))

    def add_finalizer(self, finalizer: Callable[[], None]) -> None:
        """Run ``finalizer()`` on close, after the release steps, before the GC check.

        Proxies use it to detach kept events and cut their reference to the
        target (handing it to :meth:`adopt`), so the survivor count reflects
        only references held elsewhere.
        """
        self._check_open("add a finalizer to")
        if not callable(finalizer):
            raise TypeError(f"finalizer must be callable, got {type(finalizer).__name__}")
        with self._lock:
            self._finalizers.append(finalizer)

    def adopt(self, obj: object) -> None:
        """Take over a strong reference to ``obj``; the scope drops it at release.

        The caller gives its reference up (``del`` it): the scope's drop should
        be the last, so the native teardown happens where the release mode says,
        on the closing thread before the survivor check (inline) or on the
        reaper (background). Allowed while open and during release (finalizers
        adopt the targets they cut). ``adopt`` does not register: register too
        if ``obj`` needs release steps.
        """
        with self._lock:
            if self._state in (_OPEN, _RELEASING):
                self._adopted.append(obj)
                return
        raise ClosedResourceError(
            f"cannot adopt an object into a Scope that already dropped its references "
            f"(closed at {self._closed_at})"
        )

    @property
    def closed(self) -> bool:
        return self._closed_at is not None

    @property
    def closed_at(self) -> str | None:
        """``file:line`` outside nativeguard where the scope was closed, or None."""
        return self._closed_at

    @property
    def released(self) -> bool:
        """Whether the release has completed, reaper part included; statistics() is final."""
        return self._released.is_set()

    def _check_open(self, action: str) -> None:
        if self._closed_at is not None:
            raise ClosedResourceError(
                f"cannot {action} a closed Scope (closed at {self._closed_at})"
            )

    # -- release ---------------------------------------------------------

    def close(self) -> None:
        """Release everything; idempotent. Raises ReleaseError if a step failed.

        Steps that return awaitables (async credentials) cannot be awaited
        here: each is recorded as an error asking for ``aclose()``.
        """
        start = time.perf_counter()
        release = self._begin()
        if release is None:
            return
        origin = foreign_origin()
        if origin is not None:
            self._defer(release, origin, start)
            return
        _drive_sync(self._release_steps(release))
        self._hand_off(release, start)
        self._raise_errors(release)

    async def aclose(self) -> None:
        """Release everything like close(), awaiting steps that return awaitables.

        Synchronous steps and, in inline mode, the native teardown still run on
        the event loop's thread: use ``release="background"`` to keep the
        teardown off it. If cancelled while awaiting a step, the remaining
        steps still run (unawaited ones recorded as errors) before the
        cancellation propagates.
        """
        start = time.perf_counter()
        release = self._begin()
        if release is None:
            return
        origin = foreign_origin()
        if origin is not None:
            self._defer(release, origin, start)
            return
        interrupted = await _drive_async(self._release_steps(release), self._step_timeout_s)
        self._hand_off(release, start)
        if interrupted is not None:
            raise interrupted
        self._raise_errors(release)

    def wait_released(self, timeout: float) -> bool:
        """Wait until every reference the scope handed off was dropped; False on timeout.

        True at once after an inline close. Raises :class:`ReleaseError` for
        failures found after close() returned (a deferred release runs its
        steps on the reaper), every time it is called, like ``Future.result()``.
        """
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout!r}")
        if not self._released.is_set():
            if get_reaper().is_current():
                raise RuntimeError(
                    f"wait_released() on the {REAPER_THREAD_NAME} thread would wait for itself"
                )
            if self._deferred_from == threading.get_ident():
                raise RuntimeError(
                    "wait_released() on the SDK callback thread that closed the scope would "
                    "wait for itself: the deferred release starts once this callback returns"
                )
        if not self._released.wait(timeout):
            return False
        if self._late_errors:
            raise ReleaseError(
                f"{len(self._late_errors)} release step(s) failed on the {REAPER_THREAD_NAME} "
                "thread; every other step still ran",
                self._late_errors,
            )
        return True

    def statistics(self) -> ScopeStatistics:
        """What the release did, once it has completed.

        Raises ``RuntimeError`` before close() and, in background or deferred
        release, until the reaper has finished (see :attr:`released` and
        :meth:`wait_released`): survivors cannot be judged before the scope's
        own references are gone, and a provisional figure would be misread.
        """
        with self._lock:
            statistics, closed = self._statistics, self._closed_at is not None
        if statistics is not None:
            return statistics
        if not closed:
            raise RuntimeError("Scope.statistics() is available once the scope is closed")
        raise RuntimeError(
            "Scope.statistics() is available once the scope is closed and released; the "
            f"release is still running on the {REAPER_THREAD_NAME} thread: call "
            "wait_released(timeout) first"
        )

    def _begin(self) -> _Release | None:
        """Mark the scope closed and take everything it holds; None if already closed."""
        with self._lock:
            if self._closed_at is not None:
                return None
            self._closed_at = _caller_location()
            self._state = _RELEASING
            tracked, self._tracked = self._tracked, []
            callbacks, self._callbacks = self._callbacks, []
            finalizers, self._finalizers = self._finalizers, []
        for entry in tracked:
            # From here on the scope is releasing them: dying now is no leak.
            entry.warning.detach()
        return _Release(
            tracked, callbacks, finalizers, hold_tracked=self._release_mode == "background"
        )

    def _release_steps(
        self, release: _Release
    ) -> Generator[Awaitable[Any], Exception | None, None]:
        """Run steps, disconnect signals and callbacks, run finalizers.

        A generator so that close() and aclose() share it: it yields each
        awaitable a step returns, and the driver sends back the exception it
        ended with (or None).
        """
        errors = release.errors
        for entry in reversed(release.tracked):
            obj = entry.ref()
            if obj is None:
                continue
            adapter = adapter_for(obj)
            steps = adapter.steps if adapter is not None else ()
            context = (
                f"while releasing {entry.type_name} "
                f"({adapter.name if adapter is not None else 'no adapter'})"
            )
            for step in steps:
                release.steps_run += 1
                try:
                    outcome = step(obj, self._step_timeout_s)
                except Exception as exc:
                    add_note(exc, context)
                    errors.append(exc)
                    continue
                if inspect.isawaitable(outcome):
                    error = yield outcome
                    del outcome
                    if error is not None:
                        add_note(error, context)
                        errors.append(error)
            for signal in event_signals(obj):
                if signal.is_connected():
                    release.signals_disconnected += 1
                try:
                    signal.disconnect_all()
                except Exception as exc:
                    add_note(exc, f"while disconnecting a signal of {entry.type_name}")
                    errors.append(exc)
            if release.hold_tracked:
                release.keep.append(obj)
            # Inline: our strong reference must go before we judge who survives,
            # and if it is the last one the native teardown runs right here.
            del obj
        for signal_ref, _callback in release.callbacks:
            signal = signal_ref()
            if signal is not None and signal.is_connected():
                try:
                    signal.disconnect_all()
                except Exception as exc:
                    errors.append(exc)
            del signal
        release.callbacks_dropped = len(release.callbacks)
        release.callbacks.clear()  # drops closures whose cells may reach SDK objects
        for finalizer in reversed(release.finalizers):
            try:
                finalizer()
            except Exception as exc:
                errors.append(exc)
        release.finalizers.clear()

    def _take_adopted(self, release: _Release) -> list[Any]:
        with self._lock:
            adopted, self._adopted = self._adopted, []
            self._state = _DROPPING
        release.adopted = len(adopted)
        return adopted

    def _hand_off(self, release: _Release, start: float) -> None:
        """After the steps, on the closing thread: drop here (inline) or on the reaper."""
        adopted = self._take_adopted(release)
        if self._release_mode == "inline":
            drop_all(adopted)
            self._finish(release, start, reaper_start=None)
            return
        release.keep.extend(adopted)
        adopted.clear()
        # Set before the job exists: the reaper may finish before we return.
        release.raised_by_close = len(release.errors)
        release.caller_seconds = time.perf_counter() - start
        if get_reaper().submit(
            "scope release (background)", functools.partial(self._reap, release)
        ):
            # From here on the closing thread holds no strong reference: the
            # reaper's drop_all() pops them one by one.
            return
        # Queue full: the reaper is behind, so this caller pays the teardown
        # (back-pressure) rather than piling up dead SDK objects or blocking.
        release.queue_full = True
        drop_all(release.keep)
        self._finish(release, start, reaper_start=None)

    def _reap(self, release: _Release) -> None:
        """On the reaper: drop what the closing thread handed over, then judge."""
        reaper_start = time.perf_counter()
        release.reaper_dropped = drop_all(release.keep)
        self._finish(release, None, reaper_start)

    def _defer(self, release: _Release, origin: ForeignOrigin, start: float) -> None:
        """close() on a thread that must not release: hand the whole release to the reaper."""
        release.deferred = True
        # Strong references now, on this thread: from here on the scope's are
        # guaranteed not to be the last ones the SDK thread drops when the
        # callback returns; the reaper drops them after it has returned.
        release.keep.extend(obj for entry in release.tracked if (obj := entry.ref()) is not None)
        release.hold_tracked = False  # already in keep: the steps must not add them twice
        self._deferred_from = threading.get_ident()
        warnings.warn(
            f"nativeguard Scope closed on {origin.describe()}: releasing there can crash or "
            "deadlock the native core, so the whole release was deferred to the "
            f"{REAPER_THREAD_NAME} thread; wait_released() (from another thread) waits for it",
            RuntimeWarning,
            stacklevel=_stacklevel_outside_package(),
        )
        release.caller_seconds = time.perf_counter() - start
        # Never bounded: running it here instead is the one thing not allowed.
        get_reaper().submit(
            "deferred scope release",
            functools.partial(self._release_deferred, release, origin),
            bounded=False,
        )

    def _release_deferred(self, release: _Release, origin: ForeignOrigin) -> None:
        reaper_start = time.perf_counter()
        returned = origin.wait_returned(self._step_timeout_s)
        if not returned:
            release.errors.append(
                ReleaseTimeout(
                    f"the code on {origin.describe()} that closed the scope did not return "
                    f"within {self._step_timeout_s:g} s; its objects are kept alive (leaked) "
                    "rather than risk the SDK thread dropping the last reference"
                )
            )
        _drive_sync(self._release_steps(release))
        adopted = self._take_adopted(release)
        release.keep.extend(adopted)
        adopted.clear()
        if returned:
            release.reaper_dropped = drop_all(release.keep)
        else:
            origin.park()
            park(release.keep)
        self._finish(release, None, reaper_start)

    def _finish(self, release: _Release, start: float | None, reaper_start: float | None) -> None:
        """Collect if needed, trim, publish the statistics and wake wait_released()."""
        generations, gc_seconds, survivors = _collect_until_dead([t.ref for t in release.tracked])
        attempted, trimmed, trim_available = self._trim()
        now = time.perf_counter()
        if start is not None:  # everything ran on the caller's thread
            release.caller_seconds = now - start
        statistics = ScopeStatistics(
            objects_tracked=len(release.tracked),
            signals_disconnected=release.signals_disconnected,
            callbacks_dropped=release.callbacks_dropped,
            release_steps_run=release.steps_run,
            release_errors=len(release.errors),
            collections=generations,
            collection_seconds=gc_seconds,
            survivors=survivors,
            release_seconds=release.caller_seconds,
            release_mode=self._release_mode,
            deferred=release.deferred,
            objects_adopted=release.adopted,
            reaper_dropped=release.reaper_dropped,
            reaper_queue_full=release.queue_full,
            reaper_seconds=now - reaper_start if reaper_start is not None else 0.0,
            trim_attempted=attempted,
            bytes_trimmed=trimmed,
            trim_available=trim_available,
        )
        with self._lock:
            self._statistics = statistics
            self._state = _RELEASED
            if reaper_start is not None:
                # Only what close() could not raise itself: background close()
                # raised the step errors already, a deferred one raised nothing.
                self._late_errors = release.errors[release.raised_by_close :]
        self._released.set()

    def _trim(self) -> tuple[bool, int, bool]:
        """(attempted, RSS bytes released, available) for the optional heap trim."""
        if self._trim_threshold_bytes is None:
            return False, 0, _trim_available()
        result = _malloc.trim(self._trim_threshold_bytes)
        return result.attempted, result.rss_released_bytes, result.available

    def _raise_errors(self, release: _Release) -> None:
        """Raise what close() itself found (inline: everything; background: the steps)."""
        errors = (
            release.errors
            if self._release_mode == "inline"
            else release.errors[: release.raised_by_close]
        )
        if errors:
            raise ReleaseError(
                f"{len(errors)} release step(s) failed; every other step still ran", errors
            )

    # -- context managers ------------------------------------------------

    def __enter__(self) -> Scope:
        self._check_open("enter")
        if self._entered:
            raise RuntimeError("a Scope can be entered once; create a new Scope")
        self._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except ReleaseError as error:
            if exc is None:
                raise
            add_note(exc, f"nativeguard: {error.message}: {error.exceptions!r}")

    async def __aenter__(self) -> Scope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        except ReleaseError as error:
            if exc is None:
                raise
            add_note(exc, f"nativeguard: {error.message}: {error.exceptions!r}")

    def __repr__(self) -> str:
        state = f"closed at {self._closed_at}" if self._closed_at else "open"
        return (
            f"<Scope {state} release={self._release_mode} tracking={len(self._tracked)} "
            f"adopted={len(self._adopted)}>"
        )


# -- drivers for the release steps ---------------------------------------------


def _drive_sync(
    steps: Generator[Awaitable[Any], Exception | None, None], first: Exception | None = None
) -> None:
    """Run the steps to the end; an awaitable is refused (closed if a coroutine), not awaited."""
    reply = first
    while True:
        try:
            awaitable = steps.send(reply)
        except StopIteration:
            return
        reply = _refuse(awaitable)
        del awaitable


def _refuse(awaitable: Awaitable[Any]) -> Exception:
    what = type(awaitable).__qualname__
    if inspect.iscoroutine(awaitable):
        what = f"coroutine {awaitable.__qualname__}()"
        awaitable.close()  # never started: closing it runs nothing and warns nothing
    return AsyncReleaseRequired(
        f"the release step returned an awaitable ({what}) that a synchronous close() cannot "
        "await; the object was not released: use `async with Scope()` or `await scope.aclose()`"
    )


async def _drive_async(
    steps: Generator[Awaitable[Any], Exception | None, None], timeout_s: float
) -> BaseException | None:
    """Run the steps, awaiting each awaitable with a bounded wait.

    Returns the cancellation (or other BaseException) that interrupted an
    await, for the caller to re-raise once the release is complete.
    """
    reply: Exception | None = None
    while True:
        try:
            awaitable = steps.send(reply)
        except StopIteration:
            return None
        reply = None
        try:
            await asyncio.wait_for(_awaited(awaitable), timeout_s)
        except asyncio.TimeoutError:
            reply = ReleaseTimeout(
                f"awaiting the release step did not finish within {timeout_s:g} s"
            )
        except Exception as exc:
            reply = exc
        except BaseException as exc:  # cancellation: finish the release, then re-raise
            _drive_sync(
                steps,
                RuntimeError(
                    f"awaiting the release step was interrupted by {type(exc).__name__}; "
                    "the remaining steps ran without awaiting"
                ),
            )
            return exc
        finally:
            del awaitable


async def _awaited(awaitable: Awaitable[Any]) -> None:
    await awaitable


def _collect_until_dead(
    refs: list[weakref.ReferenceType[Any]],
) -> tuple[tuple[int, ...], float, int]:
    """Collect only as much as needed for the tracked objects to die.

    A full collection costs hundreds of ms on a large heap; when refcounting
    already freed everything (the common case once signals are disconnected)
    this does no collection at all.
    """
    generations: list[int] = []
    start = time.perf_counter()
    for generation in (None, 0, 1, 2):
        if generation is not None:
            _collect(generation)
            generations.append(generation)
        alive = sum(1 for ref in refs if ref() is not None)
        if alive == 0:
            break
    return tuple(generations), time.perf_counter() - start, alive


_SKIPPED_COLLECTION_RETRIES = 20
_SKIPPED_COLLECTION_WAIT_S = 0.005


def _collect(generation: int) -> None:
    """``gc.collect(generation)`` that really ran.

    While another thread is collecting (here often an SDK callback thread,
    where allocations trigger automatic collections) gc.collect() returns 0 at
    once without collecting; judging survivors then would report false leaks.
    The generation's collection counter tells whether ours ran.
    """
    for _ in range(_SKIPPED_COLLECTION_RETRIES):
        before = gc.get_stats()[generation]["collections"]
        gc.collect(generation)
        if gc.get_stats()[generation]["collections"] != before:
            return
        time.sleep(_SKIPPED_COLLECTION_WAIT_S)


def _trim_available() -> bool:
    return _malloc._load().malloc_trim is not None


# -- where things happened -----------------------------------------------------


@functools.lru_cache(maxsize=512)
def _in_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


def _outside_frame() -> FrameType | None:
    """The innermost frame of the caller's stack that is not nativeguard's own code."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and _in_package(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def _caller_location() -> str:
    """``file:line`` of the first frame outside nativeguard, for error messages."""
    frame = _outside_frame()
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "<unknown>"


def _stacklevel_outside_package() -> int:
    """``stacklevel`` that makes a warning issued by our caller point at user code."""
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and _in_package(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


# -- ResourceWarning for objects that die before their scope released them ---

_creation_tracebacks = False


def set_creation_tracebacks(enabled: bool) -> None:
    """Record the full stack at every ``register()``, for ResourceWarnings.

    Off by default: registering then only notes ``file:line`` (a frame walk).
    While ``tracemalloc`` traces, stacks are recorded whatever this switch
    says, and the warning shows where the object was allocated when
    tracemalloc knows it.
    """
    global _creation_tracebacks  # noqa: PLW0603
    _creation_tracebacks = bool(enabled)


def creation_tracebacks_enabled() -> bool:
    return _creation_tracebacks


@dataclass(frozen=True)
class _Origin:
    """Where a tracked object came from: holds no reference to it."""

    verb: str
    filename: str
    lineno: int
    stack: tracemalloc.Traceback | traceback.StackSummary | None

    @classmethod
    def of(cls, obj: object) -> _Origin:
        tracing = tracemalloc.is_tracing()
        if tracing:
            # None on 3.11 for objects with a managed __dict__ (most classes):
            # a CPython bug. The registering stack is recorded instead.
            allocated = tracemalloc.get_object_traceback(obj)
            if allocated is not None and len(allocated):
                # Allocation happens before __init__, in the caller's frame.
                newest = allocated[-1]
                return cls("created", newest.filename, newest.lineno, allocated)
        frame = _outside_frame()
        if frame is None:
            return cls("registered", "<unknown>", 0, None)
        stack = None
        if tracing or _creation_tracebacks:
            # Lines are read lazily, only if the warning is ever formatted.
            stack = traceback.StackSummary.extract(traceback.walk_stack(frame), lookup_lines=False)
            stack.reverse()
        return cls("registered", frame.f_code.co_filename, frame.f_lineno, stack)


def _warn_collected(type_name: str, origin: _Origin) -> None:
    """weakref.finalize callback: may run on any thread, SDK threads included; only warns."""
    message = (
        f"{type_name} {origin.verb} at {origin.filename}:{origin.lineno} was "
        "garbage-collected before its nativeguard scope released it"
    )
    if isinstance(origin.stack, tracemalloc.Traceback):
        message += "\nObject allocated at (most recent call last):\n" + "\n".join(
            origin.stack.format()
        )
    elif origin.stack is not None:
        message += "\nRegistered at (most recent call last):\n" + "".join(origin.stack.format())
    else:
        message += (
            " (start tracemalloc or call nativeguard's set_creation_tracebacks(True) "
            "for a traceback)"
        )
    # Attributed to the registration site, so filters and pytest's summary point there.
    warnings.warn_explicit(message, ResourceWarning, origin.filename, origin.lineno)
