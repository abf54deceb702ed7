"""The one seam between nativeguard's core and the SDKs it releases: :class:`Integration`.

Why: the core (scope, reaper, ``@guarded``, the live-object registry,
snapshots, worker pools) must work the same for every native-backed SDK, so
it never names one. It asks the registered integrations instead: how to
release an object, which classes to watch being constructed, what native
resources are alive, which callbacks an object holds, whether the calling
thread is one of the SDK's callback threads and for which object, what a
worker pool should import up front.

An integration is declared without importing its SDK, and the core calls
its callables (``classes``, ``counted``, ``counters``, ``callbacks``,
``plain``, a lazy ``release``) only once one of its ``modules`` is imported:
it *activates* then, through a post-import hook, so ``import nativeguard``
loads no SDK, and an SDK imported after the constructor hook was installed
still has its classes tracked from its first object on.

Integrations come from two places: :func:`register_integration` (the built-in
ones and user code call it) and the entry-point group
``nativeguard.integrations`` of installed distributions, loaded once, lazily,
the first time the core needs the list (an entry point names an
:class:`Integration` or a callable returning one). Reading the list takes no
lock: it is a tuple replaced whole, so a constructor hook on an SDK thread
reads one consistent value.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import wrapt

from ._adapters import ReleaseStep, register_adapter
from ._errors import NativeGuardError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Integration",
    "IntegrationError",
    "activate_installed",
    "active_integrations",
    "callback_integration",
    "callback_object",
    "callbacks_of",
    "counted_types",
    "integration_for_module",
    "integrations",
    "is_active",
    "merged_counters",
    "native_counters",
    "native_counters_by_integration",
    "on_activate",
    "preload_modules",
    "register_integration",
    "to_detached_event",
    "to_plain",
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
    release: (
        Sequence[tuple[str, Matcher, Sequence[ReleaseStep]]]
        | Callable[[], Sequence[tuple[str, Matcher, Sequence[ReleaseStep]]]]
    ) = ()
    """``(name, type | types | predicate, steps)`` per kind of object, as for
    :func:`~nativeguard.register_adapter`, registered in this order; or a
    callable returning them, called when the integration activates (so the
    types can come from the SDK without importing it up front)."""
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
    raise :class:`~nativeguard.NativeDiagnosticsUnavailable`. A name ending in
    ``_bytes`` is a size, not a count: snapshots and leak reports show its
    delta, ``memory_breakdown().sdk_native_handles`` leaves it out."""
    callbacks: Callable[[object], Iterable[Any]] | None = None
    """The callback slots an object holds: each has ``is_connected()`` and
    ``disconnect_all()``; a Scope disconnects them at release."""
    callback_object: Callable[[FrameType], object | None] | None = None
    """Given the outermost frame of one of the SDK's callback threads, the
    object whose callback it is dispatching (None if unknown)."""
    preload: tuple[str, ...] = ()
    """Modules a worker pool imports once in its fork server."""
    plain: Callable[[object], object] | None = None
    """An SDK event or result as data that reaches no SDK object: what a
    ``connect(..., plain=True)`` callback receives and what a result kept past
    its block becomes."""
    detach_event: Callable[[object], object] | None = None
    """What an SDK event kept past its block becomes (a stand-in with the same
    attributes, as data); None uses ``plain``."""

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
            "plain",
            "detach_event",
        ):
            value = getattr(self, field_name)
            if value is not None and not callable(value):
                raise IntegrationError(
                    f"Integration {self.name!r}: {field_name} must be callable or None, "
                    f"got {type(value).__name__}"
                )
        if not callable(self.release):
            _check_release(self.name, self.release)

    def release_entries(self) -> tuple[tuple[str, Matcher, Sequence[ReleaseStep]], ...]:
        """The ``release`` entries, the callable form called (and checked) now."""
        if not callable(self.release):
            return tuple(self.release)
        entries = self.release()
        _check_release(self.name, entries)
        return tuple(entries)


def _check_release(name: str, release: object) -> None:
    if isinstance(release, (str, bytes)) or not isinstance(release, Iterable):
        raise IntegrationError(
            f"Integration {name!r}: release must be a sequence of "
            f"(name, type or predicate, steps) or a callable returning one, "
            f"got {type(release).__name__}"
        )
    for index, entry in enumerate(release):
        if not isinstance(entry, tuple) or len(entry) != 3 or not isinstance(entry[0], str):
            raise IntegrationError(
                f"Integration {name!r}: release[{index}] must be a tuple "
                f"(name, type or predicate, steps), got {entry!r:.80}"
            )
        _, matcher, steps = entry
        if not (
            isinstance(matcher, type)
            or (isinstance(matcher, tuple) and all(isinstance(t, type) for t in matcher))
            or callable(matcher)
        ):
            raise IntegrationError(
                f"Integration {name!r}: release[{index}] must match with a type, a "
                f"tuple of types or a predicate, got {type(matcher).__name__}"
            )
        if (
            isinstance(steps, (str, bytes))
            or not isinstance(steps, Iterable)
            or not all(callable(step) for step in steps)
        ):
            raise IntegrationError(
                f"Integration {name!r}: release[{index}]'s steps must be a sequence "
                f"of callables step(obj, timeout_s), got {steps!r:.80}"
            )


_integrations: tuple[Integration, ...] = ()
_lock = threading.RLock()
_entry_points_loaded = False
_listeners: list[Callable[[Integration], None]] = []
_active: frozenset[str] = frozenset()
"""Names of the activated integrations; replaced whole under the lock."""


def register_integration(integration: Integration) -> Integration:
    """Make ``integration`` known to the core; returns it.

    Registering the same object again does nothing; another integration with
    a registered name raises :class:`IntegrationError`. Registering imports
    nothing: the integration activates once one of its ``modules`` is imported
    (at once if one already is, or if it names none). Activating registers its
    release steps as adapters (later registrations win) and, if the
    constructor hook is installed, hooks its classes.
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
        _integrations = (*_integrations, integration)
    if not integration.modules:
        _activate(integration)
        return integration
    for module_name in integration.modules:
        # Called at once when the module is already imported, else right after
        # its import finishes, on the importing thread.
        wrapt.register_post_import_hook(functools.partial(_on_import, integration), module_name)
    return integration


def _on_import(integration: Integration, module: object) -> None:
    _activate(integration)


def _activate(integration: Integration) -> None:
    """Register ``integration``'s release steps and tell the listeners; once."""
    global _active  # noqa: PLW0603 - replaced under the lock
    with _lock:
        if integration.name in _active or not any(known is integration for known in _integrations):
            return
        try:
            entries = integration.release_entries()
        except IntegrationError:
            raise
        except Exception as error:  # a broken callable, named
            raise IntegrationError(
                f"Integration {integration.name!r}: its release callable failed: {error!r}"
            ) from error
        for label, matcher, steps in entries:
            register_adapter(matcher, steps, name=label)
        _active = _active | {integration.name}
        listeners = list(_listeners)
    for listener in listeners:
        listener(integration)


def is_active(integration: Integration) -> bool:
    """Whether ``integration``'s SDK is imported (or it names no module): the core may ask it."""
    return integration.name in _active


def active_integrations() -> tuple[Integration, ...]:
    """The registered integrations whose SDK is imported, in registration order."""
    return tuple(known for known in integrations() if known.name in _active)


def activate_installed() -> list[str]:
    """Import the SDK of every registered integration that is installed; returns the failures.

    For a session-wide baseline (the pytest plugin's warm-up): an SDK whose
    import creates process-lifetime native state (the Speech SDK 1.53 makes
    one ``ISpxAudioConfig`` handle) must not count as a leak of the first
    test that happens to import it. A module that is installed but fails to
    import is returned as ``"name: error"`` for the caller to report.
    """
    failures: list[str] = []
    for integration in integrations():
        for module_name in integration.modules[:1]:
            if module_name in sys.modules:
                continue
            try:
                if importlib.util.find_spec(module_name.split(".")[0]) is None:
                    continue
                importlib.import_module(module_name)
            except (ImportError, OSError) as error:
                failures.append(f"{module_name}: {error!r}")
    return failures


def on_activate(listener: Callable[[Integration], None]) -> None:
    """Call ``listener(integration)`` for each integration activated from now on (core use)."""
    with _lock:
        _listeners.append(listener)


def _load_entry_points() -> None:
    global _entry_points_loaded  # noqa: PLW0603 - set under the lock
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        from importlib import metadata  # noqa: PLC0415 - 10-20 ms, only once needed

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
    for integration in active_integrations():
        if integration.classes is not None:
            found.extend((integration, cls) for cls in integration.classes())
    return found


def counted_types() -> list[type]:
    """Classes leak checks count without ``@guarded`` releasing them, without duplicates."""
    found: dict[type, None] = {}
    for integration in active_integrations():
        if integration.counted is not None:
            found.update(dict.fromkeys(integration.counted()))
    return list(found)


def native_counters_by_integration() -> dict[str, dict[str, int]]:
    """Every active integration's live native resources, by integration name (zeros dropped).

    An integration whose counters are unavailable here (it raised
    :class:`~nativeguard.NativeDiagnosticsUnavailable`) contributes nothing.
    """
    from ._errors import NativeDiagnosticsUnavailable  # noqa: PLC0415

    found: dict[str, dict[str, int]] = {}
    for integration in active_integrations():
        if integration.counters is None:
            continue
        try:
            counts = integration.counters()
        except NativeDiagnosticsUnavailable:
            continue
        kept = {name: count for name, count in counts.items() if count}
        if kept:
            found[integration.name] = kept
    return found


def merged_counters(by_integration: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """One ``name -> count`` dict of :func:`native_counters_by_integration`'s answer."""
    merged: dict[str, int] = {}
    for counts in by_integration.values():
        for name, count in counts.items():
            merged[name] = merged.get(name, 0) + count
    return merged


def native_counters() -> dict[str, int]:
    """Every integration's live native resources, merged (zero counts dropped)."""
    return merged_counters(native_counters_by_integration())


def callbacks_of(obj: object) -> list[Any]:
    """The callback slots ``obj`` holds, as every integration finds them."""
    found: list[Any] = []
    for integration in _integrations:
        if integration.callbacks is not None and integration.name in _active:
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


def _converter(obj: object, *, event: bool) -> Callable[[object], object] | None:
    owner = integration_for_module(type(obj).__module__)
    if owner is None or not is_active(owner):
        return None
    if event and owner.detach_event is not None:
        return owner.detach_event
    return owner.plain


def to_plain(obj: object) -> object:
    """``obj`` (an SDK event or result) as its integration's plain data.

    Raises TypeError naming the type when no active integration converts it.
    """
    convert = _converter(obj, event=False)
    if convert is None:
        kind = type(obj)
        raise TypeError(
            f"no nativeguard integration turns a {kind.__module__}.{kind.__qualname__} "
            f"into plain data (an Integration's plain=...)"
        )
    return convert(obj)


def to_detached_event(obj: object) -> object:
    """What an SDK event kept past its block becomes (the integration's ``detach_event``).

    Falls back to the integration's ``plain``; TypeError naming the type when
    no active integration converts it.
    """
    convert = _converter(obj, event=True)
    if convert is None:
        return to_plain(obj)
    return convert(obj)
