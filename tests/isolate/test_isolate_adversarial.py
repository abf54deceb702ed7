"""Adversarial tests of WorkerPool: races, misbehaving tasks, hostile options, dying helpers.

Scenarios that could hang or wreck the test process itself (deadlocks, fd
exhaustion, killing the fork server or a template, fork() of the pool's process) run in a
child interpreter, in its own session, which is killed as a whole afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import isolate_adversarial_tasks as tasks
import psutil
import pytest
from isolate_support import HANG_S, assert_all_gone, pids_of, read_pid, wait_for

from nativeguard import ClosedResourceError
from nativeguard.isolate import (
    NotPlainDataError,
    RemoteTaskError,
    TaskFuture,
    WorkerCrashed,
    WorkerPool,
    WorkerStartError,
)

pytestmark = [pytest.mark.usefixtures("fork_server"), pytest.mark.timeout(60)]

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent

# ------------------------------------------------------------------- helpers


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def outcome(future: TaskFuture[object]) -> BaseException | object:
    """The future's result or exception, caught whatever it is (KeyboardInterrupt too)."""
    try:
        return future.result(HANG_S)
    except BaseException as error:  # the point is to see exactly what comes back
        return error


def _session_members(sid: int) -> list[int]:
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
    return members


def run_python(code: str, *args: str, timeout: float = 30.0) -> tuple[dict, str, list[int]]:
    """Run ``code`` in a fresh interpreter (own session); return its last JSON line, its stderr
    and the processes of its session still alive after it exited (then killed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"the script hung for {timeout} s; stdout {out!r}, stderr {err}"
        ) from None
    finally:
        survivors: list[int] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            survivors = _session_members(proc.pid)
            if not survivors:
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = out.strip().splitlines()
    assert lines, f"the script printed nothing (exit {proc.returncode}); stderr:\n{err}"
    return json.loads(lines[-1]), err, survivors


def construct_then_shutdown(**options: object) -> None:
    """WorkerPool(**options); if that does not raise, end the pool at once (no leak)."""
    pool = WorkerPool(**options)  # type: ignore[arg-type]
    pool.shutdown(cancel_futures=True, terminate=True)


# --------------------------------------------------------------- bad options


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize(
    "option",
    ["task_timeout_s", "kill_grace_s", "max_rss_mb", "max_growth_mb", "growth_slope_mb_per_task"],
)
def test_non_finite_limits_are_refused_by_the_constructor(option: str, value: float) -> None:
    """NaN or infinity is no limit: refused up front with a ValueError naming the option.

    Accepted, a NaN timeout made the manager spin at 100 % CPU and never time a
    task out, an infinite one killed the manager thread at the first task, and
    NaN/inf memory limits died in int() with a message naming no option.
    """
    threads = threading.active_count()
    with pytest.raises(ValueError, match=option):
        construct_then_shutdown(**{option: value})
    assert threading.active_count() == threads


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"kill_grace_s": None}, TypeError, "kill_grace_s"),
        ({"preload": ["nativeguard_no_such_module"]}, (ValueError, ImportError), "no_such_module"),
        ({"warm_spare": "no"}, TypeError, "warm_spare"),
        ({"plain_types": int}, TypeError, "plain_types"),
    ],
    ids=["kill_grace_s=None", "preload-typo", "warm_spare-str", "plain_types-one-type"],
)
def test_more_bad_options_are_refused_with_their_name(
    options: dict[str, object], error: type[Exception], names: str
) -> None:
    """Each mistake fails in the constructor, naming what is wrong; they used to be accepted
    (a misspelt preload is silently skipped, "no" starts a spare) or fail with a bare message."""
    with pytest.raises(error, match=names):
        construct_then_shutdown(**options)


def test_a_month_long_task_timeout_does_not_break_the_pool() -> None:
    """task_timeout_s=30 days is a valid limit; the manager must not pass it to poll() as is."""
    with WorkerPool(1, task_timeout_s=30 * 86400.0) as pool:
        first = pool.submit(tasks.sleep_then, 0.2, "first")
        assert outcome(first) == "first"
        assert pool.submit(tasks.add, 1, 2).result(HANG_S) == 3
    assert_all_gone(pids_of(pool, [first]))


# ----------------------------------------------------------------- lifecycle


def test_every_entry_point_refuses_a_closed_pool_eagerly() -> None:
    """submit, map and asubmit after shutdown: ClosedResourceError, and map raises at the call."""
    with WorkerPool(1, warm_spare=False) as pool:
        assert pool.submit(tasks.add, 1, 1).result(HANG_S) == 2
    pids = pids_of(pool)
    with pytest.raises(ClosedResourceError, match="is shut down; it takes no new tasks"):
        pool.submit(tasks.add, 1, 2)
    with pytest.raises(ClosedResourceError):
        pool.map(tasks.add, [1, 2], [3, 4])  # not deferred to the first next()
    with pytest.raises(ClosedResourceError):
        asyncio.run(pool.asubmit(tasks.add, 1, 2))
    stats = pool.statistics()
    assert (stats.tasks_submitted, stats.tasks_completed) == (1, 1)
    assert_all_gone(pids)


@pytest.mark.parametrize("cancel_futures", [False, True], ids=["finish", "cancel"])
def test_submitters_racing_shutdown_lose_nothing_and_counters_add_up(cancel_futures: bool) -> None:
    """4 threads submit a mix (results, exceptions, crashes, own cancels) while shutdown() runs.

    Every accepted task ends in exactly one way that fits what it was, every
    thread is stopped by ClosedResourceError, and the counters add up to the
    futures: submitted == completed + failed + cancelled, crashes == crashed.
    """
    accepted: list[tuple[str, int, TaskFuture[object]]] = []
    stopped_by: list[BaseException] = []
    lock = threading.Lock()
    enough = threading.Event()

    def submitter(offset: int) -> None:
        for n in range(offset, offset + 5000):
            kind = ("ok", "ok", "ok", "ok", "raise", "ok", "crash", "ok", "ok", "cancel")[n % 10]
            try:
                if kind == "raise":
                    future = pool.submit(tasks.fail_with, f"task {n}")
                elif kind == "crash":
                    future = pool.submit(tasks.crash_with, 3)
                else:
                    future = pool.submit(tasks.add, n, 1)
            except BaseException as error:
                with lock:
                    stopped_by.append(error)
                return
            if kind == "cancel":
                future.cancel()
            with lock:
                accepted.append((kind, n, future))
                if len(accepted) >= 120:
                    enough.set()
            time.sleep(0.001)

    pool = WorkerPool(2, jitter=0)
    threads = [threading.Thread(target=submitter, args=(k * 10000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    assert enough.wait(HANG_S)
    pool.shutdown(wait=True, cancel_futures=cancel_futures)
    for thread in threads:
        thread.join(HANG_S)
    assert not any(thread.is_alive() for thread in threads)
    assert len(stopped_by) == 4
    assert all(isinstance(error, ClosedResourceError) for error in stopped_by), stopped_by

    completed = failed = cancelled = crashed = 0
    for kind, n, future in accepted:
        assert future.done(), f"task {n} ({kind}) neither ran nor was cancelled"
        if future.cancelled():
            cancelled += 1
            assert cancel_futures or kind == "cancel", f"task {n} ({kind}) was cancelled"
            continue
        got = outcome(future)
        if kind == "raise":
            assert isinstance(got, ValueError), got
            assert str(got) == f"task {n}"
            failed += 1
        elif kind == "crash":
            assert isinstance(got, WorkerCrashed), got
            assert (got.exitcode, got.signal) == (3, None)
            failed += 1
            crashed += 1
        else:
            assert got == n + 1, (kind, n, got)
            completed += 1
    stats = pool.statistics()
    assert stats.tasks_submitted == len(accepted)
    assert (stats.tasks_completed, stats.tasks_failed, stats.tasks_cancelled) == (
        completed,
        failed,
        cancelled,
    )
    assert stats.crashes == crashed
    assert stats.workers == ()
    assert_all_gone(pids_of(pool, [future for _, _, future in accepted]))


def test_future_timeout_and_cancel_semantics(tmp_path: Path) -> None:
    """result(timeout) leaves the task running; cancel() spares a running task, not a queued one."""
    go = tmp_path / "go"
    with WorkerPool(1, warm_spare=False) as pool:
        running = pool.submit(tasks.wait_for_file, str(go), "first")
        queued = pool.submit(tasks.add, 1, 2)
        later = pool.submit(tasks.add, 3, 4)
        wait_for(running.running, "the first task to start")
        # concurrent.futures.TimeoutError: the builtin TimeoutError only from 3.11 on.
        with pytest.raises(concurrent.futures.TimeoutError):
            running.result(timeout=0.05)
        assert running.cancel() is False
        assert queued.cancel() is True
        go.touch()
        assert running.result(HANG_S) == "first"
        assert later.result(HANG_S) == 7
    assert queued.cancelled()
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_failed, stats.tasks_cancelled) == (2, 0, 1)
    assert_all_gone(pids_of(pool, [running, later]))


def test_asubmit_cancelled_from_asyncio(tmp_path: Path) -> None:
    """As documented: cancelling the awaiting task cancels a queued task; a running one finishes.

    The running task's worker is not killed: it completes (counted), its result dropped.
    """
    go = tmp_path / "go"

    async def main() -> tuple[bool, bool]:
        running = asyncio.create_task(pool.asubmit(tasks.wait_for_file, str(go), "first"))
        queued = asyncio.create_task(pool.asubmit(tasks.add, 1, 2))
        await asyncio.sleep(0)
        deadline = time.monotonic() + HANG_S
        while not any(w.state == "busy" for w in pool.statistics().workers):
            assert time.monotonic() < deadline, "the first task never started"
            await asyncio.sleep(0.01)
        running.cancel()
        queued.cancel()
        results = await asyncio.gather(running, queued, return_exceptions=True)
        return tuple(isinstance(r, asyncio.CancelledError) for r in results)  # type: ignore[return-value]

    with WorkerPool(1, warm_spare=False) as pool:
        assert asyncio.run(main()) == (True, True)
        go.touch()
    stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_cancelled, stats.tasks_failed) == (1, 1, 0)
    assert stats.crashes == 0
    assert [r.reason for r in stats.retirements] == ["stopped"]
    assert_all_gone(pids_of(pool))


def test_map_edge_cases() -> None:
    """Empty input, a generator, unequal lengths, a bad argument and a task raising midway."""
    with WorkerPool(1, warm_spare=False) as pool:
        assert list(pool.map(tasks.add, [])) == []
        assert list(pool.map(tasks.add, (n for n in range(3)), [10, 20, 30, 40])) == [10, 21, 32]
        with pytest.raises(NotPlainDataError) as bad:  # at the call, not at the first next()
            pool.map(tasks.type_name, [threading.Lock()])
        assert bad.value.path == "iterables[0][0]"  # the map() argument, item 0

        results = pool.map(tasks.sleep_or_fail, [0.0, 0.0, -1.0, 0.3, 0.3, 0.3])
        assert next(results) == 0.0
        assert next(results) == 0.0
        with pytest.raises(ValueError, match=r"^negative: -1\.0"):
            next(results)
        with pytest.raises(StopIteration):  # the error ended the iterator...
            next(results)
    stats = pool.statistics()
    # ...and cancelled what had not started: the last two at least (the 0.3 s task
    # after the failing one may have been running already; then it completes).
    assert stats.tasks_submitted == 3 + 6
    assert stats.tasks_failed == 1
    assert stats.tasks_completed + stats.tasks_cancelled == 3 + 5
    assert stats.tasks_cancelled in (2, 3)
    assert_all_gone(pids_of(pool))


def test_map_refusing_an_item_cancels_the_items_before_it(tmp_path: Path) -> None:
    """The caller of a map() that raised holds no future: what has not started must not run."""
    go = tmp_path / "go"
    with WorkerPool(1, warm_spare=False) as pool:

        def values() -> Iterator[object]:  # map() takes them one by one
            yield "running"
            wait_for(lambda: any(w.state == "busy" for w in pool.statistics().workers), "busy")
            yield "queued"
            yield tasks.Opaque("not plain")

        with pytest.raises(NotPlainDataError) as refused:
            pool.map(functools.partial(tasks.wait_for_file, str(go)), values())
        go.touch()
    assert refused.value.path == "iterables[0][2]"  # the third item map() took
    stats = pool.statistics()
    # The running one finishes (its result is dropped); the queued one never runs.
    assert (stats.tasks_submitted, stats.tasks_completed, stats.tasks_cancelled) == (2, 1, 1)
    assert_all_gone(pids_of(pool))


def test_done_callback_using_the_pool_during_a_cancelling_shutdown() -> None:
    """A done-callback that asks the pool for statistics must not deadlock shutdown(cancel_futures).

    The manager cancels queued futures while holding the pool lock, and
    Future.cancel() runs done-callbacks right there. Run in a child: the
    deadlock cannot be undone in-process.
    """
    result, err, survivors = run_python(
        """
        import json, threading, time
        import isolate_adversarial_tasks as tasks
        from nativeguard.isolate import WorkerPool

        pool = WorkerPool(1, warm_spare=False)
        seen = []
        running = pool.submit(tasks.sleep_then, 0.3, "ran")
        queued = pool.submit(tasks.add, 1, 2)
        queued.add_done_callback(lambda f: seen.append(pool.statistics().tasks_cancelled))
        while not running.running():
            time.sleep(0.01)
        closer = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True})
        closer.daemon = True
        closer.start()
        closer.join(3)
        print(json.dumps({"hung": closer.is_alive(), "seen": seen,
                          "cancelled": queued.cancelled()}), flush=True)
        import os; os._exit(0)
        """
    )
    assert result == {"hung": False, "seen": [1], "cancelled": True}, err
    assert survivors == []


def test_interpreter_exit_after_shutdown_without_wait_finishes_the_queue(tmp_path: Path) -> None:
    """shutdown(wait=False) promises to finish the queued tasks; exiting right after must too.

    With recycling workers (max_tasks=1) only the tasks of the workers alive at
    exit run; the rest vanish without a trace (and a worker prints a
    ConnectionResetError traceback).
    """
    result, err, survivors = run_python(
        """
        import json, sys
        import isolate_adversarial_tasks as tasks
        from nativeguard.isolate import WorkerPool

        pool = WorkerPool(1, max_tasks=1, jitter=0)
        pool.submit(tasks.add, 1, 2).result(20)
        for n in range(4):
            pool.submit(tasks.touch_after, 0.2, f"{sys.argv[1]}/done{n}")
        pool.shutdown(wait=False)
        print(json.dumps({"exiting": True}), flush=True)
        """,
        str(tmp_path),
    )
    assert result == {"exiting": True}
    assert survivors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"done{n}" for n in range(4)]
    assert "Traceback" not in err, err


# ------------------------------------------------------- what tasks can raise


@pytest.mark.parametrize(
    ("fn", "args", "type_name"),
    [
        (tasks.call_sys_exit, (0,), "SystemExit"),
        (tasks.raise_keyboard_interrupt, (), "KeyboardInterrupt"),
        (tasks.raise_custom_base_error, ("x",), "isolate_adversarial_tasks.CustomBaseError"),
    ],
    ids=["sys.exit", "KeyboardInterrupt", "BaseException"],
)
def test_exit_like_exceptions_of_a_task_stay_in_the_worker(
    fn: Callable[..., object], args: tuple[object, ...], type_name: str
) -> None:
    """sys.exit() or KeyboardInterrupt in a task must not be re-raised as itself in the caller.

    As itself it ends the caller: an uncaught SystemExit(0) from future.result()
    quietly exits the service with status 0, and through asubmit() it escapes
    asyncio.run() even from gather(return_exceptions=True). It should come back
    as an ordinary Exception (RemoteTaskError naming the type).
    """
    with WorkerPool(1) as pool:
        future = pool.submit(fn, *args)
        got = outcome(future)
        assert pool.submit(tasks.getpid).result(HANG_S) == future.pid  # the worker lived on
    assert isinstance(got, RemoteTaskError), repr(got)
    assert got.type_name == type_name
    assert_all_gone(pids_of(pool, [future]))


def test_an_unpicklable_exception_whose_str_raises_fails_only_the_task() -> None:
    """Such an exception is the task's failure (RemoteTaskError), not a crash of its worker."""
    with WorkerPool(1, retries=1) as pool:
        future = pool.submit(tasks.raise_unpicklable_unprintable)
        got = outcome(future)
        again = pool.submit(tasks.getpid).result(HANG_S)
        stats = pool.statistics()
    assert isinstance(got, RemoteTaskError), repr(got)
    assert got.type_name == "isolate_adversarial_tasks.UnpicklableUnprintableError"
    assert future.attempts == 1  # a task failure is not retried
    assert again == future.pid
    assert (stats.crashes, stats.retries, stats.tasks_failed) == (0, 0, 1)
    assert_all_gone(pids_of(pool, [future]))


# ------------------------------------------------------------------ big data


def test_fifty_megabytes_each_way_and_awkward_plain_values() -> None:
    """50 MB each way crosses intact; a cycle passes; too deep is refused and the worker lives."""
    blob = b"\x01" * (50 << 20)
    cycle: list[object] = [1]
    cycle.append(cycle)
    with WorkerPool(1) as pool:
        assert pool.submit(tasks.length, blob).result(HANG_S) == len(blob)
        big = pool.submit(tasks.huge_bytes, 50)
        assert big.result(HANG_S) == b"x" * (50 << 20)
        echoed = pool.submit(tasks.sleep_then, 0, cycle).result(HANG_S)
        assert echoed[0] == 1
        assert echoed[1] is echoed
        assert pool.submit(tasks.nested_lists, 150).result(HANG_S) == tasks.nested_lists(150)
        deep = pool.submit(tasks.nested_lists, 500)
        with pytest.raises(NotPlainDataError, match="nested more than 200 levels deep"):
            deep.result(HANG_S)
        assert deep.pid == big.pid
        stats = pool.statistics()
    assert (stats.tasks_completed, stats.tasks_failed, stats.crashes) == (4, 1, 0)
    assert_all_gone(pids_of(pool, [big, deep]))


def test_non_plain_state_on_a_str_subclass_result_is_refused() -> None:
    """A str subclass carries its __dict__ through pickle: check it as a list subclass's is."""
    with WorkerPool(1) as pool:
        future = pool.submit(tasks.tagged_with_opaque)
        got = outcome(future)
    assert isinstance(got, NotPlainDataError), f"crossed: {got!r} with {vars(got)}"
    assert (got.path, got.type_name) == ("result.raw", "isolate_adversarial_tasks.Opaque")
    assert_all_gone(pids_of(pool, [future]))


def test_arguments_bound_in_a_partial_are_checked_like_arguments() -> None:
    """submit(partial(f, x)) must refuse a non-plain x just as submit(f, x) does."""
    with WorkerPool(1) as pool:
        with pytest.raises(NotPlainDataError) as direct:
            pool.submit(tasks.type_name, tasks.Opaque("x"))
        try:
            future = pool.submit(functools.partial(tasks.type_name, tasks.Opaque("x")))
        except NotPlainDataError as error:
            refused: NotPlainDataError | None = error
        else:
            refused = None
            crossed = future.result(HANG_S)
        assert refused is not None, f"the worker received a {crossed} ({direct.value.path} refused)"
        assert refused.type_name == "isolate_adversarial_tasks.Opaque"
        assert pool.statistics().tasks_submitted == 0
    assert_all_gone(pids_of(pool))


# ------------------------------------------------------ tasks that misbehave


def test_task_closing_std_fds_or_leaving_a_thread_keeps_its_worker() -> None:
    """Closing fds 0-2, or leaving a non-daemon thread, does not stop the worker or its exit."""
    with WorkerPool(1, warm_spare=False) as pool:
        closed = pool.submit(tasks.close_std_fds)
        assert closed.result(HANG_S) == closed.pid
        threaded = pool.submit(tasks.leave_non_daemon_thread, 600.0)
        assert threaded.result(HANG_S) == closed.pid
        assert pool.submit(tasks.add, 1, 2).result(HANG_S) == 3
        started = time.monotonic()
    # The stop message ends the worker with os._exit: the thread's 600 s do not matter.
    assert time.monotonic() - started < HANG_S
    stats = pool.statistics()
    assert [r.reason for r in stats.retirements] == ["stopped"]
    assert stats.retirements[0].detail == "exited with code 0"
    assert_all_gone(pids_of(pool, [closed]))


def test_task_closing_its_worker_pipe_is_a_crash_and_the_pool_heals() -> None:
    """A task that closes every fd (the worker's pipe included) fails as WorkerCrashed alone."""
    with WorkerPool(1) as pool:
        future = pool.submit(tasks.close_worker_pipe)
        got = outcome(future)
        after = pool.submit(tasks.add, 2, 3)
        assert after.result(HANG_S) == 5
        stats = pool.statistics()
    assert isinstance(got, WorkerCrashed), repr(got)
    assert got.exitcode == 1
    assert after.pid != future.pid
    assert (stats.crashes, stats.tasks_failed, stats.tasks_completed) == (1, 1, 1)
    assert_all_gone(pids_of(pool, [future, after]))


def test_a_worker_that_breaks_the_protocol_is_killed_and_its_task_fails_alone() -> None:
    """A message the pool does not expect costs that worker (killed: WorkerCrashed), no more."""
    with WorkerPool(2) as pool:
        other = pool.submit(tasks.sleep_then, 1.0, "other")
        future = pool.submit(tasks.speak_on_worker_pipe)
        got = outcome(future)
        after = pool.submit(tasks.add, 2, 3).result(HANG_S)
        assert other.result(HANG_S) == "other"
    stats = pool.statistics()
    assert isinstance(got, WorkerCrashed), repr(got)
    assert (got.exitcode, got.signal) == (-9, 9)
    assert "killed by the pool because it sent an unexpected str" in str(got)
    assert after == 5
    assert (stats.crashes, stats.tasks_failed, stats.tasks_completed) == (1, 1, 2)
    assert_all_gone(pids_of(pool, [future, other]))


def test_task_whose_forked_child_returns_does_not_take_the_pool_down(tmp_path: Path) -> None:
    """os.fork() in a task whose child also returns: at most that worker is lost, not the pool.

    The child's report for the same task used to reach the manager thread, which
    died of it: every other task failed with RuntimeError and the pool called
    itself "shut down".
    """
    marker = tmp_path / "child.pid"
    pool = WorkerPool(2)
    try:
        other = pool.submit(tasks.sleep_then, 1.0, "other")
        forking = pool.submit(tasks.fork_and_return_in_both, str(marker))
        assert forking.result(HANG_S) == "from the worker"
        child = read_pid(marker)
        got = outcome(other)
        after = outcome(pool.submit(tasks.add, 1, 2))
    finally:
        if marker.exists():
            kill_quietly(int(marker.read_text()))
        pool.shutdown(cancel_futures=True, terminate=True)
    assert got == "other", repr(got)
    assert after == 3, repr(after)
    stats = pool.statistics()
    assert stats.tasks_submitted == stats.tasks_completed + stats.tasks_failed
    assert_all_gone(pids_of(pool, [forking]) | {child})


@pytest.mark.parametrize(
    "method",
    [
        "forkserver",
        pytest.param(
            "fork",
            # 3.12+ warns on every fork() of a process with threads (the pool's own).
            marks=pytest.mark.filterwarnings(
                "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
            ),
        ),
    ],
)
def test_grandchild_left_by_a_task_does_not_stall_the_pool(method: str, tmp_path: Path) -> None:
    """A task forks a long-lived child and returns; its worker retires; shutdown still returns.

    Under fork/spawn the worker's sentinel is a pipe the grandchild inherits, so
    the worker's exit goes unnoticed while the grandchild lives. The retiring
    worker ends its descendants, so the grandchild is gone too.
    """
    marker = tmp_path / "grandchild.pid"
    pool = WorkerPool(1, start_method=method, max_tasks=1, jitter=0, warm_spare=False)  # type: ignore[arg-type]
    closer = threading.Thread(target=pool.shutdown, daemon=True)
    try:
        first = pool.submit(tasks.start_daemon_grandchild, str(marker), 120.0)
        grandchild = first.result(HANG_S)
        assert first.worker_retired == "max_tasks"
        assert pool.submit(tasks.add, 1, 2).result(HANG_S) == 3
        closer.start()
        closer.join(3.0)
        hung = closer.is_alive()
        stats = pool.statistics()
    finally:
        if marker.exists():
            kill_quietly(int(marker.read_text()))
        if closer.is_alive():
            closer.join(HANG_S)
        pool.shutdown(cancel_futures=True, terminate=True)
    assert not hung, f"shutdown() waits for the task's grandchild:\n{stats}"
    assert dict(stats.recycles) == {"max_tasks": 2}
    assert_all_gone([*pids_of(pool, [first]), grandchild])


def test_a_pool_inside_a_task_works_and_leaves_nothing() -> None:
    """A task may run its own WorkerPool (its own fork server); nothing outlives the outer pool."""
    with WorkerPool(1, warm_spare=False) as pool:
        report = pool.submit(tasks.run_in_nested_pool, 2, 3).result(HANG_S * 2)
    assert report["total"] == 5
    assert (report["inner_completed"], report["inner_workers_left"]) == (1, 0)
    assert len({report["outer"], report["inner"], report["inner_fork_server"], os.getpid()}) == 4
    assert report["inner_fork_server"] != tasks.forkserver_pid()  # not the test's fork server
    assert_all_gone([report["outer"], report["inner"], report["inner_fork_server"]])


# ------------------------------------------------ helpers dying, resources out


def test_killing_the_fork_server_leaves_a_running_pool_alone() -> None:
    """SIGKILL of the fork server: the pool's workers are its template's children, not the
    server's, so the running task finishes and the pool goes on; the next template (after the
    template itself is killed) comes from a new fork server. Run in a child to spare this
    process's fork server."""
    result, err, survivors = run_python(
        """
        import json, os, signal, time
        import multiprocessing.forkserver as forkserver
        import psutil
        import isolate_adversarial_tasks as tasks
        from nativeguard.isolate import WorkerPool, WorkerCrashed

        server = forkserver._forkserver
        with WorkerPool(2) as pool:
            assert pool.submit(tasks.add, 1, 2).result(20) == 3
            busy = pool.submit(tasks.sleep_then, 1.0, "done")
            while not busy.running():
                time.sleep(0.01)
            old = server._forkserver_pid
            template = psutil.Process(pool.statistics().workers[0].pid).ppid()
            os.kill(old, signal.SIGKILL)
            busy_result = busy.result(20)
            after = pool.submit(tasks.add, 2, 3).result(20)
            same_template = psutil.Process(template).is_running()
            os.kill(template, signal.SIGKILL)  # its workers die with it; a new one starts
            while pool.statistics().crashes < 3:
                time.sleep(0.01)
            again = pool.submit(tasks.add, 3, 4).result(20)
            new_template = psutil.Process(pool.statistics().workers[0].pid).ppid()
            new = server._forkserver_pid
        stats = pool.statistics()
        print(json.dumps({"busy": busy_result, "after": after, "again": again,
                          "same_template": same_template, "new_template": new_template != template,
                          "new_server": new not in (None, old), "failed": stats.tasks_failed,
                          "crashes": stats.crashes}))
        """
    )
    assert result == {
        "busy": "done",
        "after": 5,
        "again": 7,
        "same_template": True,
        "new_template": True,
        "new_server": True,
        "failed": 0,
        "crashes": 3,
    }, err
    assert survivors == []


def test_a_pool_inherited_through_fork_fails_fast_instead_of_hanging() -> None:
    """gunicorn --preload style: the pool made before os.fork() must not swallow the child's tasks.

    Either it works in the child or submit() raises a NativeGuardError at once;
    it used to accept the task and never complete it (the manager thread did not fork).
    """
    result, err, survivors = run_python(
        """
        import json, os
        import isolate_adversarial_tasks as tasks
        from nativeguard.isolate import WorkerPool

        pool = WorkerPool(1)
        assert pool.submit(tasks.add, 1, 2).result(20) == 3
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                outcome = {"result": pool.submit(tasks.add, 2, 3).result(3)}
            except BaseException as error:
                outcome = {"error": type(error).__name__, "native": isinstance(error, Exception)
                           and type(error).__module__.startswith("nativeguard")}
            os.write(write, json.dumps(outcome).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        child = json.loads(os.read(read, 4096))
        print(json.dumps({"child": child, "parent": pool.submit(tasks.add, 5, 5).result(20)}))
        pool.shutdown()
        """
    )
    assert result["parent"] == 10
    assert result["child"] == {"error": "ClosedResourceError", "native": True}, err
    assert survivors == []


def test_a_forked_child_holding_the_pools_fds_does_not_keep_its_template_alive() -> None:
    """A pre-forking server's child inherits the pool's end of the template's socket.

    The template must still end by itself when the pool shuts down (exit code
    0): it used to wait for EOF that the child's copy held back, until the
    pool SIGKILLed it 5 s later.
    """
    result, err, survivors = run_python(
        """
        import json, os, signal, time
        import isolate_adversarial_tasks as tasks
        from nativeguard.isolate import WorkerPool

        pool = WorkerPool(1)
        assert pool.submit(tasks.add, 1, 2).result(20) == 3
        template = pool._manager._launcher._template
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        pool.shutdown()
        code = template.process.exitcode
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(json.dumps({"template_exitcode": code}))
        """
    )
    assert result == {"template_exitcode": 0}, err
    assert survivors == []


def test_isolated_functions_get_their_own_shared_pool_in_a_forked_child() -> None:
    """A forked child's @isolated call starts a pool of its own instead of using the parent's."""
    result, err, survivors = run_python(
        """
        import json, os
        import isolate_adversarial_tasks as tasks
        from nativeguard.isolate import shutdown_isolated_pools

        parent_worker = tasks.isolated_getpid()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                worker = tasks.isolated_getpid()
                outcome = {"worker": worker, "own": worker not in (os.getpid(), parent_worker)}
                shutdown_isolated_pools()
            except BaseException as error:
                outcome = {"error": repr(error)}
            os.write(write, json.dumps(outcome).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        child = json.loads(os.read(read, 4096))
        again = tasks.isolated_getpid()
        shutdown_isolated_pools()
        print(json.dumps({"child": child, "parent": [parent_worker, again]}))
        """
    )
    assert result["child"].get("own") is True, (result, err)
    parent_worker, again = result["parent"]
    assert again != parent_worker  # max_tasks=1: the parent's own pool went on recycling
    assert survivors == []


def test_running_out_of_fds_while_starting_a_worker_does_not_hang_the_pool() -> None:
    """EMFILE when the launcher makes a worker's pipe: the pool must not wait forever for it.

    The launcher thread used to die of the OSError; the next task and shutdown() hung.
    """
    result, err, survivors = run_python(
        """
        import json, os, threading, time
        import isolate_adversarial_tasks as tasks
        from nativeguard.isolate import WorkerPool

        pool = WorkerPool(1, warm_spare=False, max_tasks=1, jitter=0)
        assert pool.submit(tasks.add, 1, 2).result(20) == 3
        while not any(w.state == "idle" for w in pool.statistics().workers):
            time.sleep(0.01)
        held = []
        while True:  # use up every fd: the replacement's Pipe() will fail
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        second = pool.submit(tasks.add, 2, 3)  # runs, then its worker retires
        outcome = {"second": second.result(10)}
        time.sleep(0.3)  # the launcher tries to start the replacement now
        for fd in held:
            os.close(fd)
        try:  # the pool may have given up on starts meanwhile: submit() says so
            outcome["third"] = pool.submit(tasks.add, 3, 4).result(10)
        except Exception as error:
            outcome["third"] = type(error).__name__
        closer = threading.Thread(target=pool.shutdown, daemon=True)
        closer.start()
        closer.join(1.5)
        outcome["shutdown_hung"] = closer.is_alive()
        print(json.dumps(outcome), flush=True)
        os._exit(0)
        """,
        timeout=60,
    )
    assert result["second"] == 5
    assert result["shutdown_hung"] is False, err
    assert result["third"] in (7, "WorkerStartError"), err
    assert survivors == []


def test_one_failed_worker_start_does_not_break_the_pool_for_good() -> None:
    """The template dies while the launcher waits for it to fork a worker: that one start fails.

    The pool must try again (with a new template, from the fork server), as it
    does when the template dies between starts; a single failure used to fail
    every later submit with WorkerStartError. Made deterministic by stopping
    the template (SIGSTOP) until the launcher waits on it, then killing it.
    """
    result, err, survivors = run_python(
        """
        import json, os, signal, sys, threading, time
        import psutil
        import isolate_adversarial_tasks as tasks
        from nativeguard.isolate import WorkerPool

        def launcher_waits_on_template():
            for thread in threading.enumerate():
                if thread.name.startswith("nativeguard-launcher-"):
                    frame = sys._current_frames().get(thread.ident)
                    while frame is not None:
                        if frame.f_code.co_name == "_read_reply":
                            return True
                        frame = frame.f_back
            return False

        pool = WorkerPool(1, warm_spare=False, max_tasks=1, jitter=0)
        assert pool.submit(tasks.add, 1, 2).result(20) == 3  # the replacement is up next
        while not any(w.state == "idle" for w in pool.statistics().workers):
            time.sleep(0.01)
        template = psutil.Process(pool.statistics().workers[0].pid).ppid()
        os.kill(template, signal.SIGSTOP)
        first = pool.submit(tasks.add, 2, 3).result(20)  # its worker retires: a start begins
        deadline = time.monotonic() + 10
        while not launcher_waits_on_template():
            assert time.monotonic() < deadline, "the launcher never asked the template"
            time.sleep(0.01)
        os.kill(template, signal.SIGKILL)  # that start fails (EOFError)
        try:
            second = pool.submit(tasks.add, 3, 4).result(20)
        except Exception as error:
            second = f"{type(error).__name__}: {error}"
        pool.shutdown(cancel_futures=True, terminate=True)
        print(json.dumps({"first": first, "second": second}))
        """
    )
    assert result == {"first": 5, "second": 7}, err
    assert survivors == []


def test_exit_codes_survive_other_threads_polling_children() -> None:
    """WorkerCrashed.exitcode is the worker's, even while other threads poll child processes.

    multiprocessing.active_children() (also run by every Process.start(): the
    pool's own launcher, another pool's) reads a forkserver child's exit status
    from the same pipe the manager reads; the loser records 255. Two threads
    call it in a loop, with a tiny switch interval to make the race likely
    (about 1 crash in 10 is misreported; all 60 correct by chance: ~0.2 %).
    """
    result, err, survivors = run_python(
        """
        import collections, json, multiprocessing, sys, threading
        import isolate_adversarial_tasks as tasks
        from nativeguard.isolate import WorkerPool, WorkerCrashed

        sys.setswitchinterval(1e-6)
        stop = threading.Event()

        def poll_children():
            while not stop.is_set():
                multiprocessing.active_children()

        pollers = [threading.Thread(target=poll_children) for _ in range(2)]
        for poller in pollers:
            poller.start()
        codes = collections.Counter()
        with WorkerPool(2) as pool:
            futures = [pool.submit(tasks.crash_with, 3) for _ in range(60)]
            for future in futures:
                try:
                    future.result(30)
                except WorkerCrashed as error:
                    codes[error.exitcode] += 1
        stop.set()
        for poller in pollers:
            poller.join()
        print(json.dumps({str(code): n for code, n in codes.items()}))
        """
    )
    assert result == {"3": 60}, err
    assert survivors == []


# ---------------------------------------------------------------- statistics


def test_a_broken_pool_counts_a_cancelled_future_as_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Workers cannot start: queued tasks fail, but one the caller cancelled counts as cancelled."""
    monkeypatch.setenv("ISOLATE_BROKEN_TYPE_PARENT", str(os.getpid()))
    import isolate_broken_type

    with WorkerPool(1, warm_spare=False, plain_types=[isolate_broken_type.Payload]) as pool:
        doomed = pool.submit(tasks.add, 1, 2)
        dropped = pool.submit(tasks.add, 3, 4)
        assert dropped.cancel() is True
        with pytest.raises(WorkerStartError):
            doomed.result(HANG_S)
        stats = pool.statistics()
    assert dropped.cancelled()
    assert (stats.tasks_submitted, stats.tasks_failed, stats.tasks_cancelled) == (2, 1, 1)
    assert_all_gone(r.pid for r in stats.retirements)
