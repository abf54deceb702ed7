"""nativeguard.gunicorn against a real gunicorn (2 workers) driven over 127.0.0.1.

Sync and uvicorn workers serve tests/gunicorn_app.py; ``/leak`` mallocs memory
it never frees. A worker whose growth crosses max_growth_mb (after gc +
malloc_trim) retires between requests and the arbiter replaces it; every
request is answered; workers serving requests that do not leak never retire.
"""

from __future__ import annotations

import json
import time
import types
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from gunicorn.config import Config
from server_support import gunicorn_server

import nativeguard
import nativeguard.gunicorn as ngg

REQUESTS = 60
GROWTH_MB = 10
LEAK_MB = 2


def get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=20) as response:
        assert response.status == 200
        return json.load(response)


RESETS: list[int] = []
"""Connections reset by a uvicorn worker that was leaving (see drive())."""


def drive(base: str, path: str, pause_s: float) -> Counter[int]:
    """A bounded loop of requests, one at a time; which worker pid answered each.

    A uvicorn worker that leaves (SIGTERM, its graceful path) can reset a
    connection the kernel had already queued for it; a client or load balancer
    retries such a request, and so does this loop, once, counting it in RESETS.
    """
    served: Counter[int] = Counter()
    RESETS.clear()
    for _ in range(REQUESTS):
        try:
            answer = get(base + path)
        except ConnectionResetError:
            RESETS.append(1)
            answer = get(base + path)
        served[int(answer["pid"])] += 1  # type: ignore[call-overload]
        time.sleep(pause_s)
    return served


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "uvicorn_worker.UvicornWorker"])
def test_leaking_workers_retire_by_growth_and_are_replaced(
    tmp_path: Path, worker_class: str
) -> None:
    server, base = gunicorn_server(tmp_path, worker_class, {"max_growth_mb": GROWTH_MB})
    server.start()
    try:
        server.wait_log("Booting worker with pid", 30)
        # uvicorn checks its exit flag every 0.1 s: requests 30 ms apart let it notice.
        pause = 0.03 if "uvicorn" in worker_class else 0.0
        served = drive_when_ready(base, f"/leak?mb={LEAK_MB}", pause)
        server.pids |= set(served)  # retired workers too: stop() checks all are gone
    finally:
        server.stop()
    log = server.log()
    retirements = log.count("retires after")
    assert sum(served.values()) == REQUESTS
    # At most one reset per retirement, and only from uvicorn's shutdown.
    assert len(RESETS) <= (retirements if "uvicorn" in worker_class else 0), RESETS
    # Each worker takes its first request as baseline, then leaves once past 10 MB of
    # growth (6 leaks of 2 MB); uvicorn may serve a few more before its loop notices.
    assert retirements >= 3, log[-3000:]
    assert "(max_growth)" in log
    assert "still after gc + malloc_trim" in log
    assert len(served) >= 4, served
    # Sync, gthread: gunicorn's own graceful path, the request that crossed the limit is the last
    # one; uvicorn: a few more may arrive before its loop notices (every 0.1 s).
    slack = 6 if "uvicorn" in worker_class else 2
    assert max(served.values()) <= GROWTH_MB // LEAK_MB + slack, served


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "uvicorn_worker.UvicornWorker"])
def test_workers_that_do_not_leak_never_retire(tmp_path: Path, worker_class: str) -> None:
    server, base = gunicorn_server(
        tmp_path, worker_class, {"max_growth_mb": GROWTH_MB, "growth_slope_mb_per_task": 0.5}
    )
    server.start()
    try:
        server.wait_log("Booting worker with pid", 30)
        served = drive_when_ready(base, "/", 0.0)
        workers = server.children()
    finally:
        server.stop()
    assert sum(served.values()) == REQUESTS
    assert "retires after" not in server.log()
    if "uvicorn" not in worker_class:
        # The config's own post_request hook, defined before install(), ran for every
        # request (the readiness probes included); uvicorn workers never call it.
        assert server.log().count("config post_request hook ran for /") >= REQUESTS
    assert set(served) <= workers
    assert len(workers) == 2


def drive_when_ready(base: str, path: str, pause_s: float) -> Counter[int]:
    from isolate_support import wait_for

    def answers() -> bool:
        try:
            get(base + "/")
        except OSError:
            return False
        return True

    wait_for(answers, "gunicorn to answer", 30)
    return drive(base, path, pause_s)


def test_install_refuses_bad_options_and_unsupported_workers() -> None:
    with pytest.raises(TypeError, match="config must be the gunicorn config module's namespace"):
        ngg.install([])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_growth_mb must be a finite number > 0, got 0"):
        ngg.install({}, max_growth_mb=0)
    with pytest.raises(TypeError, match="config\\['post_request'\\] must be callable"):
        ngg.install({"post_request": 3}, max_growth_mb=1)
    config: dict[str, object] = {"post_worker_init": print}
    guard = ngg.install(config, max_tasks=5)
    assert config["post_request"] == guard.post_request
    assert config["post_worker_init"] == guard.post_worker_init
    assert guard.policy.max_tasks == 5
    with pytest.raises(RuntimeError, match="already called"):
        ngg.install(config)
    for worker_class in ("gevent", "eventlet", "tornado"):
        cfg = Config()
        cfg.set("worker_class", worker_class)
        with pytest.raises(
            ngg.UnsupportedWorkerError, match=f"worker_class is '{worker_class}'"
        ) as caught:
            guard.on_starting(types.SimpleNamespace(cfg=cfg))
        assert isinstance(caught.value, ValueError)
        assert isinstance(caught.value, nativeguard.NativeGuardError)
    for worker_class in ("sync", "gthread", "uvicorn_worker.UvicornWorker"):
        cfg = Config()
        cfg.set("worker_class", worker_class)
        guard.on_starting(types.SimpleNamespace(cfg=cfg))
