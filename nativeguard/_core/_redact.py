"""Keep secrets out of everything nativeguard records, prints or raises."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["REDACTED", "SECRET_HEADERS", "is_secret_name", "redact_headers", "redact_text"]

REDACTED = "<redacted>"

SECRET_HEADERS = frozenset(
    {
        "ocp-apim-subscription-key",
        "authorization",
        "x-identity-header",
        "x-identity-secret",
        "secret",
        "cookie",
        "set-cookie",
    }
)

# key=value / "key": "value" / Bearer tokens in free text (URLs, error details, reprs).
_SECRET_TEXT = re.compile(
    r"(?i)(?P<name>subscription[-_ ]?key|ocp-apim-subscription-key|authorization[-_ ]?token|"
    r"access[-_]token|client[-_]secret|identity[-_]header|x-identity-header|password|secret|"
    r"api[-_]?key|token)"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;&}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/#=-]+")
# The same shape for names that are commonly credentials on their own: token=,
# api_key=, apikey=, passwd= (added; the pattern above is unchanged).
_SECRET_TEXT_MORE = re.compile(
    r"(?i)(?P<name>\b(?:\w*[-_])?token|api[-_]?key|passwd|pwd)"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;&}]+)"
)
_SECRET_NAME = re.compile(
    r"(?i)(password|passwd|pwd|secret|token|api[-_]?key|subscription[-_]?key|credential"
    r"|authorization|auth[-_]?header|private[-_]?key|access[-_]?key)"
)


def is_secret_name(name: str) -> bool:
    """Whether a variable, attribute or field named ``name`` probably holds a credential."""
    return bool(_SECRET_NAME.search(name))


def redact_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Copy headers with lower-cased names, masking every secret-bearing value."""
    return {
        name.lower(): (REDACTED if name.lower() in SECRET_HEADERS else value)
        for name, value in items
    }


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask known secret values and anything shaped like a credential in ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_TEXT.sub(lambda m: f"{m.group('name')}{m.group('sep')}{REDACTED}", text)
    return _SECRET_TEXT_MORE.sub(
        lambda m: (
            m.group(0)
            if m.group("value") == REDACTED
            else f"{m.group('name')}{m.group('sep')}{REDACTED}"
        ),
        text,
    )
