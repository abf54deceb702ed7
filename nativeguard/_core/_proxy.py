"""Proxies that stand in for SDK objects, signals, events and results.

A managed object is handed out as a :class:`ManagedProxy`. When its scope
closes the proxy's reference to the SDK object is cut (the proxy then raises
:class:`ClosedResourceError`), signals reached through it route callbacks via
the scope, and events those callbacks received are re-pointed at plain data so
a result kept past its callback no longer pins a native handle.
"""

from __future__ import annotations

import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import wrapt

from ._adapters import quick_step
from ._errors import ClosedResourceError, add_note, detach_traceback
from ._integration import callbacks_of, to_detached_event, to_plain
from ._scope import Scope

__all__ = ["EventProxy", "ManagedProxy", "ResultProxy", "SignalProxy"]


class _Released:
    """What a proxy points at once its scope released the target."""

    __slots__ = ("_description", "_where")

    def __init__(self, description: str, where: str) -> None:
        self._description = description
        self._where = where

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            # Protocol probes (wrapt, copy, pickle) expect AttributeError.
            raise AttributeError(name)
        raise ClosedResourceError(
            f"{self._description} was released by nativeguard at {self._where}; "
            f"it cannot be used after its managed block (accessed .{name})"
        )

    def __repr__(self) -> str:
        return f"<released {self._description} (closed at {self._where})>"


_NEVER_SLOTS = (
    str,
    bytes,
    int,
    float,
    bool,
    type(None),
    types.MethodType,
    types.BuiltinMethodType,
    types.FunctionType,
)
"""What an attribute read through a proxy cannot be a callback slot of: plain values and
methods (``channel.unary_unary``), whose reads then skip asking every integration."""


def _is_signal(owner: object, value: object) -> bool:
    """Whether ``value`` is one of the callback slots ``owner``'s integration finds on it."""
    if isinstance(value, _NEVER_SLOTS):
        return False
    return any(value is slot for slot in callbacks_of(owner))


def _no_fixups(self: object) -> None:
    """wrapt's ``__wrapped_setattr_fixups__`` hook, which nativeguard's proxies do not need.

    wrapt (2.5.2) looks the hook up on the proxy at every ``__wrapped__``
    assignment (creation, and the cut at release). Without it on the class
    the lookup falls through to ``__getattr__``, then to the wrapped object,
    and fails with an AttributeError built and dropped twice: ~3 us of the
    ~6 us a cut took.
    """


class ManagedProxy(wrapt.ObjectProxy[Any]):
    """Stands in for an SDK object owned by a Scope."""

    __wrapped_setattr_fixups__ = _no_fixups

    def __init__(self, wrapped: object, scope: Scope, *, plain: bool = False) -> None:
        super().__init__(wrapped)
        self._self_scope = scope
        self._self_plain = plain

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.__wrapped__, name)
        if _is_signal(self.__wrapped__, value):
            return SignalProxy(value, self._self_scope, plain=self._self_plain)
        return value

    def _self_release(self, where: str) -> object:
        """Cut the reference to the target; returns it so the scope can drop it."""
        target = self.__wrapped__
        if type(target) is not _Released:  # named here, not at creation: most are never cut twice
            self.__wrapped__ = _Released(f"{type(target).__qualname__} object", where)
        return target

    def __repr__(self) -> str:
        return f"<nativeguard managed {self.__wrapped__!r}>"


class SignalProxy(wrapt.ObjectProxy[Any]):
    """An SDK ``EventSignal`` whose ``connect`` goes through the scope."""

    __wrapped_setattr_fixups__ = _no_fixups

    def __init__(self, wrapped: object, scope: Scope, *, plain: bool = False) -> None:
        super().__init__(wrapped)
        self._self_scope = scope
        self._self_plain = plain
        # A signal proxy kept past the block (a loop variable, say) must not
        # keep the SDK's EventSignal, and its callback context, alive.
        me = weakref.ref(self)

        def cut() -> None:
            proxy = me()
            if proxy is not None:
                proxy.__wrapped__ = _Released("EventSignal", scope.closed_at or "<unknown>")

        scope.add_finalizer(quick_step(cut))

    def connect(self, callback: Callable[[Any], Any], *, plain: bool | None = None) -> None:
        """Connect ``callback``; with ``plain=True`` it receives ``extract(evt)``."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        use_plain = self._self_plain if plain is None else plain
        events = _events_of(self._self_scope)
        handler = (
            _plain_handler(callback, events) if use_plain else _proxy_handler(callback, events)
        )
        self._self_scope.connect(self.__wrapped__, handler)


@dataclass
class _ScopeEvents:
    """Per-scope bookkeeping: event proxies handed out and callback failures."""

    proxies: weakref.WeakSet[EventProxy | ResultProxy]
    errors: list[Exception]
    lock: threading.Lock
    secrets: list[str] = field(default_factory=list)
    """Known secrets of the scope's SDK objects (a config's key): masked in kept errors."""


_scope_events_lock = threading.Lock()


def _events_of(scope: Scope) -> _ScopeEvents:
    """The scope's event bookkeeping, made on first use; kept on the scope itself."""
    events = scope._proxy_state
    if isinstance(events, _ScopeEvents):
        return events
    with _scope_events_lock:
        events = scope._proxy_state
        if not isinstance(events, _ScopeEvents):
            made = _ScopeEvents(weakref.WeakSet(), [], threading.Lock())
            # First the finalizer (it refuses a closed scope), then the state it detaches.
            scope.add_finalizer(quick_step(lambda: detach_events(made)))
            scope._proxy_state = made
            return made
        return events


def callback_errors(scope: Scope) -> list[Exception]:
    """Exceptions raised by callbacks connected through ``scope``'s proxies.

    The SDK calls callbacks from native threads and only prints what they
    raise; nativeguard keeps them so the managed block can re-raise them.
    """
    events = scope._proxy_state
    if not isinstance(events, _ScopeEvents):
        return []
    with events.lock:
        return list(events.errors)


def _record_failure(events: _ScopeEvents, exc: Exception) -> None:
    """Keep a callback's exception without its frames.

    A traceback keeps its frames, and each frame its caller (``f_back``): the
    SDK's dispatch frames, which hold the recognizer and the native event.
    Keeping those would pin exactly what the scope is about to release, so the
    traceback is kept as text in a note instead.
    """
    add_note(exc, "raised in a callback called by the SDK")
    detach_traceback(
        exc, events.secrets
    )  # the stack as a (redacted) note; the message redacted too
    with events.lock:
        events.errors.append(exc)


def _proxy_handler(callback: Callable[[Any], Any], events: _ScopeEvents) -> Callable[[Any], None]:
    def handler(evt: Any) -> None:
        proxy = EventProxy(evt, events)
        with events.lock:
            events.proxies.add(proxy)
        try:
            callback(proxy)
        except Exception as exc:  # kept and re-raised at the end of the managed block
            _record_failure(events, exc)

    handler.__name__ = getattr(callback, "__name__", "handler")
    return handler


def _plain_handler(callback: Callable[[Any], Any], events: _ScopeEvents) -> Callable[[Any], None]:
    def handler(evt: Any) -> None:
        try:
            callback(to_plain(evt))
        except Exception as exc:  # kept and re-raised at the end of the managed block
            _record_failure(events, exc)

    handler.__name__ = getattr(callback, "__name__", "handler")
    return handler


class EventProxy(wrapt.ObjectProxy[Any]):
    """An SDK event handed to a callback; detached to plain data at scope exit."""

    __wrapped_setattr_fixups__ = _no_fixups

    def __init__(self, wrapped: object, events: _ScopeEvents) -> None:
        super().__init__(wrapped)
        self._self_events = events
        self._self_result: ResultProxy | None = None
        self._self_detached = False

    def __getattr__(self, name: str) -> Any:
        if name == "result" and not self._self_detached:
            # One stable proxy per event, so `evt.result is evt.result`, and
            # tracked on its own: callers often keep the result, not the event.
            if self._self_result is None:
                proxy = ResultProxy(self.__wrapped__.result)
                with self._self_events.lock:
                    self._self_events.proxies.add(proxy)
                self._self_result = proxy
            return self._self_result
        return getattr(self.__wrapped__, name)

    def _self_detach(self) -> None:
        if self._self_detached:
            return
        self.__wrapped__ = to_detached_event(self.__wrapped__)
        self._self_detached = True
        self._self_result = None


class ResultProxy(wrapt.ObjectProxy[Any]):
    """An SDK result reached through an event proxy; detached at scope exit."""

    __wrapped_setattr_fixups__ = _no_fixups

    def _self_detach(self) -> None:
        target = self.__wrapped__
        if _is_plain(target):
            return
        self.__wrapped__ = to_plain(target)


def _is_plain(value: object) -> bool:
    return type(value).__module__.startswith("nativeguard.")


def detach_events(events: _ScopeEvents) -> None:
    """Re-point every event/result proxy still alive at its plain data."""
    with events.lock:
        alive = list(events.proxies)
    # Results first: detaching an event extracts from its SDK result, which a
    # detached ResultProxy would no longer reach.
    for proxy in sorted(alive, key=lambda p: isinstance(p, EventProxy)):
        proxy._self_detach()
