"""The one seam between nativeguard's core and the SDKs it releases: :class:`Integration`.

Why: the core (scope, reaper, ``@guarded``, the live-object registry,
snapshots, worker pools) must work the same for every native-backed SDK, so
it never names one. It asks the registered integrations instead: how to
release an object, which classes to watch being constructed, what native
resources are alive, which callbacks an object holds, whether the calling
thread is one of the SDK's callback threads and for which object, what a
worker pool should import up front.

Integrations come from two places: :func:`register_integration` (the built-in
ones and user code call it) and the entry-point group
``nativeguard.integrations`` of installed distributions, loaded once, lazily,
the first time the core needs the list (an entry point names an
:class:`Integration` or a callable returning one). Reading the list takes no
lock: it is a tuple replaced whole, so a constructor hook on an SDK thread
reads one consistent value.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from types import FrameType
from typing import Any

from ._adapters import ReleaseStep, register_adapter
from ._errors import NativeGuardError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Integration",
    "IntegrationError",
    "callback_integration",
    "callback_object",
    "callbacks_of",
    "counted_types",
    "integration_for_module",
    "integrations",
    "native_counters",
    "preload_modules",
    "register_integration",
    "tracked_classes",
]

ENTRY_POINT_GROUP = "nativeguard.integrations"

Matcher = type | tuple[type, ...] | Callable[[object], bool]


class IntegrationError(NativeGuardError, ValueError):
    """An integration is malformed, clashes with a registered one, or its entry point failed."""


@dataclass(frozen=True)
class Integration:
    """What nativeguard needs to know about one SDK; every field but ``name`` is optional.

    Callables are called lazily (the first snapshot, guarded call or scope
    release that needs them), so declaring an integration imports nothing.
    """

    name: str
    """Short identifier, e.g. ``"azure_speech"``; unique among registered integrations."""
    modules: tuple[str, ...] = ()
    """The SDK's top-level packages: a foreign thread whose outermost frame runs
    code from their directories is one of the SDK's callback threads, and a value
    of a type from them is described as that SDK's native state."""
    release: Sequence[tuple[str, Matcher, Sequence[ReleaseStep]]] = ()
    """``(name, type | types | predicate, steps)`` per kind of object, as for
    :func:`~nativeguard.register_adapter`, registered in this order."""
    classes: Callable[[], Iterable[type]] | None = None
    """Classes whose construction is tracked (``@guarded`` releases them; the
    live-object registry, snapshots and the pytest plugin count them). Each
    class that defines ``__init__`` gets one wrapper."""
    holds_native: Callable[[object], bool] | None = None
    """Whether a constructed instance of ``classes`` really holds native state
    (some constructors allocate conditionally); None counts every instance."""
    counted: Callable[[], Iterable[type]] | None = None
    """Classes that leak checks count but ``@guarded`` leaves alone (executors,
    credentials)."""
    counters: Callable[[], Mapping[str, int]] | None = None
    """Live native resources, name -> count (e.g. a native handle table); may
    raise :class:`~nativeguard.NativeDiagnosticsUnavailable`."""
    callbacks: Callable[[object], Iterable[Any]] | None = None
    """The callback slots an object holds: each has ``is_connected()`` and
    ``disconnect_all()``; a Scope disconnects them at release."""
    callback_object: Callable[[FrameType], object | None] | None = None
    """Given the outermost frame of one of the SDK's callback threads, the
    object whose callback it is dispatching (None if unknown)."""
    preload: tuple[str, ...] = ()
    """Modules a worker pool imports once in its fork server."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise IntegrationError(
                f"Integration name must be an identifier str, got {self.name!r:.60}"
            )
        for field_name in ("modules", "preload"):
            value = getattr(self, field_name)
            if not isinstance(value, tuple) or not all(
                isinstance(item, str) and item for item in value
            ):
                raise IntegrationError(
                    f"Integration {self.name!r}: {field_name} must be a tuple of module "
                    f"names, got {value!r:.80}"
                )
        for field_name in (
            "classes",
            "holds_native",
            "counted",
            "counters",
            "callbacks",
            "callback_object",
        ):
            value = getattr(self, field_name)
            if value is not None and not callable(value):
                raise IntegrationError(
                    f"Integration {self.name!r}: {field_name} must be callable or None, "
                    f"got {type(value).__name__}"
                )
        if isinstance(self.release, (str, bytes)) or not isinstance(self.release, Iterable):
            raise IntegrationError(
                f"Integration {self.name!r}: release must be a sequence of "
                f"(name, type or predicate, steps), got {type(self.release).__name__}"
            )
        for index, entry in enumerate(self.release):
            if not isinstance(entry, tuple) or len(entry) != 3 or not isinstance(entry[0], str):
                raise IntegrationError(
                    f"Integration {self.name!r}: release[{index}] must be a tuple "
                    f"(name, type or predicate, steps), got {entry!r:.80}"
                )
            _, matcher, steps = entry
            if not (
                isinstance(matcher, type)
                or (isinstance(matcher, tuple) and all(isinstance(t, type) for t in matcher))
                or callable(matcher)
            ):
                raise IntegrationError(
                    f"Integration {self.name!r}: release[{index}] must match with a type, a "
                    f"tuple of types or a predicate, got {type(matcher).__name__}"
                )
            if (
                isinstance(steps, (str, bytes))
                or not isinstance(steps, Iterable)
                or not all(callable(step) for step in steps)
            ):
                raise IntegrationError(
                    f"Integration {self.name!r}: release[{index}]'s steps must be a sequence "
                    f"of callables step(obj, timeout_s), got {steps!r:.80}"
                )


_integrations: tuple[Integration, ...] = ()
_lock = threading.RLock()
_entry_points_loaded = False
_listeners: list[Callable[[Integration], None]] = []


def register_integration(integration: Integration) -> Integration:
    """Make ``integration`` known to the core; returns it.

    Registering the same object again does nothing; another integration with
    a registered name raises :class:`IntegrationError`. Its release steps are
    registered as adapters at once (later registrations win), and if the
    constructor hook is already installed its classes are hooked now.
    """
    global _integrations  # noqa: PLW0603 - replaced under the lock
    if not isinstance(integration, Integration):
        raise TypeError(
            f"register_integration() takes an Integration, got {type(integration).__name__}"
        )
    with _lock:
        for known in _integrations:
            if known is integration:
                return integration
            if known.name == integration.name:
                raise IntegrationError(
                    f"an integration named {integration.name!r} is already registered"
                )
        for label, matcher, steps in integration.release:
            register_adapter(matcher, steps, name=label)
        _integrations = (*_integrations, integration)
        listeners = list(_listeners)
    for listener in listeners:
        listener(integration)
    return integration


def on_register(listener: Callable[[Integration], None]) -> None:
    """Call ``listener(integration)`` for each integration registered from now on (core use)."""
    with _lock:
        _listeners.append(listener)


def _load_entry_points() -> None:
    global _entry_points_loaded  # noqa: PLW0603 - set under the lock
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    # Every entry point is tried; the broken ones are raised together, once,
    # after the others are registered (the first need reports them).
    failures: list[str] = []
    first: Exception | None = None
    for entry_point in found:
        where = f"entry point {entry_point.name!r} ({entry_point.value})"
        try:
            value = entry_point.load()
            integration = value if isinstance(value, Integration) else value()
            if not isinstance(integration, Integration):
                raise TypeError(
                    f"it gave a {type(integration).__name__}, not a nativeguard.Integration"
                )
            if not any(known is integration for known in _integrations):
                register_integration(integration)
        except Exception as error:
            first = first or error
            failures.append(f"{where}: {error!r}")
    if failures:
        raise IntegrationError(
            f"{len(failures)} of the {ENTRY_POINT_GROUP!r} entry points failed to load: "
            + "; ".join(failures)
        ) from first


def integrations() -> tuple[Integration, ...]:
    """Every registered integration, in registration order (entry points loaded on first call)."""
    if not _entry_points_loaded:
        _load_entry_points()
    return _integrations


# -- what the core asks ---------------------------------------------------------


def tracked_classes() -> list[tuple[Integration, type]]:
    """(integration, class) for every class whose construction is tracked."""
    found: list[tuple[Integration, type]] = []
    for integration in integrations():
        if integration.classes is not None:
            found.extend((integration, cls) for cls in integration.classes())
    return found


def counted_types() -> list[type]:
    """Classes leak checks count without ``@guarded`` releasing them, without duplicates."""
    found: dict[type, None] = {}
    for integration in integrations():
        if integration.counted is not None:
            found.update(dict.fromkeys(integration.counted()))
    return list(found)


def native_counters() -> dict[str, int]:
    """Every integration's live native resources, merged (zero counts dropped).

    An integration whose counters are unavailable here (it raised
    :class:`~nativeguard.NativeDiagnosticsUnavailable`) contributes nothing.
    """
    from ._errors import NativeDiagnosticsUnavailable  # noqa: PLC0415

    merged: dict[str, int] = {}
    for integration in integrations():
        if integration.counters is None:
            continue
        try:
            counts = integration.counters()
        except NativeDiagnosticsUnavailable:
            continue
        for name, count in counts.items():
            if count:
                merged[name] = merged.get(name, 0) + count
    return merged


def callbacks_of(obj: object) -> list[Any]:
    """The callback slots ``obj`` holds, as every integration finds them."""
    found: list[Any] = []
    for integration in _integrations:
        if integration.callbacks is not None:
            found.extend(integration.callbacks(obj))
    return found


def _code_prefix(module_name: str) -> str | None:
    """Where the module's code lives: a package's directory, a plain module's file."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path:
        return None
    if hasattr(module, "__path__"):
        return os.path.dirname(os.path.abspath(path)) + os.sep
    return os.path.abspath(path)


def _owner_of_frame(frame: FrameType) -> Integration | None:
    filename = os.path.abspath(frame.f_code.co_filename)
    for integration in _integrations:
        for module_name in integration.modules:
            prefix = _code_prefix(module_name)
            if prefix is not None and filename.startswith(prefix):
                return integration
    return None


def callback_integration(outermost: FrameType | None) -> Integration | None:
    """The integration whose SDK code ``outermost`` (a thread's outermost frame) runs, or None."""
    return None if outermost is None else _owner_of_frame(outermost)


def callback_object(outermost: FrameType) -> object | None:
    """The object whose callback the thread with this outermost frame is dispatching."""
    owner = _owner_of_frame(outermost)
    if owner is None or owner.callback_object is None:
        return None
    return owner.callback_object(outermost)


def integration_for_module(module_name: str) -> Integration | None:
    """The integration whose ``modules`` include ``module_name`` (or a parent package)."""
    for integration in _integrations:
        for prefix in integration.modules:
            if module_name == prefix or module_name.startswith(prefix + "."):
                return integration
    return None


def preload_modules() -> tuple[str, ...]:
    """Every integration's ``preload``, in order, without duplicates."""
    found: dict[str, None] = {}
    for integration in integrations():
        found.update(dict.fromkeys(integration.preload))
    return tuple(found)
