"""nativeguard.celery against real components: redis-server, a celery worker (prefork), the SDK.

The worker runs tests/celery_tasks.py in its own process tree; these tests
send tasks by name through a client app on the same Redis and read back each
result and the deltas nativeguard stored next to it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from isolate_support import wait_for
from server_support import celery_worker, redis_server

import nativeguard
import nativeguard.celery as ngc
from nativeguard.testing import DEFAULT_PHRASES, SpeechService

MB = 1 << 20
RESULT_S = 60.0  # bounds that only prove "did not hang"
PHRASES = [phrase.text for phrase in DEFAULT_PHRASES]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def client(redis_url: str) -> Iterator[Celery]:
    app = Celery("ngclient", broker=redis_url, backend=redis_url)
    app.conf.result_expires = 600
    redis.Redis.from_url(redis_url).flushdb()
    yield app
    app.close()


def send(client: Celery, name: str, *args: Any) -> Any:
    return client.send_task(f"celery_tasks.{name}", args=args)


def collect(client: Celery, results: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """Every result with its deltas (the deltas are stored before the result)."""
    done = []
    for result in results:
        value = result.get(timeout=RESULT_S)
        deltas = ngc.native_deltas(result, app=client)
        assert deltas is not None, f"no deltas stored for {result.id} ({value!r})"
        done.append((value, deltas))
    return done


# -- install(): refusals, without any process --------------------------------


def test_install_refuses_bad_apps_options_and_pools() -> None:
    with pytest.raises(TypeError, match=r"app must be a celery\.Celery application, got object"):
        ngc.install(object())
    app = Celery("refusals")
    with pytest.raises(ValueError, match="max_growth_mb must be a finite number > 0, got -1"):
        ngc.install(app, max_growth_mb=-1)
    with pytest.raises(TypeError, match=r"max_tasks must be an int or None, got 1\.5"):
        ngc.install(app, max_tasks=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_rss_mb must be a number or None"):
        ngc.install(app, max_rss_mb="100")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="growth_slope_mb_per_task must be a finite number"):
        ngc.install(app, growth_slope_mb_per_task=float("nan"))
    with pytest.raises(TypeError, match="guard_tasks must be True or False, got 'yes'"):
        ngc.install(app, guard_tasks="yes")  # type: ignore[arg-type]
    for pool in ("threads", "solo", "gevent", "eventlet"):
        other = Celery(f"on-{pool}")
        other.conf.worker_pool = pool
        with pytest.raises(ngc.UnsupportedPoolError, match=f"'{pool}'.*-P prefork") as caught:
            ngc.install(other, max_growth_mb=10)
        assert isinstance(caught.value, ValueError)
        assert isinstance(caught.value, nativeguard.NativeGuardError)
    guard = ngc.install(app, max_growth_mb=64, growth_slope_mb_per_task=0.5)
    assert guard.policy.max_growth == 64 * MB
    assert guard.policy.slope_per_task == 0.5 * MB
    with pytest.raises(RuntimeError, match="already called for app 'refusals'"):
        ngc.install(app)
    with pytest.raises(TypeError, match="task must be an AsyncResult or a task id, got int"):
        ngc.native_deltas(42)


def test_worker_on_a_threads_pool_refuses_to_start(tmp_path: Path, redis_url: str) -> None:
    worker = celery_worker(tmp_path, redis_url, "{}", pool="threads").start()
    try:
        assert worker.process is not None
        worker.process.wait(60)
    finally:
        worker.stop()
    assert worker.process.returncode != 0
    assert "supports only the prefork pool" in worker.log()
    assert "'threads' (celery.concurrency.thread:TaskPool)" in worker.log()


# -- a clean fleet: nothing retires -------------------------------------------


def test_200_clean_tasks_all_correct_and_no_child_retires(
    tmp_path: Path, client: Celery, tmp_wav: Any
) -> None:
    """Real transcriptions (left unreleased by the task: the guard releases them), freed
    heap glibc keeps (which crosses max_growth_mb until gc + malloc_trim give it back),
    tasks that fail after creating SDK objects, and plain ones: 200 tasks, all correct, and
    the two pool children serve all of them."""
    wav = tmp_wav(1.0)
    policy = json.dumps({"max_growth_mb": 24, "growth_slope_mb_per_task": 1.0})
    worker = celery_worker(tmp_path, client.conf.broker_url, policy).start()
    with SpeechService() as service:
        try:
            worker.wait_log("ready.")
            children = worker.children()
            assert len(children) == 2
            plan = []
            for i in range(200):
                if i % 10 == 0:
                    plan.append(("transcribe", (service.url, wav, i)))
                elif i % 10 == 5:
                    plan.append(("churn", (32, i)))
                elif i % 50 == 7:
                    plan.append(("fails", (i,)))
                else:
                    plan.append(("echo", (i,)))
            results = [send(client, name, *args) for name, args in plan]
            outcomes: list[tuple[Any, dict[str, Any]]] = []
            for (name, args), result in zip(plan, results, strict=True):
                if name == "fails":
                    with pytest.raises(Exception, match=f"task {args[0]} failed on purpose"):
                        result.get(timeout=RESULT_S)
                    deltas = ngc.native_deltas(result, app=client)
                    assert deltas is not None
                    outcomes.append(({"index": args[0], "failed": True}, deltas))
                else:
                    outcomes.extend(collect(client, [result]))
            assert worker.children() == children, "a pool child was replaced"
            worker.pids |= {deltas["pid"] for _, deltas in outcomes}
        finally:
            worker.stop()

    assert len(outcomes) == 200
    for (name, args), (value, deltas) in zip(plan, outcomes, strict=True):
        index = args[-1] if name != "fails" else args[0]
        assert value["index"] == index
        assert deltas["task"] == f"celery_tasks.{name}"
        assert deltas["retire"] is None, deltas
        assert deltas["pid"] in children
        if name == "transcribe":
            assert value["texts"] == PHRASES
            # The task left its transcriber and config to the guard, which released them:
            # no Speech SDK handle of any type outlived the task.
            assert deltas["native_handles_delta"] == {}, deltas
            assert deltas["objects_created"] >= 3  # config, audio config, transcriber
            assert deltas["survivors"] == 0
        if name == "fails":
            assert deltas["objects_created"] >= 1
    # The units each child ran are numbered 1..n without a gap: no child restarted.
    units: dict[int, list[int]] = defaultdict(list)
    for _, deltas in outcomes:
        units[deltas["pid"]].append(deltas["unit"])
    assert sum(len(u) for u in units.values()) == 200
    for unit_list in units.values():
        assert sorted(unit_list) == list(range(1, len(unit_list) + 1))
    # Freed heap crossed max_growth_mb and was given back by trim instead of a retirement.
    kept = [d for _, d in outcomes if d["remedied"] and "kept" in d["detail"]]
    assert kept, "churn never crossed the limit: the test proves nothing about trim-first"
    assert max(d["released"] for d in kept) > 16 * MB


# -- a leaking fleet: leaking children retire, memory stays flat --------------


def test_200_tasks_with_native_leaks_retire_by_growth_after_trim(
    tmp_path: Path, client: Celery
) -> None:
    growth_mb, leak_mb = 16, 2
    worker = celery_worker(
        tmp_path, client.conf.broker_url, json.dumps({"max_growth_mb": growth_mb})
    ).start()
    try:
        worker.wait_log("ready.")
        initial = worker.children()
        plan = [("leak", (leak_mb, i)) if i % 2 else ("echo", (i,)) for i in range(200)]
        results = [send(client, name, *args) for name, args in plan]
        outcomes = collect(client, results)
        worker.pids |= {d["pid"] for _, d in outcomes}  # stop() checks every one is gone
        retiring = {d["pid"] for _, d in outcomes if d["retire"]}

        # Retired children leave by themselves, while the worker runs on (billiard
        # lets a leaving child linger ~1 s after its last message).
        def replaced() -> bool:
            now = worker.children()
            return not retiring & now and len(now) == 2

        wait_for(replaced, "retired children to exit and be replaced", 15)
        final = worker.children()
    finally:
        worker.stop()
    for (_name, args), (value, _) in zip(plan, outcomes, strict=True):
        assert value["index"] == args[-1]
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for _, deltas in outcomes:
        by_pid[deltas["pid"]].append(deltas)
    retired = {pid: runs for pid, runs in by_pid.items() if any(d["retire"] for d in runs)}
    # 100 leaks of 2 MB over children that leave past 16 MB of growth: several retirements.
    assert len(retired) >= 6, {pid: len(r) for pid, r in by_pid.items()}
    for pid, runs in by_pid.items():
        runs.sort(key=lambda d: d["unit"])
        assert [d["unit"] for d in runs] == list(range(1, len(runs) + 1))
        for d in runs:
            # Flat: no task in any child ever started above its baseline + the limit + one leak.
            assert d["rss_before"] - d["baseline_rss"] <= (growth_mb + leak_mb + 2) * MB, d
        if pid in retired:
            last = runs[-1]
            assert [d for d in runs if d["retire"]] == [last], "a child ran on after retiring"
            assert last["retire"] == "max_growth"
            assert last["remedied"] is True  # gc + malloc_trim ran first ...
            assert "still after gc + malloc_trim" in last["detail"]  # ... and did not help
            assert pid not in final
            assert f"pool child {pid} retires after {len(runs)} tasks (max_growth)" in worker.log()
    assert len(final) == 2  # the pool replaced every retired child
    assert not final & set(retired)
    assert initial - final, "the first children never retired"


# -- a child killed mid-task --------------------------------------------------


def test_sigkilled_child_loses_no_task(tmp_path: Path, client: Celery) -> None:
    """acks_late + reject_on_worker_lost (tests/celery_tasks.py): the killed task is
    delivered again and completes once; every other task ran exactly once."""
    store = redis.Redis.from_url(client.conf.broker_url)
    worker = celery_worker(tmp_path, client.conf.broker_url, json.dumps({"max_tasks": 50})).start()
    try:
        worker.wait_log("ready.")
        results = [send(client, "slow", i, 0.2 if i != 3 else 2.0) for i in range(20)]
        wait_for(lambda: store.llen("ng:starts:3") == 1, "task 3 to start", RESULT_S)
        victim = int(store.lindex("ng:starts:3", 0))
        assert victim in worker.children()
        os.kill(victim, signal.SIGKILL)
        values = [result.get(timeout=RESULT_S) for result in results]
        worker.pids |= {v["pid"] for v in values}
        time.sleep(0.5)  # a duplicate delivery would show up in the start lists by now
        assert sorted(v["index"] for v in values) == list(range(20))
    finally:
        worker.stop()
    starts = {i: [int(p) for p in store.lrange(f"ng:starts:{i}", 0, -1)] for i in range(20)}
    store.close()
    assert len(starts[3]) == 2
    assert starts[3][0] == victim
    assert starts[3][1] != victim
    assert values[3]["pid"] == starts[3][1]
    assert {i: len(s) for i, s in starts.items() if i != 3} == {i: 1 for i in range(20) if i != 3}
    assert "Process 'ForkPoolWorker" in worker.log() or "WorkerLostError" in worker.log()


# -- the guard is what releases, and events carry the deltas ------------------


@pytest.mark.parametrize("guard_tasks", [True, False])
def test_guard_releases_what_a_task_leaves_in_a_cycle(
    tmp_path: Path, client: Celery, tmp_wav: Any, guard_tasks: bool
) -> None:
    """Each task leaves its transcriber in a callback cycle with the collector off: with
    the guard no Speech SDK handle survives the task; without it (the control) they do."""
    wav = tmp_wav(1.0)
    policy = json.dumps({"guard_tasks": guard_tasks})
    worker = celery_worker(tmp_path, client.conf.broker_url, policy).start()
    with SpeechService() as service:
        try:
            worker.wait_log("ready.")
            results = [send(client, "transcribe", service.url, wav, i, True) for i in range(4)]
            outcomes = collect(client, results)
            worker.pids |= {d["pid"] for _, d in outcomes}
        finally:
            worker.stop()
    for value, deltas in outcomes:
        assert value["texts"] == PHRASES
        if guard_tasks:
            assert deltas["native_handles_delta"] == {}, deltas
            assert deltas["objects_created"] >= 3
            assert deltas["survivors"] == 0
        else:
            assert deltas["objects_created"] is None
    if not guard_tasks:
        left = [deltas["native_handles_delta"] for _, deltas in outcomes]
        assert all(sum(delta.values()) > 0 for delta in left), left


def test_worker_with_task_events_sends_the_deltas_as_events(tmp_path: Path, client: Celery) -> None:
    received: list[dict[str, Any]] = []
    worker = celery_worker(tmp_path, client.conf.broker_url, "{}", events=True).start()
    try:
        worker.wait_log("ready.")
        with client.connection() as connection:
            receiver = client.events.Receiver(
                connection, handlers={ngc.EVENT_TYPE: received.append}
            )
            listener = threading.Thread(target=receiver.capture, kwargs={"limit": None})
            listener.start()
            try:
                # The receiver's queue is bound once it consumes: probe until one arrives.
                def probed() -> bool:
                    send(client, "echo", -1).get(timeout=RESULT_S)
                    return bool(received)

                wait_for(probed, "a first task-nativeguard event", 30)
                results = [send(client, "leak", 1, i) for i in range(5)]
                outcomes = collect(client, results)
                ids = {result.id for result in results}
                wait_for(lambda: ids <= {e["uuid"] for e in received}, "the 5 events", 30)
            finally:
                receiver.should_stop = True
                listener.join(30)
            assert not listener.is_alive()
        worker.pids |= {d["pid"] for _, d in outcomes}
    finally:
        worker.stop()
    by_id = {event["uuid"]: event for event in received}
    for result, (_, deltas) in zip(results, outcomes, strict=True):
        event = by_id[result.id]
        assert event["type"] == ngc.EVENT_TYPE
        for key in ("pid", "unit", "rss_before", "rss_after", "retire", "task"):
            assert event[key] == deltas[key], key
        assert event["task"] == "celery_tasks.leak"


def test_celery_example_runs() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "celery_app.py"
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "20 transcriptions, 20 correct"
    assert lines[1] == "native handles left behind per task: {}"
    leaking = re.fullmatch(r"30 leaking tasks ran in (\d+) pool children; (\d+) retired", lines[2])
    assert leaking is not None, lines
    assert int(leaking[2]) >= 2
    assert int(leaking[1]) >= 3
    assert "still after gc + malloc_trim" in lines[3]  # trim was tried first


def test_nested_calls_retries_and_ignored_results(tmp_path: Path, client: Celery) -> None:
    """A task that calls another directly is one unit for the policy; a retried task is
    measured per run (its deltas are the last run's); a task that ignores its result
    stores no deltas."""
    store = redis.Redis.from_url(client.conf.broker_url)
    worker = celery_worker(tmp_path, client.conf.broker_url, "{}", concurrency=1).start()
    try:
        worker.wait_log("ready.")
        first = send(client, "echo", 0)
        first_value, first_deltas = collect(client, [first])[0]
        outer = send(client, "outer", 7)
        outer_value, outer_deltas = collect(client, [outer])[0]
        quiet = send(client, "quiet", 3)
        wait_for(lambda: store.lrange("ng:quiet", 0, -1) == [b"3"], "the quiet task", RESULT_S)
        last_value, last_deltas = collect(client, [send(client, "echo", 1)])[0]
        worker.pids.add(first_deltas["pid"])
    finally:
        worker.stop()
        store.close()
    assert outer_value == {
        "index": 7,
        "inner": {"index": 7, "pid": first_value["pid"]},
        "retries": 1,
    }
    # One child ran: echo (1), outer (2, retried: 3), quiet (4), echo (5).
    assert first_deltas["unit"] == 1
    assert outer_deltas["unit"] == 3
    assert outer_deltas["task"] == "celery_tasks.outer"
    assert last_deltas["unit"] == 5
    assert last_value["pid"] == first_value["pid"]
    assert ngc.native_deltas(quiet.id, app=client) is None


def test_module_does_not_shadow_celery_and_says_what_is_missing() -> None:
    import celery as real_celery

    assert ngc.celery is real_celery
    assert "nativeguard" not in (real_celery.__file__ or "")
    without_celery = "import sys; sys.modules['celery'] = None; import nativeguard.celery"
    done = subprocess.run(
        [sys.executable, "-c", without_celery],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "nativeguard.celery needs Celery (pip install 'nativeguard[celery]')" in done.stderr
