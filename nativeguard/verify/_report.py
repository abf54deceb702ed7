"""What leaked, and who holds it: :class:`LeakReport`.

A report holds only text and counts, never the leaked objects (it would keep
them alive): for each described object its type, the chain of holders from a
root (:mod:`nativeguard._core._holders`) and, while ``tracemalloc`` traces, where it
was created; plus the native handles, SDK instances, threads and file
descriptors that grew. ``str(report)`` is for people, :meth:`LeakReport.to_dict`
for machines (JSON-serialisable). Both are bounded, and every string passes
through :func:`~nativeguard._core._redact.redact_text` when the report is built:
descriptions name types, attributes, functions and variables, never values.
"""

from __future__ import annotations

import ctypes
import sys
import tracemalloc
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._core._holders import MAX_CHAIN_DEPTH, MAX_VISITED, holder_chains
from .._core._redact import redact_text

__all__ = [
    "MAX_COUNTS_SHOWN",
    "MAX_LINKS_SHOWN",
    "MAX_OBJECTS_DESCRIBED",
    "MAX_OBJECTS_SHOWN",
    "MAX_THREADS_SHOWN",
    "MAX_TRACEBACK_FRAMES",
    "LeakReport",
    "LeakedObject",
    "build_report",
    "creation_traceback",
]

MAX_OBJECTS_DESCRIBED = 10
"""Objects whose holder chain is searched (each search walks the heap a few times)."""
MAX_OBJECTS_SHOWN = 10
"""Objects printed by ``str(report)``; the rest are counted."""
MAX_COUNTS_SHOWN = 12
"""Entries printed per count table (native handles, instances)."""
MAX_THREADS_SHOWN = 10
MAX_ALLOWED_SHOWN = 10
MAX_TRACEBACK_FRAMES = 8
"""Most recent frames kept of a creation traceback."""
MAX_LINKS_SHOWN = 16
"""Links printed per chain (searches stop at MAX_CHAIN_DEPTH anyway)."""
LINE_WIDTH = 100


@dataclass(frozen=True)
class LeakedObject:
    """One object still alive that should not be, described without its values."""

    type_name: str
    chain: tuple[str, ...]
    """Holders, leaf first: ``("ConversationTranscriber", "cell of f (variable t)", ...,
    "global HISTORY in module app")``. The last link is the root, or a verdict
    such as ``"unreachable cycle: waits for the garbage collector"``."""
    created_at: tuple[str, ...] | None
    """``file:line`` frames, most recent call last; None unless tracemalloc traced it."""
    unreachable: bool
    """Only a garbage cycle holds it: the next full ``gc.collect()`` frees it."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type_name": self.type_name,
            "chain": list(self.chain),
            "created_at": None if self.created_at is None else list(self.created_at),
            "unreachable": self.unreachable,
        }


@dataclass(frozen=True)
class LeakReport:
    """What grew and stayed: objects with their holders, handles, threads, fds."""

    objects: tuple[LeakedObject, ...]
    """Described objects, those held by something other than a leaked object first."""
    omitted: int
    """Leaked objects not described (beyond :data:`MAX_OBJECTS_DESCRIBED`)."""
    native_handles: Mapping[str, int] = field(default_factory=dict)
    """Growth of the SDK's native handle table, by handle type."""
    instances: Mapping[str, int] = field(default_factory=dict)
    """Growth of live tracked instances, by type."""
    new_threads: tuple[str, ...] = ()
    fds: int = 0
    """Growth of open file descriptors."""
    allowed: tuple[tuple[str, str], ...] = ()
    """What an allowlist excused, as ``(what, reason)``."""
    collected: Mapping[str, int] = field(default_factory=dict)
    """Objects (by type) the code left in reference cycles that an automatic
    garbage collection freed before the report was built: leaked, but gone,
    so no holder chain. Counted in ``instances`` too."""

    @property
    def clean(self) -> bool:
        """Nothing leaked (allowlisted growth aside)."""
        return not (
            self.objects
            or self.omitted
            or self.native_handles
            or self.instances
            or self.new_threads
            or self.fds > 0
            or self.collected
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything in the report as JSON-ready builtins."""
        return {
            "objects": [obj.to_dict() for obj in self.objects],
            "omitted": self.omitted,
            "native_handles": dict(self.native_handles),
            "instances": dict(self.instances),
            "new_threads": list(self.new_threads),
            "fds": self.fds,
            "allowed": [{"what": what, "reason": reason} for what, reason in self.allowed],
            "collected": dict(self.collected),
        }

    def __str__(self) -> str:
        return "\n".join(self._lines())

    def _lines(self) -> list[str]:
        leaked = len(self.objects) + self.omitted
        cycles = sum(self.collected.values())
        parts = [
            f"{leaked} object(s) still alive" if leaked else "",
            f"{cycles} object(s) left in reference cycles" if cycles else "",
            _growth("native handle(s)", sum(self.native_handles.values())),
            f"{len(self.new_threads)} new thread(s)" if self.new_threads else "",
            _growth("file descriptor(s)", self.fds),
        ]
        summary = ", ".join(part for part in parts if part) or "nothing grew"
        lines = [f"nativeguard leak report: {summary}"]
        shown = self.objects[:MAX_OBJECTS_SHOWN]
        for number, obj in enumerate(shown, 1):
            verdict = " (unreachable: gc.collect() would free it)" if obj.unreachable else ""
            lines.append(f"  {number}. {obj.type_name}{verdict}")
            lines.extend(_chain_lines(obj.chain))
            if obj.created_at:
                lines.append("     created at (most recent call last):")
                lines.extend(f"       {frame}" for frame in obj.created_at)
        hidden = leaked - len(shown)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more object(s) not described")
        if self.collected:
            lines.append(
                "  left in reference cycles, already freed by an automatic garbage "
                f"collection: {_counts(self.collected)}"
            )
        if self.native_handles:
            lines.append(f"  native handles: {_counts(self.native_handles)}")
        if self.instances:
            lines.append(f"  live instances: {_counts(self.instances)}")
        if self.new_threads:
            lines.append(f"  new threads: {_capped(self.new_threads, MAX_THREADS_SHOWN)}")
        if self.fds > 0:
            lines.append(f"  file descriptors: +{self.fds}")
        if self.allowed:
            entries = [f"{what} ({reason})" for what, reason in self.allowed]
            lines.append(f"  allowed: {_capped(entries, MAX_ALLOWED_SHOWN)}")
        return lines


def _chain_lines(chain: Sequence[str]) -> list[str]:
    """One line when it fits, else one link per line: long chains stay readable."""
    links = list(chain[:MAX_LINKS_SHOWN])
    if len(chain) > MAX_LINKS_SHOWN:
        links[-1] = f"... {len(chain) - MAX_LINKS_SHOWN + 1} more link(s)"
    one_line = f"     held by: {' <- '.join(links)}"
    if len(one_line) <= LINE_WIDTH:
        return [one_line]
    return [f"     held by: {links[0]}", *(f"           <- {link}" for link in links[1:])]


def _growth(what: str, count: int) -> str:
    return f"+{count} {what}" if count > 0 else ""


def _counts(counts: Mapping[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return _capped([f"{name} +{count}" for name, count in ordered], MAX_COUNTS_SHOWN)


def _capped(items: Sequence[str], limit: int) -> str:
    text = ", ".join(items[:limit])
    if len(items) > limit:
        text += f", ... and {len(items) - limit} more"
    return text


# -- building one ---------------------------------------------------------------


class _Allowance(Protocol):
    @property
    def what(self) -> str: ...
    @property
    def reason(self) -> str: ...


CreatedAt = Callable[[object], Sequence[str] | None]


def build_report(
    leaked: Sequence[object],
    *,
    native_handles: Mapping[str, int] = types.MappingProxyType({}),
    instances: Mapping[str, int] = types.MappingProxyType({}),
    new_threads: Sequence[str] = (),
    fds: int = 0,
    allowed: Iterable[tuple[str, str] | _Allowance] = (),
    ignore: Iterable[object] = (),
    created_at: CreatedAt | None = None,
    collected: Mapping[str, int] = types.MappingProxyType({}),
) -> LeakReport:
    """Describe ``leaked`` (holders, creation) and the growth that came with it.

    ``ignore``: the caller's own containers of leaked objects and registries
    (``leaked`` itself is ignored already). ``created_at``: where an object was
    created, if the caller recorded it; :func:`creation_traceback` otherwise.
    ``collected``: objects of the growth an automatic collection already freed.
    Counts that did not grow (<= 0) are dropped. The report keeps no
    reference to any object.
    """
    chosen = _interleaved_by_type(leaked)[:MAX_OBJECTS_DESCRIBED]
    origin = created_at or creation_traceback
    try:
        chains = holder_chains(
            chosen,
            max_depth=MAX_CHAIN_DEPTH,
            max_visited=MAX_VISITED,
            ignore=(leaked, *ignore),
        )
        described = []
        for position, chain in enumerate(chains):
            where = origin(chosen[position])
            described.append(
                (
                    chain.through is not None,
                    LeakedObject(
                        type_name=_clean(type(chosen[position]).__qualname__),
                        chain=chain.links,
                        created_at=None if where is None else tuple(map(_clean, where)),
                        unreachable=chain.unreachable,
                    ),
                )
            )
    finally:
        chosen.clear()  # the only other strong references we made
    # Objects held through another leaked object read best after it.
    described.sort(key=lambda entry: entry[0])
    return LeakReport(
        objects=tuple(obj for _, obj in described),
        omitted=len(leaked) - len(described),
        native_handles=_grown(native_handles),
        instances=_grown(instances),
        new_threads=tuple(_clean(name) for name in new_threads),
        fds=max(int(fds), 0),
        allowed=tuple(_allowance(entry) for entry in allowed),
        collected=_grown(collected),
    )


def _interleaved_by_type(objs: Sequence[object]) -> list[object]:
    """One of each type first, then the second of each, ...: every type gets described."""
    buckets: dict[type, list[object]] = {}
    for obj in objs:
        buckets.setdefault(type(obj), []).append(obj)
    ordered: list[object] = []
    rounds = [iter(bucket) for bucket in buckets.values()]
    buckets.clear()
    while rounds:
        remaining = []
        for bucket in rounds:
            obj = next(bucket, _DONE)
            if obj is not _DONE:
                ordered.append(obj)
                remaining.append(bucket)
        rounds = remaining
    return ordered


_DONE = object()


def _grown(counts: Mapping[str, int]) -> Mapping[str, int]:
    return types.MappingProxyType(
        {_clean(str(name)): int(count) for name, count in counts.items() if count > 0}
    )


def _allowance(entry: tuple[str, str] | _Allowance) -> tuple[str, str]:
    if isinstance(entry, tuple):
        what, reason = entry
    else:
        what, reason = entry.what, entry.reason
    return _clean(str(what)), _clean(str(reason))


def _clean(text: str) -> str:
    return redact_text(text)


# -- where an object was created ------------------------------------------------------


def creation_traceback(obj: object) -> tuple[str, ...] | None:
    """``file:line`` frames where ``obj`` was allocated, most recent call last.

    Known only while ``tracemalloc`` traces (and traced then). No source
    lines: a line such as ``SpeechConfig(subscription="...")`` holds a key.
    """
    if not tracemalloc.is_tracing():
        return None
    traceback = tracemalloc.get_object_traceback(obj)
    if traceback is None:
        traceback = _managed_dict_traceback(obj)
    if traceback is None or not len(traceback):
        return None
    frames = list(traceback)[-MAX_TRACEBACK_FRAMES:]
    return tuple(f"{frame.filename}:{frame.lineno}" for frame in frames)


_MANAGED_DICT = 1 << 4  # Py_TPFLAGS_MANAGED_DICT (3.11)
_GC_HEAD = 2 * ctypes.sizeof(ctypes.c_void_p)
_DICT_PREHEADER = 2 * ctypes.sizeof(ctypes.c_void_p)


def _managed_dict_traceback(obj: object) -> tracemalloc.Traceback | None:
    """Python 3.11's ``get_object_traceback`` misses objects with a managed ``__dict__``.

    Their memory block starts two pointers before the GC header (the dict
    and values pointers), but 3.11 looks the block up at the GC header, so it
    answers None for almost every class instance. Fixed in 3.12. Here the
    block is looked up at its real start, through the same C function.
    """
    if sys.version_info[:2] != (3, 11) or not type(obj).__flags__ & _MANAGED_DICT:
        return None
    try:
        lookup = ctypes.pythonapi._PyTraceMalloc_GetTraceback
    except AttributeError:  # pragma: no cover - not exported by this build
        return None
    lookup.restype = ctypes.py_object
    lookup.argtypes = (ctypes.c_uint, ctypes.c_size_t)
    frames = lookup(0, id(obj) - _GC_HEAD - _DICT_PREHEADER)
    if not isinstance(frames, tuple) or not frames:
        return None
    # The raw frames are most recent first; Traceback() puts them in call order.
    return tracemalloc.Traceback(frames)
