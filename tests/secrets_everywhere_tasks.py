"""Worker-pool tasks for tests/core/test_secrets_everywhere.py: they take credentials as arguments.

Importable by the pool's worker processes (they run by reference); each one
fails in a different way (crash, overrun, unpicklable exception) with the
secret-bearing argument still in its frame.
"""

from __future__ import annotations

import os
import threading
import time


class Unpicklable(Exception):
    """An exception that cannot cross back to the parent as itself (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def crash(secret_text: str) -> None:
    """Die without unwinding, as a native crash does."""
    os._exit(3)


def overrun(secret_text: str) -> None:
    time.sleep(60)


def raise_unpicklable(secret_text: str) -> None:
    raise Unpicklable(f"request failed: {secret_text}")


def echo(value: object) -> object:
    return value
