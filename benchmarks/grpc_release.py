"""gRPC: what nativeguard's release costs per request, against a hand-written correct release.

Side by side in one run (interleaved rounds in shuffled order, medians and
spread; no pass/fail), each request making a new channel to a real grpcio
server on 127.0.0.1 (in a child process, so its CPU is not this process's
GIL), one unary call, and the release:

* ``hand``: ``channel = grpc.insecure_channel(t)``; call; ``channel.close()``
  in ``finally`` (the correct release, written by hand);
* ``managed``: ``with managed_channel(t) as channel`` (default
  ``release="background"``);
* ``managed-inline``: the same with ``release="inline"``;
* ``guarded``: a ``@nativeguard.guarded`` function that makes the channel
  and calls; the guard's scope closes it.

Workloads:

* ``echo``: the call returns at once (the worst case: nothing but the
  channel's life cycle, ~1 ms on loopback);
* ``work5ms``: the server works 5 ms per call (a short real RPC);
* ``echo-warm``: ``echo`` while the process holds one idle channel, so
  grpc's core stays initialized between requests, as in a process that also
  serves gRPC or keeps another channel;
* ``reused``: one channel per 50 calls (how gRPC clients are meant to be
  written), cost given per call.

Why ``echo-warm``: when a request frees the process's last grpc object,
grpcio 1.85.4 starts a ``grpc_shutdown`` thread that tears the core down
(event engine, timer and lifeguard threads) unless the next channel
re-initializes it first; a request that starts after the teardown builds
it all again (milliseconds). A release that ends a few tens of
microseconds later than ``close()`` does by hand loses that race more
often, so in ``echo`` part of the difference is grpc's own re-initialization,
not nativeguard's code. After the timed rounds, a separate pass counts the
``grpc_shutdown`` threads each variant caused per 1,000 ``echo`` requests
(``/proc/self/task``; untimed, Linux only).

Per variant: the median of each round's per-request median, the spread
(lowest-highest round median), and the ratio to ``hand``. Then, for
``echo``, ``echo-warm`` and ``work5ms``, each variant paired with ``hand``
request by request (back to back, alternating order; ``_paired.py``): the
median per-pair ratio and its quartiles, steadier than round medians.

Run: python benchmarks/grpc_release.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from _paired import Paired, paired  # benchmarks/_paired.py (this script's directory)

import nativeguard
from nativeguard.integrations.grpc import managed_channel

SERVICE = "bench.Service"
REQUESTS = {"echo": 200, "echo-warm": 200, "work5ms": 40, "reused": 200}
SHUTDOWN_COUNT_REQUESTS = 1000
PAIRS = {"echo": 600, "echo-warm": 600, "work5ms": 60}
REUSE = 50


def serve() -> None:
    """Child entry: Echo and Work (5 ms) on 127.0.0.1 until stdin closes."""

    def work(request: bytes, context: Any) -> bytes:
        time.sleep(0.005)
        return request

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
            "Work": grpc.unary_unary_rpc_method_handler(work),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.readline()
    server.stop(None).wait(10)


def shutdowns_per_1000(variant: str, target: str) -> int | None:
    """``grpc_shutdown`` threads started during 1,000 ``echo`` requests of ``variant`` (Linux).

    Untimed: it lists this process's threads after every request. A
    shutdown thread lives for milliseconds, so a listing after each
    ~1 ms request sees each one; new thread ids are counted once.
    """
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return None
    run = VARIANTS[variant]
    seen = set(os.listdir(tasks))
    found = 0
    for _ in range(SHUTDOWN_COUNT_REQUESTS):
        run(target, "echo", 1)
        now = set(os.listdir(tasks))
        for tid in now - seen:
            try:
                with open(f"{tasks}/{tid}/comm", encoding="ascii") as comm:
                    found += comm.read().startswith("grpc_shutdown")
            except OSError:
                pass  # ended before it could be read
        seen = now
    return found


def call(channel: Any, workload: str) -> bytes:
    method = "Work" if workload == "work5ms" else "Echo"
    return bytes(channel.unary_unary(f"/{SERVICE}/{method}")(b"x", timeout=30))


def hand(target: str, workload: str, calls: int) -> None:
    channel = grpc.insecure_channel(target)
    try:
        for _ in range(calls):
            call(channel, workload)
    finally:
        channel.close()


def managed(target: str, workload: str, calls: int) -> None:
    with managed_channel(target) as channel:
        for _ in range(calls):
            call(channel, workload)


def managed_inline(target: str, workload: str, calls: int) -> None:
    with managed_channel(target, release="inline") as channel:
        for _ in range(calls):
            call(channel, workload)


@nativeguard.guarded
def guarded(target: str, workload: str, calls: int) -> None:
    channel = grpc.insecure_channel(target)
    for _ in range(calls):
        call(channel, workload)


VARIANTS: dict[str, Callable[[str, str, int], None]] = {
    "hand": hand,
    "managed": managed,
    "managed-inline": managed_inline,
    "guarded": guarded,
}


def batch(variant: str, target: str, workload: str) -> tuple[float, float]:
    """(median wall seconds, median main-thread CPU seconds) per call over one batch."""
    run = VARIANTS[variant]
    per_channel = REUSE if workload == "reused" else 1
    samples = []
    cpu = []
    for _ in range(REQUESTS[workload] // per_channel):
        start, start_cpu = time.perf_counter(), time.thread_time()
        run(target, workload, per_channel)
        cpu.append((time.thread_time() - start_cpu) / per_channel)
        samples.append((time.perf_counter() - start) / per_channel)
    return statistics.median(samples), statistics.median(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if child.stdout is None or child.stdin is None:  # pragma: no cover - PIPE was asked for
        raise SystemExit("no pipes to the benchmark's server")
    ready, _, _ = select.select([child.stdout], [], [], 60)
    if not ready:
        child.kill()
        raise SystemExit("the benchmark's server did not start within 60 s")
    target = f"127.0.0.1:{child.stdout.readline().strip()}"
    results: dict[str, dict[str, list[float]]] = {}
    cpu_results: dict[str, dict[str, list[float]]] = {}
    shutdowns: dict[str, int | None] = {}
    pair_results: dict[str, dict[str, Paired]] = {}
    try:
        for workload in REQUESTS:
            # echo-warm: an idle channel (never connected) keeps grpc's core initialized.
            idle = grpc.insecure_channel(target) if workload == "echo-warm" else None
            for variant in VARIANTS:  # warm-up: first channel, reaper, step runner
                batch(variant, target, workload)
            rounds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            cpu_rounds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            for _ in range(args.rounds):
                order = list(VARIANTS)
                random.shuffle(order)
                for variant in order:
                    wall, cpu = batch(variant, target, workload)
                    rounds[variant].append(wall)
                    cpu_rounds[variant].append(cpu)
            results[workload] = rounds
            cpu_results[workload] = cpu_rounds
            if workload in PAIRS:
                pair_results[workload] = {
                    variant: paired(
                        functools.partial(hand, target, workload, 1),
                        functools.partial(VARIANTS[variant], target, workload, 1),
                        PAIRS[workload],
                    )
                    for variant in VARIANTS
                    if variant != "hand"
                }
            if idle is not None:
                idle.close()
                del idle
        for variant in VARIANTS:
            shutdowns[variant] = shutdowns_per_1000(variant, target)
    finally:
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(15)
    report: dict[str, Any] = {
        "grpcio": grpc.__version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "rounds": args.rounds,
        "workloads": {},
        "grpc_shutdowns_per_1000_echo": shutdowns,
        "paired": {
            workload: {variant: vars(result) for variant, result in found.items()}
            for workload, found in pair_results.items()
        },
    }
    for workload, rounds in results.items():
        base = statistics.median(rounds["hand"])
        report["workloads"][workload] = {
            variant: {
                "median_ms": statistics.median(values) * 1000,
                "spread_ms": [min(values) * 1000, max(values) * 1000],
                "ratio": statistics.median(values) / base,
                "cpu_us": statistics.median(cpu_results[workload][variant]) * 1e6,
            }
            for variant, values in rounds.items()
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"grpcio {report['grpcio']}, Python {report['python']}, {report['cpus']} CPUs, "
        f"load {report['loadavg'][0]:.2f}; {args.rounds} interleaved rounds; "
        "per call: median of round medians [lowest-highest round], ratio to hand; "
        "CPU of the calling thread (time.thread_time), beyond hand's"
    )
    for workload, variants in report["workloads"].items():
        print(f"\n{workload} ({REQUESTS[workload]} calls per round)")
        for variant, row in variants.items():
            low, high = row["spread_ms"]
            print(
                f"  {variant:<15} {row['median_ms']:8.3f} ms  [{low:.3f}-{high:.3f}]  "
                f"{row['ratio']:.3f}x   main-thread CPU {row['cpu_us']:7.1f} us "
                f"(+{row['cpu_us'] - variants['hand']['cpu_us']:.1f})"
            )
    for workload, found in pair_results.items():
        print(f"\n{workload}, each variant paired with hand request by request")
        for variant, result in found.items():
            print(f"  {variant:<15} {result.describe()}")
    print(
        "\ngrpc core teardowns (grpc_shutdown threads) per 1,000 echo requests: "
        + ", ".join(f"{variant} {count}" for variant, count in shutdowns.items())
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        raise SystemExit(main())
