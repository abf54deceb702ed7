"""The native sessions alive in this process, and the bytes their models hold: the counters.

onnxruntime (1.32) has no handle table like the Speech SDK's and no Python API
for its arenas' statistics, so the ground truth used here is the native
session object itself: the pybind ``onnxruntime_pybind11_state.InferenceSession``
that the Python wrapper keeps in ``_sess``. Its C++ session (initializers,
arena, intra-op thread pool) lives exactly as long as that object, and it
supports weak references. Every native session nativeguard sees is entered
here with a weak reference, and leaves when the native object is freed, by
whichever reference was the last (a released wrapper, an ``IOBinding``, an
``OrtValue`` from ``IOBinding.get_outputs()``, a user's ``sess._sess``).

How sessions are seen (none of it imports onnxruntime):

- as they are constructed, when the core's constructor hook asks
  ``holds_native`` (whenever anything listens: the live-object registry after
  the first ``verify.snapshot()``, a ``@guarded`` call, the pytest plugin);
- when ``managed_session``/``infer`` build one;
- once, by a heap walk (``gc.get_objects()``), the first time the counters are
  read after onnxruntime was imported: sessions made before anything listened.

Limit: a session constructed while nothing listens, after that first reading,
is not counted (nor tracked by the registry) until it is released by
nativeguard. Sessions built with ``ModelPackageComponentContext.create_session``
bypass ``InferenceSession.__init__`` and are seen by the first walk only.

Bytes: a session is entered with the size of its serialized model (``len``
of the bytes, or the file's size at that moment), which its initializers
dominate. Measured with onnxruntime 1.32.0, glibc 2.36, a MatMul model with
one 16 MiB float32 initializer (16.0 MiB serialized): constructing a session
grows glibc's heap in use by 17.4 MiB (initializer copy, graph, kernels,
arena chunk) and releasing it gives all of it back. Not counted: external-data
files next to a model path, the arena's growth from large runs (activation
buffers), the model bytes the Python wrapper keeps for a bytes model (another
``len(model)``, released with the wrapper).
"""

from __future__ import annotations

import gc
import os
import threading
import weakref
from typing import Any

from . import _sdk

__all__ = ["counters", "forget", "remember", "remember_wrapper", "session_count"]

SESSIONS = "onnxruntime.sessions"
BYTES = "onnxruntime.session_bytes"

_lock = threading.RLock()
"""Reentrant: a weak-reference callback can run during a collection on a thread holding it."""
_entries: dict[int, tuple[weakref.ReferenceType[Any], int]] = {}
_seeded = False


def remember(c_session: object, model_bytes: int) -> None:
    """Count ``c_session`` (a native session) until it is freed; idempotent."""
    key = id(c_session)
    with _lock:
        known = _entries.get(key)
        if known is not None and known[0]() is c_session:
            return

        def gone(ref: weakref.ReferenceType[Any], key: int = key) -> None:
            with _lock:
                entry = _entries.get(key)
                if entry is not None and entry[0] is ref:
                    del _entries[key]

        _entries[key] = (weakref.ref(c_session, gone), model_bytes)


def forget(c_session: object) -> None:
    """Stop counting ``c_session`` (tests); it counts again if seen again."""
    with _lock:
        entry = _entries.get(id(c_session))
        if entry is not None and entry[0]() is c_session:
            del _entries[id(c_session)]


def model_size(namespace: dict[str, Any]) -> int:
    """The serialized model size of a session wrapper, from its ``__dict__``; 0 if unknown."""
    data = namespace.get("_model_bytes")
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    path = namespace.get("_model_path")
    if isinstance(path, str) and path:
        try:
            return os.path.getsize(path)
        except OSError:
            return 0
    return 0


def remember_wrapper(obj: object, size: int | None = None) -> bool:
    """Count the native session of a live session wrapper; whether it holds one.

    ``size``: the model's size when the caller knows it (else read from the wrapper).
    """
    namespace = _namespace(obj)
    if namespace is None or "_nativeguard_released" in namespace:
        return False
    c_session = namespace.get("_sess")
    if not _sdk.is_c_session(c_session):
        return False
    remember(c_session, model_size(namespace) if size is None else size)
    return True


def _namespace(obj: object) -> dict[str, Any] | None:
    try:
        namespace = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return None
    return namespace if type(namespace) is dict else None


def _seed() -> None:
    """Count the sessions alive now, found by one heap walk (~0.1 s per million objects)."""
    for obj in gc.get_objects():
        if _sdk.is_session(obj):
            remember_wrapper(obj)


def session_count() -> tuple[int, int]:
    """(native sessions alive, their models' bytes)."""
    with _lock:
        alive = [(ref, size) for ref, size in _entries.values() if ref() is not None]
    return len(alive), sum(size for _, size in alive)


def counters() -> dict[str, int]:
    """``{"onnxruntime.sessions": n, "onnxruntime.session_bytes": b}``; imports nothing."""
    global _seeded  # noqa: PLW0603 - set once, under the lock
    if not _sdk.loaded():
        return {SESSIONS: 0, BYTES: 0}
    if not _seeded:
        with _lock:
            if not _seeded:
                _seed()
                _seeded = True
    sessions, size = session_count()
    return {SESSIONS: sessions, BYTES: size}
