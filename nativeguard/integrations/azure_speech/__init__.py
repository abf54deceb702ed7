"""The Azure Speech SDK (``azure-cognitiveservices-speech``) as a nativeguard integration.

Written only against nativeguard's public API. It declares:

- release steps per kind of object (stop recognition or synthesis without the
  SDK's idle wait, close streams and connections);
- the tracked classes: every SDK class whose construction creates a native
  ``_Handle``, found by introspection, and an instance counts only while it
  holds one;
- the SDK's own native handle table as counters (``ISpxRecognizer`` -> 1);
- the ``EventSignal`` slots an object holds, which a Scope disconnects;
- how a callback thread tells which object it fires for (the ctypes
  trampoline's ``obj`` local);
- the SDK as what worker pools preload.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from types import FrameType
from typing import Any

from nativeguard import Integration

from ._handles import native_diagnostics_available, native_handle_count, native_handles

__all__ = [
    "INTEGRATION",
    "event_signals",
    "native_classes",
    "native_diagnostics_available",
    "native_handle_count",
    "native_handles",
]

SDK_PACKAGE = "azure.cognitiveservices.speech"
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


# -- the SDK, imported only once it is used ------------------------------------

_handle: type | None = None
"""The SDK's ``interop._Handle``, cached by the first call that needs it."""


def _sdk() -> Any:
    """The Speech SDK module (the integration is active, so it is imported already)."""
    return importlib.import_module(SDK_PACKAGE)


def _handle_type() -> type:
    global _handle  # noqa: PLW0603 - a cache of one class
    if _handle is None:
        _handle = importlib.import_module(f"{SDK_PACKAGE}.interop")._Handle
    return _handle


def _plain(obj: object) -> object:
    from ._extract import extract  # noqa: PLC0415 - imports the SDK: only when used

    return extract(obj)


def _detach_event(obj: object) -> object:
    from ._extract import detach_event  # noqa: PLC0415 - imports the SDK: only when used

    return detach_event(obj)


# -- release steps ------------------------------------------------------------


def _call_if_present(method: str) -> Any:
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


def _release() -> tuple[tuple[str, Any, tuple[Any, ...]], ...]:
    """The release steps per SDK type; called when the SDK is imported."""
    speechsdk: Any = _sdk()
    return (
        ("azure speech push stream", speechsdk.audio.PushAudioInputStream, (_close,)),
        ("azure speech connection", speechsdk.Connection, (_close,)),
        (
            "azure speech synthesizer",
            speechsdk.SpeechSynthesizer,
            (_call_if_present("stop_speaking_async"),),
        ),
        (
            "azure speech keyword recognizer",
            speechsdk.KeywordRecognizer,
            (_call_if_present("stop_recognition_async"),),
        ),
        (
            "azure speech recognizer",
            speechsdk.Recognizer,
            (_no_stop_wait, _call_if_present("stop_continuous_recognition_async")),
        ),
        # Transcribers inherit stop_continuous_recognition_async only to raise
        # NotImplementedError from it; they stop with stop_transcribing_async.
        (
            "azure speech transcriber",
            (
                speechsdk.transcription.ConversationTranscriber,
                speechsdk.transcription.MeetingTranscriber,
            ),
            (_no_stop_wait, _call_if_present("stop_transcribing_async")),
        ),
    )


# -- tracked classes ----------------------------------------------------------


def native_classes() -> list[type]:
    """SDK classes whose construction (theirs or a base's) creates a ``_Handle``.

    Found by introspection: a class qualifies when an ``__init__`` in its MRO
    names ``_Handle`` in its code. Every such class with its own ``__init__``
    is listed, so the most derived constructor is the one that notifies.
    """
    handle_type = _handle_type()
    for submodule in _SDK_SUBMODULES:
        try:
            importlib.import_module(f"{SDK_PACKAGE}.{submodule}")
        except ImportError:  # pragma: no cover - a future SDK may drop one
            continue
    found: dict[type, None] = {}
    for module_name, module in list(sys.modules.items()):
        if module_name != SDK_PACKAGE and not module_name.startswith(SDK_PACKAGE + "."):
            continue
        for value in list(vars(module).values()):
            if (
                isinstance(value, type)
                and value is not handle_type
                and value.__module__.startswith(SDK_PACKAGE)
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


def holds_handle(obj: object) -> bool:
    """Whether ``obj``'s own attributes include an SDK native ``_Handle``."""
    namespace = getattr(obj, "__dict__", None)
    if type(namespace) is not dict:
        return False
    handle_type = _handle or _handle_type()
    return any(type(value) is handle_type for value in namespace.values())


# -- callbacks ----------------------------------------------------------------


def event_signals(obj: object) -> list[Any]:
    """Every SDK ``EventSignal`` held by ``obj``, found by introspection.

    Signals live in name-mangled private attributes; scanning ``vars(obj)``
    covers signals a future SDK version adds, without a hard-coded list.
    """
    try:
        values = list(vars(obj).values())
    except TypeError:
        return []
    sdk = sys.modules.get(SDK_PACKAGE)
    signal_type = getattr(sdk, "EventSignal", None)
    if not isinstance(signal_type, type):
        return []  # the SDK is not imported: obj holds none of its signals
    return [value for value in values if isinstance(value, signal_type)]


def _callback_object(outermost: FrameType) -> object | None:
    """Measured with SDK 1.53: every event reaches Python through a ctypes
    trampoline in the SDK's modules (``__session_started_callback`` and the
    like), the outermost frame of the callback thread, whose local ``obj`` is
    the recognizer or synthesizer the event belongs to.
    """
    return outermost.f_locals.get("obj")


def _counters() -> dict[str, int]:
    return native_handles()


INTEGRATION = Integration(
    name="azure_speech",
    modules=(SDK_PACKAGE,),
    release=_release,
    classes=native_classes,
    holds_native=holds_handle,
    counters=_counters,
    callbacks=event_signals,
    callback_object=_callback_object,
    plain=_plain,
    detach_event=_detach_event,
    # Measured safe for SDK 1.53: importing it (and building a SpeechConfig)
    # starts no native thread, so a fork server stays single-threaded.
    preload=(SDK_PACKAGE,),
)
