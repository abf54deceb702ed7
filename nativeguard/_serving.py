"""A server process judged after each unit of work: the core of the Celery and gunicorn hooks.

A Celery pool child or a gunicorn worker is not a :class:`~nativeguard.isolate.WorkerPool`
worker, but the question after each task or request is the same, so the answer
is the same code: :class:`~nativeguard.isolate._recycle.RetirementPolicy` (gc and
``malloc_trim`` first, then current RSS against ``max_rss_mb``, growth since the
first unit against ``max_growth_mb``, the fitted slope against
``growth_slope_mb_per_task``, and ``max_tasks``). The options are checked with
the pool's own checks, so each means exactly what it means for ``WorkerPool``.

What this module adds is the per-unit accounting a server wants to publish:
:class:`UnitDeltas`, what one task or request did to this process's native
state (RSS, glibc's in-use and retained heap, Speech SDK handles by type, the
SDK objects a guarded unit created and released) and what the policy decided
after it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from nativeguard._core._errors import NativeGuardError
from nativeguard._core._guarded import GuardStatistics
from nativeguard._core._malloc import heap_stats, rss_bytes
from nativeguard._core._reaper import get_reaper
from nativeguard.integrations.azure_speech._handles import native_handles
from nativeguard.isolate._options import check_limit as _check_limit
from nativeguard.isolate._recycle import MB, Decision, RecyclePolicy, RetirementPolicy
from nativeguard.isolate._worker import _remedy

__all__ = ["ProcessRecycler", "UnitDeltas", "check_options", "recycle_policy"]

_SDK_MODULE = "azure.cognitiveservices.speech"


def check_options(
    *,
    max_tasks: int | None,
    max_rss_mb: float | None,
    max_growth_mb: float | None,
    growth_slope_mb_per_task: float | None,
    guard_tasks: bool,
    guard_name: str = "guard_tasks",
) -> None:
    """Refuse a bad option by name, with the same checks (and messages) as ``WorkerPool``."""
    _check_limit("max_tasks", max_tasks, integer=True)
    _check_limit("max_rss_mb", max_rss_mb)
    _check_limit("max_growth_mb", max_growth_mb)
    _check_limit("growth_slope_mb_per_task", growth_slope_mb_per_task)
    if not isinstance(guard_tasks, bool):
        raise TypeError(f"{guard_name} must be True or False, got {guard_tasks!r}")


def recycle_policy(
    *,
    max_tasks: int | None,
    max_rss_mb: float | None,
    max_growth_mb: float | None,
    growth_slope_mb_per_task: float | None,
) -> RecyclePolicy:
    """The ``*_mb`` options in bytes, as ``WorkerPool`` converts them."""
    return RecyclePolicy(
        max_tasks=max_tasks,
        max_rss=None if max_rss_mb is None else int(max_rss_mb * MB),
        max_growth=None if max_growth_mb is None else int(max_growth_mb * MB),
        slope_per_task=None if growth_slope_mb_per_task is None else growth_slope_mb_per_task * MB,
    )


@dataclass(frozen=True)
class UnitDeltas:
    """What one task (or request) did to its process, and what the policy decided after it.

    Sizes in bytes; ``*_delta`` is after minus before, measured before the
    policy's remedies (``rss_after`` is after them, as for ``WorkerPool``).
    ``native_handles_delta`` lists the Speech SDK handle types whose count
    changed (empty: the unit left none behind); it is ``None`` where the SDK is
    not loaded in the process. ``objects_created`` / ``objects_released`` /
    ``survivors`` come from the unit's guard (``None`` when not guarded).
    ``retire`` is the policy's reason to retire the process after this unit
    (``"max_tasks"``, ``"max_rss"``, ``"max_growth"``, ``"growth_slope"``) or
    ``None``; ``remedied`` tells whether gc + ``malloc_trim`` ran first and
    ``released`` what they gave back.
    """

    pid: int
    unit: int
    duration_s: float
    rss_before: int
    rss_after: int
    rss_delta: int
    heap_in_use_delta: int | None
    heap_free_delta: int | None
    native_handles_delta: dict[str, int] | None
    objects_created: int | None
    objects_released: int | None
    survivors: int | None
    retire: str | None
    detail: str
    remedied: bool
    released: int
    baseline_rss: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (what goes into result metadata and events)."""
        return asdict(self)


_RELEASE_WAIT_S = 10.0
"""Longest wait after a unit for releases still running on the reaper."""


def _handles() -> dict[str, int] | None:
    if _SDK_MODULE not in sys.modules:
        return None  # reading the table would load the SDK core into a process without it
    try:
        return native_handles()
    except NativeGuardError:
        return None


@dataclass
class _Before:
    start: float
    rss: int
    in_use: int | None
    free: int | None
    handles: dict[str, int] | None


class ProcessRecycler:
    """The policy for this process plus the per-unit measurement around it.

    ``begin()`` before a unit, ``end(guard_statistics)`` after it: the
    returned :class:`UnitDeltas` carries the decision; once a decision says
    retire, :attr:`retiring` holds it (the caller retires the process by its
    server's own graceful path).
    """

    def __init__(self, policy: RecyclePolicy) -> None:
        self.policy = policy
        self._retirement = RetirementPolicy(policy, measure=rss_bytes, remedy=_remedy)
        self.pid = os.getpid()
        self.retiring: Decision | None = None

    @property
    def units(self) -> int:
        return self._retirement.tasks

    def begin(self) -> _Before:
        heap = heap_stats()
        return _Before(
            start=time.perf_counter(),
            rss=rss_bytes(),
            in_use=heap.in_use_bytes,
            free=heap.free_bytes,
            handles=_handles(),
        )

    def end(self, before: _Before, guard: GuardStatistics | None) -> UnitDeltas:
        duration = time.perf_counter() - before.start
        reaper = get_reaper()
        if reaper.pending() and not reaper.is_current():
            # Releases the unit handed to the reaper (background mode, the
            # default) belong to it: measure after them, as verify.check() does.
            reaper.wait_idle(_RELEASE_WAIT_S)
        rss = rss_bytes()
        heap = heap_stats()
        handles = _handles()
        handles_delta: dict[str, int] | None = None
        if handles is not None:
            old = before.handles or {}
            handles_delta = {
                name: handles.get(name, 0) - old.get(name, 0)
                for name in sorted(set(handles) | set(old))
                if handles.get(name, 0) != old.get(name, 0)
            }
        decision = self._retirement.after_task()
        if decision.reason is not None and self.retiring is None:
            self.retiring = decision
        scope = None if guard is None else guard.scope
        return UnitDeltas(
            pid=self.pid,
            unit=self._retirement.tasks,
            duration_s=duration,
            rss_before=before.rss,
            rss_after=decision.rss,
            rss_delta=rss - before.rss,
            heap_in_use_delta=None
            if heap.in_use_bytes is None or before.in_use is None
            else heap.in_use_bytes - before.in_use,
            heap_free_delta=None
            if heap.free_bytes is None or before.free is None
            else heap.free_bytes - before.free,
            native_handles_delta=handles_delta,
            objects_created=None if guard is None else guard.objects_created,
            objects_released=None if scope is None else scope.objects_tracked - scope.survivors,
            survivors=None if scope is None else scope.survivors,
            retire=decision.reason,
            detail=decision.detail,
            remedied=decision.remedied,
            released=decision.released,
            baseline_rss=self._retirement.baseline,
        )
