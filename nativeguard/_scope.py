"""The engine under every guard: a Scope owns objects and releases them on exit."""

from __future__ import annotations

import gc
import os
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from ._adapters import adapter_for, event_signals
from ._errors import ClosedResourceError, ReleaseError, add_note

__all__ = ["Scope", "ScopeStatistics"]

T = TypeVar("T")

_DEFAULT_STEP_TIMEOUT_S = 5.0
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclass(frozen=True, slots=True)
class ScopeStatistics:
    """What a Scope did on release."""

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


@dataclass
class _Tracked:
    ref: weakref.ReferenceType[Any]
    type_name: str


class Scope:
    """Owns registered objects by weak reference and releases them on exit.

    On close, in reverse registration order: run the object's adapter steps
    (stop recognition, close, shutdown) with a bounded wait each, disconnect
    every SDK event signal it holds and drop the callbacks connected through
    the scope. Then collect garbage only if a tracked object is still alive.
    ``close()`` is idempotent and always runs every step; failures are raised
    afterwards as one :class:`ReleaseError`.
    """

    def __init__(self, *, step_timeout_s: float = _DEFAULT_STEP_TIMEOUT_S) -> None:
        if step_timeout_s <= 0:
            raise ValueError(f"step_timeout_s must be > 0, got {step_timeout_s!r}")
        self._step_timeout_s = step_timeout_s
        self._lock = threading.Lock()
        self._tracked: list[_Tracked] = []
        self._callbacks: list[tuple[weakref.ReferenceType[Any], Callable[..., Any]]] = []
        self._finalizers: list[Callable[[], None]] = []
        self._closed_at: str | None = None
        self._entered = False
        self._statistics: ScopeStatistics | None = None

    # -- registration ----------------------------------------------------

    def register(self, obj: T) -> T:
        """Track ``obj`` (weakly) for release; returns it unchanged."""
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
            self._tracked.append(_Tracked(ref, type(obj).__qualname__))
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
        target, so the survivor count reflects only references held elsewhere.
        """
        self._check_open("add a finalizer to")
        if not callable(finalizer):
            raise TypeError(f"finalizer must be callable, got {type(finalizer).__name__}")
        with self._lock:
            self._finalizers.append(finalizer)

    @property
    def closed(self) -> bool:
        return self._closed_at is not None

    def _check_open(self, action: str) -> None:
        if self._closed_at is not None:
            raise ClosedResourceError(
                f"cannot {action} a closed Scope (closed at {self._closed_at})"
            )

    # -- release ---------------------------------------------------------

    def close(self) -> None:
        """Release everything; idempotent. Raises ReleaseError if a step failed."""
        with self._lock:
            if self._closed_at is not None:
                return
            self._closed_at = _caller_location()
            tracked, self._tracked = self._tracked, []
            callbacks, self._callbacks = self._callbacks, []
            finalizers, self._finalizers = self._finalizers, []
        start = time.perf_counter()
        errors: list[Exception] = []
        steps_run = signals_disconnected = 0
        for entry in reversed(tracked):
            obj = entry.ref()
            if obj is None:
                continue
            adapter = adapter_for(obj)
            steps = adapter.steps if adapter is not None else ()
            adapter_name = adapter.name if adapter is not None else "no adapter"
            for step in steps:
                steps_run += 1
                try:
                    step(obj, self._step_timeout_s)
                except Exception as exc:
                    add_note(exc, f"while releasing {entry.type_name} ({adapter_name})")
                    errors.append(exc)
            for signal in event_signals(obj):
                if signal.is_connected():
                    signals_disconnected += 1
                try:
                    signal.disconnect_all()
                except Exception as exc:
                    add_note(exc, f"while disconnecting a signal of {entry.type_name}")
                    errors.append(exc)
            # Our own strong reference must go before we judge who survives.
            del obj
        for signal_ref, _callback in callbacks:
            signal = signal_ref()
            if signal is not None and signal.is_connected():
                try:
                    signal.disconnect_all()
                except Exception as exc:
                    errors.append(exc)
        callbacks_dropped = len(callbacks)
        callbacks.clear()  # drops closures whose cells may reach SDK objects
        for finalizer in reversed(finalizers):
            try:
                finalizer()
            except Exception as exc:
                errors.append(exc)
        finalizers.clear()
        generations, gc_seconds, survivors = _collect_until_dead([t.ref for t in tracked])
        self._statistics = ScopeStatistics(
            objects_tracked=len(tracked),
            signals_disconnected=signals_disconnected,
            callbacks_dropped=callbacks_dropped,
            release_steps_run=steps_run,
            release_errors=len(errors),
            collections=generations,
            collection_seconds=gc_seconds,
            survivors=survivors,
            release_seconds=time.perf_counter() - start,
        )
        if errors:
            raise ReleaseError(
                f"{len(errors)} release step(s) failed; every other step still ran", errors
            )

    def statistics(self) -> ScopeStatistics:
        """What the last close() did; ``ClosedResourceError``-free, but only after close."""
        if self._statistics is None:
            raise RuntimeError("Scope.statistics() is available once the scope is closed")
        return self._statistics

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
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        state = f"closed at {self._closed_at}" if self._closed_at else "open"
        return f"<Scope {state} tracking={len(self._tracked)}>"


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
            gc.collect(generation)
            generations.append(generation)
        alive = sum(1 for ref in refs if ref() is not None)
        if alive == 0:
            break
    return tuple(generations), time.perf_counter() - start, alive


def _caller_location() -> str:
    """``file:line`` of the first frame outside nativeguard, for error messages."""
    for frame in reversed(traceback.extract_stack()[:-1]):
        if not os.path.abspath(frame.filename).startswith(_PACKAGE_DIR):
            return f"{frame.filename}:{frame.lineno}"
    return "<unknown>"
