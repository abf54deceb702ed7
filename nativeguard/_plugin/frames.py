"""Clearing a test's own finished frames before its verdict.

Why: a test's frames outlive it (``pytest.raises(...) as excinfo``, a stored
exception, a log record pytest keeps until teardown), and their locals would
count as the code under test's leak.
"""

from __future__ import annotations

import gc
import logging
import types
from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["call_then_clear", "clear_finished_frames", "item_files"]


def item_files(item: pytest.Item) -> frozenset[str]:
    path = getattr(item, "path", None)
    return frozenset() if path is None else frozenset({str(path)})


_FRAME_OWNERS = (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)


def clear_finished_frames(files: frozenset[str], *, logged: bool = False) -> int:
    """Clear the locals of finished frames the test's own bookkeeping keeps; how many.

    - Frames of code in ``files`` (the test module): a test's frames outlive
      it when a garbage cycle holds them, ``pytest.raises(...) as excinfo``
      (the frame holds ``excinfo``, whose traceback holds the frame) or an
      exception a callback stored. Their locals are the test's, not the code
      under test's.
    - With ``logged``, the traceback frames of exceptions that captured log
      records hold: ``logger.warning("failed: %s", error)`` (azure-identity
      does this) puts the exception and so every frame's locals in the
      record, and pytest keeps a phase's records until its teardown, which
      in repeat mode pins one set of objects per run. The records keep their
      message and traceback text.

    unittest clears frames the same way (``traceback.clear_frames`` in
    ``assertRaises``). Executing frames, frames of suspended generators and
    coroutines (``yield`` fixtures: clearing would close them) and module
    bodies are left alone. One heap walk.
    """
    frames: dict[int, types.FrameType] = {}
    if logged:
        for frame in _logged_frames():
            frames[id(frame)] = frame
    if not files and not frames:
        return 0
    suspended: set[int] = set()
    for obj in gc.get_objects():
        kind = type(obj)  # not isinstance(): a dead weakproxy raises on it
        if kind is types.FrameType:
            if obj.f_code.co_filename in files and obj.f_code.co_name != "<module>":
                frames[id(obj)] = obj
        elif kind in _FRAME_OWNERS:
            owned = getattr(obj, "gi_frame", None) or getattr(obj, "cr_frame", None)
            owned = owned or getattr(obj, "ag_frame", None)
            if owned is not None:  # None once the generator or coroutine finished
                suspended.add(id(owned))
    cleared = 0
    for key, frame in frames.items():
        if key in suspended:
            continue
        try:
            frame.clear()
        except RuntimeError:  # still executing
            continue
        # clear() empties the fast locals only; reading f_locals drops them from
        # the dict a tracer or a traceback formatter materialised (3.11).
        frame.f_locals  # noqa: B018
        cleared += 1
    frames.clear()
    return cleared


def _logged_frames() -> list[types.FrameType]:
    """Traceback frames of exceptions in the records of the root logger's capturing handlers."""
    found: list[types.FrameType] = []
    for handler in logging.getLogger().handlers:
        records = getattr(handler, "records", None)
        if not isinstance(records, list):
            continue
        for record in records:
            if not isinstance(record, logging.LogRecord):
                continue
            errors = list(record.args) if isinstance(record.args, tuple) else []
            if record.exc_info:
                errors.append(record.exc_info[1])
            for error in errors:
                found.extend(_traceback_frames(error))
    return found


def _traceback_frames(error: object) -> list[types.FrameType]:
    frames: list[types.FrameType] = []
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return frames


def call_then_clear(
    fn: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    files: frozenset[str],
    *,
    logged: bool = False,
) -> object:
    """Call the test function, then clear its finished frames before a collection can run.

    A cycle through the test's own frame (``pytest.raises(...) as excinfo``)
    becomes garbage the moment the function returns. If an automatic
    collection freed it before the verdict, the check would count it as left
    in a reference cycle (by design: it cannot tell whose cycle it was), so
    whether the test failed depended on when the collector ran. Collection is
    off from the return to the end of the clearing, so the frames are cleared
    first and the cycle is freed by reference counting. A test that raised
    keeps its frames (pytest shows their locals); its failure is reported, not
    judged again.
    """
    result = fn(*args, **kwargs)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        clear_finished_frames(files, logged=logged)
    finally:
        if was_enabled:
            gc.enable()
    return result
