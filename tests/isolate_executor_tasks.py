"""Tasks and initializers for tests/isolate/test_isolate_executor.py (importable by the workers)."""

from __future__ import annotations

import os

_STATE: dict[str, object] = {}


def remember(key: str, value: object) -> None:
    """An initializer: keep ``value`` for the worker's tasks."""
    _STATE[key] = (value, os.getpid())


def recall(key: str) -> object:
    value, pid = _STATE[key]  # type: ignore[misc]
    return [value, pid == os.getpid()]


def refuse_to_start(message: str) -> None:
    raise RuntimeError(message)


def double(x: int) -> int:
    return 2 * x
