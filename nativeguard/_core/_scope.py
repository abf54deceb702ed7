"""The engine under every guard: a Scope owns objects and releases them on exit."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import gc
import inspect
import math
import os
import sys
import threading
import time
import traceback
import tracemalloc
import warnings
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Literal, NamedTuple, TypeVar

from . import _malloc
from ._adapters import Adapter, ReleaseStep, adapter_for, is_quick
from ._errors import (
    AsyncReleaseRequired,
    ClosedResourceError,
    ReleaseError,
    ReleaseTimeout,
    aclosed_with,
    add_note,
    closed_with,
    conclude_exit,
    detach_traceback,
    release_note,
)
from ._integration import callbacks_of, integrations
from ._latch import Latch
from ._reaper import (
    REAPER_THREAD_NAME,
    ForeignOrigin,
    drop_all,
    foreign_origin,
    get_reaper,
    get_step_runner,
    park,
)
from ._redact import redact_text

__all__ = [
    "ReleaseMode",
    "Scope",
    "ScopeStatistics",
    "configure",
    "creation_tracebacks_enabled",
    "scopes_released",
    "set_creation_tracebacks",
]

_released_lock = threading.Lock()
_released_total = 0


def _count_release() -> None:
    global _released_total  # noqa: PLW0603 - a process-wide counter, under its lock
    with _released_lock:
        _released_total += 1


def scopes_released() -> int:
    """How many scopes finished their release in this process (every managed block,
    ``@guarded`` call and one-call helper), whatever the outcome; never decreases.

    What ``nativeguard_releases_total`` exports. A forked child starts from its
    parent's count.
    """
    return _released_total


T = TypeVar("T")
ReleaseMode = Literal["inline", "background"]

_DEFAULT_STEP_TIMEOUT_S = 5.0
_DEFAULT_EXIT_BUDGET_S = 1.0
_MAX_WAIT_S = 86_400.0
"""Longest bound accepted for any wait: a day (threading's own limit is ~49 days)."""
_PENDING_STEP_WAIT_S = 30.0
"""How long a release job waits for a step that overran its bound before judging."""
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
"""The nativeguard package (this module is in its _core/): frames in it are ours."""

# Scope life cycle. adopt() is accepted until the drop phase begins.
_OPEN, _RELEASING, _DROPPING, _RELEASED = "open", "releasing", "dropping", "released"


@dataclass(frozen=True, slots=True)
class ScopeStatistics:
    """What a Scope did on release: the final state, once ``released`` is true."""

    objects_tracked: int
    signals_disconnected: int
    callbacks_dropped: int
    release_steps_run: int
    """Release steps started (a step that failed or timed out counts too)."""
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
    """The reaper's queue was full, so the closing thread ran the release itself."""
    reaper_seconds: float = 0.0
    trim_attempted: bool = False
    bytes_trimmed: int = 0
    """RSS that ``malloc_trim`` gave back to the OS after the release."""
    trim_available: bool = False
    """Whether this process's allocator can be trimmed at all (glibc)."""
    exit_budget_exceeded: bool = False
    """close() returned at its exit budget; the rest of the release finished on the reaper."""
    steps_timed_out: int = 0
    """Steps that overran ``step_timeout_s``; the reaper waited for each before judging."""


class _TrackedRef(weakref.ref):  # type: ignore[type-arg]
    """A tracked object's weak reference, and the scope's entry for it; warns if the
    object dies while armed.

    One object instead of a ``weakref.ref`` plus a ``weakref.finalize``
    (whose registry, counter and info record cost ~10 us per registration
    on Python 3.11.7). Armed refs are kept in :data:`_armed`, so the warning
    still comes when the Scope itself was dropped without being closed.
    """

    __slots__ = ("origin", "type_name")
    origin: _Origin
    type_name: str

    @classmethod
    def track(cls, obj: Any, type_name: str, origin: _Origin) -> _TrackedRef:
        """The entry for ``obj`` (``TypeError`` if it has no weak references).

        Made by weakref's own C constructor, then labelled: a Python
        ``__new__``/``__init__`` pair would add two frames to every registration.
        """
        entry = cls(obj, _died)
        entry.type_name = type_name
        entry.origin = origin
        return entry


_armed: dict[int, _TrackedRef] = {}
"""Tracked refs whose object has not been released yet: by id (weakrefs hash their object)."""


def _arm(ref: _TrackedRef) -> None:
    _armed[id(ref)] = ref


def _disarm(ref: _TrackedRef) -> None:
    """From here on the object's death is no leak (its scope releases it, or it was refused)."""
    _armed.pop(id(ref), None)


def _died(ref: _TrackedRef) -> None:
    """Weak-reference callback: any thread, SDK threads included; only warns."""
    if _armed.pop(id(ref), None) is not None:
        _warn_collected(ref.type_name, ref.origin)


# Objects freed while the interpreter shuts down are not "collected before release".
atexit.register(_armed.clear)


class _Judgement(NamedTuple):
    """What the end of a release found; :meth:`Scope.statistics` builds its answer from it."""

    collections: tuple[int, ...]
    collection_seconds: float
    survivors: int
    trim_attempted: bool
    bytes_trimmed: int
    trim_available: bool | None
    """None: no trim was asked for, and whether one could run is looked up when shown."""
    reaper_seconds: float
    errors: int


_NOTHING_RELEASED = _Judgement((), 0.0, 0, False, 0, None, 0.0, 0)
"""The judgement of a release with nothing to do: no collection, no trim, no error."""


@dataclass(slots=True)
class _StepCall:
    """One release step to run with a bounded wait; what the step generator yields."""

    step: ReleaseStep
    obj: Any
    timeout_s: float
    type_name: str
    pending: concurrent.futures.Future[object] | None = None
    """Set by the driver when the step overran its bound and is still running."""
    interrupt: BaseException | None = None
    """A quick step run on this thread was interrupted (KeyboardInterrupt): raised later."""

    @property
    def what(self) -> str:
        """``Type: step`` for messages; built only when one is written (most steps succeed)."""
        return f"{self.type_name}: {_step_name(self.step)}"


@dataclass(slots=True)
class _Release:
    """One release in progress, shared by the closing thread and the reaper job."""

    tracked: list[_TrackedRef]
    callbacks: list[tuple[weakref.ReferenceType[Any], Callable[..., Any]]]
    finalizers: list[Callable[[], None]]
    done: Latch
    """The scope's own latch: the release has completed (``Scope.wait_released``)."""
    hold_tracked: bool = True
    """Move tracked objects into ``keep`` (False: a deferral filled it already)."""
    keep: list[Any] = field(default_factory=list)
    """Strong references dropped in the drop phase, on a reaper thread."""
    pending: list[concurrent.futures.Future[object]] = field(default_factory=list)
    """Steps that overran their bound and still run; waited for before the judgement."""
    errors: list[Exception] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    steps_done: Latch = field(default_factory=Latch)
    step_errors: int = 0
    """How many of ``errors`` were found by the time ``steps_done`` was set."""
    raised_by_close: int = 0
    steps_run: int = 0
    steps_timed_out: int = 0
    signals_disconnected: int = 0
    callbacks_dropped: int = 0
    adopted: int = 0
    deferred: bool = False
    queue_full: bool = False
    interrupt: BaseException | None = None
    """An interrupt that reached the closing thread during a quick step, raised by close()."""
    on_caller: bool = False
    """The release runs on the closing thread (the quick path)."""
    quick_drop: bool = False
    """Every object has an adapter made of quick steps: background mode drops them here too."""
    close_started: float = 0.0
    step_timeout_s: float | None = None
    """The bound of each step when the closing thread runs them (the exit budget)."""
    adapters: dict[int, Adapter | None] = field(default_factory=dict)
    """Adapters already looked up for tracked entries (by ``id(entry)``), so the
    quick-path check and the steps match each object once."""
    reaper_dropped: int = 0
    caller_seconds: float = 0.0
    budget_exceeded: bool = False
    secrets: tuple[str, ...] = ()
    """Known secrets of the released objects (a config's key): masked in kept errors."""

    def record(self, exc: Exception, context: str | None = None) -> None:
        """Keep ``exc`` as a failure of this release, without the frames that pin objects."""
        detach_traceback(exc, self.secrets)
        if context is not None:
            add_note(exc, redact_text(context, self.secrets))  # an adapter's name is user text
        with self.lock:
            self.errors.append(exc)


@dataclass
class _Settings:
    release: ReleaseMode = "background"
    exit_budget_s: float = _DEFAULT_EXIT_BUDGET_S
    step_timeout_s: float = _DEFAULT_STEP_TIMEOUT_S


_settings = _Settings()


def _seconds(name: str, value: object, *, zero_ok: bool) -> float:
    """``value`` as a finite number of seconds within the range threads can wait, or raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    low_ok = seconds >= 0 if zero_ok else seconds > 0
    if not (math.isfinite(seconds) and low_ok and seconds <= _MAX_WAIT_S):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name} must be {bound} and at most {_MAX_WAIT_S:g} s, got {value!r}")
    return seconds


def _mode(value: object) -> ReleaseMode:
    if value == "inline":
        return "inline"
    if value == "background":
        return "background"
    raise ValueError(f"release must be 'inline' or 'background', got {value!r}")


def configure(
    *,
    release: ReleaseMode | None = None,
    exit_budget_s: float | None = None,
    step_timeout_s: float | None = None,
) -> dict[str, object]:
    """Set the process-wide defaults of every Scope (and so every ``managed_*`` block).

    - ``release``: ``"inline"`` (the native teardown finishes before the
      block ends, within the exit budget) or ``"background"`` (it finishes on
      the reaper; ``wait_released()``, ``verify.check()`` and the pytest
      plugin wait for it).
    - ``exit_budget_s`` (default 1 s): the longest close() keeps its caller
      after the body ended, whatever the SDK does; what is not finished by
      then completes on the reaper.
    - ``step_timeout_s`` (default 5 s): the bound on each release step.

    Returns the previous settings, so ``configure(**old)`` restores them.
    Scopes already created keep theirs.
    """
    new_release = _mode(release) if release is not None else _settings.release
    new_budget = (
        _seconds("exit_budget_s", exit_budget_s, zero_ok=True)
        if exit_budget_s is not None
        else _settings.exit_budget_s
    )
    new_step = (
        _seconds("step_timeout_s", step_timeout_s, zero_ok=False)
        if step_timeout_s is not None
        else _settings.step_timeout_s
    )
    previous: dict[str, object] = {
        "release": _settings.release,
        "exit_budget_s": _settings.exit_budget_s,
        "step_timeout_s": _settings.step_timeout_s,
    }
    _settings.release, _settings.exit_budget_s, _settings.step_timeout_s = (
        new_release,
        new_budget,
        new_step,
    )
    return previous


class Scope:
    """Owns registered objects by weak reference and releases them on exit.

    On close, in reverse registration order: run the object's adapter steps
    (stop recognition, close, shutdown), each on a reaper thread with a
    bounded wait (``step_timeout_s``), disconnect every SDK event signal it
    holds and drop the callbacks connected through the scope; run the
    finalizers; drop the scope's references. Then collect garbage only if a
    tracked object is still alive, and optionally trim the heap. ``close()``
    is idempotent and always runs every step; failures are raised afterwards
    as one :class:`ReleaseError`.

    The release runs on nativeguard's reaper threads while close() waits,
    at most ``exit_budget_s`` (default 1 s) whatever the SDK does; what is
    not finished by then completes there, and :meth:`wait_released` (also
    ``verify.check()`` and the pytest plugin) waits for it and raises what
    failed. A step that overruns its bound is never abandoned mid-call: the
    object is released when the step returns (dropping a recognizer while
    its stop still runs can hang the native core for good).

    ``release="background"`` (the default; ``configure()`` changes it):
    close() waits only for the steps (no callback fires after it); the native
    teardown (~30-57 ms for a recognizer that ran) finishes on the reaper.
    ``release="inline"``: close() waits for everything, so native handles
    are back to baseline when the with-block ends (within the budget).
    ``statistics()`` raises until the release has completed, because
    survivors can only be judged then.

    Whatever the mode, a close() on a thread Python did not start (an SDK
    callback) releases nothing there: it warns and defers everything to the
    reaper. Releasing on the SDK's own thread deadlocks it.

    close() may run in a signal handler: the scope's lock is re-entrant and
    a register() it interrupted fails with ClosedResourceError.
    """

    __slots__ = (
        "__weakref__",
        "_adopted",
        "_callbacks",
        "_close_token",
        "_closed_at",
        "_deferred_from",
        "_entered",
        "_exit_budget_s",
        "_finalizers",
        "_index",
        "_judgement",
        "_lock",
        "_pending",
        "_proxy_state",
        "_release",
        "_release_mode",
        "_released",
        "_secrets",
        "_state",
        "_step_timeout_s",
        "_tracked",
        "_trim_threshold_bytes",
    )

    def __init__(
        self,
        *,
        step_timeout_s: float | None = None,
        release: ReleaseMode | None = None,
        trim_threshold_bytes: int | None = None,
        exit_budget_s: float | None = None,
    ) -> None:
        self._step_timeout_s = (
            _settings.step_timeout_s
            if step_timeout_s is None
            else _seconds("step_timeout_s", step_timeout_s, zero_ok=False)
        )
        self._release_mode: ReleaseMode = _settings.release if release is None else _mode(release)
        self._exit_budget_s = (
            _settings.exit_budget_s
            if exit_budget_s is None
            else _seconds("exit_budget_s", exit_budget_s, zero_ok=True)
        )
        if trim_threshold_bytes is not None and (
            isinstance(trim_threshold_bytes, bool)
            or not isinstance(trim_threshold_bytes, int)
            or trim_threshold_bytes < 0
        ):
            raise ValueError(
                f"trim_threshold_bytes must be None or an int >= 0, got {trim_threshold_bytes!r}"
            )
        self._trim_threshold_bytes = trim_threshold_bytes
        # Re-entrant: close() may run in a signal handler that interrupted this
        # thread inside register() or connect().
        self._lock = threading.RLock()
        self._tracked: list[_TrackedRef] = []
        self._index: dict[int, _TrackedRef] = {}
        self._callbacks: list[tuple[weakref.ReferenceType[Any], Callable[..., Any]]] = []
        self._finalizers: list[Callable[[], None]] = []
        self._adopted: list[Any] = []
        self._pending: list[concurrent.futures.Future[Any]] = []
        self._secrets: list[str] = []
        self._state = _OPEN
        self._close_token = [True]
        self._closed_at: str | None = None
        self._entered = False
        self._judgement: _Judgement | None = None
        self._release: _Release | None = None
        self._released = Latch()
        self._deferred_from: int | None = None
        self._proxy_state: Any = None
        """The proxies' per-scope bookkeeping (``_proxy._ScopeEvents``), made on first use."""

    @property
    def release_mode(self) -> ReleaseMode:
        return self._release_mode

    @property
    def exit_budget_s(self) -> float:
        return self._exit_budget_s

    # -- registration ----------------------------------------------------

    def register(self, obj: T) -> T:
        """Track ``obj`` (weakly) for release; returns it unchanged (O(1)).

        Registering an object the scope already tracks does nothing. If
        ``obj`` dies before the scope releases it, a ``ResourceWarning`` says
        where it was registered (created, with tracemalloc on).
        """
        self._check_open("register an object in")
        integrations()  # the first registration loads the entry points' release steps
        key = id(obj)
        known = self._index.get(key)
        if known is not None and known() is obj:
            return obj
        type_name = type(obj).__qualname__
        try:
            entry = _TrackedRef.track(obj, type_name, _Origin.of(obj))
        except TypeError:
            raise TypeError(
                f"Scope tracks objects by weak reference; {type(obj).__name__} does not "
                "support weak references"
            ) from None
        _arm(entry)
        with self._lock:
            known = self._index.get(key)
            added = self._closed_at is None and not (known is not None and known() is obj)
            if added:
                self._tracked.append(entry)
                self._index[key] = entry
        if not added:
            _disarm(entry)
            self._check_open("register an object in")  # raises if closed meanwhile
            return obj
        if self._closed_at is not None:
            # A signal handler closed the scope while this thread was in the
            # block above: an entry close() did not take is an orphan.
            with self._lock:
                orphan = any(tracked is entry for tracked in self._tracked)
                if orphan:
                    self._tracked = [t for t in self._tracked if t is not entry]
                    self._index.pop(key, None)
            if orphan:
                _disarm(entry)
                self._check_open("register an object in")
        return obj

    def connect(self, signal: Any, callback: Callable[..., Any]) -> None:
        """Connect ``callback`` to an SDK event ``signal`` and remember it for release."""
        self._check_open("connect a callback through")
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        connect = getattr(signal, "connect", None)
        missing = [
            name
            for name in ("connect", "disconnect_all", "is_connected")
            if not callable(getattr(signal, name, None))
        ]
        if missing or not callable(connect):
            raise TypeError(
                f"{type(signal).__name__} is not an event signal the scope can release "
                f"(no {', '.join(f'{name}()' for name in missing)})"
            )
        connect(callback)
        with self._lock:
            self._callbacks.append((weakref.ref(signal), callback))

    def _add_secrets(self, secrets: Iterable[str]) -> None:
        """Values (a config's subscription key, a token) to mask in every error kept."""
        with self._lock:
            self._secrets.extend(secret for secret in secrets if secret)

    def _hold_until(self, future: concurrent.futures.Future[Any]) -> None:
        """Judge the release only once ``future`` is done (bounded): it still uses an object.

        The one-call helpers wait for SDK futures on their own threads, which
        hold the SDK object until ``get()`` returns; dropping it there, after
        the call, is what keeps the native teardown from waiting on itself.
        """
        with self._lock:
            self._pending.append(future)

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

        Returns within the exit budget after it was called, whatever the SDK
        does (a ``KeyboardInterrupt`` while it waits propagates at once); the
        release then completes on the reaper. Steps that return awaitables
        (async credentials) cannot be awaited here: each is recorded as an
        error asking for ``aclose()``.
        """
        start = time.perf_counter()
        release = self._begin()
        if release is None:
            return
        origin = foreign_origin()
        if origin is not None:
            self._defer(release, origin, start)
            return
        release.close_started = start
        if self._released_empty(release, start):
            return
        if self._all_quick(release):
            try:
                self._release_here(release)
            except BaseException as exc:  # Ctrl-C in nativeguard's own code, not in a step
                self._complete_after_interrupt(release, exc)
                raise
        elif _submit_or_run(release, "scope release", self._run_release, release, None):
            self._wait_within_budget(release, start)
        if not release.on_caller:  # on the caller, _finish timed it before publishing
            release.caller_seconds = time.perf_counter() - start
        error = self._close_error(release)
        interrupt, release.interrupt = release.interrupt, None
        if interrupt is not None:
            with release.lock:
                release.raised_by_close = 0  # not raised: wait_released() reports them
        del release
        if interrupt is not None:
            raise interrupt
        if error is not None:
            raise error

    def _released_empty(self, release: _Release, start: float) -> bool:
        """Complete a release that has nothing to do, here and now; False if it has something.

        Nothing tracked, no callback, no finalizer, nothing adopted or held, no
        trim asked for: most ``@guarded`` calls, whose objects died (or were
        closed) in the body. Such a release runs no step and drops nothing, so
        the machinery of one (a step driver, a drop phase, a judgement of the
        survivors) only costs time: the statistics are known.
        """
        if (
            release.tracked
            or release.callbacks
            or release.finalizers
            or self._trim_threshold_bytes is not None
        ):
            return False
        with self._lock:
            if self._adopted or self._pending:
                return False  # adopted or held while open: the normal path drops/waits
            self._state = _DROPPING  # adopt() refuses from here on
        release.on_caller = True
        release.steps_done.set()  # step_errors stays 0: no step ran
        release.caller_seconds = time.perf_counter() - start
        # What _finish would find, known without asking: published directly, since
        # going through it costs ~1 us on the path of most @guarded calls.
        self._publish(release, _NOTHING_RELEASED)
        return True

    def _complete_after_interrupt(self, release: _Release, exc: BaseException) -> None:
        """An interrupt hit the quick path outside a step: finish the release on the reaper.

        The steps guard themselves (an interrupt there is kept and raised once the
        release is done); this covers the bookkeeping around them. Steps the
        interrupt skipped do not run (their objects are dropped, which frees what
        refcounting frees), and the release says so as one of its errors.
        """
        release.on_caller = False
        if not release.steps_done.is_set():
            release.record(
                RuntimeError(
                    f"close() was interrupted by {type(exc).__name__} during the release "
                    "steps; the steps not yet run were skipped and their objects dropped"
                )
            )
        if not release.done.is_set():
            _submit_or_run(
                release,
                "scope release (after an interrupt)",
                self._drop_and_finish,
                release,
                None,
                time.perf_counter(),
            )

    def _all_quick(self, release: _Release) -> bool:
        """Whether close() may run this release's steps on the calling thread.

        Only when every step of every object is a :func:`quick_step`, so is
        every finalizer (nativeguard's own, which cut proxies and detach kept
        events, are; a user's may block), and this thread holds none of the
        locks the reaper path would need (a signal handler's close()).
        """
        if self._lock._is_owned() or get_reaper().held_by_caller():  # type: ignore[attr-defined]
            return False
        for finalizer in release.finalizers:
            if not is_quick(finalizer):
                return False
        declared = True
        for entry in release.tracked:
            obj = entry()
            if obj is None:
                continue
            try:
                adapter = adapter_for(obj)
            except Exception:
                return False  # the normal path records the predicate's failure
            except BaseException as exc:  # Ctrl-C in a predicate, on the closing thread
                # Raised once the release (on the reaper path) is complete.
                release.interrupt = exc.with_traceback(None)
                return False
            finally:
                del obj
            release.adapters[id(entry)] = adapter
            if adapter is None or not adapter.steps:
                declared = False  # nothing says its drop is cheap: the reaper drops it
                continue
            for step in adapter.steps:
                if not is_quick(step):
                    return False
        release.quick_drop = declared
        return True

    def _release_here(self, release: _Release) -> None:
        """The quick path: steps on this thread; inline, the whole release too.

        In background mode the drop stays here too (quick steps have already
        freed what is native, so dropping what is left is as cheap), and so
        does the end of the release when every object died by it. The reaper
        gets only what may take long: a garbage collection to judge a
        survivor, the heap trim (``trim_threshold_bytes``), and waiting for
        a future the scope holds on to (``_hold_until``). Each step is
        bounded by the exit budget instead of ``step_timeout_s``.
        """
        release.step_timeout_s = min(self._step_timeout_s, self._exit_budget_s) or None
        release.on_caller = True
        if self._release_mode == "inline":
            self._run_release(release, None)
            return
        _drive_sync(self._release_steps(release))
        _mark_steps_done(release)
        job_start = time.perf_counter()
        # A list's truth is read atomically (_hold_until appends under the lock); one
        # appended after this read is taken by _drop below and waited for on the reaper.
        if self._pending or self._trim_threshold_bytes is not None or not release.quick_drop:
            # Objects without a quick adapter (a plain object's __del__ may block,
            # or take a lock this thread holds) are dropped where they always were.
            release.on_caller = False
            _submit_or_run(
                release, "scope release (drop)", self._drop_and_finish, release, None, job_start
            )
            return
        self._drop(release, None)
        if release.pending or any(entry() is not None for entry in release.tracked):
            release.caller_seconds = time.perf_counter() - release.close_started
            _submit_or_run(
                release, "scope release (judge)", self._wait_and_finish, release, job_start
            )
            return
        self._finish(release, job_start)

    async def aclose(self) -> None:
        """Release everything like close(), awaiting steps that return awaitables.

        Steps run on reaper threads and the native teardown too, so the event
        loop is not blocked; the loop waits at most the exit budget for them.
        If cancelled while awaiting a step, the remaining steps still run
        (unawaited ones recorded as errors) before the cancellation propagates.
        """
        start = time.perf_counter()
        release = self._begin()
        if release is None:
            return
        origin = foreign_origin()
        if origin is not None:
            self._defer(release, origin, start)
            return
        release.close_started = start
        if self._released_empty(release, start):
            return
        interrupted = await _drive_async(self._release_steps(release))
        drop = self._drop_and_finish
        if _submit_or_run(
            release, "scope release (drop)", drop, release, None, time.perf_counter()
        ):
            waited, remaining = self._budget(release, start)
            if not await asyncio.to_thread(waited.wait, remaining):
                release.budget_exceeded = True
        release.caller_seconds = time.perf_counter() - start
        error = self._close_error(release)
        # Ctrl-C during a quick step (run on this loop's thread): raised like close() does.
        interrupt, release.interrupt = release.interrupt, None
        if interrupt is not None:
            with release.lock:
                release.raised_by_close = 0  # not raised: wait_released() reports them
        del release
        if interrupted is not None:
            raise interrupted
        if interrupt is not None:
            raise interrupt
        if error is not None:
            raise error

    def wait_released(self, timeout: float) -> bool:
        """Wait until the release has completed, reaper part included; False on timeout.

        True at once after a close() that finished within its budget. Raises
        :class:`ReleaseError` for failures close() did not raise itself (found
        on the reaper after close() returned), every time it is called, like
        ``Future.result()``.
        """
        timeout = _seconds("timeout", timeout, zero_ok=True)
        if not self._released.is_set():
            if get_reaper().is_current() or get_step_runner().is_current():
                raise RuntimeError(
                    f"wait_released() on a {REAPER_THREAD_NAME} thread would wait for itself"
                )
            if self._deferred_from == threading.get_ident():
                raise RuntimeError(
                    "wait_released() on the SDK callback thread that closed the scope would "
                    "wait for itself: the deferred release starts once this callback returns"
                )
        if not self._released.wait(timeout):
            return False
        release = self._release
        if release is not None:
            with release.lock:
                late = list(release.errors[release.raised_by_close :])
            if late:
                raise ReleaseError(
                    f"{len(late)} release step(s) failed on the {REAPER_THREAD_NAME} thread "
                    "after close() returned; every other step still ran",
                    late,
                )
        return True

    def statistics(self) -> ScopeStatistics:
        """What the release did, once it has completed.

        Raises ``RuntimeError`` before close() and until the release has
        completed (see :attr:`released` and :meth:`wait_released`): survivors
        cannot be judged before the scope's own references are gone, and a
        provisional figure would be misread.
        """
        with self._lock:
            judgement, release = self._judgement, self._release
            closed = self._closed_at is not None
        if judgement is not None and release is not None:
            # Built here, not by the release: most scopes are never asked.
            return ScopeStatistics(
                objects_tracked=len(release.tracked),
                signals_disconnected=release.signals_disconnected,
                callbacks_dropped=release.callbacks_dropped,
                release_steps_run=release.steps_run,
                release_errors=judgement.errors,
                collections=judgement.collections,
                collection_seconds=judgement.collection_seconds,
                survivors=judgement.survivors,
                release_seconds=release.caller_seconds,
                release_mode=self._release_mode,
                deferred=release.deferred,
                objects_adopted=release.adopted,
                reaper_dropped=release.reaper_dropped,
                reaper_queue_full=release.queue_full,
                reaper_seconds=judgement.reaper_seconds,
                trim_attempted=judgement.trim_attempted,
                bytes_trimmed=judgement.bytes_trimmed,
                trim_available=(
                    _trim_available()
                    if judgement.trim_available is None
                    else judgement.trim_available
                ),
                exit_budget_exceeded=release.budget_exceeded,
                steps_timed_out=release.steps_timed_out,
            )
        if not closed:
            raise RuntimeError("Scope.statistics() is available once the scope is closed")
        raise RuntimeError(
            "Scope.statistics() is available once the scope is closed and released; the "
            f"release is still running on the {REAPER_THREAD_NAME} thread: call "
            "wait_released(timeout) first"
        )

    def _begin(self) -> _Release | None:
        """Mark the scope closed and take everything it holds; None if already closed."""
        try:
            # One C call: atomic even against a signal handler's close() on this
            # thread, which would otherwise find the scope open, release it, and
            # have its release replaced by this one's empty lists.
            self._close_token.pop()
        except IndexError:
            return None
        with self._lock:
            self._closed_at = _caller_location()
            self._state = _RELEASING
            tracked, self._tracked = self._tracked, []
            self._index = {}
            callbacks, self._callbacks = self._callbacks, []
            finalizers, self._finalizers = self._finalizers, []
            release = _Release(
                tracked, callbacks, finalizers, self._released, secrets=tuple(self._secrets)
            )
            self._release = release
        for entry in tracked:
            # From here on the scope is releasing them: dying now is no leak.
            _disarm(entry)
        return release

    def _wait_within_budget(self, release: _Release, start: float) -> None:
        """Wait for the release (inline) or its steps (background), at most the exit budget."""
        waited, remaining = self._budget(release, start)
        if not waited.wait(remaining):
            release.budget_exceeded = True

    def _budget(self, release: _Release, start: float) -> tuple[Latch, float]:
        """What close()/aclose() wait for, and for how long at most.

        Not at all when this thread holds a lock the release needs (close() in a
        signal handler that interrupted register() or a reaper submit on this
        thread): the job cannot finish before the handler returns.
        """
        waited = release.done if self._release_mode == "inline" else release.steps_done
        remaining = max(0.0, self._exit_budget_s - (time.perf_counter() - start))
        if self._lock._is_owned() or get_reaper().held_by_caller():  # type: ignore[attr-defined]
            remaining = 0.0
        return waited, remaining

    def _close_error(self, release: _Release) -> ReleaseError | None:
        """What close() raises: inline, every failure; background, the steps'; none past budget."""
        if not release.errors:
            # Nothing failed so far (errors are only ever appended): nothing to raise, and
            # wait_released() reports from index 0 whatever the reaper finds later.
            release.raised_by_close = 0
            return None
        with release.lock:
            if release.budget_exceeded:
                count = 0
            elif self._release_mode == "inline" and release.done.is_set():
                count = len(release.errors)
            else:
                count = release.step_errors if release.steps_done.is_set() else 0
            release.raised_by_close = count
            errors = list(release.errors[:count])
        if not errors:
            return None
        return ReleaseError(
            f"{len(errors)} release step(s) failed; every other step still ran", errors
        )

    def _run_release(self, release: _Release, origin: ForeignOrigin | None) -> None:
        """The whole release, on a reaper thread (or the caller when the queue is full)."""
        job_start = time.perf_counter()
        returned = True
        if origin is not None:
            returned = origin.wait_returned(self._step_timeout_s)
            if not returned:
                release.record(
                    ReleaseTimeout(
                        f"the code on {origin.describe()} that closed the scope did not return "
                        f"within {self._step_timeout_s:g} s; its objects are kept alive (leaked) "
                        "rather than risk the SDK thread dropping the last reference"
                    )
                )
        _drive_sync(self._release_steps(release))
        self._drop_and_finish(release, origin if not returned else None, job_start)

    def _drop_and_finish(
        self, release: _Release, unsafe_origin: ForeignOrigin | None, job_start: float
    ) -> None:
        """Drop the scope's references, wait for overrunning steps, judge, publish."""
        self._drop(release, unsafe_origin)
        self._wait_and_finish(release, job_start)

    def _wait_and_finish(self, release: _Release, job_start: float) -> None:
        """Wait for what still uses an object (bounded), then judge and publish.

        A step that overran its bound, or a future the scope holds on to, still
        holds its object; the release is complete only when it is done with it.
        """
        deadline = time.monotonic() + _PENDING_STEP_WAIT_S
        for future in release.pending:
            concurrent.futures.wait([future], timeout=max(0.0, deadline - time.monotonic()))
            if not future.done():
                release.record(
                    ReleaseTimeout(
                        f"a release step was still running {_PENDING_STEP_WAIT_S:g} s after it "
                        "overran its bound; its object stays alive until the step returns"
                    )
                )
        release.pending.clear()
        self._finish(release, job_start)

    def _drop(self, release: _Release, unsafe_origin: ForeignOrigin | None) -> None:
        """Drop (or, for an SDK thread that did not return, park) what the scope holds."""
        _mark_steps_done(release)
        with self._lock:
            adopted, self._adopted = self._adopted, []
            self._state = _DROPPING
            if self._pending:
                release.pending.extend(self._pending)
                self._pending.clear()
        release.adopted = len(adopted)
        release.keep.extend(adopted)
        adopted.clear()
        if unsafe_origin is not None:
            unsafe_origin.park()
            park(release.keep)
        else:
            dropped = drop_all(release.keep)
            on_caller = release.queue_full or release.on_caller
            release.reaper_dropped = 0 if on_caller else dropped

    def _release_steps(self, release: _Release) -> Generator[_StepCall | Awaitable[Any], Any, None]:
        """Yield each step to run, disconnect signals and callbacks, run finalizers.

        A generator so that close() and aclose() share it: it yields a
        :class:`_StepCall` (the driver runs it with a bounded wait and sends
        back the exception it ended with, or None) and any awaitable a step
        returned (awaited by aclose(), refused by close()).
        """
        for entry in reversed(release.tracked):
            obj = entry()
            if obj is None:
                continue
            try:
                adapter = (
                    release.adapters[id(entry)]
                    if id(entry) in release.adapters
                    else adapter_for(obj)
                )
            except Exception as exc:
                adapter = None
                release.record(
                    exc,
                    f"while releasing {entry.type_name}: an adapter's predicate raised, so no "
                    "adapter step ran",
                )
            except BaseException as exc:  # KeyboardInterrupt raised in a predicate's code
                adapter = None
                release.record(
                    _interrupted_step(
                        exc, f"an adapter's predicate while releasing {entry.type_name}"
                    )
                )
            steps = adapter.steps if adapter is not None else ()
            for step in steps:
                release.steps_run += 1
                call = _StepCall(
                    step,
                    obj,
                    release.step_timeout_s or self._step_timeout_s,
                    entry.type_name,
                )
                error = yield call
                if call.interrupt is not None and release.interrupt is None:
                    release.interrupt = call.interrupt
                call.interrupt = None
                if call.pending is not None:
                    release.pending.append(call.pending)
                    release.steps_timed_out += 1
                del call
                if error is not None:
                    release.record(error, _step_context(entry.type_name, adapter))
            try:
                signals = callbacks_of(obj)
            except Exception as exc:
                signals = []
                release.record(exc, f"while finding the event signals of {entry.type_name}")
            for signal in signals:
                try:
                    if signal.is_connected():
                        release.signals_disconnected += 1
                    signal.disconnect_all()
                except Exception as exc:
                    release.record(exc, f"while disconnecting a signal of {entry.type_name}")
                except BaseException as exc:  # KeyboardInterrupt raised by the SDK's code
                    release.record(_interrupted_step(exc, f"disconnecting {entry.type_name}"))
            del signals
            if release.hold_tracked:
                release.keep.append(obj)
            # Our strong reference must go before we judge who survives.
            del obj
        for signal_ref, _callback in release.callbacks:
            signal = signal_ref()
            try:
                if signal is not None and signal.is_connected():
                    signal.disconnect_all()
            except Exception as exc:
                release.record(exc, "while disconnecting a signal connected through the scope")
            except BaseException as exc:  # KeyboardInterrupt raised by a signal's own code
                release.record(_interrupted_step(exc, "disconnecting a signal"))
            del signal
        release.callbacks_dropped = len(release.callbacks)
        release.callbacks.clear()  # drops closures whose cells may reach SDK objects
        for finalizer in reversed(release.finalizers):
            try:
                finalizer()
            except Exception as exc:
                release.record(exc, "in a scope finalizer")
            except BaseException as exc:  # KeyboardInterrupt/SystemExit in a finalizer
                if release.on_caller and release.interrupt is None:
                    # Ctrl-C on the closing thread: raised by close() once the release is done.
                    release.interrupt = exc.with_traceback(None)
                release.record(_interrupted_step(exc, "a scope finalizer"))
        release.finalizers.clear()

    def _defer(self, release: _Release, origin: ForeignOrigin, start: float) -> None:
        """close() on a thread that must not release: hand the whole release to the reaper."""
        release.deferred = True
        # Strong references now, on this thread: from here on the scope's are
        # guaranteed not to be the last ones the SDK thread drops when the
        # callback returns; the reaper drops them after it has returned.
        release.keep.extend(obj for entry in release.tracked if (obj := entry()) is not None)
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
            functools.partial(self._run_release, release, origin),
            bounded=False,
        )

    def _finish(self, release: _Release, job_start: float) -> None:
        """Collect if needed, trim, publish the statistics and wake wait_released()."""
        if release.done.is_set():
            return  # finished already (an interrupt made close() hand the rest over)
        generations, gc_seconds, survivors = _collect_until_dead(release.tracked)
        attempted, trimmed, trim_available = self._trim()
        judgement = _Judgement(
            generations,
            gc_seconds,
            survivors,
            attempted,
            trimmed,
            trim_available,
            time.perf_counter() - job_start,
            len(release.errors),
        )
        if release.on_caller and not release.caller_seconds:
            # close() returns right after this: its time, before the statistics are final.
            release.caller_seconds = time.perf_counter() - release.close_started
        self._publish(release, judgement)

    def _publish(self, release: _Release, judgement: _Judgement) -> None:
        """The release is complete: its statistics are final; wake wait_released()."""
        with self._lock:
            self._judgement = judgement
            self._state = _RELEASED
        release.done.set()  # the scope's _released
        _count_release()

    def _trim(self) -> tuple[bool, int, bool | None]:
        """(attempted, RSS bytes released, available) for the optional heap trim.

        Without a threshold nothing is attempted and availability is None:
        ``statistics()`` asks glibc only if someone reads it.
        """
        if self._trim_threshold_bytes is None:
            return False, 0, None
        result = _malloc.trim(self._trim_threshold_bytes)
        return result.attempted, result.rss_released_bytes, result.available

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
        conclude_exit(exc, closed_with(self.close, ReleaseError), release_note)

    async def __aenter__(self) -> Scope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conclude_exit(exc, await aclosed_with(self.aclose, ReleaseError), release_note)

    def __repr__(self) -> str:
        state = f"closed at {self._closed_at}" if self._closed_at else "open"
        return (
            f"<Scope {state} release={self._release_mode} tracking={len(self._tracked)} "
            f"adopted={len(self._adopted)}>"
        )


def _mark_steps_done(release: _Release) -> None:
    """The steps are over: the errors found so far are theirs (what close() may raise)."""
    if release.steps_done.is_set():
        return  # set once, never cleared: the second caller (the drop) needs no lock
    with release.lock:
        if release.steps_done.is_set():
            return
        release.step_errors = len(release.errors)
        release.steps_done.set()


def _submit_or_run(release: _Release, what: str, fn: Callable[..., None], *args: Any) -> bool:
    """Hand ``fn(*args)`` to the reaper (True), or run it here when its queue is full.

    A full queue means the reaper is behind: the caller does the work
    (back-pressure) rather than pile up dead SDK objects. Steps stay bounded.
    """
    if get_reaper().submit(what, functools.partial(fn, *args)):
        return True
    release.queue_full = True
    fn(*args)
    return False


# -- drivers for the release steps ---------------------------------------------


def _step_context(type_name: str, adapter: Adapter | None) -> str:
    """The note on a failed step: which object, through which adapter (built on failure only)."""
    return f"while releasing {type_name} ({adapter.name if adapter is not None else 'no adapter'})"


def _step_name(step: object) -> str:
    return str(getattr(step, "__qualname__", None) or getattr(step, "__name__", None) or step)


def _interrupted_step(exc: BaseException, what: str) -> Exception:
    """A KeyboardInterrupt/SystemExit raised *by* a step, kept as an ordinary failure."""
    return RuntimeError(f"{what} raised {type(exc).__name__}({exc!s}); the release went on")


def _start_step(call: _StepCall) -> concurrent.futures.Future[object]:
    """Run ``call`` on a step-runner thread; the future holds its outcome, never its frames.

    Quick steps never come here: the drivers run them with :func:`_run_quick`.
    """
    future: concurrent.futures.Future[object] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            outcome = call.step(call.obj, call.timeout_s)
        except BaseException as exc:  # handed to the waiting driver
            future.set_exception(detach_traceback(exc))
        else:
            future.set_result(outcome)

    get_step_runner().submit(f"release step {call.what}", run, bounded=False)
    return future


def _run_quick(call: _StepCall) -> object:
    """Run a :func:`~nativeguard.quick_step` here: its return value, or raise ``_StepFailed``.

    The same outcome ``_step_outcome`` gives for a step run elsewhere, without
    a ``Future`` (a Condition and two lock round trips per step) or a thread.
    """
    try:
        return call.step(call.obj, call.timeout_s)
    except Exception as exc:
        detach_traceback(exc)
        raise _StepFailed(exc) from None
    except BaseException as exc:  # e.g. Ctrl-C while the step ran on the closing thread
        call.interrupt = exc.with_traceback(None)
        detach_traceback(exc)
        raise _StepFailed(_interrupted_step(exc, f"release step {call.what}")) from None


def _step_outcome(call: _StepCall, future: concurrent.futures.Future[object]) -> object:
    """The step's return value, or raise: ``_StepFailed`` wraps what the step raised."""
    try:
        return future.result(call.timeout_s)
    except BaseException as exc:
        if future.done() and not future.cancelled() and future.exception() is exc:
            exc.__traceback__ = None  # re-raising attached our frames (they hold call.obj)
            if not isinstance(exc, Exception):
                raise _StepFailed(_interrupted_step(exc, f"release step {call.what}")) from None
            raise _StepFailed(exc) from None
        if isinstance(exc, TimeoutError) and not future.done():
            call.pending = future
            raise _StepFailed(
                ReleaseTimeout(
                    f"release step {call.what} did not finish within {call.timeout_s:g} s; "
                    "the object is released when it returns"
                )
            ) from None
        raise  # an interrupt of the wait itself (KeyboardInterrupt): not the step's


class _StepFailed(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error


def _drive_sync(
    steps: Generator[_StepCall | Awaitable[Any], Any, None], first: Exception | None = None
) -> None:
    """Run the steps to the end, each bounded; an awaitable is refused, not awaited."""
    reply: Exception | None = first
    while True:
        try:
            item = steps.send(reply)
        except StopIteration:
            return
        reply = None
        if isinstance(item, _StepCall):
            try:
                if is_quick(item.step):
                    outcome = _run_quick(item)
                else:
                    outcome = _step_outcome(item, _start_step(item))
            except _StepFailed as failed:
                reply = failed.error
            else:
                if outcome is not None and inspect.isawaitable(outcome):
                    reply = _refuse(outcome)
                del outcome
        else:
            reply = _refuse(item)
        del item


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
    steps: Generator[_StepCall | Awaitable[Any], Any, None],
) -> BaseException | None:
    """Run the steps, each on a step-runner thread, awaiting awaitables with a bounded wait.

    Returns the cancellation (or other BaseException) that interrupted an
    await, for the caller to re-raise once the release is complete.
    """
    reply: Exception | None = None
    while True:
        try:
            item = steps.send(reply)
        except StopIteration:
            return None
        reply = None
        try:
            if isinstance(item, _StepCall):
                try:
                    if is_quick(item.step):
                        outcome = _run_quick(item)  # on this loop's thread, like close() does
                    else:
                        future = _start_step(item)
                        try:
                            outcome = await asyncio.to_thread(_step_outcome, item, future)
                        finally:
                            del future
                except _StepFailed as failed:
                    reply = failed.error
                    continue
                if inspect.isawaitable(outcome):
                    try:
                        await asyncio.wait_for(_awaited(outcome), item.timeout_s)
                    except asyncio.TimeoutError:
                        reply = ReleaseTimeout(
                            f"awaiting release step {item.what} did not finish within "
                            f"{item.timeout_s:g} s"
                        )
                    except Exception as exc:
                        reply = exc
                del outcome
            else:
                try:
                    await asyncio.wait_for(_awaited(item), _settings.step_timeout_s)
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
            del item


async def _awaited(awaitable: Awaitable[Any]) -> None:
    await awaitable


def _collect_until_dead(
    refs: Sequence[weakref.ReferenceType[Any]],
) -> tuple[tuple[int, ...], float, int]:
    """Collect only as much as needed for the tracked objects to die.

    A full collection costs hundreds of ms on a large heap; when refcounting
    already freed everything (the common case once signals are disconnected)
    this does no collection at all.
    """
    if not any(ref() is not None for ref in refs):
        return (), 0.0, 0  # the common case: refcounting freed everything
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


@functools.cache
def _trim_available() -> bool:
    """Whether glibc's malloc_trim can be called here (fixed for the process)."""
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


class _Origin(NamedTuple):
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
    """Warn that a tracked object died before its scope released it; any thread."""
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
