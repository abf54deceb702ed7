"""Every exception nativeguard raises, rooted in :class:`NativeGuardError`.

Each one also subclasses the builtin that fits, so callers that already catch
``ValueError`` or ``RuntimeError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "NativeDiagnosticsFormatError",
    "NativeDiagnosticsUnavailable",
    "NativeGuardError",
    "ProtocolError",
    "ServiceError",
    "add_note",
]


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``, also on Python 3.10 where it does not exist yet."""
    notes = getattr(exc, "__notes__", None)
    if notes is None:
        notes = []
        exc.__notes__ = notes  # type: ignore[attr-defined]
    notes.append(note)


class NativeGuardError(Exception):
    """Base class of every nativeguard error."""


class ProtocolError(NativeGuardError, ValueError):
    """A websocket frame that does not follow the Speech SDK's protocol."""


class ServiceError(NativeGuardError, RuntimeError):
    """A local test service could not start, or was used in a state it cannot serve."""


class NativeDiagnosticsUnavailable(NativeGuardError, RuntimeError):
    """The Speech SDK is missing, or its core lacks the handle-table exports (older SDK)."""


class NativeDiagnosticsFormatError(NativeGuardError, ValueError):
    """The SDK's handle table came back in a shape this module does not understand."""
