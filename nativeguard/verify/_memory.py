"""Where a process's resident memory is: native heap, free heap, Python, the rest.

"RSS keeps climbing" has several causes that need different fixes: native
objects kept alive (handles), Python objects kept alive, freed heap the
allocator keeps (``trim()`` fixes that one), or a leak inside native code.
:func:`memory_breakdown` puts the figures that tell them apart side by side.

How the figures relate (CPython 3.11 on Linux with glibc):

- ``native_in_use_bytes`` is everything allocated through ``malloc`` and not
  freed, by any code: the SDK core, every C extension, and CPython itself for
  objects larger than 512 bytes (``PyObject_Malloc`` hands those to
  ``malloc``) and its internal tables. ``native_free_bytes`` is heap glibc
  keeps after ``free()``, resident or not (see ``nativeguard._core._malloc``).
- Python's small objects (512 bytes or less) live in pymalloc arenas, 1 MiB
  blocks CPython maps with ``mmap`` directly: they are *not* in the glibc
  figures. Their bytes are not published; ``python_allocated_blocks`` counts
  Python's live allocations of every size (small blocks plus those it passed
  to ``malloc``), the figure to watch for Python-side growth.
- ``python_traced_bytes`` (only while ``tracemalloc`` traces) is the size of
  every Python allocation, small and large, so it overlaps the native heap;
  it is shown, never subtracted.
- ``sdk_native_handles`` is a count, not bytes: their memory is in
  ``native_in_use_bytes``.

So ``unaccounted_bytes = RSS - native_in_use - native_free``, nothing
subtracted twice: executable and library code and data, thread stacks,
pymalloc arenas, and other mappings (``mmap`` by extensions, ctypes
buffers). It errs low: the heap figures count bytes that are not resident
(free pages ``malloc_trim`` handed back, allocations never written), RSS does
not. It is floored at 0, and ``None`` where the glibc figures are unavailable.
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .._core import _malloc
from .._core._integration import merged_counters, native_counters_by_integration
from .._core._malloc import TrimResult

__all__ = ["MemoryBreakdown", "TrimResult", "memory_breakdown", "trim"]

_MB = 1 << 20


@dataclass(frozen=True)
class MemoryBreakdown:
    """One reading of where resident memory is; see the module notes for the overlaps.

    Native heap figures are ``None`` without glibc's ``mallinfo2`` (musl,
    macOS, Windows, glibc < 2.33, an interposed allocator), and so is
    ``unaccounted_bytes`` then. ``sdk_native_handles`` is 0 if this SDK build
    cannot report its handle table.
    """

    rss_bytes: int
    python_allocated_blocks: int
    python_traced_bytes: int | None
    """Bytes traced by tracemalloc, or None when it is not tracing."""
    native_in_use_bytes: int | None
    native_free_bytes: int | None
    sdk_native_handles: int
    unaccounted_bytes: int | None
    """RSS minus the native heap in use and free, floored at 0: code, stacks,
    pymalloc arenas, other mappings."""
    native_resources: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Each active integration's live native resources, by integration name
    (``{"azure_speech": {"ISpxRecognizer": 1}, "onnxruntime": {...}}``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)

    def __str__(self) -> str:
        def mb(value: int | None) -> str:
            return "n/a" if value is None else f"{value / _MB:,.1f} MB"

        rows = [
            ("RSS", mb(self.rss_bytes)),
            ("  native heap in use", mb(self.native_in_use_bytes)),
            ("  native heap free (allocator keeps)", mb(self.native_free_bytes)),
            ("  unaccounted (code, stacks, pymalloc, mmaps)", mb(self.unaccounted_bytes)),
            ("Python allocated blocks", f"{self.python_allocated_blocks:,}"),
            (
                "Python traced (tracemalloc)",
                "off" if self.python_traced_bytes is None else mb(self.python_traced_bytes),
            ),
            ("SDK native handles", f"{self.sdk_native_handles:,}"),
        ]
        for integration, counts in sorted(self.native_resources.items()):
            rows.extend(
                (f"  {integration}: {name}", f"{count:,}") for name, count in sorted(counts.items())
            )
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value:>12}" for label, value in rows)


def memory_breakdown() -> MemoryBreakdown:
    """Read RSS, Python's and the native heap's figures and the SDK handle count.

    Microseconds on a quiet heap; ``mallinfo2`` walks glibc's free lists, so it
    grows with fragmentation. Never raises for a missing glibc or SDK table.
    """
    by_integration = native_counters_by_integration()
    counters = merged_counters(by_integration)
    # A counter named *_bytes is a size (onnxruntime.session_bytes), not a count.
    handles = sum(n for name, n in counters.items() if not name.endswith("_bytes"))
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
    blocks = sys.getallocatedblocks()
    heap = _malloc.heap_stats()
    rss = _malloc.rss_bytes()
    unaccounted = None
    if heap.in_use_bytes is not None and heap.free_bytes is not None:
        unaccounted = max(0, rss - heap.in_use_bytes - heap.free_bytes)
    return MemoryBreakdown(
        rss_bytes=rss,
        python_allocated_blocks=blocks,
        python_traced_bytes=traced,
        native_in_use_bytes=heap.in_use_bytes,
        native_free_bytes=heap.free_bytes,
        sdk_native_handles=handles,
        unaccounted_bytes=unaccounted,
        native_resources=by_integration,
    )


def trim() -> TrimResult:
    """Return the free heap glibc keeps to the OS (``malloc_trim(0)``); RSS before and after.

    ``rss_released_bytes`` is how much RSS dropped. Frees nothing itself: run
    it after the objects are gone (a no-op, ``attempted=False``, without glibc).
    """
    return _malloc.trim()
