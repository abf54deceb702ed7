"""Release steps per kind of object, and the registry a Scope consults.

The SDK-agnostic adapters (a plain ``close()``, an ``async def close()``) are
registered here; every SDK's own come from its integration
(``nativeguard/integrations/``), registered through the same public API.

A step may return an awaitable (``azure.identity.aio`` credentials close with
``async def close()``): ``Scope.aclose()`` awaits it with the step's bounded
wait; a synchronous ``close()`` refuses it with :class:`AsyncReleaseRequired`
instead of leaving a coroutine that is never awaited.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ._errors import ReleaseTimeout

__all__ = [
    "Adapter",
    "ReleaseStep",
    "adapter_for",
    "is_quick",
    "quick_step",
    "register_adapter",
    "run_bounded",
]

_R = TypeVar("_R")

ReleaseStep = Callable[[Any, float], object]
"""``step(obj, timeout_s)``: one release action; raise to report it failed.

Return None, or an awaitable for ``Scope.aclose()`` to await (bounded by ``timeout_s``).
"""


_QUICK = "__nativeguard_quick__"
_S = TypeVar("_S", bound=Callable[..., object])


def quick_step(step: _S) -> _S:
    """Mark a release step as bounded by itself: it returns promptly (or within ``timeout_s``).

    A Scope runs every other step on a step-runner thread with a bounded wait,
    and the whole release as a job on the reaper, so a hanging SDK call cannot
    hold the caller: two thread hand-offs, 0.1-0.4 ms on an idle machine and
    milliseconds on a loaded one. When every step of a release is quick, and
    every finalizer of the scope too (``Scope.add_finalizer(quick_step(fn))``;
    nativeguard's own are), ``close()`` runs them on the calling thread
    instead; an interrupt (``KeyboardInterrupt``) that arrives meanwhile is
    raised once the release finished. Mark only steps that cannot block on
    a remote party or a lock held elsewhere: dropping references, freeing
    native memory, a ``close()`` whose waits have their own deadline.
    Returns ``step`` (a decorator).
    """
    if not callable(step):
        raise TypeError(f"quick_step() takes a release step callable, got {type(step).__name__}")
    try:
        setattr(step, _QUICK, True)
    except (AttributeError, TypeError):
        raise TypeError(
            f"quick_step() cannot mark {type(step).__name__} objects (no attributes); wrap the "
            "step in a def"
        ) from None
    return step


def is_quick(step: object) -> bool:
    """Whether ``step`` was marked with :func:`quick_step`."""
    return getattr(step, _QUICK, False) is True


@dataclass(frozen=True)
class Adapter:
    """How to release one kind of object: a predicate and ordered steps."""

    name: str
    matches: Callable[[object], bool]
    steps: tuple[ReleaseStep, ...]


_registry: list[Adapter] = []
_registry_lock = threading.Lock()


def register_adapter(
    type_or_predicate: type | tuple[type, ...] | Callable[[object], bool],
    release_steps: Sequence[ReleaseStep],
    *,
    name: str | None = None,
) -> Adapter:
    """Teach every Scope how to release a kind of object.

    Later registrations win over earlier ones, so users can override the
    built-in adapters.
    """
    matches: Callable[[object], bool]
    if isinstance(type_or_predicate, type) or (
        isinstance(type_or_predicate, tuple) and all(isinstance(t, type) for t in type_or_predicate)
    ):
        kinds = type_or_predicate

        def is_instance(obj: object) -> bool:
            return isinstance(obj, kinds)

        matches = is_instance
    elif callable(type_or_predicate):
        matches = type_or_predicate
    else:
        raise TypeError(
            "register_adapter takes a type, a tuple of types or a predicate callable, "
            f"got {type(type_or_predicate).__name__}"
        )
    if name is not None and not isinstance(name, str):
        raise TypeError(f"register_adapter's name must be a str or None, got {type(name).__name__}")
    label = name or str(getattr(type_or_predicate, "__qualname__", repr(type_or_predicate)))
    if isinstance(release_steps, (str, bytes)) or not isinstance(release_steps, Iterable):
        raise TypeError(
            "register_adapter's release_steps must be a sequence of callables "
            f"step(obj, timeout_s), got {type(release_steps).__name__}"
        )
    steps = tuple(release_steps)
    for index, step in enumerate(steps):
        if not callable(step):
            raise TypeError(
                f"register_adapter's release_steps[{index}] is not callable: {type(step).__name__}"
            )
    adapter = Adapter(label, matches, steps)
    with _registry_lock:
        _registry.append(adapter)
    return adapter


def adapter_for(obj: object) -> Adapter | None:
    """The most recently registered adapter that matches ``obj``.

    A predicate that raises propagates: the Scope records it as that object's
    failure and goes on with the others. No lock: copying the list is atomic,
    and a lock could be held by the code a signal handler interrupted.
    """
    for adapter in reversed(list(_registry)):
        if adapter.matches(obj):
            return adapter
    return None


def run_bounded(
    action: Callable[[], _R],
    timeout_s: float,
    what: str,
    *,
    timeout_error: type[Exception] = ReleaseTimeout,
) -> _R:
    """Run a blocking SDK call on a helper thread, waiting at most ``timeout_s``.

    ``future.get()`` of the SDK has no timeout of its own; a stalled service
    must not hang release (or a caller) forever. Returns what ``action``
    returned, re-raises what it raised, raises ``timeout_error`` on time-out.
    """
    outcome: list[_R] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(action())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    worker = threading.Thread(target=target, name=f"nativeguard-wait: {what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise timeout_error(f"{what} did not finish within {timeout_s:g} s")
    if failure:
        raise failure[0]
    return outcome[0]


# -- built-in adapters ---------------------------------------------------------


def _has_plain_close(obj: object) -> bool:
    close = getattr(obj, "close", None)
    return callable(close) and not inspect.iscoroutinefunction(close)


_CACHE_LIMIT = 4096
_async_close_by_type: dict[type, str | None] = {}
"""``_async_close_method``'s answers for objects whose close methods come from their class."""


def _async_close_method(obj: object) -> str | None:
    """``close`` or ``aclose``, whichever is an ``async def``; None if neither.

    Cached by type (every managed block and every release asks) unless the
    object carries its own ``close``/``aclose`` in its ``__dict__``.
    """
    cls = type(obj)
    own = getattr(obj, "__dict__", None)
    cacheable = not (isinstance(own, dict) and ("close" in own or "aclose" in own))
    if cacheable and cls in _async_close_by_type:
        return _async_close_by_type[cls]
    found: str | None = None
    for name in ("close", "aclose"):
        method = getattr(obj, name, None)
        if method is not None and inspect.iscoroutinefunction(method):
            found = name
            break
    if cacheable:
        if len(_async_close_by_type) >= _CACHE_LIMIT:
            _async_close_by_type.clear()  # classes made at run time must not grow it for good
        _async_close_by_type[cls] = found
    return found


def _has_async_close(obj: object) -> bool:
    return _async_close_method(obj) is not None


def _async_close(obj: Any, timeout_s: float) -> object:
    # Creating the coroutine runs nothing: the driver awaits it (aclose) or
    # closes it unstarted and reports why (close).
    name = _async_close_method(obj)
    return getattr(obj, name)() if name is not None else None


def _close(obj: Any, timeout_s: float) -> None:
    obj.close()


def _register_builtins() -> None:
    register_adapter(_has_plain_close, [_close], name="generic close()")
    # azure.identity.aio credentials (aiohttp transport), and any other client
    # with ``async def close()`` / ``aclose()``.
    register_adapter(_has_async_close, [_async_close], name="generic async close()")


_register_builtins()
