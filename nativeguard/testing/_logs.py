"""Loggers for the bundled services that never let a secret reach a log record.

At DEBUG, ``websockets`` logs every handshake header and frame it sees, so a
client's ``Ocp-Apim-Subscription-Key`` or ``Authorization: Bearer`` token would
be printed verbatim. The services hand ``websockets`` a logger of their own
(a child of the library's, so logging set up for ``websockets`` still applies)
whose filter redacts every record when it is created: the message is rendered
and masked, the arguments dropped, and an exception's traceback rendered,
masked and kept as text only, so no handler or formatter downstream can see
the original values.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from .._core._redact import REDACTED, SECRET_HEADERS, redact_text

__all__ = ["SERVICE_LOGGER", "RedactingFilter", "service_logger"]

SERVICE_LOGGER = "websockets.server.nativeguard"
"""The logger ``SpeechService`` passes to ``websockets.serve``."""


class RedactingFilter(logging.Filter):
    """Mask secret header values, known secrets and credential-shaped text in records."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: dict[str, int] = {}

    def add_secret(self, value: str) -> None:
        """Also mask this exact value (e.g. a required key) wherever it appears."""
        if value:
            with self._lock:
                self._secrets[value] = self._secrets.get(value, 0) + 1

    def remove_secret(self, value: str) -> None:
        with self._lock:
            count = self._secrets.get(value, 0) - 1
            if count > 0:
                self._secrets[value] = count
            else:
                self._secrets.pop(value, None)

    def _known(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._known()
        args = record.args
        # websockets logs each header as ("< %s: %s", name, value).
        if (
            isinstance(args, tuple)
            and len(args) == 2
            and isinstance(args[0], str)
            and args[0].strip().lower() in SECRET_HEADERS
        ):
            record.args = (args[0], REDACTED)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the template, drop the values
            message = f"{record.msg!s} (arguments dropped)"
        record.msg = _mask(message, secrets)
        record.args = None
        if record.exc_info is not None and record.exc_info[0] is not None:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = _mask(text, secrets)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = _mask(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = _mask(record.stack_info, secrets)
        return True


def _mask(text: str, secrets: Iterable[str]) -> str:
    return redact_text(text, secrets)


_FILTER = RedactingFilter()
_INSTALL_LOCK = threading.Lock()


def service_logger() -> tuple[logging.Logger, RedactingFilter]:
    """The services' logger, with the redacting filter installed once."""
    logger = logging.getLogger(SERVICE_LOGGER)
    with _INSTALL_LOCK:
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    return logger, _FILTER
