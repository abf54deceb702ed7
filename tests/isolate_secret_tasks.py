"""Tasks whose failures carry real-looking credentials (tests/isolate/test_isolate_secrets.py)."""

from __future__ import annotations

import threading

KEY = "8f3c2a9e41d04b7c9a6e5f1d2b3c4a5e"
PASSWORD = "Tr0ub4dor&3-horse"
TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJ3b3JrZXIifQ.c2lnbmF0dXJl"
SECRETS = (KEY, PASSWORD, TOKEN)
MESSAGE = (
    f"upstream refused: Ocp-Apim-Subscription-Key: {KEY}; "
    f"retry with password={PASSWORD} and token={TOKEN}"
)


def add_note(error: BaseException, note: str) -> None:
    notes = getattr(error, "__notes__", None)
    if notes is None:
        error.__notes__ = notes = []  # type: ignore[attr-defined]
    notes.append(note)


def raise_with_secrets() -> None:
    """A plain ValueError whose message and note carry credentials."""
    error = ValueError(MESSAGE)
    add_note(error, f"request headers: Authorization: Bearer {TOKEN}")
    raise error


class ConnectionFailed(Exception):
    """Shows an attribute in ``__str__``, not its args: masking the args is not enough."""

    def __init__(self, endpoint: str, header: str) -> None:
        super().__init__(endpoint)
        self._header = header

    def __str__(self) -> str:
        return f"{self.args[0]} refused {self._header}"


def raise_secret_in_str() -> None:
    raise ConnectionFailed("wss://127.0.0.1/speech", f"Ocp-Apim-Subscription-Key={KEY}")


class Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable_with_secrets() -> None:
    raise Unpicklable(MESSAGE)


def raise_system_exit_with_secrets() -> None:
    raise SystemExit(MESSAGE)


def return_secret_keyed(kind: str) -> object:
    """A result that is not plain data under a key that is a secret."""
    if kind == "dict":
        return {"fine": 1, KEY: threading.Lock()}
    if kind == "header":
        return {f"Authorization: Bearer {TOKEN}": threading.Lock()}
    return {(PASSWORD, threading.Lock())}
