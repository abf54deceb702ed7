"""Releasing an onnxruntime session, which has no ``close()``: drop what pins its native object.

What frees the native arena (measured, onnxruntime 1.32.0, glibc 2.36): the
C++ session (initializers, arena, intra-op thread pool: one native thread per
session on this 2-core machine) is destroyed when its pybind object, the
wrapper's ``_sess``, loses its last reference, ~12 ms for a 16 MiB model.
References to it: the wrapper (``_sess``), every ``IOBinding`` made from it
(``_session``, and its native ``SessionIOBinding`` keeps the session alive
through a pybind keep-alive), ``OrtValue`` objects made with
``session.create_ortvalue_from_shape_and_type`` (``_session``) and, invisible
to Python, those returned by ``IOBinding.get_outputs()`` (keep-alive), plus a
thread that is inside ``run()`` right now. The wrapper's metadata
(``_inputs_meta``...) and the model bytes it keeps (a bytes model: another
``len(model)``) go with the wrapper. ``sess.run()``'s numpy outputs do not
pin the session (their base is a capsule owning a copy).

So the release step, on the reaper thread:

1. releases the captured graphs (WebGPU), as ``_reset_session`` does;
2. empties the wrapper's ``__dict__`` (every reference it holds, user
   attributes of a subclass included: callbacks and cycles through it are
   cut) and turns it into a released instance: any later attribute access
   raises :class:`SessionReleasedError` (not AttributeError, not a crash);
3. if anything else still references the native session (its refcount says
   so: the common case costs nothing), walks the heap once for the
   ``IOBinding``/``OrtValue``/``InferenceSession`` wrappers that hold it and
   releases them the same way;
4. drops its reference and waits (half the step's bound) for the native session to be
   freed, so a concurrent ``run()`` returns first; if something nativeguard
   cannot reach still holds it, raises :class:`SessionPinnedError`;
5. trims the heap when the release left at least ``trim threshold`` more free
   heap (glibc keeps the freed arena: the "gc recovers 0 MB" story).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from typing import Any

from nativeguard import quick_step
from nativeguard.verify import heap_stats, trim

from . import _sdk
from ._errors import SessionPinnedError, SessionReleasedError

__all__ = [
    "DEFAULT_TRIM_THRESHOLD_BYTES",
    "is_released",
    "release_io_binding",
    "release_ort_value",
    "release_session",
    "set_trim_threshold",
    "trim_threshold",
]

DEFAULT_TRIM_THRESHOLD_BYTES = 8 << 20
"""Trim when a release leaves this much more free heap: a 16 MiB model leaves ~17-33 MiB."""

_MARK = "_nativeguard_released"
_POLL_S = 0.002
_trim_threshold: int | None = DEFAULT_TRIM_THRESHOLD_BYTES


def set_trim_threshold(threshold_bytes: int | None) -> None:
    """Trim after a session release that freed at least this many heap bytes; None: never."""
    global _trim_threshold  # noqa: PLW0603 - one setting for the process
    if threshold_bytes is not None and (
        isinstance(threshold_bytes, bool) or not isinstance(threshold_bytes, int)
    ):
        raise TypeError(
            f"threshold_bytes must be None or an int, got {type(threshold_bytes).__name__}"
        )
    if threshold_bytes is not None and threshold_bytes < 0:
        raise ValueError(f"threshold_bytes must be >= 0, got {threshold_bytes}")
    _trim_threshold = threshold_bytes


def trim_threshold() -> int | None:
    """The current threshold (see :func:`set_trim_threshold`)."""
    return _trim_threshold


# -- released instances -----------------------------------------------------------

_released_classes: dict[type, type] = {}
_classes_lock = threading.Lock()


def _refuse(self: object, name: str) -> Any:
    if name.startswith("__") and name.endswith("__"):
        return object.__getattribute__(self, name)
    what = object.__getattribute__(self, "__dict__").get(_MARK, "onnxruntime object")
    raise SessionReleasedError(
        f"{what} was released by nativeguard; it cannot be used after its release "
        f"(accessed .{name}): create a new one"
    )


def _released_repr(self: object) -> str:
    what = object.__getattribute__(self, "__dict__").get(_MARK, "onnxruntime object")
    return f"<released {what}>"


def _released_class(cls: type) -> type:
    """A subclass of ``cls`` whose every attribute access raises SessionReleasedError."""
    with _classes_lock:
        released = _released_classes.get(cls)
        if released is None:
            released = type(
                f"Released{cls.__name__}",
                (cls,),
                {
                    "__getattribute__": _refuse,
                    "__repr__": _released_repr,
                    "__module__": __name__,
                },
            )
            _released_classes[cls] = released
        return released


def is_released(obj: object) -> bool:
    """Whether nativeguard released this session/IOBinding/OrtValue."""
    try:
        return _MARK in object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return False


def _empty(obj: object, description: str) -> dict[str, Any] | None:
    """Take ``obj``'s attributes (returned) and make it a released instance; None if it was."""
    namespace: dict[str, Any] = object.__getattribute__(obj, "__dict__")
    if _MARK in namespace:
        return None
    taken = dict(namespace)
    namespace.clear()
    namespace[_MARK] = description
    obj.__class__ = _released_class(type(obj))
    return taken


def _describe_session(namespace: dict[str, Any]) -> str:
    path = namespace.get("_model_path")
    if isinstance(path, str) and path:
        return f"onnxruntime InferenceSession of {path!r}"
    data = namespace.get("_model_bytes")
    if isinstance(data, (bytes, bytearray)):
        return f"onnxruntime InferenceSession of a {len(data)}-byte model"
    return "onnxruntime InferenceSession"


# -- release steps ---------------------------------------------------------------


@quick_step
def release_session(obj: Any, timeout_s: float) -> None:
    """Release step for ``onnxruntime.InferenceSession`` (see the module notes)."""
    namespace: dict[str, Any] = object.__getattribute__(obj, "__dict__")
    if _MARK in namespace:
        return
    failure: Exception | None = None
    graphs = namespace.get("_captured_graph_bindings")
    c_session: Any = namespace.get("_sess")
    if graphs and _sdk.is_c_session(c_session):
        try:
            for graph_id in sorted(graphs):
                c_session.release_captured_graph(graph_id)
        except Exception as error:  # reported after the release below, which still runs
            failure = error
    taken = _empty(obj, _describe_session(namespace))
    del graphs, namespace
    if taken is None:
        return
    taken.clear()  # the metadata, model bytes, options, user attributes: dropped here
    del taken
    if _sdk.is_c_session(c_session):
        heap_before = _free_heap()
        # Two references when nothing else holds it: this frame's local and
        # getrefcount's argument (the caller passed ``obj``, not the session).
        if sys.getrefcount(c_session) > 2:
            _release_holders(c_session)
        ref = weakref.ref(c_session)
        del c_session
        _wait_freed(ref, timeout_s)
        _trim_if_worth_it(heap_before)
    if failure is not None:
        raise failure


@quick_step
def release_io_binding(obj: Any, timeout_s: float) -> None:
    """Release step for ``IOBinding``: unbind, drop its native binding and its session."""
    namespace: dict[str, Any] = object.__getattribute__(obj, "__dict__")
    if _MARK in namespace:
        return
    binding = namespace.get("_iobinding")
    failure: Exception | None = None
    try:
        if binding is not None:
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
    except Exception as error:  # reported once the references below are dropped
        failure = error
    del binding, namespace
    taken = _empty(obj, "onnxruntime IOBinding")
    if taken is not None:
        taken.clear()
    if failure is not None:
        raise failure


@quick_step
def release_ort_value(obj: Any, timeout_s: float) -> None:
    """Release step for ``OrtValue``: drop its native tensor, its numpy buffer and session."""
    taken = _empty(obj, "onnxruntime OrtValue")
    if taken is not None:
        taken.clear()


def _release_holders(c_session: object) -> None:
    """Release the wrappers that still reference ``c_session``: one heap walk."""
    holders = []
    for candidate in gc.get_objects():
        kind = _sdk.kind(type(candidate))
        if kind is None or is_released(candidate):
            continue
        namespace = object.__getattribute__(candidate, "__dict__")
        if namespace.get("_session") is c_session or namespace.get("_sess") is c_session:
            holders.append((kind, candidate))
    for kind, holder in holders:
        if kind == "IOBinding":
            release_io_binding(holder, 0.0)
        elif kind == "OrtValue":
            release_ort_value(holder, 0.0)
        else:
            _empty(holder, "onnxruntime InferenceSession (sharing a released native session)")
    holders.clear()


def _wait_freed(ref: weakref.ReferenceType[Any], timeout_s: float) -> None:
    """Wait until the native session is freed, at most half the step's bound.

    Half: the heap walk and the trim run in the same bound, and a step that
    overruns it is reported late (on the reaper), not by close().
    """
    if ref() is None:
        return
    waited = max(0.0, timeout_s * 0.5)
    deadline = time.monotonic() + waited
    while ref() is not None and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    session = ref()
    if session is None:
        return
    references = sys.getrefcount(session) - 2
    del session
    raise SessionPinnedError(
        f"the native onnxruntime session is still alive {waited:.2g} s after its "
        f"release: {references} reference(s) nativeguard cannot reach hold it (an OrtValue "
        "from IOBinding.get_outputs() keeps its session alive natively: copy it with "
        ".numpy() and drop it; a reference to session._sess; a run() that has not "
        "returned). It is freed when they go; onnxruntime.sessions counts it until then",
        references=max(references, 0),
    )


def _free_heap() -> int | None:
    return heap_stats().free_bytes if _trim_threshold is not None else None


def _trim_if_worth_it(heap_before: int | None) -> None:
    threshold = _trim_threshold
    if threshold is None or heap_before is None:
        return
    after = heap_stats().free_bytes
    if after is not None and after - heap_before >= threshold:
        trim()
