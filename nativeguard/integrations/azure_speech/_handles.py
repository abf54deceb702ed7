"""The Speech SDK's own native handle table: ground truth for "native handles released".

The SDK's C++ core counts every live handle it has given out, by interface
type, and exports that table as ``diagnostics_get_handle_count()`` and
``diagnostics_get_handle_info()``. Reading it tells us what the core still
holds, independent of Python's view of its wrapper objects.

Baselines: importing ``azure.cognitiveservices.speech`` (which reading the table
does, lazily) creates one ``ISpxAudioConfig`` handle that lives as long as the
process: ``SpeechSynthesizer.__init__`` has the default argument
``audio_config=AudioOutputConfig(use_default_speaker=True)``, evaluated at
import. So a fresh process reads ``{"ISpxAudioConfig": 1}``, not ``{}``. Compare
against a baseline taken before the code under test, never against zero.

Handles that Python wrappers own are released from their ``__del__``, so a
wrapper that sits in a reference cycle keeps its handle until ``gc.collect()``.
"""

from __future__ import annotations

import ctypes
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass

from nativeguard import NativeDiagnosticsFormatError, NativeDiagnosticsUnavailable

__all__ = [
    "NativeDiagnosticsFormatError",
    "NativeDiagnosticsUnavailable",
    "native_diagnostics_available",
    "native_handle_count",
    "native_handles",
]

_COUNT = "diagnostics_get_handle_count"
_INFO = "diagnostics_get_handle_info"
_FREE = "diagnostics_free_string"


@dataclass(frozen=True)
class _Diagnostics:
    """Private ctypes bindings of the three exports, with explicit signatures."""

    handle_count: Callable[[], int]
    # c_void_p restype: the raw address (or None for NULL). A c_char_p restype
    # would copy the bytes and drop the pointer, leaking the SDK's malloc'ed string.
    handle_info: Callable[[], int | None]
    free_string: Callable[[int], None]


def _sdk_library() -> ctypes.CDLL:
    """The SDK's core library, the very CDLL the SDK itself calls (imports the SDK)."""
    from azure.cognitiveservices.speech.interop import _sdk_lib  # noqa: PLC0415

    if not isinstance(_sdk_lib, ctypes.CDLL):
        raise NativeDiagnosticsUnavailable(
            f"azure.cognitiveservices.speech.interop._sdk_lib is a {type(_sdk_lib).__name__}, "
            "not a ctypes.CDLL"
        )
    return _sdk_lib


def _bind(lib: ctypes.CDLL) -> _Diagnostics:
    """Bind the exports of ``lib`` as new function objects.

    ``lib.name`` would return the CDLL's shared, cached function object, whose
    ``restype`` the SDK reassigns on every call it makes through
    ``_call_hr_fn``; setting ours there would race with it. A prototype bound
    to ``(name, lib)`` is our own object, its signature fixed once here.
    """
    missing = [name for name in (_COUNT, _INFO, _FREE) if not hasattr(lib, name)]
    if missing:
        raise NativeDiagnosticsUnavailable(
            f"{lib._name} does not export {', '.join(missing)}; the handle table needs "
            "an azure-cognitiveservices-speech build that has them (1.53 does)"
        )
    count = ctypes.CFUNCTYPE(ctypes.c_size_t)((_COUNT, lib))
    info = ctypes.CFUNCTYPE(ctypes.c_void_p)((_INFO, lib))
    free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)((_FREE, lib))
    return _Diagnostics(handle_count=count, handle_info=info, free_string=free)


@functools.cache
def _load() -> _Diagnostics | str:
    """The bindings, or why there are none; computed once per process.

    Two threads racing on the first call may both bind; both results are
    equivalent and the cache keeps one, so no lock is needed.
    """
    try:
        return _bind(_sdk_library())
    except NativeDiagnosticsUnavailable as error:
        return str(error)
    except (ImportError, OSError) as error:
        return f"the Speech SDK core library could not be loaded: {error!r}"


def _require() -> _Diagnostics:
    loaded = _load()
    if isinstance(loaded, str):
        raise NativeDiagnosticsUnavailable(loaded)
    return loaded


def native_diagnostics_available() -> bool:
    """Whether the handle table can be read here; never raises (imports the SDK once)."""
    return not isinstance(_load(), str)


def native_handle_count() -> int:
    """Live native handles of every type, summed: one cheap call into the core."""
    return int(_require().handle_count())


def native_handles() -> dict[str, int]:
    """Live native handles by interface type name, e.g. ``{"ISpxRecognizer": 1}``.

    Types the table still lists with a count of 0 are dropped, so two readings
    compare equal exactly when the same handles are alive. Raises
    :class:`NativeDiagnosticsUnavailable` on an SDK without the table.
    """
    diagnostics = _require()
    pointer = diagnostics.handle_info()
    if not pointer:
        raise NativeDiagnosticsFormatError(f"{_INFO}() returned NULL")
    # The string is malloc'ed by the SDK and ours now: copy it out, then hand
    # it back to the SDK's own free (its allocator, not necessarily ours).
    try:
        raw = ctypes.string_at(pointer)
    finally:
        diagnostics.free_string(pointer)
    return _parse_handle_info(raw)


def _parse_handle_info(raw: bytes | str) -> dict[str, int]:
    """Parse ``[{"id": 1, "name": "ISpxRecognizer", "count": 1}, ...]`` into name -> count.

    Entries with count 0 are dropped; a name listed twice (never seen in 1.53)
    has its counts summed rather than one silently overwriting the other.
    """

    def bad(reason: str) -> NativeDiagnosticsFormatError:
        cut = f" (first 200 of {len(raw)} characters)" if len(raw) > 200 else ""
        return NativeDiagnosticsFormatError(f"{_INFO}() returned {reason}: {raw[:200]!r}{cut}")

    try:
        entries = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise bad(f"invalid JSON ({error})") from error
    if not isinstance(entries, list):
        raise bad(f"a JSON {type(entries).__name__}, expected a list")
    handles: dict[str, int] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise bad(f"an entry that is not an object ({entry!r})")
        name, count = entry.get("name"), entry.get("count")
        if not isinstance(name, str) or not name:
            raise bad(f"an entry without a non-empty string 'name' ({entry!r})")
        # bool is an int subclass: JSON true is not a count.
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise bad(f"an entry without a non-negative integer 'count' ({entry!r})")
        if count:
            handles[name] = handles.get(name, 0) + count
    return handles
