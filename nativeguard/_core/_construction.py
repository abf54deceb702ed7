"""One hook on the constructors of the classes the integrations track.

Which classes: those every registered :class:`~nativeguard.Integration`
declares in ``classes`` (for Azure Speech, its native-backed classes).
Everything in nativeguard that needs to see SDK objects as they are made
(``@guarded`` calls, the live-object registry behind ``snapshot()``) registers
a listener here instead of patching ``__init__`` itself: one wrapper per class,
installed once, however many features watch.

A listener is called with each newly constructed object of a tracked class
that holds native state (the integration's ``holds_native``), on the
constructing thread, after its outermost constructor succeeded. That thread
can be an SDK callback thread (event args and the
results they carry are built there), so listeners must be quick, must not
release anything, must not call ``threading.current_thread()`` (it would leave
a ``_DummyThread`` behind) and must not raise: an exception propagates out of
the SDK constructor.

Cost: with no listener, one module-global truth test per constructor call.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import _integration
from ._integration import Integration

__all__ = [
    "add_listener",
    "dispatching_source",
    "ensure_installed",
    "holds_handle",
    "installed_classes",
    "is_event_source",
    "is_installed",
    "uninstall",
]

Listener = Callable[[object], None]

_listeners: tuple[Listener, ...] = ()
"""Replaced, never mutated: a constructor reads one consistent tuple without a lock."""
_listeners_lock = threading.Lock()


class _Constructing(threading.local):
    """Objects whose ``__init__`` runs on this thread: only the outermost notifies.

    ``threading.local`` is the C implementation: using it on an SDK thread does
    not register a ``_DummyThread``.
    """

    def __init__(self) -> None:
        self.stack: list[object] = []


_constructing = _Constructing()
_install_lock = threading.Lock()
_installed: dict[type, tuple[Callable[..., None], Callable[..., None]]] = {}
"""class -> (original ``__init__``, our wrapper); empty when not installed.
Mutated in place only, so aliases of it (``_guarded._installed``) stay valid."""
_owners: dict[type, Integration] = {}
"""Tracked class -> the integration that declared it (also for subclasses, cached)."""
_is_installed = False
"""Set once every class is patched: a racing first call must not see half of them."""


# -- listeners -----------------------------------------------------------------


def add_listener(fn: Listener) -> Callable[[], None]:
    """Call ``fn(obj)`` with every SDK object constructed from now on; returns a remover.

    Installs the constructor hook if needed. Adding the same function twice
    calls it twice. The remover is idempotent and removes only this addition.
    """
    if not callable(fn):
        raise TypeError(f"listener must be callable, got {type(fn).__name__}")
    global _listeners  # noqa: PLW0603 - replaced under the lock
    ensure_installed()
    token = _Entry(fn)
    with _listeners_lock:
        _listeners = (*_listeners, token)

    def remove() -> None:
        global _listeners  # noqa: PLW0603 - replaced under the lock
        with _listeners_lock:
            _listeners = tuple(entry for entry in _listeners if entry is not token)

    return remove


class _Entry:
    """One addition of a listener: removing it must not remove an equal other one."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Listener) -> None:
        self._fn = fn

    def __call__(self, obj: object) -> None:
        self._fn(obj)


# -- installation --------------------------------------------------------------


def is_installed() -> bool:
    return _is_installed


def ensure_installed() -> None:
    """Wrap the tracked constructors if not yet done; cheap afterwards.

    Imports no SDK: the classes of an SDK imported later are wrapped when it
    is imported (its integration activates).
    """
    if not _is_installed:
        _install()


def installed_classes() -> tuple[type, ...]:
    """The SDK classes whose ``__init__`` is wrapped (empty until installed)."""
    with _install_lock:
        return tuple(_installed)


def _owner(cls: type) -> Integration | None:
    owner = _owners.get(cls)
    if owner is None:
        for klass in cls.__mro__[1:]:
            owner = _owners.get(klass)
            if owner is not None:
                _owners[cls] = owner
                break
    return owner


def holds_handle(obj: object) -> bool:
    """Whether ``obj`` is of a tracked class and holds native state, by its integration's test.

    The same test the hook applies before notifying, so a full-heap scan can
    count exactly what the listeners would have seen.
    """
    owner = _owner(type(obj))
    if owner is None:
        return False
    return owner.holds_native is None or bool(owner.holds_native(obj))


def _install() -> None:
    """Wrap ``__init__`` of every class the integrations track; once, idempotent."""
    global _is_installed  # noqa: PLW0603 - set under the lock
    tracked = _integration.tracked_classes()  # may load entry points: outside our lock
    with _install_lock:
        if _is_installed:
            return
        for integration, cls in tracked:
            _wrap(integration, cls)
        _is_installed = True
    # An SDK imported while the list above was read activated before the hook
    # counted as installed, so its listener call wrapped nothing: wrap it now.
    late = _integration.tracked_classes()
    with _install_lock:
        if _is_installed:
            for integration, cls in late:
                _wrap(integration, cls)


def _wrap(integration: Integration, cls: type) -> None:
    _owners.setdefault(cls, integration)
    if cls in _installed or "__init__" not in cls.__dict__:
        return  # a subclass without its own __init__ runs its base's wrapper
    original = cls.__dict__["__init__"]
    wrapper = _instrumented(original)
    setattr(cls, "__init__", wrapper)  # noqa: B010 - explicit class patch
    _installed[cls] = (original, wrapper)


def _on_activate(integration: Integration) -> None:
    """An SDK imported after the hook was installed: hook its classes now."""
    if not _is_installed or integration.classes is None:
        return
    classes = list(integration.classes())
    with _install_lock:
        if _is_installed:
            for cls in classes:
                _wrap(integration, cls)


_integration.on_activate(_on_activate)


def uninstall() -> None:
    """Restore the tracked constructors (tests); leaves anyone else's patch alone.

    Listeners stay registered but are not called until something installs
    the hook again (``add_listener``, :func:`ensure_installed`).
    """
    global _is_installed  # noqa: PLW0603 - set under the lock
    with _install_lock:
        _is_installed = False
        for cls, (original, wrapper) in _installed.items():
            if cls.__dict__.get("__init__") is wrapper:
                setattr(cls, "__init__", original)  # noqa: B010
        _installed.clear()
        _owners.clear()
        _event_sources.clear()


def _instrumented(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: object, *args: Any, **kwargs: Any) -> None:
        # The only cost while nobody listens: one global truth test.
        if not _listeners:
            original(self, *args, **kwargs)
            return
        _construct_notifying(original, self, args, kwargs)

    return __init__


def _construct_notifying(
    original: Callable[..., None], obj: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    stack = _constructing.stack
    # A super().__init__ chain runs nested on one thread, so the same object is
    # on top of the stack: only the outermost (most derived) constructor notifies.
    if stack and stack[-1] is obj:
        original(obj, *args, **kwargs)
        return
    stack.append(obj)
    try:
        original(obj, *args, **kwargs)
    finally:
        stack.pop()
    # Notified once its outermost constructor succeeded, and only if it really
    # holds a native handle (some constructors create one conditionally).
    if holds_handle(obj):
        for listener in _listeners:  # the tuple read now: removal mid-loop is harmless
            listener(obj)


# -- which object an SDK callback fires for -------------------------------------


# -- which object an SDK callback fires for -------------------------------------

_event_sources: dict[type, bool] = {}


def is_event_source(obj: object) -> bool:
    """Whether ``obj``'s integration can tell which object its callback threads fire for."""
    cls = type(obj)
    known = _event_sources.get(cls)
    if known is None:
        owner = _owner(cls)
        known = _event_sources[cls] = owner is not None and owner.callback_object is not None
    return known


def dispatching_source() -> object | None:
    """The object whose callback the calling (SDK callback) thread is dispatching, or None.

    Found from the thread's outermost frame by the integration whose modules
    that frame runs (for Azure Speech: the ctypes trampoline's ``obj`` local).
    """
    frame: FrameType | None = sys._getframe(1)
    outermost = sys._getframe(1)
    while frame is not None:
        outermost, frame = frame, frame.f_back
    return _integration.callback_object(outermost)
