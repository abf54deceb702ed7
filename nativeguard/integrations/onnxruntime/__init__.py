"""onnxruntime (``InferenceSession``) as a nativeguard integration, written on the public API only.

An ``InferenceSession`` has no ``close()``: its native session (initializers,
arena, intra-op threads) lives until the last reference to its pybind object
goes, and a session left in a reference cycle keeps all of it until a
collection; after that glibc keeps the freed arena (measured, onnxruntime
1.32.0, glibc 2.36: 20 cycled sessions of a 16 MiB model took RSS 136 -> 772 MB;
``gc.collect()`` freed them in 24 ms and RSS stayed at 772 MB; ``malloc_trim``
brought it to 114 MB). This integration declares:

- release steps for ``InferenceSession``, ``IOBinding`` and ``OrtValue``
  (matched by type module and name, so declaring them imports nothing): the
  session's wrapper is emptied and marked released, the wrappers that pin its
  native object are released too, the step waits (bounded) for the native
  session to be freed and trims the heap when that left more than
  :func:`trim_threshold` bytes free (see ``_release``);
- those three classes as tracked classes (``@guarded`` releases them, the
  registry, snapshots and the pytest plugin count them), once onnxruntime is
  imported: this module never imports it;
- counters ``onnxruntime.sessions`` (native sessions alive) and
  ``onnxruntime.session_bytes`` (their serialized models' sizes), see
  ``_table`` for the method and its limits;
- no preload: importing onnxruntime starts native threads (numpy's OpenBLAS
  pool and onnxruntime's own: 3 threads in a fresh interpreter, measured with
  onnxruntime 1.32.0 / numpy 2.4.6), which a fork server must not have.

Public helpers: :func:`managed_session` (a context manager like the other
``managed_*``), :func:`infer` (one call, plain numpy outputs, everything
released before it returns) and :func:`run` (checked feeds, copied outputs).
"""

from __future__ import annotations

from collections.abc import Iterable

from nativeguard import Integration

from . import _sdk, _table
from ._api import ModelInfo, NodeInfo, infer, managed_session, run
from ._errors import (
    InferenceError,
    InvalidFeedError,
    ModelLoadError,
    ModelNotFoundError,
    SessionPinnedError,
    SessionReleasedError,
)
from ._release import (
    DEFAULT_TRIM_THRESHOLD_BYTES,
    is_released,
    release_io_binding,
    release_ort_value,
    release_session,
    set_trim_threshold,
    trim_threshold,
)

__all__ = [
    "DEFAULT_TRIM_THRESHOLD_BYTES",
    "INTEGRATION",
    "InferenceError",
    "InvalidFeedError",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFoundError",
    "NodeInfo",
    "SessionPinnedError",
    "SessionReleasedError",
    "infer",
    "is_released",
    "live_sessions",
    "managed_session",
    "run",
    "set_trim_threshold",
    "trim_threshold",
]


def live_sessions() -> int:
    """Native onnxruntime sessions alive (the ``onnxruntime.sessions`` counter)."""
    return _table.counters()[_table.SESSIONS]


def _classes() -> Iterable[type]:
    """The tracked wrapper classes; empty until something else imported onnxruntime."""
    if not _sdk.loaded():
        return ()
    ort = _sdk.sdk()
    return (ort.InferenceSession, ort.IOBinding, ort.OrtValue)


def _holds_native(obj: object) -> bool:
    kind = _sdk.kind(type(obj))
    if kind == "InferenceSession":
        return _table.remember_wrapper(obj)
    if kind is None or is_released(obj):
        return False
    attribute = "_iobinding" if kind == "IOBinding" else "_ortvalue"
    namespace = getattr(obj, "__dict__", None)
    return isinstance(namespace, dict) and namespace.get(attribute) is not None


INTEGRATION = Integration(
    name="onnxruntime",
    modules=(_sdk.SDK_MODULE,),
    # Most specific last: later registrations win.
    release=(
        ("onnxruntime OrtValue", _sdk.is_ort_value, (release_ort_value,)),
        ("onnxruntime IOBinding", _sdk.is_io_binding, (release_io_binding,)),
        ("onnxruntime session", _sdk.is_session, (release_session,)),
    ),
    classes=_classes,
    holds_native=_holds_native,
    counters=_table.counters,
)
