"""nativeguard._core._malloc against this process's real glibc heap (2.36 here)."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator

import pytest

from nativeguard._core import _malloc
from nativeguard._core._malloc import HeapStats, TrimResult, heap_stats, malloc_trim, trim

MiB = 1 << 20

# Our own function objects on the process's libc: native allocations that
# bypass Python's allocator, exactly as the SDK core's do.
_libc = ctypes.CDLL(None)
c_malloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)(("malloc", _libc))
c_free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(("free", _libc))
c_memset = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)(
    ("memset", _libc)
)

glibc_only = pytest.mark.skipif(
    not _malloc._load().mallinfo2, reason="needs glibc >= 2.33 (mallinfo2)"
)


def stats() -> tuple[int, int]:
    """(in_use_bytes, free_bytes), asserted present."""
    current = heap_stats()
    assert current.in_use_bytes is not None
    assert current.free_bytes is not None
    return current.in_use_bytes, current.free_bytes


@pytest.fixture
def retained_heap() -> Iterator[int]:
    """~54 MB of freed heap glibc keeps: 200k x 256 B freed under one live block.

    256 B is below the mmap threshold, so the blocks come from the heap, and
    writing each chunk's header makes every page resident. The last block stays
    allocated so the freed run cannot merge into the top chunk, where free()
    would give it back by itself. Yields free_bytes growth.
    """
    blocks = [c_malloc(256) for _ in range(200_000)]
    assert all(blocks)
    _, free_before = stats()
    try:
        for block in blocks[:-1]:
            c_free(block)
        _, free_after = stats()
        yield free_after - free_before
    finally:
        c_free(blocks[-1])


# -- real heap ---------------------------------------------------------------


def test_loader_binds_glibc_here():
    libc = _malloc._load()
    assert libc.mallinfo2 is not None
    assert libc.malloc_trim is not None
    assert libc.reason is None


@glibc_only
def test_stats_are_available_and_consistent():
    current = heap_stats()
    assert current.available is True
    assert current.in_use_bytes is not None
    assert current.mmapped_bytes is not None
    assert current.arena_bytes is not None
    assert current.in_use_bytes >= current.mmapped_bytes
    # Everything in the arenas is either in use or free.
    assert current.arena_bytes >= current.in_use_bytes - current.mmapped_bytes


@glibc_only
def test_freed_small_blocks_are_retained_free_heap(retained_heap: int):
    assert retained_heap >= 40 * MiB


@glibc_only
def test_trim_releases_the_retained_heap_to_the_os(retained_heap: int):
    assert retained_heap >= 40 * MiB
    result = trim()
    assert result.attempted is True
    assert result.available is True
    assert result.free_before is not None
    assert result.free_after is not None
    assert result.free_before >= 40 * MiB
    assert result.rss_released_bytes == max(0, result.rss_before - result.rss_after)
    assert result.rss_released_bytes >= 40 * MiB
    # glibc 2.36 gives the pages back with madvise(MADV_DONTNEED) but keeps the
    # chunks free in its books: free_bytes stays (it is not resident memory).
    assert result.free_after >= result.free_before - 8 * MiB


@glibc_only
def test_malloc_trim_reports_a_release(retained_heap: int):
    assert retained_heap >= 40 * MiB
    assert malloc_trim() is True


@glibc_only
def test_threshold_above_free_heap_does_not_trim():
    _, free_now = stats()
    result = trim(threshold_bytes=free_now + (1 << 40))
    assert result == TrimResult(
        attempted=False,
        available=True,
        free_before=result.free_before,
        free_after=result.free_before,
        rss_before=result.rss_before,
        rss_after=result.rss_before,
        rss_released_bytes=0,
    )
    assert result.free_before is not None


@glibc_only
def test_threshold_reached_trims(retained_heap: int):
    result = trim(threshold_bytes=retained_heap)
    assert result.attempted is True
    assert result.rss_released_bytes >= 40 * MiB


@glibc_only
def test_native_leak_raises_in_use():
    in_use_before, _ = stats()
    block = c_malloc(20 * MiB)
    assert block
    try:
        c_memset(block, 0xAB, 20 * MiB)  # resident, as a real leak's memory is
        in_use_during, _ = stats()
        assert 20 * MiB <= in_use_during - in_use_before < 21 * MiB
    finally:
        c_free(block)
    in_use_after, _ = stats()
    assert in_use_during - in_use_after >= 20 * MiB


@glibc_only
def test_stats_cover_other_threads_arenas():
    # A new thread mallocs from its own arena, not the main one: mallinfo2
    # must sum all arenas for this to show.
    in_use_before, _ = stats()
    seen: list[int] = []

    def allocate() -> None:
        blocks = [c_malloc(1000) for _ in range(20_000)]
        try:
            seen.append(stats()[0])
        finally:
            for block in blocks:
                c_free(block)

    thread = threading.Thread(target=allocate)
    thread.start()
    thread.join()
    assert seen[0] - in_use_before >= 19 * MiB


def test_negative_arguments_are_rejected():
    with pytest.raises(ValueError, match="threshold_bytes"):
        trim(threshold_bytes=-1)
    with pytest.raises(ValueError, match="pad"):
        malloc_trim(-1)


# -- field mapping -----------------------------------------------------------


def test_stats_map_mallinfo2_fields(monkeypatch: pytest.MonkeyPatch):
    info = _malloc._Mallinfo2(
        arena=1000, ordblks=2, smblks=3, hblks=4, hblkhd=500, usmblks=0,
        fsmblks=7, uordblks=800, fordblks=200, keepcost=50,
    )  # fmt: skip
    monkeypatch.setattr(_malloc, "_load", lambda: _malloc._Libc(lambda: info, None))
    assert heap_stats() == HeapStats(
        in_use_bytes=1300, free_bytes=200, mmapped_bytes=500, arena_bytes=1000, available=True
    )


def test_struct_is_ten_size_t():
    assert ctypes.sizeof(_malloc._Mallinfo2) == 10 * ctypes.sizeof(ctypes.c_size_t)


# -- where glibc is absent -------------------------------------------------


@pytest.fixture
def no_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_malloc, "_load", lambda: _malloc._Libc(None, None, "simulated musl"))


@pytest.mark.usefixtures("no_glibc")
def test_unavailable_stats_are_all_none():
    assert heap_stats() == HeapStats(
        in_use_bytes=None, free_bytes=None, mmapped_bytes=None, arena_bytes=None, available=False
    )


@pytest.mark.usefixtures("no_glibc")
def test_unavailable_trim_is_a_noop():
    assert malloc_trim() is False
    result = trim()
    assert result.attempted is False
    assert result.available is False
    assert result.free_before is None
    assert result.free_after is None
    assert result.rss_before > 0
    assert result.rss_after == result.rss_before
    assert result.rss_released_bytes == 0


def test_trim_without_mallinfo2_only_on_zero_threshold(monkeypatch: pytest.MonkeyPatch):
    # glibc 2.26-2.32: malloc_trim exists, mallinfo2 does not.
    calls: list[int] = []

    def fake_trim(pad: int) -> int:
        calls.append(pad)
        return 1

    monkeypatch.setattr(_malloc, "_load", lambda: _malloc._Libc(None, fake_trim, "old glibc"))
    assert heap_stats().available is False
    result = trim(threshold_bytes=0)
    assert (result.attempted, result.available, result.free_before) == (True, True, None)
    assert calls == [0]
    result = trim(threshold_bytes=1)
    assert (result.attempted, result.available) == (False, True)
    assert calls == [0]
    assert malloc_trim(pad=4096) is True
    assert calls == [0, 4096]
