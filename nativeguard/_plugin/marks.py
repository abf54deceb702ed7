"""``@pytest.mark.no_leaks`` and ``--nativeguard-repeat``: parsed into :class:`Settings`.

Every mistake is a ``pytest.UsageError`` naming the marker argument and
showing a fix, raised at collection, before any test runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest

from ..verify._check import Allow, coerce_allow

__all__ = [
    "MARKER",
    "MARKER_HELP",
    "MARKER_KWARGS",
    "Settings",
    "parse_repeat",
    "settings_from_marker",
]

MARKER = "no_leaks"
MARKER_KWARGS = (
    "types",
    "native_handles",
    "threads",
    "fds",
    "rss_growth_mb",
    "repeat",
    "allow",
)
MARKER_HELP = (
    f"{MARKER}(types=None, native_handles=True, threads=True, fds=True, rss_growth_mb=None, "
    "repeat=None, allow=()): fail the test if it leaks Speech SDK instances (or instances "
    "of `types`, names or classes), native handles, threads or fds; rss_growth_mb fails "
    "it if RSS grows more than that; repeat=(WARMUP, RUNS) runs it refleak-style; "
    "allow=[nativeguard.verify.Allow(what, reason)] excuses growth, with a reason"
)
MB = 1 << 20


def parse_repeat(value: object, *, where: str) -> tuple[int, int]:
    """``"W:R"`` or ``(W, R)`` as ``(warmup, runs)``; ``pytest.UsageError`` with a fix otherwise."""
    fix = f"{where} takes WARMUP:RUNS with WARMUP >= 0 and RUNS >= 2, e.g. 3:5"
    parts: Sequence[object]
    if isinstance(value, str):
        parts = value.split(":")
    elif isinstance(value, (tuple, list)):
        parts = value
    else:
        raise pytest.UsageError(f"{fix}; got {value!r}")
    if len(parts) != 2:
        raise pytest.UsageError(f"{fix}; got {value!r}")
    numbers: list[int] = []
    for part in parts:
        if isinstance(part, bool):
            raise pytest.UsageError(f"{fix}; got {value!r}")
        try:
            numbers.append(int(part) if isinstance(part, (int, str)) else -1)
        except ValueError:
            raise pytest.UsageError(f"{fix}; got {value!r}") from None
    warmup, runs = numbers
    if warmup < 0 or runs < 2:
        raise pytest.UsageError(f"{fix}; got {value!r}")
    return warmup, runs


# -- per-test settings ----------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How one test is checked, from the command line and its marker."""

    types: tuple[str | type, ...] | None = None
    native_handles: bool = True
    threads: bool = True
    fds: bool = True
    rss_growth_mb: float | None = None
    repeat: tuple[int, int] | None = None
    allow: tuple[Allow, ...] = ()


def settings_from_marker(marker: pytest.Mark, default_repeat: tuple[int, int] | None) -> Settings:
    where = f"@pytest.mark.{MARKER}"
    if marker.args:
        raise pytest.UsageError(
            f"{where} takes keyword arguments only, got positional {marker.args!r}; "
            f"write e.g. @pytest.mark.{MARKER}(types=['SpeechRecognizer'])"
        )
    unknown = sorted(set(marker.kwargs) - set(MARKER_KWARGS))
    if unknown:
        raise pytest.UsageError(
            f"{where} got unknown argument(s) {', '.join(unknown)}; "
            f"it takes {', '.join(MARKER_KWARGS)}"
        )
    kwargs = marker.kwargs
    for name in ("native_handles", "threads", "fds"):
        if not isinstance(kwargs.get(name, True), bool):
            raise pytest.UsageError(
                f"{where}({name}=...) takes True or False, got {kwargs[name]!r}"
            )
    rss = kwargs.get("rss_growth_mb")
    if rss is not None and (
        isinstance(rss, bool) or not isinstance(rss, (int, float)) or not rss > 0
    ):
        raise pytest.UsageError(
            f"{where}(rss_growth_mb=...) takes a number of megabytes > 0 or None, got {rss!r}"
        )
    repeat = kwargs.get("repeat")
    parsed = default_repeat if repeat is None else parse_repeat(repeat, where=f"{where}(repeat=)")
    try:
        allow = coerce_allow(kwargs.get("allow", ()))
    except TypeError as error:
        raise pytest.UsageError(f"{where}(allow=...): {error}") from None
    return Settings(
        types=_marker_types(kwargs.get("types"), where),
        native_handles=kwargs.get("native_handles", True),
        threads=kwargs.get("threads", True),
        fds=kwargs.get("fds", True),
        rss_growth_mb=None if rss is None else float(rss),
        repeat=parsed,
        allow=allow,
    )


def _marker_types(types: object, where: str) -> tuple[str | type, ...] | None:
    if types is None:
        return None
    entries = (types,) if isinstance(types, (str, type)) else types
    if not isinstance(entries, Iterable):
        raise pytest.UsageError(
            f"{where}(types=...) takes type names or classes, got {types!r}; "
            "write e.g. types=['SpeechRecognizer'] or types=[MyClient]"
        )
    found: list[str | type] = []
    for entry in entries:
        if isinstance(entry, type):
            if not entry.__weakrefoffset__:
                raise pytest.UsageError(
                    f"{where}(types=...): {entry.__qualname__} instances do not support weak "
                    "references, so they cannot be counted; add '__weakref__' to its "
                    "__slots__ or leave it out"
                )
        elif not isinstance(entry, str) or not entry:
            raise pytest.UsageError(
                f"{where}(types=...) takes type names or classes, got {entry!r}; "
                "write e.g. types=['SpeechRecognizer'] or types=[MyClient]"
            )
        found.append(entry)
    return tuple(found)
