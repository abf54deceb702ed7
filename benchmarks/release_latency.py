"""Per-request latency of releasing SDK recognizers, unguarded vs Scope, in one run.

For the real SDK against the local SpeechService, each request creates a
recognizer, runs recognize_once and releases it:

(a) unguarded: ``del`` the recognizer (its native teardown, ~57 ms, on the caller)
(b) Scope(release="inline"): the same teardown inside close()
(c) Scope(release="background") with adopt(): the teardown on nativeguard-reaper
(d) the "gc.collect() after every request" pattern with 1M unrelated live
    objects on the heap, vs a Scope that finds everything already dead and
    collects nothing.

Prints medians and ratios side by side; no pass/fail. Some requests stall
~0.5 s inside the SDK whatever the release mode (the SDK's audio pump start
race on short inputs, docs/core.md "The 0.5 s start stall";
benchmarks/start_stall.py reproduces it), and which mode a stall lands on
varies run to run: the counts of stalled requests are printed, and the release
part alone (timed from recognize_once's return) is the stable comparison.
Whole requests, every mode in a fresh process: benchmarks/latency.py.

Run: python benchmarks/release_latency.py [--runs N] [--live-objects N]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import azure.cognitiveservices.speech as speechsdk

from nativeguard._core._reaper import get_reaper
from nativeguard._core._scope import ReleaseMode, Scope
from nativeguard.testing import SpeechService, write_wav


@dataclass
class Samples:
    request: list[float] = field(default_factory=list)  # create + recognize + release
    release: list[float] = field(default_factory=list)  # the release part alone


STALL_S = 0.3  # the SDK's ~0.5 s start stall


def ms(values: list[float]) -> str:
    return (
        f"median {statistics.median(values) * 1000:8.2f} ms  "
        f"mean {statistics.fmean(values) * 1000:8.2f} ms  max {max(values) * 1000:8.2f} ms"
    )


def stalls(values: list[float]) -> str:
    return f"{sum(v > STALL_S for v in values):2d}/{len(values)} stalled"


def ratio(values: list[float], reference: list[float]) -> str:
    return f"{statistics.median(values) / statistics.median(reference):6.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--live-objects", type=int, default=1_000_000)
    args = parser.parse_args()
    runs: int = args.runs

    with tempfile.TemporaryDirectory() as tmp, SpeechService(script=["one"]) as service:
        wav = write_wav(Path(tmp) / "a.wav", 2.0)
        config = service.speech_config()

        def recognizer() -> speechsdk.SpeechRecognizer:
            return speechsdk.SpeechRecognizer(config, speechsdk.audio.AudioConfig(filename=wav))

        def unguarded(samples: Samples, after_del: Callable[[], object] | None = None) -> None:
            start = time.perf_counter()
            r = recognizer()
            r.recognize_once_async().get()
            released = time.perf_counter()
            del r
            if after_del is not None:
                after_del()
            end = time.perf_counter()
            samples.request.append(end - start)
            samples.release.append(end - released)

        def scoped(samples: Samples, mode: ReleaseMode) -> Scope:
            start = time.perf_counter()
            scope = Scope(release=mode)
            with scope:
                r = scope.register(recognizer())
                r.recognize_once_async().get()
                scope.adopt(r)  # hand our reference over: the scope's drop is the last
                del r
                released = time.perf_counter()
            end = time.perf_counter()
            samples.request.append(end - start)
            samples.release.append(end - released)
            return scope

        for _ in range(2):  # warm-up: first connections, lazy imports
            unguarded(Samples())

        a, b, c = Samples(), Samples(), Samples()
        background: list[Scope] = []
        for _ in range(runs):  # interleaved, so drift hits every mode alike
            unguarded(a)
            scoped(b, "inline")
            background.append(scoped(c, "background"))
        backlog = get_reaper().pending()
        drain_start = time.perf_counter()
        assert all(scope.wait_released(30) for scope in background)
        drained = time.perf_counter() - drain_start
        reaper_seconds = [scope.statistics().reaper_seconds for scope in background]
        fallbacks = sum(scope.statistics().reaper_queue_full for scope in background)

        # (d) One million unrelated live objects, all tracked by the GC, as in
        # a long-running service with caches.
        live = [[index] for index in range(args.live_objects)]
        gc.collect()
        d_gc, d_scope = Samples(), Samples()
        collections: list[tuple[int, ...]] = []
        for _ in range(runs):
            unguarded(d_gc, after_del=gc.collect)
            collections.append(scoped(d_scope, "inline").statistics().collections)
        del live

    print(f"{runs} requests each: create a recognizer, recognize_once (2 s of audio), release")
    print()
    print(
        "per-request latency (some requests stall ~0.5 s inside the SDK; "
        "interleaved, a stall can land on any mode)"
    )
    print(f"  (a) unguarded, del             {ms(a.request)}   {stalls(a.request)}")
    print(
        f"  (b) Scope inline               {ms(b.request)}   {stalls(b.request)}   "
        f"b/a {ratio(b.request, a.request)}"
    )
    print(
        f"  (c) Scope background + adopt   {ms(c.request)}   {stalls(c.request)}   "
        f"c/a {ratio(c.request, a.request)}"
    )
    print("the release part alone (what the caller waits for once recognize_once returned)")
    print(f"  (a) del                        {ms(a.release)}")
    print(f"  (b) inline close()             {ms(b.release)}   b/a {ratio(b.release, a.release)}")
    print(f"  (c) background close()         {ms(c.release)}   c/a {ratio(c.release, a.release)}")
    print(
        f"  background: reaper time per release {ms(reaper_seconds)}; "
        f"{backlog} job(s) queued after the last request, drained in {drained * 1000:.1f} ms; "
        f"{fallbacks} queue-full fallback(s)"
    )
    print()
    print(f"(d) with {args.live_objects:,} unrelated live objects on the heap")
    print(f"  unguarded + gc.collect()       {ms(d_gc.request)}")
    print(
        f"  Scope inline                   {ms(d_scope.request)}   "
        f"scope/gc {ratio(d_scope.request, d_gc.request)}"
    )
    print("  the release part alone")
    print(f"  del + gc.collect()             {ms(d_gc.release)}")
    print(
        f"  Scope close()                  {ms(d_scope.release)}   "
        f"scope/gc {ratio(d_scope.release, d_gc.release)}"
    )
    print(f"  generations the Scope collected: {sorted(set(collections))}")


if __name__ == "__main__":
    main()
