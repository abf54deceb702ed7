"""When a worker process should retire: the decision, apart from the process plumbing.

A worker asks :class:`RetirementPolicy` after every task. Memory limits are
judged on *current* RSS (peak RSS never goes down, so a worker judged on it
would retire forever after one big task). Before a memory limit retires a
worker the cheap remedies run (``gc.collect()``, then ``malloc_trim``) and RSS
is measured again: memory that was only garbage or allocator-retained free heap
is not a reason to throw the process away.

Kept free of I/O (``measure`` and ``remedy`` are injected) so the rules are
tested without processes.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MB", "Decision", "RecyclePolicy", "RetirementPolicy", "theil_sen_slope"]

MB = 1 << 20
"""Bytes in the "MB" of every ``*_mb`` option and statistic (a mebibyte)."""


@dataclass(frozen=True)
class RecyclePolicy:
    """One worker's limits, in bytes; ``None`` disables a limit."""

    max_tasks: int | None = None
    max_rss: int | None = None
    max_growth: int | None = None
    slope_per_task: float | None = None
    slope_window: int = 10

    @property
    def watches_memory(self) -> bool:
        limits = (self.max_rss, self.max_growth, self.slope_per_task)
        return any(limit is not None for limit in limits)


@dataclass(frozen=True)
class Decision:
    """What the policy concluded after a task.

    ``reason`` is ``None`` to keep working, else one of ``"max_tasks"``,
    ``"max_rss"``, ``"max_growth"``, ``"growth_slope"``; ``detail`` says it in
    words with the numbers. ``remedied`` tells whether gc + trim ran, and
    ``released`` how many bytes of RSS they gave back.
    """

    reason: str | None
    detail: str
    rss: int
    remedied: bool = False
    released: int = 0


def theil_sen_slope(values: list[int]) -> float:
    """Median of the pairwise slopes of ``values`` over their index (robust to one-off jumps).

    A least-squares fit would call a single large task, followed by a flat
    plateau, a steady leak; the median of pairwise slopes does not.
    """
    slopes = [
        (values[j] - values[i]) / (j - i)
        for i in range(len(values))
        for j in range(i + 1, len(values))
    ]
    return statistics.median(slopes) if slopes else 0.0


def _mb(value: float) -> str:
    return f"{value / MB:.1f} MB"


class RetirementPolicy:
    """Applies a :class:`RecyclePolicy` to one worker's sequence of tasks."""

    def __init__(
        self, policy: RecyclePolicy, *, measure: Callable[[], int], remedy: Callable[[], None]
    ) -> None:
        self._policy = policy
        self._measure = measure
        self._remedy = remedy
        self.tasks = 0
        self.baseline: int | None = None
        self.remedies = 0
        self.released = 0
        self._window: deque[int] = deque(maxlen=max(2, policy.slope_window))

    def _run_remedy(self, rss: int) -> tuple[int, int]:
        self._remedy()
        after = self._measure()
        self.remedies += 1
        released = max(0, rss - after)
        self.released += released
        return after, released

    def _over(self, rss: int, *, confirming: bool) -> tuple[str, str] | None:
        """The first memory limit ``rss`` crosses, with its explanation."""
        policy = self._policy
        if policy.max_rss is not None and rss > policy.max_rss:
            return "max_rss", f"RSS {_mb(rss)} > max_rss_mb {_mb(policy.max_rss)}"
        if policy.max_growth is not None and self.baseline is not None:
            growth = rss - self.baseline
            if growth > policy.max_growth:
                return "max_growth", (
                    f"grew {_mb(growth)} since its first task (baseline {_mb(self.baseline)}) "
                    f"> max_growth_mb {_mb(policy.max_growth)}"
                )
        window = self._window
        if policy.slope_per_task is not None and len(window) == window.maxlen:
            if confirming:
                # After the remedies only the net growth across the window counts:
                # refitting would still see the untrimmed points in the middle.
                slope = (rss - window[0]) / (len(window) - 1)
            else:
                slope = theil_sen_slope(list(window))
            if slope > policy.slope_per_task:
                return "growth_slope", (
                    f"RSS grew {_mb(slope)} per task over its last {len(window)} tasks "
                    f"> growth_slope_mb_per_task {_mb(policy.slope_per_task)}"
                )
        return None

    def after_task(self) -> Decision:
        """Measure, decide, and run the remedies first where a memory limit is crossed."""
        self.tasks += 1
        policy = self._policy
        rss = self._measure()
        if self.baseline is None and policy.watches_memory:
            # The first task imports modules and fills caches; growth counts from
            # after it, with its garbage and free heap already given back.
            rss, released = self._run_remedy(rss)
            self.baseline = rss
            self._window.append(rss)
            policy_rss = self._policy.max_rss
            if policy_rss is not None and rss > policy_rss:
                # An absolute limit applies from the first task on.
                return Decision(
                    "max_rss",
                    f"RSS {_mb(rss)} > max_rss_mb {_mb(policy_rss)} after its first task, "
                    f"still after gc + malloc_trim (released {_mb(released)})",
                    rss,
                    True,
                    released,
                )
            return self._by_count(Decision(None, "baseline", rss, True, released))
        self._window.append(rss)
        crossed = self._over(rss, confirming=False)
        if crossed is None:
            return self._by_count(Decision(None, "", rss))
        after, released = self._run_remedy(rss)
        self._window[-1] = after
        confirmed = self._over(after, confirming=True)
        if confirmed is not None:
            reason, detail = confirmed
            return Decision(
                reason,
                f"{detail}, still after gc + malloc_trim (released {_mb(released)})",
                after,
                True,
                released,
            )
        if crossed[0] == "growth_slope":
            # The slope was retained heap, not a leak: fit afresh from here.
            self._window.clear()
            self._window.append(after)
        note = f"{crossed[1]}, but gc + malloc_trim released {_mb(released)}: kept"
        return self._by_count(Decision(None, note, after, True, released))

    def _by_count(self, decision: Decision) -> Decision:
        limit = self._policy.max_tasks
        if limit is not None and self.tasks >= limit:
            return Decision(
                "max_tasks",
                f"ran {self.tasks} tasks (its limit {limit})",
                decision.rss,
                decision.remedied,
                decision.released,
            )
        return decision
