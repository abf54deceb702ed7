"""nativeguard: deterministic release of native-backed SDK objects, and proof of it.

``import nativeguard`` loads no SDK: the Azure Speech names (``transcribe``,
``managed_transcriber``, ``extract``, ...) are exported lazily from
:mod:`nativeguard.integrations.azure_speech` and import the Speech SDK the first
time one is used; every integration activates when its SDK is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import isolate, verify
from ._core._adapters import Adapter, ReleaseStep, quick_step, register_adapter, run_bounded
from ._core._errors import (
    AsyncReleaseRequired,
    CallbackError,
    ClosedResourceError,
    LeakError,
    NativeDiagnosticsFormatError,
    NativeDiagnosticsUnavailable,
    NativeGuardError,
    ProtocolError,
    ReleaseError,
    ReleaseTimeout,
    RequestTimeout,
    ServiceError,
    detach_traceback,
)
from ._core._frozen import FrozenMap
from ._core._guarded import GuardStatistics, Survivor, SurvivorReport, bind, current_scope, guarded
from ._core._integration import Integration, IntegrationError, register_integration
from ._core._managed import Managed, managed, managed_credential, managed_executor
from ._core._redact import redact_text as redact
from ._core._scope import (
    ReleaseMode,
    Scope,
    ScopeStatistics,
    configure,
    creation_tracebacks_enabled,
    scopes_released,
    set_creation_tracebacks,
)
from .verify._check import Allow, assert_no_leaks, check
from .verify._leakcheck import LeakCheck, leak_check
from .verify._report import LeakReport

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "Allow",
    "AsyncReleaseRequired",
    "CallbackError",
    "Cancellation",
    "ClosedResourceError",
    "Extracted",
    "FrozenMap",
    "GuardStatistics",
    "Integration",
    "IntegrationError",
    "LeakCheck",
    "LeakError",
    "LeakReport",
    "Managed",
    "NativeDiagnosticsFormatError",
    "NativeDiagnosticsUnavailable",
    "NativeGuardError",
    "ProtocolError",
    "ReleaseError",
    "ReleaseMode",
    "ReleaseStep",
    "ReleaseTimeout",
    "RequestTimeout",
    "Scope",
    "ScopeStatistics",
    "Segment",
    "ServiceError",
    "SessionEvent",
    "SpeechDetected",
    "Survivor",
    "SurvivorReport",
    "SynthesisResult",
    "Transcript",
    "WordBoundary",
    "__version__",
    "arecognize_once",
    "assert_no_leaks",
    "asynthesize",
    "atranscribe",
    "bind",
    "check",
    "configure",
    "creation_tracebacks_enabled",
    "current_scope",
    "detach_traceback",
    "extract",
    "guarded",
    "integrations",
    "isolate",
    "leak_check",
    "managed",
    "managed_connection",
    "managed_credential",
    "managed_executor",
    "managed_recognizer",
    "managed_synthesizer",
    "managed_transcriber",
    "managed_translation_recognizer",
    "monitor",
    "plain",
    "quick_step",
    "recognize_once",
    "redact",
    "register_adapter",
    "register_integration",
    "run_bounded",
    "scopes_released",
    "set_creation_tracebacks",
    "synthesize",
    "transcribe",
    "verify",
]

# Exported from the Speech integration, imported on first use (PEP 562).
_SPEECH = "nativeguard.integrations.azure_speech"
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "Transcript",
            "arecognize_once",
            "asynthesize",
            "atranscribe",
            "recognize_once",
            "redact",
            "synthesize",
            "transcribe",
        ),
        f"{_SPEECH}._calls",
    ),
    **dict.fromkeys(
        (
            "Cancellation",
            "Extracted",
            "Segment",
            "SessionEvent",
            "SpeechDetected",
            "SynthesisResult",
            "WordBoundary",
            "extract",
            "plain",
        ),
        f"{_SPEECH}._extract",
    ),
    **dict.fromkeys(
        (
            "managed_connection",
            "managed_recognizer",
            "managed_synthesizer",
            "managed_transcriber",
            "managed_translation_recognizer",
        ),
        f"{_SPEECH}._managed",
    ),
}

if TYPE_CHECKING:
    from . import monitor
    from .integrations.azure_speech._calls import (
        Transcript,
        arecognize_once,
        asynthesize,
        atranscribe,
        recognize_once,
        synthesize,
        transcribe,
    )
    from .integrations.azure_speech._extract import (
        Cancellation,
        Extracted,
        Segment,
        SessionEvent,
        SpeechDetected,
        SynthesisResult,
        WordBoundary,
        extract,
        plain,
    )
    from .integrations.azure_speech._managed import (
        managed_connection,
        managed_recognizer,
        managed_synthesizer,
        managed_transcriber,
        managed_translation_recognizer,
    )


def __getattr__(name: str) -> Any:
    if name == "monitor":  # its Prometheus client is optional: loaded when asked for
        return importlib.import_module("nativeguard.monitor")
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'nativeguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # the next access is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# Last: the built-in integrations use the public names bound above.
from . import integrations  # noqa: E402
