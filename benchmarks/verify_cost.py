"""What a leak check costs on a big heap: nativeguard's snapshot vs a full-heap type count.

Builds N (default 1M) unrelated live objects, plus a few live SDK objects, then
times, each as the median of several runs:

(a) ``snapshot()``: registry counts (O(types)), the SDK's handle table,
    threads, fds, RSS, Python's allocated blocks;
(b) a check: ``snapshot()`` + ``diff`` + ``leaked()``, and ``settle()`` when
    nothing leaked (it returns after one snapshot);
(c) the objgraph-style full-heap type count, ``Counter(type(o).__name__ for o
    in gc.get_objects())``, which is what counting live instances costs
    without a registry;
(d) ``snapshot(full_heap=True)``, our explicit full-heap option.

Also prints the one-time cost of enabling the registry (one heap walk to seed
it). No pass/fail; the ratio (c)/(b) is the point.

Run: python benchmarks/verify_cost.py [--objects N] [--runs N]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections import Counter
from collections.abc import Callable

import azure.cognitiveservices.speech as speechsdk

from nativeguard import _registry
from nativeguard._snapshot import settle, snapshot


class Unrelated:
    """A gc-tracked application object, like the rows of a cache."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


def median_s(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def full_heap_type_count() -> Counter[str]:
    return Counter(type(obj).__name__ for obj in gc.get_objects())


def check_once() -> bool:
    before = snapshot()
    return before.diff(snapshot()).leaked()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=25)
    args = parser.parse_args()

    heap = [Unrelated(i) for i in range(args.objects)]
    sdk = [speechsdk.SpeechConfig(subscription="key", region="westus") for _ in range(3)]
    gc.collect()
    tracked = len(gc.get_objects())

    start = time.perf_counter()
    _registry.enable()
    enable_s = time.perf_counter() - start
    before = snapshot()

    snap_s = median_s(snapshot, args.runs)
    counts_s = median_s(_registry.counts, args.runs)
    check_s = median_s(check_once, args.runs)
    settle_s = median_s(lambda: settle(before), args.runs)
    objgraph_s = median_s(full_heap_type_count, max(3, args.runs // 5))
    full_s = median_s(lambda: snapshot(full_heap=True), max(3, args.runs // 5))

    assert snapshot(full_heap=True).instances == snapshot().instances
    print(
        f"heap: {tracked:,} gc-tracked objects ({args.objects:,} unrelated), {len(sdk)} SDK configs"
    )
    print(f"registry enable (one heap walk, once)   {enable_s * 1000:9.2f} ms")
    print(f"registry counts()                        {counts_s * 1e6:9.1f} us")
    print(f"(a) snapshot()                           {snap_s * 1000:9.3f} ms")
    print(f"(b) check: 2 x snapshot + diff + leaked  {check_s * 1000:9.3f} ms")
    print(f"    settle(before), nothing leaked       {settle_s * 1000:9.3f} ms")
    print(f"(c) objgraph-style full-heap type count  {objgraph_s * 1000:9.2f} ms")
    print(f"(d) snapshot(full_heap=True)             {full_s * 1000:9.2f} ms")
    print(f"ratio (c) / (a): {objgraph_s / snap_s:,.0f}x   (c) / (b): {objgraph_s / check_s:,.0f}x")
    del heap, sdk


if __name__ == "__main__":
    main()
