"""RetirementPolicy and theil_sen_slope as pure logic: injected RSS and remedies, no processes."""

from __future__ import annotations

from nativeguard.isolate._recycle import (
    MB,
    Decision,
    RecyclePolicy,
    RetirementPolicy,
    theil_sen_slope,
)


class FakeWorker:
    """RSS the policy measures, and memory the remedy can give back.

    ``rss`` is what measure() returns; ``reclaimable`` the part of it that
    the remedy (gc + malloc_trim) releases. ``calls`` records the order.
    """

    def __init__(self, rss_mb: float = 100) -> None:
        self.rss = int(rss_mb * MB)
        self.reclaimable = 0
        self.calls: list[str] = []

    def measure(self) -> int:
        self.calls.append("measure")
        return self.rss

    def remedy(self) -> None:
        self.calls.append("remedy")
        self.rss -= self.reclaimable
        self.reclaimable = 0

    def leak(self, mb: float) -> None:
        self.rss += int(mb * MB)

    def retain(self, mb: float) -> None:
        """Memory freed by the task but kept by the allocator: RSS up, remedy takes it back."""
        self.rss += int(mb * MB)
        self.reclaimable += int(mb * MB)

    def policy(self, **limits: object) -> RetirementPolicy:
        return RetirementPolicy(
            RecyclePolicy(**limits),  # type: ignore[arg-type]
            measure=self.measure,
            remedy=self.remedy,
        )


# ------------------------------------------------------------ theil_sen_slope


def test_slope_of_a_straight_line_is_its_step() -> None:
    assert theil_sen_slope([10, 12, 14, 16, 18]) == 2.0
    assert theil_sen_slope([9, 6, 3]) == -3.0


def test_slope_of_too_few_points_is_zero() -> None:
    assert theil_sen_slope([]) == 0.0
    assert theil_sen_slope([42]) == 0.0


def test_slope_ignores_one_jump_and_one_outlier() -> None:
    """A single big task then a plateau is no leak; one wild point does not skew a steady one.

    Least squares would give 10 for the first and about 14 for the second.
    """
    assert theil_sen_slope([0, 0, 0, 0, 50]) == 0.0
    assert theil_sen_slope([0, 1, 2, 100, 4, 5]) == 1.0


# ------------------------------------------------------------- RecyclePolicy


def test_watches_memory_only_with_a_memory_limit() -> None:
    assert not RecyclePolicy().watches_memory
    assert not RecyclePolicy(max_tasks=3).watches_memory
    assert RecyclePolicy(max_rss=1).watches_memory
    assert RecyclePolicy(max_growth=1).watches_memory
    assert RecyclePolicy(slope_per_task=1.0).watches_memory


# -------------------------------------------------------- no limits, baseline


def test_without_limits_it_only_measures() -> None:
    worker = FakeWorker()
    policy = worker.policy()
    for _ in range(5):
        worker.retain(30)
        assert policy.after_task() == Decision(None, "", worker.rss)
    assert worker.calls == ["measure"] * 5
    assert (policy.tasks, policy.baseline, policy.remedies, policy.released) == (5, None, 0, 0)


def test_baseline_is_taken_after_the_first_task_and_its_remedy() -> None:
    """The first task's garbage and free heap are given back before growth starts counting."""
    worker = FakeWorker(100)
    policy = worker.policy(max_growth=50 * MB)
    worker.retain(30)
    decision = policy.after_task()
    assert decision == Decision(None, "baseline", 100 * MB, True, 30 * MB)
    assert worker.calls == ["measure", "remedy", "measure"]
    assert (policy.baseline, policy.remedies, policy.released) == (100 * MB, 1, 30 * MB)
    # Growth is counted from the trimmed baseline: 40 MB leaked is within 50.
    worker.leak(40)
    assert policy.after_task() == Decision(None, "", 140 * MB)
    assert policy.baseline == 100 * MB


# ------------------------------------------------------------------ max_tasks


def test_max_tasks_retires_on_exactly_the_last_task() -> None:
    worker = FakeWorker()
    policy = worker.policy(max_tasks=3)
    assert [policy.after_task().reason for _ in range(2)] == [None, None]
    assert policy.after_task() == Decision("max_tasks", "ran 3 tasks (its limit 3)", worker.rss)


def test_max_tasks_of_one_applies_on_the_baseline_task() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(max_tasks=1, max_growth=50 * MB)
    worker.retain(10)
    assert policy.after_task() == Decision(
        "max_tasks", "ran 1 tasks (its limit 1)", 100 * MB, True, 10 * MB
    )


def test_a_memory_reason_wins_over_max_tasks_on_the_same_task() -> None:
    """Both limits crossed at once: the memory reason is the informative one."""
    worker = FakeWorker(100)
    policy = worker.policy(max_tasks=2, max_growth=50 * MB)
    policy.after_task()
    worker.leak(60)
    decision = policy.after_task()
    assert decision.reason == "max_growth"


def test_max_tasks_still_counts_when_the_remedy_kept_the_worker() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(max_tasks=2, max_growth=50 * MB)
    policy.after_task()
    worker.retain(60)
    decision = policy.after_task()
    assert decision == Decision("max_tasks", "ran 2 tasks (its limit 2)", 100 * MB, True, 60 * MB)


# -------------------------------------------------------------------- max_rss


def test_max_rss_retires_only_above_the_limit_and_after_the_remedy() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(max_rss=200 * MB)
    policy.after_task()  # baseline
    worker.leak(100)  # exactly at the limit: not above it
    assert policy.after_task() == Decision(None, "", 200 * MB)
    worker.calls.clear()
    worker.leak(1)
    worker.retain(4)
    decision = policy.after_task()
    assert worker.calls == ["measure", "remedy", "measure"]
    assert decision == Decision(
        "max_rss",
        "RSS 201.0 MB > max_rss_mb 200.0 MB, still after gc + malloc_trim (released 4.0 MB)",
        201 * MB,
        True,
        4 * MB,
    )


def test_max_rss_is_kept_when_the_remedy_brings_it_under() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(max_rss=200 * MB)
    policy.after_task()
    worker.retain(150)
    decision = policy.after_task()
    assert decision == Decision(
        None,
        "RSS 250.0 MB > max_rss_mb 200.0 MB, but gc + malloc_trim released 150.0 MB: kept",
        100 * MB,
        True,
        150 * MB,
    )
    assert (policy.remedies, policy.released) == (2, 150 * MB)


def test_max_rss_applies_to_the_first_task_too() -> None:
    """max_rss is an absolute limit: a first task that leaves 300 MB behind crosses 200 MB."""
    worker = FakeWorker(100)
    policy = worker.policy(max_rss=200 * MB)
    worker.leak(200)
    assert policy.after_task().reason == "max_rss"


def test_max_rss_is_checked_before_max_growth() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(max_rss=150 * MB, max_growth=10 * MB)
    policy.after_task()
    worker.leak(60)
    assert policy.after_task().reason == "max_rss"


# ----------------------------------------------------------------- max_growth


def test_max_growth_counts_from_the_baseline_strictly_above_the_limit() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(max_growth=50 * MB)
    policy.after_task()
    worker.leak(50)
    assert policy.after_task().reason is None
    worker.leak(1)
    assert policy.after_task() == Decision(
        "max_growth",
        "grew 51.0 MB since its first task (baseline 100.0 MB) > max_growth_mb 50.0 MB, "
        "still after gc + malloc_trim (released 0.0 MB)",
        151 * MB,
        True,
        0,
    )
    assert policy.remedies == 2


def test_allocator_retained_growth_is_remedied_every_time_not_retired() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(max_growth=50 * MB)
    policy.after_task()
    for _ in range(5):
        worker.retain(60)
        decision = policy.after_task()
        assert decision.reason is None
        assert decision.detail.endswith("but gc + malloc_trim released 60.0 MB: kept")
        assert (decision.rss, decision.remedied, decision.released) == (100 * MB, True, 60 * MB)
    assert (policy.remedies, policy.released) == (6, 300 * MB)


def test_a_remedy_that_releases_only_part_still_retires() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(max_growth=50 * MB)
    policy.after_task()
    worker.leak(55)
    worker.retain(30)
    decision = policy.after_task()
    assert (decision.reason, decision.rss, decision.released) == ("max_growth", 155 * MB, 30 * MB)
    assert decision.detail.endswith("still after gc + malloc_trim (released 30.0 MB)")


# --------------------------------------------------------------- growth_slope


def test_slope_needs_a_full_window() -> None:
    """Window of 5 (the baseline is its first point): the 5th task is the first that can retire."""
    worker = FakeWorker(100)
    policy = worker.policy(slope_per_task=2 * MB, slope_window=5)
    reasons = []
    for _ in range(6):
        reasons.append(policy.after_task().reason)
        worker.leak(5)
    assert reasons == [None, None, None, None, "growth_slope", "growth_slope"]


def test_slope_retirement_detail() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(slope_per_task=2 * MB, slope_window=3)
    for _ in range(3):
        decision = policy.after_task()
        worker.leak(3)
    assert decision == Decision(
        "growth_slope",
        "RSS grew 3.0 MB per task over its last 3 tasks > growth_slope_mb_per_task 2.0 MB, "
        "still after gc + malloc_trim (released 0.0 MB)",
        106 * MB,
        True,
        0,
    )


def test_slope_at_the_limit_is_not_above_it() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(slope_per_task=2 * MB, slope_window=4)
    for _ in range(8):
        assert policy.after_task().reason is None
        worker.leak(2)
    assert policy.remedies == 1  # only the baseline: the slope never crossed


def test_slope_is_confirmed_by_net_growth_after_the_remedy() -> None:
    """A window of retained heap [0, 10, 20, 30, 40] MB over baseline, trimmed back to 0 on the
    last task: refitting the window with the trimmed point would still say 10 MB/task, but net
    growth across it is 0, so the worker is kept."""
    worker = FakeWorker(100)
    policy = worker.policy(slope_per_task=2 * MB, slope_window=5)
    policy.after_task()
    for _ in range(3):
        worker.retain(10)  # under a full window nothing is judged, so nothing is trimmed
        assert policy.after_task() == Decision(None, "", worker.rss)
    worker.retain(10)
    decision = policy.after_task()
    assert decision == Decision(
        None,
        "RSS grew 10.0 MB per task over its last 5 tasks > growth_slope_mb_per_task 2.0 MB, "
        "but gc + malloc_trim released 40.0 MB: kept",
        100 * MB,
        True,
        40 * MB,
    )
    assert theil_sen_slope([0, 10, 20, 30, 0]) == 10.0  # what a refit would have said


def test_slope_window_resets_after_a_kept_remedy() -> None:
    """Window [100, 100, 100, 130] (the last task retained 30 MB) fits 5 MB/task; trimmed, it is
    kept and the window starts afresh at the trimmed point. A real 5 MB/task leak after that
    retires on the task that fills the window again (3 tasks later), not earlier: keeping the
    old flat points would have retired it one task sooner."""
    worker = FakeWorker(100)
    policy = worker.policy(slope_per_task=2 * MB, slope_window=4)
    for _ in range(3):
        assert policy.after_task().reason is None
    worker.retain(30)
    kept = policy.after_task()
    assert kept == Decision(
        None,
        "RSS grew 5.0 MB per task over its last 4 tasks > growth_slope_mb_per_task 2.0 MB, "
        "but gc + malloc_trim released 30.0 MB: kept",
        100 * MB,
        True,
        30 * MB,
    )
    reasons = []
    for _ in range(4):
        worker.leak(5)
        reasons.append(policy.after_task().reason)
    assert reasons == [None, None, "growth_slope", "growth_slope"]


def test_a_slope_window_below_two_points_is_two() -> None:
    worker = FakeWorker(100)
    policy = worker.policy(slope_per_task=2 * MB, slope_window=1)
    policy.after_task()
    worker.leak(5)
    assert policy.after_task().reason == "growth_slope"


def test_the_slope_window_keeps_the_trimmed_rss_of_a_kept_worker() -> None:
    """Retained spikes trimmed by a max_growth remedy must enter the slope fit as trimmed.

    A steady 3 MB/task leak under 60 and 30 MB of retained heap: the window is
    [100, 103, 106, 109] MB and retires by slope; with the untrimmed spikes
    [100, 163, 136, 109] its fit would be negative and hide the leak.
    """
    worker = FakeWorker(100)
    policy = worker.policy(max_growth=20 * MB, slope_per_task=2 * MB, slope_window=4)
    policy.after_task()
    decisions = []
    for retained in (60, 30, 0):
        worker.leak(3)
        worker.retain(retained)
        decisions.append(policy.after_task())
    assert [(d.reason, d.rss) for d in decisions] == [
        (None, 103 * MB),
        (None, 106 * MB),
        ("growth_slope", 109 * MB),
    ]
    assert decisions[-1].detail.startswith("RSS grew 3.0 MB per task over its last 4 tasks")
