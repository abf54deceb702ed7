"""What process isolation costs: throughput with recycling, latency of a recycle, worker start-up.

Measured side by side in one run (no pass/fail):

1. Throughput of a 20 ms CPU-bound task (a spin on ``time.perf_counter``):
   in-process, one after another, vs through ``WorkerPool(workers=W,
   max_tasks=10)`` (every worker recycled every 10 tasks). Prints the pool's
   tasks/s per worker divided by the in-process tasks/s (the target is
   >= 0.8x) and how many recycles happened while it was measured.
2. The latency a recycle adds to the task after it: tasks submitted one after
   another to ``WorkerPool(1, max_tasks=1)`` (every task follows a recycle),
   with and without the warm spare, vs a pool that never recycles. "Added" is
   the caller's submit-to-result time minus the task's own run time in the
   worker (``TaskFuture.duration_s``).
3. Worker start-up from the fork server with the default preload (Azure SDK
   imported once in the fork server) vs ``preload=()``, each in a fresh
   interpreter (the fork server, and so its preload, is per process): the
   latency of a task that imports ``azure.cognitiveservices.speech`` and has to
   wait for a fresh worker (``max_tasks=1``, no warm spare).
4. The plain-data check every argument and result goes through, vs pickling
   the same value (which crossing costs anyway): a flat list of 1M floats, a
   dict of 100k str -> int, and 10k small dataclass records.

Workers import this script to find the task functions; that import, like
the worker's own ``nativeguard.isolate._worker``, brings in nativeguard and so the SDK
(``nativeguard`` imports it), whatever the preload.

Run: python benchmarks/isolation.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from nativeguard.isolate import DEFAULT_PRELOAD, WorkerPool, check_plain

THROUGHPUT_TASK_MS = 20.0
MAX_TASKS = 10


def spin(ms: float) -> int:
    """Busy-wait ``ms`` milliseconds: CPU-bound, the same work in and out of a pool."""
    end = time.perf_counter() + ms / 1000
    spins = 0
    while time.perf_counter() < end:
        spins += 1
    return spins


def noop() -> int:
    return 0


def import_sdk() -> str:
    """A task that needs the SDK: free if the worker has it already, an import if not."""
    import azure.cognitiveservices.speech as speechsdk  # noqa: PLC0415 - the import is the point

    return str(speechsdk.__name__)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


# ------------------------------------------------------------- 1. throughput


def in_process_rate(tasks: int) -> float:
    start = time.perf_counter()
    for _ in range(tasks):
        spin(THROUGHPUT_TASK_MS)
    return tasks / (time.perf_counter() - start)


def pool_rate(workers: int, tasks_per_worker: int) -> tuple[float, int, int]:
    """Tasks/s of the whole pool in steady state, recycles and worker starts while measured."""
    with WorkerPool(workers, max_tasks=MAX_TASKS) as pool:
        # Warm up: workers and spare started, first-task costs paid.
        for future in [pool.submit(spin, 0.0) for _ in range(2 * workers)]:
            future.result()
        time.sleep(0.2)
        before = pool.statistics()
        total = workers * tasks_per_worker
        start = time.perf_counter()
        futures = [pool.submit(spin, THROUGHPUT_TASK_MS) for _ in range(total)]
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - start
        after = pool.statistics()
    recycles = sum(after.recycles.values()) - sum(before.recycles.values())
    started = after.workers_started - before.workers_started
    return total / elapsed, recycles, started


# --------------------------------------------------- 2. latency of a recycle


def added_latency(
    task_ms: float, tasks: int, **options: Any
) -> tuple[list[float], list[float], int]:
    """Submit-to-result minus run time, split into tasks that follow a recycle and the others."""
    after_recycle: list[float] = []
    others: list[float] = []
    with WorkerPool(1, jitter=0, **options) as pool:
        pool.submit(spin, 0.0).result()
        time.sleep(0.2)  # let the first replacement (and spare) start
        retired = pool.submit(spin, 0.0).worker_retired  # one more, to count from a clean state
        for _ in range(tasks):
            start = time.perf_counter()
            future = pool.submit(spin, task_ms)
            future.result()
            added = time.perf_counter() - start - (future.duration_s or 0.0)
            (after_recycle if retired is not None else others).append(added)
            retired = future.worker_retired
        recycles = sum(pool.statistics().recycles.values())
    return after_recycle, others, recycles


# ------------------------------------------------------ 3. worker start-up


def startup_probe(preload: str, tasks: int) -> dict[str, Any]:
    """Runs in a fresh interpreter: the fork server starts with this probe's preload."""
    chosen = DEFAULT_PRELOAD if preload == "default" else ()
    created = time.perf_counter()
    with WorkerPool(1, max_tasks=1, warm_spare=False, jitter=0, preload=chosen) as pool:
        first = pool.submit(import_sdk)
        first.result()
        first_s = time.perf_counter() - created
        fresh: dict[str, list[float]] = {"import_sdk": [], "noop": []}
        in_task: list[float] = []
        for index in range(2 * tasks):
            fn = import_sdk if index % 2 == 0 else noop
            start = time.perf_counter()
            future = pool.submit(fn)
            future.result()
            fresh[fn.__name__].append(time.perf_counter() - start)
            if fn is import_sdk:
                in_task.append(future.duration_s or 0.0)
    return {"first_s": first_s, "fresh": fresh, "in_task": in_task}


def run_probe(preload: str, tasks: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--startup-probe", preload, "--probe-tasks", str(tasks)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer tasks, a rougher picture")
    parser.add_argument("--startup-probe", choices=("default", "none"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-tasks", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.startup_probe:
        print(json.dumps(startup_probe(args.startup_probe, args.probe_tasks)))
        return

    throughput_tasks = 60 if args.quick else 200
    latency_tasks = 20 if args.quick else 60
    probe_tasks = 5 if args.quick else 15

    print(f"1. throughput: {THROUGHPUT_TASK_MS:g} ms CPU-bound task, pool max_tasks={MAX_TASKS}")
    reference = in_process_rate(throughput_tasks)
    print(f"  in-process, sequential   {reference:7.1f} tasks/s   ({throughput_tasks} tasks)")
    for workers in (1, 2):
        rate, recycles, started = pool_rate(workers, throughput_tasks)
        per_worker = rate / workers
        print(
            f"  WorkerPool({workers})            {rate:7.1f} tasks/s   {per_worker:6.1f} per worker"
            f" = {per_worker / reference:4.2f}x in-process   ({workers * throughput_tasks} tasks,"
            f" {recycles} recycles, {started} workers started)"
        )
    print()

    print(
        "2. latency a recycle adds (submit-to-result minus the task's run time), "
        "tasks one after another, WorkerPool(1)"
    )
    for task_ms in (0.0, THROUGHPUT_TASK_MS):
        label = "trivial task" if task_ms == 0 else f"{task_ms:g} ms task"
        _, steady, _ = added_latency(task_ms, latency_tasks)
        print(
            f"  {label:12} no recycling            median {ms(statistics.median(steady))}"
            f"  p90 {ms(p90(steady))}   ({len(steady)} tasks)"
        )
        for spare in (True, False):
            after, _, recycles = added_latency(
                task_ms, latency_tasks, max_tasks=1, warm_spare=spare
            )
            print(
                f"  {label:12} max_tasks=1, spare {'on ' if spare else 'off'}  "
                f"median {ms(statistics.median(after))}  p90 {ms(p90(after))}   "
                f"({len(after)} tasks after a recycle, {recycles} recycles)"
            )
    print()

    print(
        "3. worker start-up from the fork server (fresh interpreter each; max_tasks=1, "
        "no spare: every task waits for a new worker)"
    )
    for preload in ("default", "none"):
        probe = run_probe(preload, probe_tasks)
        label = "default preload (SDK)" if preload == "default" else "preload=()"
        print(f"  {label}")
        print(f"    first task, fork server start included  {ms(probe['first_s'])}")
        for name, values in probe["fresh"].items():
            print(
                f"    {name:10} on a fresh worker          median {ms(statistics.median(values))}"
                f"  p90 {ms(p90(values))}"
            )
        print(
            "    import of the SDK inside the task        median "
            f"{ms(statistics.median(probe['in_task']))}"
        )
    print()

    print("4. plain-data check vs pickle of the same value (median of 5)")
    for label, value in plain_values():
        check = best_of(lambda v=value: check_plain(v, "result"))
        dump = best_of(lambda v=value: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL))
        print(f"  {label:28} check {ms(check)}  pickle {ms(dump)}  ratio {check / dump:5.1f}x")


@dataclasses.dataclass(frozen=True)
class Record:
    text: str
    speaker: str
    offset_s: float
    words: tuple[str, ...]


def plain_values() -> list[tuple[str, object]]:
    return [
        ("1M floats (list)", [float(i) for i in range(1_000_000)]),
        ("100k str -> int (dict)", {f"key{i}": i for i in range(100_000)}),
        (
            "10k records (dataclasses)",
            [Record(f"text {i}", "Guest-1", i * 0.5, ("a", "b")) for i in range(10_000)],
        ),
    ]


def best_of(action: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
