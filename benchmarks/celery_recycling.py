"""Recycling Celery pool children: nativeguard's policy vs Celery's fixed memory ceiling.

Measured side by side in one run (interleaved rounds, medians and spread; no
pass/fail), each on a fresh real ``celery worker -P prefork -c 2`` on a real
``redis-server`` (127.0.0.1), with the task module the tests use
(tests/celery_tasks.py):

* ``nativeguard``: ``nativeguard.celery.install(app, max_growth_mb=64)``;
* ``celery-ceiling``: Celery's ``worker_max_memory_per_child`` set to a pool
  child's measured RSS after its first task + 64 MB (the same budget, as
  Celery expresses it: a fixed RSS ceiling checked after each task);
* ``plain``: neither (the baseline for time).

Workloads, 200 tasks each:

* ``retained``: each task allocates 96 MB in 1 MB blocks and frees them all
  (no leak; glibc keeps the freed heap resident, as it does behind native SDKs);
* ``leak``: each task mallocs 4 MB and never frees it (a native leak);
* ``echo``: an empty task (what the per-task measurement and guard cost).

Per run: recycles (pool children beyond the first two), the highest RSS any
task saw, and the wall time from the first send to the last result.

Run: python benchmarks/celery_recycling.py [--rounds N]   (needs redis-server)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import celery  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402
from server_support import celery_worker, redis_server  # noqa: E402

MB = 1 << 20
TASKS = 200
BUDGET_MB = 64
WORKLOADS = {
    "retained": ("churn", (96,)),
    "leak": ("leak", (4,)),
    "echo": ("echo", ()),
}


def run(tmp: Path, url: str, policy: str, env: dict[str, str], workload: str) -> dict[str, float]:
    name, args = WORKLOADS[workload]
    worker = celery_worker(tmp, url, policy, env=env).start()
    client = Celery("bench", broker=url, backend=url)
    try:
        worker.wait_log("ready.")
        # Warm both children (imports, first connections) before timing.
        for result in [client.send_task("celery_tasks.echo", args=(-1,)) for _ in range(4)]:
            result.get(timeout=60)
        start = time.perf_counter()
        results = [client.send_task(f"celery_tasks.{name}", args=(*args, i)) for i in range(TASKS)]
        values: list[dict[str, Any]] = [r.get(timeout=120) for r in results]
        elapsed = time.perf_counter() - start
        worker.pids |= {v["pid"] for v in values}
    finally:
        client.close()
        worker.stop()
    rss = [v.get("rss_after", 0) for v in values] + [v.get("rss_allocated", 0) for v in values]
    pids = {v["pid"] for v in values}
    return {"recycles": max(0, len(pids) - 2), "max_rss_mb": max(rss) / MB, "seconds": elapsed}


def baseline_rss(tmp: Path, url: str) -> int:
    """A pool child's RSS after its first task (what a ceiling is set above)."""
    worker = celery_worker(tmp, url, "off").start()
    client = Celery("bench", broker=url, backend=url)
    try:
        worker.wait_log("ready.")
        value = client.send_task("celery_tasks.leak", args=(0, 0)).get(timeout=60)
        worker.pids.add(value["pid"])
    finally:
        client.close()
        worker.stop()
    return int(value["rss_after"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, redis_server(Path(scratch)) as url:
        tmp = Path(scratch)
        base = baseline_rss(tmp, url)
        ceiling_kb = (base + BUDGET_MB * MB) // 1024
        configs = {
            "nativeguard": (json.dumps({"max_growth_mb": BUDGET_MB}), {}),
            "celery-ceiling": ("off", {"NG_CELERY_MAX_MEMORY_KB": str(ceiling_kb)}),
            "plain": ("off", {}),
        }
        samples: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(options.rounds):
            for workload in WORKLOADS:
                for config, (policy, env) in configs.items():
                    redis.Redis.from_url(url).flushdb()
                    samples.setdefault((workload, config), []).append(
                        run(tmp, url, policy, env, workload)
                    )
    print(
        f"celery {celery.__version__}, python {sys.version.split()[0]}, {TASKS} tasks per run, "
        f"prefork -c 2, {options.rounds} interleaved rounds (median [min-max]); "
        f"child baseline RSS {base / MB:.1f} MB, ceiling {ceiling_kb / 1024:.1f} MB"
    )
    print(f"{'workload':10} {'config':15} {'recycles':>16} {'max RSS MB':>20} {'seconds':>20}")

    def cell(values: list[float], fmt: str) -> str:
        med = statistics.median(values)
        return f"{med:{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"

    for (workload, config), runs in samples.items():
        print(
            f"{workload:10} {config:15} "
            f"{cell([r['recycles'] for r in runs], '.0f'):>16} "
            f"{cell([r['max_rss_mb'] for r in runs], '.0f'):>20} "
            f"{cell([r['seconds'] for r in runs], '.2f'):>20}"
        )
    for workload in WORKLOADS:
        ours = statistics.median(r["seconds"] for r in samples[(workload, "nativeguard")])
        plain = statistics.median(r["seconds"] for r in samples[(workload, "plain")])
        ceiling = statistics.median(r["seconds"] for r in samples[(workload, "celery-ceiling")])
        print(
            f"{workload}: time nativeguard / plain = {ours / plain:.2f}x, "
            f"celery-ceiling / plain = {ceiling / plain:.2f}x"
        )


if __name__ == "__main__":
    main()
