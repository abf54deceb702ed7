"""nativeguard: deterministic release of native-backed SDK objects, and proof of it."""

from __future__ import annotations

from . import isolate, verify
from ._adapters import Adapter, ReleaseStep, register_adapter, run_bounded
from ._calls import (
    Transcript,
    arecognize_once,
    asynthesize,
    atranscribe,
    recognize_once,
    synthesize,
    transcribe,
)
from ._check import Allow, assert_no_leaks, check
from ._errors import (
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
from ._guarded import GuardStatistics, Survivor, SurvivorReport, bind, current_scope, guarded
from ._integration import Integration, IntegrationError, register_integration
from ._leakcheck import LeakCheck, leak_check
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
from ._report import LeakReport
from ._scope import (
    ReleaseMode,
    Scope,
    ScopeStatistics,
    configure,
    creation_tracebacks_enabled,
    set_creation_tracebacks,
)

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
    "plain",
    "recognize_once",
    "register_adapter",
    "register_integration",
    "run_bounded",
    "set_creation_tracebacks",
    "synthesize",
    "transcribe",
    "verify",
]

# Last: the built-in integrations use the public names bound above.
from . import integrations
