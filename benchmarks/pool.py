"""WorkerPool's per-task overhead and recycle latency, side by side with loky, pebble and stdlib.

Measured in one run, modes interleaved (each round runs every mode once, in a
rotated order), median and spread (min..max) over the rounds:

1. Throughput of N CPU-bound tasks (a spin on ``time.perf_counter``) of 1 ms
   and of 20 ms with 2 workers, as a ratio to the same tasks run one after
   another in this process (2.0x is the ideal for 2 workers), and the CPU
   each task costs beyond its own (in this process, and in the workers and
   helper processes): unlike the ratio, that does not depend on what else the
   machine is running; and from those the "ceiling", the ratio the CPU
   alone allows on 2 otherwise idle CPUs (2 x the task's CPU / (the task's
   CPU + the overhead)), which a loaded machine cannot show. Pools:
   ``WorkerPool(2)``, ``WorkerPool(2, max_tasks=100)``, loky's
   ``ProcessPoolExecutor(2)`` (it does not recycle), pebble's
   ``ProcessPool(2)`` and ``ProcessPool(2, max_tasks=100)``, and the stdlib's
   ``ProcessPoolExecutor(2, max_tasks_per_child=100)`` (forkserver context;
   it can hang on 3.11, so it runs under a timeout and is reported as hung).
   Pools are started and warmed up before the clock starts.
2. The latency a recycle adds: 1-worker pools that recycle after every task
   (``max_tasks=1``), 20 ms tasks submitted one after another; "added" is the
   caller's submit-to-result time minus the task's own run time, measured in
   the task. p50 and p99 per pool, and for ``WorkerPool(1)`` without
   recycling: what the same path costs on this machine at this load.

Peers come from the ``bench`` extra: ``pip install -e '.[bench]'``.

Every forkserver (and spawn) child re-runs this script as ``__mp_main__``
when it starts (for ``WorkerPool`` only its template process, once per pool;
for the peers every worker), so it imports only the standard library and
nativeguard at module level (psutil is imported where it is used): its own
import would otherwise be part of every worker's start-up cost.

"CPU per recycle" is the difference between a pool's CPU per task with and
without ``max_tasks=100``, times 100: what one worker's retirement and its
replacement's start cost in all processes together.

The last lines compare ``WorkerPool`` with issue 11's goals, and print the
load average before and after each part: on a shared machine the ratios move
with it, so compare pools within one run.

Run: python benchmarks/pool.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable

from nativeguard.isolate import WorkerPool

WORKERS = 2
HANG_S = 60.0
LATENCY_TASK_MS = 20.0


def spin(ms: float) -> tuple[float, float]:
    """Busy-wait ``ms`` milliseconds; return the wall and CPU time it took, measured here."""
    cpu = time.thread_time()
    start = time.perf_counter()
    end = start + ms / 1000
    while time.perf_counter() < end:
        pass
    return time.perf_counter() - start, time.thread_time() - cpu


# ------------------------------------------------------------ the contenders


class Contender:
    """Start a pool, submit to it, shut it down: one interface over every library."""

    name = ""

    def start(self) -> None:
        raise NotImplementedError

    def submit(self, ms: float) -> concurrent.futures.Future[tuple[float, float]]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Nativeguard(Contender):
    def __init__(self, workers: int, max_tasks: int | None) -> None:
        self.workers, self.max_tasks = workers, max_tasks
        self.name = "WorkerPool" + (f" max_tasks={max_tasks}" if max_tasks else "")

    def start(self) -> None:
        self.pool = WorkerPool(self.workers, max_tasks=self.max_tasks)

    def submit(self, ms: float) -> concurrent.futures.Future[tuple[float, float]]:
        return self.pool.submit(spin, ms)

    def stop(self) -> None:
        self.pool.shutdown()


class Loky(Contender):
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.name = "loky (no recycling)"

    def start(self) -> None:
        import loky  # noqa: PLC0415 - from the bench extra

        self.pool = loky.ProcessPoolExecutor(self.workers)

    def submit(self, ms: float) -> concurrent.futures.Future[tuple[float, float]]:
        return self.pool.submit(spin, ms)  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.pool.shutdown()


class Pebble(Contender):
    def __init__(self, workers: int, max_tasks: int) -> None:
        self.workers, self.max_tasks = workers, max_tasks
        self.name = "pebble" + (f" max_tasks={max_tasks}" if max_tasks else "")

    def start(self) -> None:
        import pebble  # noqa: PLC0415 - from the bench extra

        self.pool = pebble.ProcessPool(self.workers, max_tasks=self.max_tasks)

    def submit(self, ms: float) -> concurrent.futures.Future[tuple[float, float]]:
        return self.pool.schedule(spin, args=(ms,))  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()


class Stdlib(Contender):
    def __init__(self, workers: int, max_tasks: int) -> None:
        self.workers, self.max_tasks = workers, max_tasks
        self.name = f"stdlib max_tasks_per_child={max_tasks}"

    def start(self) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("forkserver"),
            max_tasks_per_child=self.max_tasks,
        )

    def submit(self, ms: float) -> concurrent.futures.Future[tuple[float, float]]:
        return self.pool.submit(spin, ms)

    def stop(self) -> None:
        processes = list(getattr(self.pool, "_processes", {}).values())
        stopper = threading.Thread(target=self.pool.shutdown, daemon=True)
        stopper.start()
        stopper.join(HANG_S / 4)
        if stopper.is_alive():  # hung: kill its workers so the run can go on
            for process in processes:
                if process.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGKILL)


class Hung(Exception):
    pass


HUNG_POOLS: set[str] = set()  # pools that hung in this run (see the end of the script)


def _results(
    futures: list[concurrent.futures.Future[tuple[float, float]]],
) -> list[tuple[float, float]]:
    _done, pending = concurrent.futures.wait(futures, timeout=HANG_S)
    if pending:
        raise Hung(f"{len(pending)} of {len(futures)} tasks did not finish in {HANG_S} s")
    return [future.result() for future in futures]


# ------------------------------------------------------------- 1. throughput


def tree_cpu() -> tuple[float, float]:
    """CPU seconds used so far by this process, and by its descendants (live or reaped).

    A descendant that exits between two readings moves from the live sum into
    its reaper's ``children_*`` times (the fork server, this process), so the
    difference of two readings is the CPU used in between. Unlike wall time
    it does not depend on what else the machine runs.
    """
    import psutil  # noqa: PLC0415 - see the module docstring

    me = psutil.Process()
    own = me.cpu_times()
    others = own.children_user + own.children_system
    for process in me.children(recursive=True):
        try:
            t = process.cpu_times()
        except psutil.Error:
            continue
        others += t.user + t.system + t.children_user + t.children_system
    return own.user + own.system, others


def in_process_rate(ms: float, tasks: int) -> tuple[float, float, float, float]:
    start = time.perf_counter()
    for _ in range(tasks):
        spin(ms)
    return tasks / (time.perf_counter() - start), 0.0, 0.0, ms / 1000


def pool_rate(contender: Contender, ms: float, tasks: int) -> tuple[float, float, float, float]:
    """Tasks/s; CPU seconds per task of overhead in this process and in the workers; the task's.

    The workers' overhead is their CPU minus the tasks' own (measured in each task).
    """
    contender.start()
    try:
        _results([contender.submit(0.0) for _ in range(4 * WORKERS)])  # started and warm
        time.sleep(0.3)  # spares and replacements are up
        parent, workers = tree_cpu()
        start = time.perf_counter()
        ran = _results([contender.submit(ms) for _ in range(tasks)])
        rate = tasks / (time.perf_counter() - start)
        parent_after, workers_after = tree_cpu()
        own = sum(cpu for _, cpu in ran)
        overhead = (parent_after - parent) / tasks, (workers_after - workers - own) / tasks
        return rate, *overhead, own / tasks
    finally:
        contender.stop()


# --------------------------------------------------- 2. latency of a recycle


def recycle_latency(contender: Contender, tasks: int) -> list[float]:
    contender.start()
    added = []
    try:
        _results([contender.submit(0.0)])
        time.sleep(0.3)
        for _ in range(tasks):
            start = time.perf_counter()
            ((ran, _cpu),) = _results([contender.submit(LATENCY_TASK_MS)])
            added.append(time.perf_counter() - start - ran)
    finally:
        contender.stop()
    return added


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float], fmt: str) -> str:
    low, mid, high = (fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
    return f"{mid} ({low}..{high})"


def contenders(recycle: int) -> list[Callable[[], Contender]]:
    return [
        lambda: Nativeguard(WORKERS, None),
        lambda: Nativeguard(WORKERS, recycle),
        lambda: Loky(WORKERS),
        lambda: Pebble(WORKERS, 0),
        lambda: Pebble(WORKERS, recycle),
        lambda: Stdlib(WORKERS, recycle),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks and rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--only", default="", help="comma-separated name prefixes of the pools to run (all)"
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the recycle latency part")
    parser.add_argument("--latency-only", action="store_true", help="only the recycle latency part")
    options = parser.parse_args()
    rounds = options.rounds or (3 if options.quick else 5)
    sizes = {1.0: 300 if options.quick else 1000, 20.0: 40 if options.quick else 100}
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {WORKERS} workers, "
        f"{rounds} rounds, tasks per round {sizes}"
    )

    wanted = [prefix for prefix in options.only.split(",") if prefix]

    def chosen(make: Callable[[], Contender]) -> bool:
        return not wanted or any(make().name.startswith(prefix) for prefix in wanted)

    makers = [make for make in contenders(100) if chosen(make)]
    summary: dict[str, float] = {}  # goal label -> WorkerPool's median
    peers: dict[str, dict[str, float]] = {}  # goal label -> peer name -> median
    for ms, tasks in {} if options.latency_only else sizes.items():
        load_before = load()
        rates: dict[str, list[float]] = {}
        cpus: dict[str, list[tuple[float, float, float]]] = {}
        hung: dict[str, str] = {}
        for round_ in range(rounds):
            order = list(range(len(makers) + 1))
            order = order[round_ % len(order) :] + order[: round_ % len(order)]
            for index in order:
                if index == len(makers):
                    name, run = "in-process", functools.partial(in_process_rate, ms, tasks)
                else:
                    contender = makers[index]()
                    name, run = contender.name, functools.partial(pool_rate, contender, ms, tasks)
                if name in hung:
                    continue
                try:
                    rate, parent, workers, own = run()
                except Hung as error:
                    hung[name] = str(error)
                    HUNG_POOLS.add(name)
                    continue
                rates.setdefault(name, []).append(rate)
                cpus.setdefault(name, []).append((parent, workers, own))
        base = statistics.median(rates["in-process"])
        print(
            f"\n{ms:g} ms tasks x {tasks}: throughput / in-process ({base:.0f} tasks/s; "
            f"load average {load_before} before, {load()} after)"
        )
        print(
            f"  {'pool':34} {'ratio, median (min..max)':28} {'tasks/s':>7}   "
            "CPU per task beyond the task's own: parent + workers;  ceiling"
        )
        for name, values in rates.items():
            if not values:
                continue
            ratios = [value / base for value in values]
            parent = statistics.median(p for p, _, _ in cpus[name])
            workers = statistics.median(w for _, w, _ in cpus[name])
            own = statistics.median(o for _, _, o in cpus[name])
            # What the CPU alone allows on WORKERS otherwise idle CPUs: load-independent.
            ceiling = WORKERS * own / (own + parent + workers) if name != "in-process" else 1.0
            print(
                f"  {name:34} {spread(ratios, '{:.2f}x'):28} {statistics.median(values):7.0f}   "
                f"{(parent + workers) * 1e6:6.0f} us = {parent * 1e6:5.0f} + "
                f"{workers * 1e6:5.0f};  {ceiling:.2f}x"
            )
            label = f"{ms:g} ms" + (", recycled every 100" if "=100" in name else "")
            if name.startswith("WorkerPool"):
                summary[label] = statistics.median(ratios)
                summary[f"{label} ceiling"] = ceiling
            elif name != "in-process":
                peers.setdefault(label, {})[name] = statistics.median(ratios)
        for name, why in hung.items():
            print(f"  {name:34} HUNG: {why}")
        for plain, recycled in (
            ("WorkerPool", "WorkerPool max_tasks=100"),
            ("pebble", "pebble max_tasks=100"),
        ):
            if ms < 10 and plain in cpus and recycled in cpus:  # 10 recycles: too few to read
                extra = _overhead(cpus[recycled]) - _overhead(cpus[plain])
                print(f"  CPU per recycle, {plain}: {extra * 100 * 1000:.1f} ms")

    if not options.no_latency:
        summary.update(latency_part(options, chosen, rounds))
    print_goals(summary, peers)


def _overhead(samples: list[tuple[float, float, float]]) -> float:
    """Median CPU seconds per task beyond the task's own (this process + the workers)."""
    return statistics.median(p for p, _, _ in samples) + statistics.median(w for _, w, _ in samples)


GOALS = {  # issue 11: label -> (goal, ">=" or "<", unit)
    "1 ms": (1.5, ">=", "x"),
    "1 ms, recycled every 100": (1.3, ">=", "x"),
    "20 ms": (1.85, ">=", "x"),
    "20 ms, recycled every 100": (1.85, ">=", "x"),
    "recycle p99": (10.0, "<", " ms"),
}


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def print_goals(summary: dict[str, float], peers: dict[str, dict[str, float]]) -> None:
    print("\nissue 11 goals: WorkerPool's median [peers' medians in the same run]")
    for label, (goal, sense, unit) in GOALS.items():
        if label not in summary:
            continue
        value = summary[label]
        met = value >= goal if sense == ">=" else value < goal
        others = ", ".join(f"{name} {ratio:.2f}x" for name, ratio in peers.get(label, {}).items())
        ceiling = summary.get(f"{label} ceiling")
        print(
            f"  {label:26} {value:6.2f}{unit}  goal {sense} {goal:g}{unit}: "
            f"{'met' if met else 'NOT met'}"
            + ("" if ceiling is None else f" (CPU-bound ceiling {ceiling:.2f}x)")
            + (f"   [{others}]" if others else "")
        )


def latency_part(
    options: argparse.Namespace, chosen: Callable[[Callable[[], Contender]], bool], rounds: int
) -> dict[str, float]:
    load_before = load()
    print(
        f"\nlatency a recycle adds (1 worker, max_tasks=1, {LATENCY_TASK_MS:g} ms tasks "
        "one after another)"
    )
    recyclers: list[Callable[[], Contender]] = [
        make
        for make in (
            lambda: Nativeguard(1, 1),
            lambda: Nativeguard(1, None),  # the same path without a recycle: what the machine adds
            lambda: Pebble(1, 1),
            lambda: Stdlib(1, 1),
        )
        if chosen(make)
    ]
    latencies: dict[str, list[float]] = {}
    per_round = 10 if options.quick else 25
    stuck: set[str] = set()
    for round_ in range(rounds):
        shift = round_ % len(recyclers)
        order = recyclers[shift:] + recyclers[:shift]
        for make in order:
            contender = make()
            if contender.name in stuck:
                continue
            try:
                latencies.setdefault(contender.name, []).extend(
                    recycle_latency(contender, per_round)
                )
            except Hung as error:
                latencies.setdefault(contender.name, [])
                stuck.add(contender.name)
                HUNG_POOLS.add(contender.name)
                print(f"  {contender.name}: HUNG: {error}")
    print(
        f"  {'pool':34} {'p50':>9} {'p99':>9}  tasks   (load average {load_before} before, "
        f"{load()} after)"
    )
    found: dict[str, float] = {}
    for name, values in latencies.items():
        if values:
            p50, p99 = quantile(values, 0.5) * 1000, quantile(values, 0.99) * 1000
            print(f"  {name:34} {p50:7.2f}ms {p99:7.2f}ms  {len(values)}")
            if name == "WorkerPool max_tasks=1":
                found["recycle p99"] = p99
    return found


if __name__ == "__main__":
    main()
    if HUNG_POOLS:
        # A hung stdlib pool's management thread would hold up interpreter exit forever.
        sys.stdout.flush()
        os._exit(0)
