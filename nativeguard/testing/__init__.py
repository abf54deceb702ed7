"""A local, protocol-compatible Azure Speech service for offline tests.

The real ``azure-cognitiveservices-speech`` SDK talks to :class:`SpeechService`
over loopback exactly as it talks to Azure, so tests exercise the native core.
:class:`TokenService` is a local managed-identity endpoint for
``azure.identity.ManagedIdentityCredential``.
"""

from __future__ import annotations

from ._audio import write_wav
from ._faults import FaultPlan, Faults
from ._script import DEFAULT_PHRASES, TICKS_PER_SECOND, Phrase, RecognitionStatus, Script
from ._speech_service import (
    DEFAULT_KEY,
    DEFAULT_MAX_RECORDS,
    MAX_RECORD_ITEMS,
    ConnectionLog,
    SpeechService,
)
from ._token_service import MAX_TOKEN_REQUESTS, TokenRequest, TokenService

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_PHRASES",
    "MAX_RECORD_ITEMS",
    "MAX_TOKEN_REQUESTS",
    "TICKS_PER_SECOND",
    "ConnectionLog",
    "FaultPlan",
    "Faults",
    "Phrase",
    "RecognitionStatus",
    "Script",
    "SpeechService",
    "TokenRequest",
    "TokenService",
    "write_wav",
]
