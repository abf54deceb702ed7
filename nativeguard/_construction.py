"""One hook on the constructors of the Speech SDK's native-backed classes.

Everything in nativeguard that needs to see SDK objects as they are made
(``@guarded`` calls, the live-object registry behind ``snapshot()``) registers
a listener here instead of patching ``__init__`` itself: one wrapper per class,
installed once, however many features watch.

A listener is called with each newly constructed SDK object that holds a
native handle, on the constructing thread, after its outermost constructor
succeeded. That thread can be an SDK callback thread (event args and the
results they carry are built there), so listeners must be quick, must not
release anything, must not call ``threading.current_thread()`` (it would leave
a ``_DummyThread`` behind) and must not raise: an exception propagates out of
the SDK constructor.

Cost: with no listener, one module-global truth test per constructor call.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = [
    "add_listener",
    "dispatching_source",
    "ensure_installed",
    "handle_type",
    "holds_handle",
    "installed_classes",
    "is_event_source",
    "is_installed",
    "uninstall",
]

Listener = Callable[[object], None]

_SDK_PACKAGE = "azure.cognitiveservices.speech"
# Imported explicitly: walking the package path would also try to import the
# core's shared libraries (``libpal_azure_c_shared.so``) as extension modules.
_SDK_SUBMODULES = (
    "speech",
    "audio",
    "transcription",
    "translation",
    "dialog",
    "languageconfig",
    "properties",
)

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
_handle_type: type | None = None
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
    """Wrap the SDK's constructors if not yet done (imports the SDK); cheap afterwards."""
    if not _is_installed:
        _install()


def installed_classes() -> tuple[type, ...]:
    """The SDK classes whose ``__init__`` is wrapped (empty until installed)."""
    with _install_lock:
        return tuple(_installed)


def handle_type() -> type | None:
    """The SDK's ``_Handle`` class, once installed."""
    return _handle_type


def holds_handle(obj: object) -> bool:
    """Whether ``obj``'s own attributes include an SDK native ``_Handle``.

    The same test the hook applies before notifying, so a full-heap scan can
    count exactly what the listeners would have seen.
    """
    namespace = getattr(obj, "__dict__", None)
    if type(namespace) is not dict or _handle_type is None:
        return False
    return any(type(value) is _handle_type for value in namespace.values())


def _install() -> None:
    """Wrap ``__init__`` of every native-backed SDK class; once, idempotent."""
    global _handle_type, _is_installed  # noqa: PLW0603 - set under the lock
    with _install_lock:
        if _is_installed:
            return
        from azure.cognitiveservices.speech.interop import _Handle  # noqa: PLC0415

        _handle_type = _Handle
        for cls in _native_backed_classes(_Handle):
            original = cls.__dict__["__init__"]
            wrapper = _instrumented(original)
            setattr(cls, "__init__", wrapper)  # noqa: B010 - explicit class patch
            _installed[cls] = (original, wrapper)
        _is_installed = True


def uninstall() -> None:
    """Restore the SDK's constructors (tests); leaves anyone else's patch alone.

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


def _native_backed_classes(handle_type: type) -> list[type]:
    """SDK classes whose construction (theirs or a base's) creates a ``_Handle``.

    Found by introspection: a class qualifies when an ``__init__`` in its MRO
    names ``_Handle`` in its code. Every such class with its own ``__init__``
    is wrapped, so the most derived constructor is the one that notifies.
    """
    for submodule in _SDK_SUBMODULES:
        try:
            importlib.import_module(f"{_SDK_PACKAGE}.{submodule}")
        except ImportError:  # pragma: no cover - a future SDK may drop one
            continue
    found: dict[type, None] = {}
    for module_name, module in list(sys.modules.items()):
        if module_name != _SDK_PACKAGE and not module_name.startswith(_SDK_PACKAGE + "."):
            continue
        for value in list(vars(module).values()):
            if (
                isinstance(value, type)
                and value is not handle_type
                and value.__module__.startswith(_SDK_PACKAGE)
                and "__init__" in value.__dict__
                and _constructs_handle(value)
            ):
                found[value] = None
    return list(found)


def _constructs_handle(cls: type) -> bool:
    for klass in cls.__mro__:
        init = inspect.unwrap(klass.__dict__.get("__init__", object.__init__))
        code = getattr(init, "__code__", None)
        if code is not None and "_Handle" in code.co_names:
            return True
    return False


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

_EVENT_SOURCE_NAMES = ("Recognizer", "SpeechSynthesizer", "Connection", "KeywordRecognizer")


_event_sources: dict[type, bool] = {}


def is_event_source(obj: object) -> bool:
    """Whether ``obj`` is an SDK object whose event signals call back on SDK threads."""
    cls = type(obj)
    known = _event_sources.get(cls)
    if known is None:
        known = _event_sources[cls] = any(
            base.__name__ in _EVENT_SOURCE_NAMES and base.__module__.startswith(_SDK_PACKAGE)
            for base in cls.__mro__
        )
    return known


def _sdk_directory() -> str | None:
    module = sys.modules.get(_SDK_PACKAGE)
    path = getattr(module, "__file__", None)
    return path.rsplit("/", 1)[0] + "/" if path else None


def dispatching_source() -> object | None:
    """The SDK object whose event the calling SDK callback thread is dispatching, or None.

    Measured with SDK 1.53: every event reaches Python through a ctypes
    trampoline in the SDK's modules (``__session_started_callback`` and the
    like), the outermost frame of the callback thread, whose local ``obj`` is
    the recognizer or synthesizer the event belongs to.
    """
    frame: FrameType | None = sys._getframe(1)
    outermost = sys._getframe(1)
    while frame is not None:
        outermost, frame = frame, frame.f_back
    directory = _sdk_directory()
    if directory is None or not outermost.f_code.co_filename.startswith(directory):
        return None
    return outermost.f_locals.get("obj")
