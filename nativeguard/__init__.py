"""nativeguard: deterministic release of native-backed SDK objects, and proof of it."""

from __future__ import annotations

from ._errors import NativeGuardError, ProtocolError, ServiceError

__version__ = "0.1.0"

__all__ = [
    "NativeGuardError",
    "ProtocolError",
    "ServiceError",
    "__version__",
]
