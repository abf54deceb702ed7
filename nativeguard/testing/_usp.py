"""Framing of the Speech SDK's websocket protocol (USP).

Text frames are ``Name:value`` header lines, a blank line, then a body (JSON
or SSML). Binary frames carry a 2-byte big-endian header length, the header
lines, then the payload (audio). An audio frame with an empty payload ends the
audio stream of a turn.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._core._errors import ProtocolError

__all__ = [
    "Message",
    "binary_frame",
    "new_request_id",
    "parse_binary",
    "parse_text",
    "text_frame",
]

_CRLF = "\r\n"
_MAX_HEADER_BYTES = 8192


@dataclass(frozen=True)
class Message:
    """One decoded client frame."""

    path: str
    headers: Mapping[str, str]
    body: str | bytes
    binary: bool

    @property
    def request_id(self) -> str | None:
        return self.header("X-RequestId")

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def json(self) -> Any:
        """The body decoded as JSON; ``ProtocolError`` if it is not JSON."""
        if isinstance(self.body, bytes):
            raise ProtocolError(f"message {self.path!r} is binary, not JSON")
        try:
            return json.loads(self.body) if self.body.strip() else None
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"message {self.path!r} body is not JSON: {exc}") from exc


def _parse_headers(block: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        headers[name.strip()] = value.strip()
    return headers


def _path_of(headers: Mapping[str, str]) -> str:
    for key, value in headers.items():
        if key.lower() == "path":
            return value
    raise ProtocolError("frame has no Path header")


def parse_text(frame: str) -> Message:
    """Decode a client text frame."""
    head, sep, body = frame.partition(_CRLF + _CRLF)
    if not sep:
        raise ProtocolError("text frame has no blank line between headers and body")
    headers = _parse_headers(head)
    return Message(path=_path_of(headers), headers=headers, body=body, binary=False)


def parse_binary(frame: bytes) -> Message:
    """Decode a client binary (audio) frame."""
    if len(frame) < 2:
        raise ProtocolError(f"binary frame of {len(frame)} bytes has no header length")
    header_len = int.from_bytes(frame[:2], "big")
    if header_len > _MAX_HEADER_BYTES or header_len + 2 > len(frame):
        raise ProtocolError(f"binary frame header length {header_len} exceeds the frame")
    try:
        head = frame[2 : 2 + header_len].decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError("binary frame headers are not ASCII") from exc
    headers = _parse_headers(head)
    body = frame[2 + header_len :]
    return Message(path=_path_of(headers), headers=headers, body=body, binary=True)


def _timestamp() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _header_block(path: str, request_id: str | None, extra: Mapping[str, str]) -> str:
    lines = [f"Path:{path}"]
    if request_id is not None:
        lines.append(f"X-RequestId:{request_id}")
    lines.append(f"X-Timestamp:{_timestamp()}")
    lines.extend(f"{name}:{value}" for name, value in extra.items())
    return _CRLF.join(lines) + _CRLF


def text_frame(
    path: str,
    request_id: str | None,
    body: Any,
    *,
    content_type: str = "application/json; charset=utf-8",
) -> str:
    """Encode a service text frame; a non-string body is serialised as JSON."""
    payload = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    head = _header_block(path, request_id, {"Content-Type": content_type})
    return head + _CRLF + payload


def binary_frame(
    path: str, request_id: str | None, payload: bytes, headers: Mapping[str, str] | None = None
) -> bytes:
    """Encode a service binary frame (TTS audio)."""
    head = _header_block(path, request_id, headers or {}).encode("ascii")
    return len(head).to_bytes(2, "big") + head + payload


def new_request_id() -> str:
    return uuid.uuid4().hex
