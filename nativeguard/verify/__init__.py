"""Verification: did the code under test release everything? Data first, failures on request.

::

    from nativeguard.verify import snapshot, check, assert_no_leaks, Allow, leak_check

    before = snapshot()
    run_one_request()
    report = check(before)  # LeakReport | None: what grew, and what holds it
    assert_no_leaks(before, allow=[Allow("SpeechConfig", "cached for the process")])
    result = leak_check(run_one_request)  # CPython -R style: LeakCheck, per-metric deltas

Only :func:`assert_no_leaks` (and the pytest plugin, ``pytest --nativeguard``)
raise; everything else returns data.
"""

from __future__ import annotations

from .._core._malloc import HeapStats, heap_stats
from ._check import Allow, assert_no_leaks, check
from ._leakcheck import LeakCheck, leak_check
from ._memory import MemoryBreakdown, memory_breakdown, trim
from ._report import LeakReport
from ._snapshot import Delta, Snapshot, snapshot

__all__ = [
    "Allow",
    "Delta",
    "HeapStats",
    "LeakCheck",
    "LeakReport",
    "MemoryBreakdown",
    "Snapshot",
    "assert_no_leaks",
    "check",
    "heap_stats",
    "leak_check",
    "memory_breakdown",
    "snapshot",
    "trim",
]
