"""The native heap as glibc sees it, and giving its freed memory back to the OS.

Native code (the Speech SDK core among it) allocates with glibc's ``malloc``.
After it frees, glibc keeps the memory for reuse, so RSS stays high although
nothing leaks. :func:`heap_stats` tells the two apart (``in_use_bytes`` versus
``free_bytes``); :func:`trim` hands the free part back.

Verified on glibc 2.36 (Debian 12, x86-64):

* ``mallinfo2()`` sums every arena, not only the main one: 20 MB malloc'ed on
  a second thread (its own arena, "Arena 1" in ``malloc_stats()``) appear in
  ``uordblks`` and ``arena``. ``hblkhd`` counts mmap'ed chunks (requests at or
  above the mmap threshold, 128 KiB by default, raised dynamically up to 32 MiB
  as such chunks are freed); ``free()`` unmaps those at once, so they are never
  retained free heap.
* ``malloc_trim(0)`` trims every arena, and not only the top of each heap: it
  ``madvise(MADV_DONTNEED)``s whole free pages anywhere in it. That releases
  the RSS of 54 MB freed below one live block (the case the top-of-heap trim
  ``free()`` does by itself cannot reach) but leaves the chunks free in glibc's
  books, so ``free_bytes`` barely moves: only the part trimmed off the top
  leaves it. ``free_bytes`` is free heap, resident or not; RSS is the measure
  of what a trim released.
* Cost: ``mallinfo2()`` takes every arena's lock and walks every free chunk in
  the bins, so it is microseconds on a quiet heap and grows with
  fragmentation; ``malloc_trim`` walks every free chunk too.

Elsewhere (musl, macOS, Windows, glibc < 2.33 which lacks ``mallinfo2``, or
a process whose ``malloc`` is interposed, e.g. jemalloc via ``LD_PRELOAD``)
the figures are unavailable, reported as ``None``: nothing here raises for
lack of glibc. ``mallinfo()`` is not used as a fallback: its ``int`` fields
wrap at 2 GiB.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import psutil

__all__ = ["HeapStats", "TrimResult", "heap_stats", "malloc_trim", "rss_bytes", "trim"]


class _Mallinfo2(ctypes.Structure):
    """``struct mallinfo2`` (glibc >= 2.33): ten ``size_t``, in this order."""

    _fields_ = [
        ("arena", ctypes.c_size_t),  # bytes obtained with sbrk/mmap for the arenas
        ("ordblks", ctypes.c_size_t),  # free chunks
        ("smblks", ctypes.c_size_t),  # free fastbin chunks
        ("hblks", ctypes.c_size_t),  # mmap'ed chunks
        ("hblkhd", ctypes.c_size_t),  # bytes in mmap'ed chunks
        ("usmblks", ctypes.c_size_t),  # always 0
        ("fsmblks", ctypes.c_size_t),  # bytes in free fastbin chunks
        ("uordblks", ctypes.c_size_t),  # bytes in use in the arenas
        ("fordblks", ctypes.c_size_t),  # bytes free in the arenas (top chunk included)
        ("keepcost", ctypes.c_size_t),  # top chunk bytes, the most a top-only trim frees
    ]


@dataclass(frozen=True)
class HeapStats:
    """One ``mallinfo2()`` reading; every number is ``None`` when ``available`` is False.

    ``free_bytes`` is freed heap glibc keeps for reuse (whether or not it is
    still resident, see the module notes), ``in_use_bytes`` what is allocated
    and not yet freed, mmap'ed chunks included.
    """

    in_use_bytes: int | None
    free_bytes: int | None
    mmapped_bytes: int | None
    arena_bytes: int | None
    available: bool


_UNAVAILABLE = HeapStats(
    in_use_bytes=None, free_bytes=None, mmapped_bytes=None, arena_bytes=None, available=False
)


@dataclass(frozen=True)
class TrimResult:
    """What :func:`trim` did: whether it called ``malloc_trim``, and RSS around it.

    ``available`` says whether this libc can trim at all. When nothing was
    attempted, the ``*_after`` fields repeat the ``*_before`` ones (nothing was
    measured twice). ``rss_released_bytes`` is ``rss_before - rss_after``,
    floored at 0: RSS is process-wide, and other threads may grow it meanwhile.
    """

    attempted: bool
    available: bool
    free_before: int | None
    free_after: int | None
    rss_before: int
    rss_after: int
    rss_released_bytes: int


@dataclass(frozen=True)
class _Libc:
    """glibc's malloc introspection, as bound for this process; ``None`` where absent."""

    mallinfo2: Callable[[], _Mallinfo2] | None
    malloc_trim: Callable[[int], int] | None
    reason: str | None = None  # why something is missing, for debugging


@functools.cache
def _load() -> _Libc:
    """Bind ``mallinfo2`` and ``malloc_trim`` once; never raises.

    Resolved through ``dlopen(NULL)``, the process's global symbol scope, i.e.
    the ``malloc`` native code actually calls. If that is not glibc's own (an
    allocator preloaded in front of it), glibc's statistics describe a heap
    nobody uses, so they are reported unavailable rather than misleading.
    Concurrent first calls may both bind; the results are equivalent.
    """
    if os.name != "posix":
        return _Libc(None, None, f"no glibc on os.name={os.name!r}")
    try:
        process = ctypes.CDLL(None)
    except OSError as error:
        return _Libc(None, None, f"dlopen(NULL) failed: {error}")
    if not hasattr(process, "gnu_get_libc_version"):
        return _Libc(None, None, "the C library is not glibc")
    try:
        # RTLD_NOLOAD: the glibc already mapped into this process, never a second copy.
        glibc = ctypes.CDLL("libc.so.6", mode=os.RTLD_NOLOAD)
    except (OSError, AttributeError) as error:
        return _Libc(None, None, f"libc.so.6 is not loaded: {error}")
    process_malloc = ctypes.cast(process.malloc, ctypes.c_void_p).value
    if process_malloc != ctypes.cast(glibc.malloc, ctypes.c_void_p).value:
        return _Libc(None, None, "malloc is interposed; glibc's heap is not the one in use")
    # Own function objects, not the CDLL's shared cached ones, so the
    # signatures set here cannot be changed under us by other ctypes users.
    mallinfo2 = None
    if hasattr(glibc, "mallinfo2"):
        mallinfo2 = ctypes.CFUNCTYPE(_Mallinfo2)(("mallinfo2", glibc))
    malloc_trim = None
    if hasattr(glibc, "malloc_trim"):
        malloc_trim = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_size_t)(("malloc_trim", glibc))
    reason = None if mallinfo2 is not None else "glibc < 2.33 has no mallinfo2"
    return _Libc(mallinfo2, malloc_trim, reason)


def heap_stats() -> HeapStats:
    """The heap's in-use and retained-free bytes over all arenas; never raises."""
    mallinfo2 = _load().mallinfo2
    if mallinfo2 is None:
        return _UNAVAILABLE
    info = mallinfo2()
    return HeapStats(
        in_use_bytes=info.uordblks + info.hblkhd,
        free_bytes=info.fordblks,
        mmapped_bytes=info.hblkhd,
        arena_bytes=info.arena,
        available=True,
    )


def malloc_trim(pad: int = 0) -> bool:
    """``malloc_trim(pad)``: return free heap to the OS, keeping ``pad`` bytes atop each heap.

    True when glibc released anything; False when it released nothing or
    cannot trim here (then it is a no-op).
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    function = _load().malloc_trim
    if function is None:
        return False
    return bool(function(pad))


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's current resident set size in bytes (not the peak).

    Read from ``/proc/self/statm`` (a few microseconds: pool workers read it
    after every task); psutil elsewhere, with a new ``Process`` each time,
    since a cached one would report the parent after ``fork()``.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:  # not Linux
        return int(psutil.Process().memory_info().rss)


def trim(threshold_bytes: int = 0) -> TrimResult:
    """Trim the heap when at least ``threshold_bytes`` of it are free, and measure RSS around it.

    With ``threshold_bytes`` 0 it always trims where ``malloc_trim`` exists;
    a positive threshold needs ``mallinfo2`` to be checked, so without it
    (glibc < 2.33) nothing is attempted.
    """
    if threshold_bytes < 0:
        raise ValueError(f"threshold_bytes must be >= 0, got {threshold_bytes}")
    available = _load().malloc_trim is not None
    free_before = heap_stats().free_bytes
    rss_before = rss_bytes()
    due = threshold_bytes == 0 or (free_before is not None and free_before >= threshold_bytes)
    if not (available and due):
        return TrimResult(
            attempted=False,
            available=available,
            free_before=free_before,
            free_after=free_before,
            rss_before=rss_before,
            rss_after=rss_before,
            rss_released_bytes=0,
        )
    malloc_trim(0)
    rss_after = rss_bytes()
    return TrimResult(
        attempted=True,
        available=True,
        free_before=free_before,
        free_after=heap_stats().free_bytes,
        rss_before=rss_before,
        rss_after=rss_after,
        rss_released_bytes=max(0, rss_before - rss_after),
    )
