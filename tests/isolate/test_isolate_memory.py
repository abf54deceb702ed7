"""WorkerPool's memory rules against real native memory (ctypes malloc, glibc), no SDK.

Workers measure their current RSS after every task; these tests leak or churn
native memory on purpose and check that the pool retires exactly the worker
it should, on exactly the task the policy arithmetic says, for the right reason.
"""

from __future__ import annotations

import re

import isolate_native_tasks as tasks
import pytest

from nativeguard.isolate import WorkerPool

pytestmark = pytest.mark.usefixtures("fork_server")

MB = 1 << 20


def _run_one_by_one(pool: WorkerPool, fn, *args, count: int):
    """Submit ``count`` tasks one after the other (each waits for the previous one)."""
    futures = []
    for _ in range(count):
        future = pool.submit(fn, *args)
        future.result(timeout=60)
        futures.append(future)
    return futures


def test_native_leak_retires_its_worker_by_growth() -> None:
    """20 MB leaked per task, max_growth_mb=50: the baseline is taken after task 1, so growth
    is 20, 40, then 60 MB after task 4, which retires the worker; task 5 runs on a fresh one."""
    with WorkerPool(1, max_growth_mb=50) as pool:
        futures = _run_one_by_one(pool, tasks.leak_native, 20, count=6)
    stats = pool.statistics()  # after the block: every worker's end is counted
    pids = [f.pid for f in futures]
    print("\nleak 20 MB/task, max_growth_mb=50:")
    for i, f in enumerate(futures, 1):
        print(
            f"  task {i} pid {f.pid}: RSS {f.rss_before_mb:.1f} -> {f.rss_after_mb:.1f} MB "
            f"(delta {f.rss_delta_mb:+.1f}) retired={f.worker_retired}"
        )
    print(stats)

    assert [f.worker_retired for f in futures] == [None, None, None, "max_growth", None, None]
    assert len(set(pids[:4])) == 1
    assert len(set(pids[4:])) == 1
    assert pids[4] != pids[0]
    # Each task after the first grew the worker by the 20 MB it leaked (trim cannot free it).
    for future in futures[1:4] + futures[5:]:
        assert future.rss_delta_mb == pytest.approx(20, abs=2)
    assert dict(stats.recycles) == {"max_growth": 1}
    (retirement,) = [r for r in stats.retirements if r.reason == "max_growth"]
    assert retirement.pid == pids[0]
    assert retirement.tasks_run == 4
    match = re.fullmatch(
        r"grew (\d+\.\d) MB since its first task \(baseline (\d+\.\d) MB\) "
        r"> max_growth_mb 50\.0 MB, "
        r"still after gc \+ malloc_trim \(released (\d+\.\d) MB\)",
        retirement.detail,
    )
    assert match is not None, retirement.detail
    grew, baseline, released = (float(g) for g in match.groups())
    assert grew == pytest.approx(60, abs=3)
    assert released < 2
    assert retirement.rss_mb == pytest.approx(baseline + grew, abs=0.1)
    # Remedies: the baseline of each worker (2), plus the confirmation before retiring (1).
    assert stats.remedies == 3


def test_allocator_retained_memory_is_trimmed_not_retired() -> None:
    """60 MB malloc'ed and freed per task, glibc told to keep it: RSS stays ~60 MB up after each
    task (measured in the task), but malloc_trim gives it back, so max_growth_mb=50 never retires
    the worker; every task ends with a remedy that released more than 50 MB."""
    count = 8
    with WorkerPool(1, max_growth_mb=50) as pool:
        futures = _run_one_by_one(pool, tasks.churn_native, 60, count=count)
        stats = pool.statistics()
    reports = [f.result() for f in futures]
    print("\nchurn 60 MB/task (freed, retained by glibc), max_growth_mb=50:")
    for i, (f, r) in enumerate(zip(futures, reports, strict=True), 1):
        print(
            f"  task {i}: in task {r['rss_before'] / MB:.1f} -> allocated "
            f"{r['rss_allocated'] / MB:.1f} -> freed {r['rss_freed'] / MB:.1f} MB; "
            f"after remedies {f.rss_after_mb:.1f} MB"
        )
    print(stats)

    assert {r["pid"] for r in reports} == {futures[0].pid}
    for report, future in zip(reports, futures, strict=True):
        # Really retained: freeing gave nothing back to the OS...
        assert report["rss_allocated"] - report["rss_before"] > 58 * MB
        assert report["rss_freed"] - report["rss_before"] > 58 * MB
        # ...until the pool's gc + malloc_trim did.
        assert future.rss_after_mb < report["rss_freed"] / MB - 55
        assert future.worker_retired is None
    assert dict(stats.recycles) == {}
    assert [r.reason for r in stats.retirements] == []
    # Every task crossed the limit and was remedied (the first one for its baseline).
    assert stats.remedies == count
    assert stats.remedy_released_mb > 55 * count
    (worker,) = [w for w in stats.workers if w.role == "active"]
    assert (worker.tasks_run, worker.remedies) == (count, count)


def test_growth_slope_retires_a_steady_leak() -> None:
    """5 MB/task against growth_slope_mb_per_task=2 over slope_window=5: the window is full after
    task 5 (baseline + 4 tasks), its fitted slope is ~5 MB/task, and the worker retires there."""
    with WorkerPool(1, growth_slope_mb_per_task=2, slope_window=5) as pool:
        futures = _run_one_by_one(pool, tasks.leak_native, 5, count=6)
    stats = pool.statistics()  # after the block: every worker's end is counted
    assert [f.worker_retired for f in futures] == [None, None, None, None, "growth_slope", None]
    assert futures[5].pid != futures[0].pid
    assert dict(stats.recycles) == {"growth_slope": 1}
    (retirement,) = [r for r in stats.retirements if r.reason == "growth_slope"]
    print(f"\nleak 5 MB/task, slope limit 2 MB/task: {retirement.detail}")
    assert retirement.tasks_run == 5
    match = re.fullmatch(
        r"RSS grew (\d+\.\d) MB per task over its last 5 tasks > growth_slope_mb_per_task "
        r"2\.0 MB, still after gc \+ malloc_trim \(released \d+\.\d MB\)",
        retirement.detail,
    )
    assert match is not None, retirement.detail
    assert float(match.group(1)) == pytest.approx(5, abs=0.5)


def test_max_rss_retires_a_worker_above_the_limit() -> None:
    """max_rss_mb set 50 MB above a fresh worker's RSS: leaking 20 MB per task crosses it
    on task 3 (+60 MB), which retires the worker with "max_rss"."""
    with WorkerPool(1, warm_spare=False) as probe:
        start_rss = probe.submit(tasks.current_rss).result(timeout=60)["rss"] / MB
    limit = round(start_rss + 50)
    with WorkerPool(1, max_rss_mb=limit) as pool:
        futures = _run_one_by_one(pool, tasks.leak_native, 20, count=4)
    stats = pool.statistics()  # after the block: every worker's end is counted
    print(f"\nfresh worker RSS {start_rss:.1f} MB; max_rss_mb={limit}")
    for i, f in enumerate(futures, 1):
        print(f"  task {i}: RSS after {f.rss_after_mb:.1f} MB retired={f.worker_retired}")
    assert [f.worker_retired for f in futures] == [None, None, "max_rss", None]
    assert futures[3].pid != futures[0].pid
    assert dict(stats.recycles) == {"max_rss": 1}
    (retirement,) = [r for r in stats.retirements if r.reason == "max_rss"]
    assert retirement.tasks_run == 3
    assert retirement.rss_mb is not None
    assert retirement.rss_mb > limit
    expected = f"RSS {retirement.rss_mb:.1f} MB > max_rss_mb {limit:.1f} MB, still after gc"
    assert retirement.detail.startswith(expected)
