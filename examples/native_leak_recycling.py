"""A leak no Python-side release can fix, contained by recycling worker processes.

``leaky_task`` stands in for a native core that leaks: it ``malloc``s 5 MB,
touches it and never frees it, out of reach of ``del``, ``gc.collect()`` or
``malloc_trim``. Run in-process, every call adds 5 MB to the service for good.
Run through ``WorkerPool(max_growth_mb=42)``, each worker retires on the task
that takes it past 42 MB of growth (its 10th: the baseline is taken after the
first) and a warm spare takes over, so memory stays bounded.

``churning_task`` is the control: it allocates and frees 60 MB while glibc is
told to keep freed memory (so RSS stays up, as allocators often leave it). A
worker running it is never retired: gc + ``malloc_trim`` run first and give the
memory back.

Run: python examples/native_leak_recycling.py
"""

from __future__ import annotations

import ctypes
import os

from nativeguard.isolate import MB, WorkerPool

TASKS = 30
LEAK_MB = 5

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def rss_mb() -> float:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def leaky_task(index: int) -> int:
    """5 MB of native memory, touched and never freed."""
    block = _libc.malloc(LEAK_MB * MB)
    ctypes.memset(block, 1, LEAK_MB * MB)
    return index


def churning_task(index: int) -> int:
    """60 MB allocated and freed in 1 MB blocks, with glibc keeping what is freed."""
    _libc.mallopt(_M_MMAP_THRESHOLD, 32 * MB)  # 1 MB blocks from the heap, not mmap
    _libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # never give freed heap back by itself
    blocks = [_libc.malloc(MB) for _ in range(60)]
    for block in blocks:
        ctypes.memset(block, 1, MB)
    for block in blocks:
        _libc.free(block)
    return index


def main() -> None:
    start = rss_mb()
    for index in range(TASKS):
        leaky_task(index)
    print(f"in-process: {TASKS} leaky tasks, RSS +{rss_mb() - start:.0f} MB, kept for good")

    for name, task in (("leaky", leaky_task), ("churning", churning_task)):
        with WorkerPool(1, max_growth_mb=42) as pool:
            futures = [pool.submit(task, index) for index in range(TASKS)]
            results = [future.result() for future in futures]
            peak = max(future.rss_after_mb or 0.0 for future in futures)
        stats = pool.statistics()
        assert results == list(range(TASKS))
        recycles = dict(stats.recycles) or "none"
        print(
            f"pool, {name}: {TASKS} tasks, recycles {recycles}, "
            f"{len({future.pid for future in futures})} worker process(es), "
            f"worker RSS at most {peak:.0f} MB, {stats.remedies} remedies "
            f"released {stats.remedy_released_mb:.0f} MB"
        )


if __name__ == "__main__":
    main()
