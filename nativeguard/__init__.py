"""nativeguard: deterministic release of native-backed SDK objects, and proof of it."""

from __future__ import annotations

from ._adapters import Adapter, ReleaseStep, register_adapter
from ._calls import (
    Transcript,
    arecognize_once,
    asynthesize,
    atranscribe,
    recognize_once,
    synthesize,
    transcribe,
)
from ._errors import (
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
)
from ._extract import (
    Cancellation,
    Extracted,
    FrozenMap,
    Segment,
    SessionEvent,
    SpeechDetected,
    SynthesisResult,
    WordBoundary,
    extract,
    plain,
)
from ._managed import (
    Managed,
    managed,
    managed_connection,
    managed_credential,
    managed_executor,
    managed_recognizer,
    managed_synthesizer,
    managed_transcriber,
    managed_translation_recognizer,
)
from ._scope import Scope, ScopeStatistics

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "CallbackError",
    "Cancellation",
    "ClosedResourceError",
    "Extracted",
    "FrozenMap",
    "LeakError",
    "Managed",
    "NativeDiagnosticsFormatError",
    "NativeDiagnosticsUnavailable",
    "NativeGuardError",
    "ProtocolError",
    "ReleaseError",
    "ReleaseStep",
    "ReleaseTimeout",
    "RequestTimeout",
    "Scope",
    "ScopeStatistics",
    "Segment",
    "ServiceError",
    "SessionEvent",
    "SpeechDetected",
    "SynthesisResult",
    "Transcript",
    "WordBoundary",
    "__version__",
    "arecognize_once",
    "asynthesize",
    "atranscribe",
    "extract",
    "managed",
    "managed_connection",
    "managed_credential",
    "managed_executor",
    "managed_recognizer",
    "managed_synthesizer",
    "managed_transcriber",
    "managed_translation_recognizer",
    "plain",
    "recognize_once",
    "register_adapter",
    "synthesize",
    "transcribe",
]
