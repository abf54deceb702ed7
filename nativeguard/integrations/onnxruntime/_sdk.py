"""Recognising onnxruntime's objects without importing onnxruntime.

Why: importing ``nativeguard.integrations.onnxruntime`` must not import
onnxruntime (0.14 s and, through numpy's OpenBLAS and onnxruntime itself, two
native threads with onnxruntime 1.32 / numpy 2.4 here). The release matchers
and the counters run for every object any Scope releases and every snapshot,
so they test a type's module and name; only code that already holds an
onnxruntime object, or that the caller asked to build one, imports the SDK.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = [
    "COLLECTION_MODULE",
    "PYBIND_MODULE",
    "SDK_MODULE",
    "is_c_session",
    "is_io_binding",
    "is_ort_value",
    "is_session",
    "loaded",
    "sdk",
]

SDK_MODULE = "onnxruntime"
COLLECTION_MODULE = "onnxruntime.capi.onnxruntime_inference_collection"
PYBIND_MODULE = "onnxruntime.capi.onnxruntime_pybind11_state"

_kinds: dict[type, str | None] = {}
"""type -> "InferenceSession" / "IOBinding" / "OrtValue" (a base of it), or None; a cache."""
_WRAPPERS = ("InferenceSession", "IOBinding", "OrtValue")
_CACHE_LIMIT = 4096


def loaded() -> bool:
    """Whether onnxruntime has been imported in this process (by anyone)."""
    return SDK_MODULE in sys.modules


def sdk() -> ModuleType:
    """The onnxruntime module, imported now if needed."""
    return importlib.import_module(SDK_MODULE)


def kind(cls: type) -> str | None:
    """Which onnxruntime Python wrapper ``cls`` is or derives from, by module and name."""
    known = _kinds.get(cls, "")
    if known != "":
        return known
    found: str | None = None
    for klass in cls.__mro__:
        if klass.__module__ == COLLECTION_MODULE and klass.__name__ in _WRAPPERS:
            found = klass.__name__
            break
    if len(_kinds) >= _CACHE_LIMIT:
        _kinds.clear()  # classes made at run time must not grow it (and keep them) for good
    _kinds[cls] = found
    return found


def is_session(obj: object) -> bool:
    return kind(type(obj)) == "InferenceSession"


def is_io_binding(obj: object) -> bool:
    return kind(type(obj)) == "IOBinding"


def is_ort_value(obj: object) -> bool:
    return kind(type(obj)) == "OrtValue"


def is_c_session(value: object) -> bool:
    """Whether ``value`` is the native (pybind) session a wrapper keeps in ``_sess``."""
    cls = type(value)
    return cls.__name__ == "InferenceSession" and cls.__module__ == PYBIND_MODULE
