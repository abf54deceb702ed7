"""Release steps per kind of object, and the registry a Scope consults.

The Azure Speech, azure-identity and ``concurrent.futures`` adapters below are
registered exactly the way a user registers one for another SDK.

A step may return an awaitable (``azure.identity.aio`` credentials close with
``async def close()``): ``Scope.aclose()`` awaits it with the step's bounded
wait; a synchronous ``close()`` refuses it with :class:`AsyncReleaseRequired`
instead of leaving a coroutine that is never awaited.
"""

from __future__ import annotations

import concurrent.futures
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
    "event_signals",
    "register_adapter",
    "run_bounded",
]

_R = TypeVar("_R")

ReleaseStep = Callable[[Any, float], object]
"""``step(obj, timeout_s)``: one release action; raise to report it failed.

Return None, or an awaitable for ``Scope.aclose()`` to await (bounded by ``timeout_s``).
"""


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


def event_signals(obj: object) -> list[Any]:
    """Every SDK ``EventSignal`` held by ``obj``, found by introspection.

    Signals live in name-mangled private attributes; scanning ``vars(obj)``
    covers signals a future SDK version adds, without a hard-coded list.
    """
    try:
        from azure.cognitiveservices.speech import EventSignal  # noqa: PLC0415
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return []
    try:
        values = list(vars(obj).values())
    except TypeError:
        return []
    return [value for value in values if isinstance(value, EventSignal)]


# -- built-in adapters ---------------------------------------------------------


def _call_if_present(method: str) -> ReleaseStep:
    # The Scope runs every step on a reaper thread with a bounded wait, so the
    # SDK future's unbounded get() is waited for here directly.
    def step(obj: Any, timeout_s: float) -> None:
        bound = getattr(obj, method, None)
        if bound is None:
            return
        result = bound()
        get = getattr(result, "get", None)
        if callable(get):
            get()

    step.__name__ = step.__qualname__ = f"{method}"
    return step


_STOP_TIMEOUT_PROPERTY = "SPEECH-StopRecognitionTimeoutInSeconds"


def _no_stop_wait(obj: Any, timeout_s: float) -> None:
    """Tell the SDK not to wait for its session to go idle when it stops or is torn down.

    Measured with SDK 1.53 (glibc 2.36) against the bundled service: after a
    session ended in an error (refused, dropped, malformed) or while it waits
    on a stalled service, both ``stop_*_async()`` and the native teardown
    block in ``CSpxAudioStreamSession::WaitForIdle`` for this property's 5 s
    (10 s per request). Set to 0 just before the release, stop takes 0.00-0.02 s
    and the teardown 0.01-0.03 s on every fault, and 0.031 s instead of
    0.038 s on the success path; the handle table is back at baseline each
    time. The property is read at stop time, so setting it here changes
    nothing while the session is in use.
    """
    properties = getattr(obj, "properties", None)
    setter = getattr(properties, "set_property_by_name", None)
    if callable(setter):
        setter(_STOP_TIMEOUT_PROPERTY, "0")


def _close(obj: Any, timeout_s: float) -> None:
    obj.close()


def _shutdown_executor(obj: Any, timeout_s: float) -> None:
    run_bounded(
        lambda: obj.shutdown(wait=True, cancel_futures=True),
        timeout_s,
        f"{type(obj).__name__}.shutdown()",
    )


def _has_plain_close(obj: object) -> bool:
    close = getattr(obj, "close", None)
    return callable(close) and not inspect.iscoroutinefunction(close)


def _async_close_method(obj: object) -> str | None:
    """``close`` or ``aclose``, whichever is an ``async def``; None if neither."""
    for name in ("close", "aclose"):
        method = getattr(obj, name, None)
        if method is not None and inspect.iscoroutinefunction(method):
            return name
    return None


def _has_async_close(obj: object) -> bool:
    return _async_close_method(obj) is not None


def _async_close(obj: Any, timeout_s: float) -> object:
    # Creating the coroutine runs nothing: the driver awaits it (aclose) or
    # closes it unstarted and reports why (close).
    name = _async_close_method(obj)
    return getattr(obj, name)() if name is not None else None


def _register_builtins() -> None:
    register_adapter(_has_plain_close, [_close], name="generic close()")
    # azure.identity.aio credentials (aiohttp transport), and any other client
    # with ``async def close()`` / ``aclose()``.
    register_adapter(_has_async_close, [_async_close], name="generic async close()")
    register_adapter(concurrent.futures.Executor, [_shutdown_executor], name="executor")
    try:
        import azure.cognitiveservices.speech as speechsdk  # noqa: PLC0415
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return
    register_adapter(
        speechsdk.audio.PushAudioInputStream, [_close], name="azure speech push stream"
    )
    register_adapter(speechsdk.Connection, [_close], name="azure speech connection")
    register_adapter(
        speechsdk.SpeechSynthesizer,
        [_call_if_present("stop_speaking_async")],
        name="azure speech synthesizer",
    )
    register_adapter(
        speechsdk.KeywordRecognizer,
        [_call_if_present("stop_recognition_async")],
        name="azure speech keyword recognizer",
    )
    register_adapter(
        speechsdk.Recognizer,
        [_no_stop_wait, _call_if_present("stop_continuous_recognition_async")],
        name="azure speech recognizer",
    )
    # Transcribers inherit stop_continuous_recognition_async only to raise
    # NotImplementedError from it; they stop with stop_transcribing_async.
    register_adapter(
        (
            speechsdk.transcription.ConversationTranscriber,
            speechsdk.transcription.MeetingTranscriber,
        ),
        [_no_stop_wait, _call_if_present("stop_transcribing_async")],
        name="azure speech transcriber",
    )


_register_builtins()
