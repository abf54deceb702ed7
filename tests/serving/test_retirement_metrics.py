"""Retirements per reason reach the exporter across processes (issue 15 item 5).

The policy decides in a Celery prefork child or a gunicorn worker; the metrics
are served by another process. In prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``) each retiring process counts itself in its own
counter file, which outlives it, and the exporter sums them all with
``MultiProcessCollector``. These tests force a known number of retirements per
reason on real servers (redis-server + ``celery worker -P prefork``, gunicorn)
and scrape the real exporter over HTTP: the counts must be exact, and equal to
what the servers themselves say (the tasks' deltas, the workers' log lines).
The multiprocess plumbing is also checked with plain ``os.fork`` children, and
its failure modes (directory missing, prometheus-client imported too early)
must name themselves without stopping a retirement.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from isolate_support import wait_for
from prometheus_client.parser import text_string_to_metric_families
from server_support import celery_worker, free_port, gunicorn_server, python_env, redis_server

import nativeguard.celery as ngc

RESULT_S = 60.0  # bounds that only prove "did not hang"
MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """One real scrape: every sample by name (the exposition parsed as Prometheus does)."""
    with urllib.request.urlopen(url, timeout=20) as response:
        assert response.status == 200
        text = response.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), f"a metric family is exported twice: {names}"
    for family in families:
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def retirements(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
    samples = metrics.get("nativeguard_worker_retirements_total", [])
    by_reason = {labels["reason"]: value for labels, value in samples}
    assert len(by_reason) == len(samples), samples  # one sample per reason (summed)
    return by_reason


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=20) as response:
        assert response.status == 200
        return dict(json.load(response))


# -- Celery: children retire, the parent's exporter counts them ---------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def test_celery_children_retirements_per_reason_reach_the_parents_exporter(
    tmp_path: Path, redis_url: str
) -> None:
    """One pool child at a time, tasks sent one by one: 3 tasks leaking 8 MB retire the
    first child by max_growth (12 MB: its third leak crosses it), then 4 plain tasks retire
    the next by max_tasks (4). The parent's /metrics must say exactly that.

    One of each: with -c 1 the pool replaces a retired child only about 5 s later
    (billiard's maintain_pool timer; the same for Celery's own max_tasks_per_child), so
    every retirement but the last costs 5 s of this test."""
    client = Celery("ngretire", broker=redis_url, backend=redis_url)
    redis.Redis.from_url(redis_url).flushdb()
    spool = tmp_path / "prometheus"
    spool.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    worker = celery_worker(
        tmp_path,
        redis_url,
        json.dumps({"max_tasks": 4, "max_growth_mb": 12}),
        concurrency=1,
        env={MULTIPROC: str(spool), "NG_METRICS_PORT": str(port)},
    ).start()
    try:
        worker.wait_log("ready.")

        def serving() -> bool:
            try:
                scrape(url)
            except OSError:
                return False
            return True

        wait_for(serving, "the worker's exporter", RESULT_S)
        before = scrape(url)
        plan = [("leak", (8, i)) for i in range(3)] + [("echo", (i,)) for i in range(3, 7)]
        deltas = []
        for name, args in plan:
            result = client.send_task(f"celery_tasks.{name}", args=args)
            assert result.get(timeout=RESULT_S)["index"] == args[-1]
            found = ngc.native_deltas(result, app=client)
            assert found is not None
            deltas.append(found)
        retired = {d["pid"] for d in deltas if d["retire"]}
        worker.pids |= {d["pid"] for d in deltas}

        # The count is written before the task's result is sent: no wait is needed for
        # it. Waiting for the retired children to be gone proves it outlives them.
        wait_for(lambda: not retired & worker.children(), "retired children to exit", 30)
        after = scrape(url)
    finally:
        worker.stop()
        client.close()
    told = Counter(d["retire"] for d in deltas if d["retire"])
    assert told == {"max_growth": 1, "max_tasks": 1}, [(d["unit"], d["retire"]) for d in deltas]
    assert retirements(before) == {}
    assert retirements(after) == {"max_growth": 1.0, "max_tasks": 1.0}
    assert len(retired) == 2
    # The parent's own Monitor shares the registry: its gauges once, no counter twice.
    assert len(after["nativeguard_rss_bytes"]) == 1
    # Created at the first retirement, with the other counter; no scope was counted.
    assert after["nativeguard_releases_total"] == [({}, 0.0)]


def test_a_sigkilled_child_is_counted_as_crashed_by_the_parent(
    tmp_path: Path, redis_url: str
) -> None:
    """Only the parent sees a child die: it counts it, once, and the task still completes
    (acks_late + reject_on_worker_lost, as in test_celery.py)."""
    client = Celery("ngcrash", broker=redis_url, backend=redis_url)
    store = redis.Redis.from_url(redis_url)
    store.flushdb()
    spool = tmp_path / "prometheus"
    spool.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    worker = celery_worker(
        tmp_path,
        redis_url,
        json.dumps({"max_tasks": 50}),
        env={MULTIPROC: str(spool), "NG_METRICS_PORT": str(port)},
    ).start()
    try:
        worker.wait_log("ready.")
        results = [
            client.send_task("celery_tasks.slow", args=(i, 0.1 if i != 2 else 2.0))
            for i in range(6)
        ]
        wait_for(lambda: store.llen("ng:starts:2") == 1, "task 2 to start", RESULT_S)
        victim = int(store.lindex("ng:starts:2", 0))
        assert victim in worker.children()
        os.kill(victim, signal.SIGKILL)
        values = [result.get(timeout=RESULT_S) for result in results]
        worker.pids |= {v["pid"] for v in values} | {victim}

        def counted() -> bool:
            try:
                return retirements(scrape(url)) == {"crashed": 1.0}
            except OSError:
                return False

        # The parent reaps the child when it notices (its event loop or pool timer).
        wait_for(counted, "the crash in the parent's /metrics", 30)
        time.sleep(0.5)  # a second count of the same child would show by now
        final = retirements(scrape(url))
    finally:
        worker.stop()
        client.close()
        store.close()
    assert sorted(v["index"] for v in values) == list(range(6))
    assert final == {"crashed": 1.0}


# -- gunicorn: workers retire, any worker's /metrics counts them --------------


def _gunicorn(tmp_path: Path, worker_class: str, policy: dict[str, object], workers: int) -> Any:
    server, base = gunicorn_server(tmp_path, worker_class, policy, workers=workers)
    spool = tmp_path / "prometheus"
    spool.mkdir()
    server.env[MULTIPROC] = str(spool)
    return server, base


def _first_answer(base: str) -> int:
    """Wait until gunicorn answers; exactly one request reaches the app."""
    answered: list[int] = []

    def answers() -> bool:
        try:
            answered.append(int(get_json(base + "/")["pid"]))
        except OSError:
            return False
        return True

    wait_for(answers, "gunicorn to answer", 30)
    return answered[0]


def test_gunicorn_sync_worker_retirements_exact(tmp_path: Path) -> None:
    """One sync worker with max_tasks=3 and 9 requests: exactly 3 retirements; the next
    request (a scrape, served by the 4th worker) shows exactly 3."""
    server, base = _gunicorn(tmp_path, "sync", {"max_tasks": 3}, workers=1)
    server.start()
    try:
        pids = [_first_answer(base)]
        pids += [int(get_json(base + "/")["pid"]) for _ in range(8)]
        metrics = scrape(base + "/metrics")
        server.children()
        server.pids |= set(pids)
    finally:
        server.stop()
    assert [len(list(group)) for group in _runs(pids)] == [3, 3, 3], pids
    assert server.log().count("retires after 3 requests (max_tasks)") == 3
    assert retirements(metrics) == {"max_tasks": 3.0}


def _runs(pids: list[int]) -> Iterator[list[int]]:
    run: list[int] = []
    for pid in pids:
        if run and pid != run[-1]:
            yield run
            run = []
        run.append(pid)
    if run:
        yield run


def test_gunicorn_uvicorn_workers_growth_retirements_match_their_log(tmp_path: Path) -> None:
    """Two uvicorn workers leaking 2 MB per request, max_growth_mb=10: every retirement the
    workers log (through the ASGI wrapper) is in the scrape, none twice."""
    server, base = _gunicorn(
        tmp_path, "uvicorn_worker.UvicornWorker", {"max_growth_mb": 10}, workers=2
    )
    server.start()
    try:
        _first_answer(base)
        served: Counter[int] = Counter()
        for _ in range(40):
            try:
                answer = get_json(base + "/leak?mb=2")
            except ConnectionResetError:  # a leaving uvicorn worker's queued connection
                answer = get_json(base + "/leak?mb=2")
            served[int(answer["pid"])] += 1
            time.sleep(0.03)  # uvicorn checks its exit flag every 0.1 s
        server.pids |= set(served)

        def logged() -> dict[str, float]:
            lines = [line for line in server.log().splitlines() if "retires after" in line]
            return {
                reason: float(sum(f"({reason})" in line for line in lines))
                for reason in ("max_growth", "growth_slope", "max_rss", "max_tasks")
                if any(f"({reason})" in line for line in lines)
            }

        # Counted before it is logged; a retirement may still be on its way: they agree
        # once it has landed (a double or a missing count never would).
        wait_for(lambda: retirements(scrape(base + "/metrics")) == logged(), "scrape == log", 30)
        final = logged()
        server.children()
    finally:
        server.stop()
    assert final.get("max_growth", 0) >= 2, (final, served)
    assert set(final) == {"max_growth"}
    # Each retiring worker logs once (the nativeguard logger is not wired to gunicorn's;
    # the worker's own log line is what shows).
    assert final["max_growth"] <= len(served)


def test_a_retirement_that_cannot_be_counted_still_happens(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR names a directory that is gone: the worker says why it
    could not count, and retires all the same."""
    server, base = gunicorn_server(tmp_path, "sync", {"max_tasks": 2}, workers=1)
    server.env[MULTIPROC] = str(tmp_path / "missing")
    server.start()
    try:
        pids = [_first_answer(base)]
        pids += [int(get_json(base + "/")["pid"]) for _ in range(3)]
        server.pids |= set(pids)
    finally:
        server.stop()
    assert [len(run) for run in _runs(pids)] == [2, 2], pids
    log = server.log()
    assert log.count("could not count the retirement (max_tasks) for the monitor") == 2
    assert "is not a directory: create it" in log
    assert log.count("retires after 2 requests (max_tasks)") == 2


# -- the multiprocess plumbing alone: forked children, a fresh interpreter -----


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=python_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_forked_children_counts_sum_in_the_parent_and_survive_them(tmp_path: Path) -> None:
    spool = tmp_path / "prometheus"
    spool.mkdir()
    done = _run(
        """
        import json, os
        from nativeguard.monitor import Monitor, count_retirement
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector
        from prometheus_client.parser import text_string_to_metric_families

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        monitor = Monitor(interval_s=None, prometheus=True, registry=registry,
                          slope_limits=None)
        monitor.start()
        count_retirement("crashed")            # the parent saw a child crash
        monitor.record_release(5)
        children = []
        for number in range(4):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for _ in range(number + 1):
                        count_retirement("max_growth")
                    count_retirement("max_tasks", 2)
                    code = 0
                finally:
                    os._exit(code)
            children.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        text = generate_latest(registry).decode()
        names = [f.name for f in text_string_to_metric_families(text)]
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
        }
        print(json.dumps({
            "codes": codes,
            "names": names,
            "retired": {dict(k[1])["reason"]: v for k, v in samples.items()
                        if k[0] == "nativeguard_worker_retirements_total"},
            "releases": samples.get(("nativeguard_releases_total", ())),
            "local": monitor.retirements,
            "files": sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])),
        }))
        monitor.close()
        """,
        {MULTIPROC: str(spool)},
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["codes"] == [0, 0, 0, 0]
    assert len(out["names"]) == len(set(out["names"])), out["names"]
    # 1+2+3+4 growth retirements and 4x2 by count, from processes that all exited.
    assert out["retired"] == {"crashed": 1.0, "max_growth": 10.0, "max_tasks": 8.0}
    assert out["releases"] == 5.0
    assert out["local"] == {"crashed": 1}  # the parent's own Monitor: only its own count
    assert len(out["files"]) == 5  # one counter file per process, parent included


def test_prometheus_imported_before_the_variable_is_refused_by_name(tmp_path: Path) -> None:
    spool = tmp_path / "prometheus"
    spool.mkdir()
    done = _run(
        f"""
        import os
        import prometheus_client                 # imported in single-process mode
        os.environ["{MULTIPROC}"] = {str(spool)!r}
        from nativeguard.monitor import MonitorStateError, count_retirement
        try:
            count_retirement("max_rss")
        except MonitorStateError as error:
            print("refused:", error)
        """,
        {},
    )
    assert done.returncode == 0, done.stderr
    assert "refused: PROMETHEUS_MULTIPROC_DIR is set, but prometheus_client was imported" in (
        done.stdout
    )
    assert list(spool.iterdir()) == []
