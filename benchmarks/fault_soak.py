"""Failure-path soak: every fault x kind x way out, N times each, exit times and drift.

The suite runs each cell of the fault matrix once
(tests/integrations/azure_speech/test_fault_matrix.py);
this runs each cell ``--reps`` times (default 20) against the real SDK and the
bundled SpeechService, and prints per cell the caller's exit time after the
body ended (p50/p95/max) and the drift after all repetitions: native handles,
live SDK objects, threads (by identity, nativeguard's reaper workers left out)
and fds, each against the baseline taken before the cell.

It also runs the five cases of issue 9's table as they were measured at
0757ff9 (5-16 s exits, handles left alive).

Run: python benchmarks/fault_soak.py [--reps N] [--cells PATTERN] [--budget S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import gc
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psutil

import nativeguard
from nativeguard.integrations.azure_speech import native_handles
from nativeguard.testing import Faults, SpeechService, write_wav
from nativeguard.verify._snapshot import is_reaper_thread

FAULTS: dict[str, Faults] = {
    "refuse-503": Faults(refuse=True, refuse_status=503),
    "refuse-401": Faults(refuse=True, refuse_status=401),
    "refuse-429": Faults(refuse=True, refuse_status=429),
    "drop-at-0": Faults(close_after=0),
    "drop-mid": Faults(close_after=3),
    "stall": Faults(stall=True),
    "malformed": Faults(malformed=True),
    "delay": Faults(delay_ms=4_000),
}
KINDS = ("recognizer", "transcriber", "translation", "synthesizer")
WAYS = ("normal", "exception", "keyboard-interrupt")
ASYNC = ("atranscribe", "arecognize_once", "asynthesize")


def sdk_objects() -> Counter[str]:
    prefix = "azure.cognitiveservices.speech"
    return Counter(
        type(o).__name__
        for o in gc.get_objects()
        if str(getattr(type(o), "__module__", "")).startswith(prefix)
    )


def state() -> tuple[dict[str, int], Counter[str], frozenset[threading.Thread], int]:
    threads = frozenset(t for t in threading.enumerate() if not is_reaper_thread(t))
    return native_handles(), sdk_objects(), threads, psutil.Process().num_fds()


def drift(before: Any, service: SpeechService | None) -> str:
    deadline = time.monotonic() + 15
    while True:
        gc.collect()
        now = state()
        same = (
            now[0] == before[0]
            and now[1] == before[1]
            and not (now[2] - before[2])
            and now[3] == before[3]
        )
        quiet = service is None or not service.open_connections
        if (same and quiet) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    parts = []
    handles = {k: now[0].get(k, 0) - before[0].get(k, 0) for k in set(now[0]) | set(before[0])}
    parts += [f"{k}{v:+d}" for k, v in handles.items() if v]
    parts += [f"{k}{v:+d}" for k, v in (now[1] - before[1]).items()]
    if now[2] - before[2]:
        parts.append(f"threads+{len(now[2] - before[2])}")
    if now[3] != before[3]:
        parts.append(f"fds{now[3] - before[3]:+d}")
    return " ".join(parts) or "0"


def block_for(kind: str, service: SpeechService, wav: str) -> tuple[Any, Callable[[Any], Any]]:
    config = service.speech_config()
    if kind == "synthesizer":
        return nativeguard.managed_synthesizer(config), lambda s: s.speak_text_async("hello")
    if kind == "translation":
        block = nativeguard.managed_translation_recognizer(service.translation_config("de"), wav)
        return block, lambda r: r.start_continuous_recognition_async().get()
    if kind == "transcriber":
        block = nativeguard.managed_transcriber(config, wav)
        return block, lambda t: t.start_transcribing_async().get()
    block = nativeguard.managed_recognizer(config, wav)
    return block, lambda r: r.start_continuous_recognition_async().get()


class BodyError(Exception):
    pass


def sync_once(kind: str, way: str, service: SpeechService, wav: str) -> float:
    block, start = block_for(kind, service, wav)
    ended = threading.Event()
    body_end = time.perf_counter()
    pending = None
    with contextlib.suppress(BodyError, KeyboardInterrupt), block as obj:
        signals = (
            [obj.synthesis_completed, obj.synthesis_canceled]
            if kind == "synthesizer"
            else [obj.canceled, obj.session_stopped]
        )
        for sig in signals:
            sig.connect(lambda evt: ended.set())
        del sig, signals
        pending = start(obj)
        if way == "normal":
            ended.wait(3.0)
        else:
            time.sleep(0.2)
        body_end = time.perf_counter()
        if way == "exception":
            raise BodyError
        if way == "keyboard-interrupt":
            raise KeyboardInterrupt
    exit_s = time.perf_counter() - body_end
    if pending is not None:
        pending.get()
        del pending
    block.scope.wait_released(15)
    return exit_s


def async_once(helper: str, way: str, service: SpeechService, wav: str) -> float:
    config = service.speech_config()

    async def main() -> float:
        coro = (
            nativeguard.asynthesize(config, "hello")
            if helper == "asynthesize"
            else getattr(nativeguard, helper)(config, wav)
        )
        task = asyncio.ensure_future(coro)
        await asyncio.sleep(0.3)
        start = time.perf_counter()
        if way == "cancel":
            task.cancel()
        with contextlib.suppress(
            asyncio.CancelledError, TimeoutError, nativeguard.NativeGuardError
        ):
            await (task if way == "cancel" else asyncio.wait_for(task, 0.0001))
        return time.perf_counter() - start

    return asyncio.run(main())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_cell(name: str, once: Callable[[], float], reps: int, service: SpeechService) -> str:
    gc.collect()
    before = state()
    times = [once() for _ in range(reps)]
    left = drift(before, service)
    return (
        f"| {name} | {reps} | {statistics.median(times) * 1000:.0f} | "
        f"{pct(times, 0.95) * 1000:.0f} | {max(times) * 1000:.0f} | {left} |"
    )


def issue_cases(service_for: Callable[[Faults], SpeechService], wav: str, reps: int) -> list[str]:
    """The five rows of issue 9's table, as a user wrote them."""
    rows = []

    def refuse_wait_cancel(stop_in_body: bool) -> float:
        with service_for(Faults(refuse=True)) as svc:
            block = nativeguard.managed_transcriber(svc.speech_config(), wav)
            done = threading.Event()
            with block as t:
                t.canceled.connect(lambda evt: done.set())
                t.start_transcribing_async().get()
                done.wait(20)
                if stop_in_body:
                    t.stop_transcribing_async().get()
                end = time.perf_counter()
            exit_s = time.perf_counter() - end
            block.scope.wait_released(15)
            return exit_s

    def cancel_atranscribe() -> float:
        with service_for(Faults(delay_ms=3000)) as svc:
            return async_once("atranscribe", "cancel", svc, wav)

    def wait_for_asynthesize() -> float:
        with service_for(Faults(stall=True)) as svc:
            config = svc.speech_config()

            async def main() -> float:
                start = time.perf_counter()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(nativeguard.asynthesize(config, "hello"), 1.0)
                return time.perf_counter() - start - 1.0

            return asyncio.run(main())

    def sigint_in_block() -> float:
        with service_for(Faults(delay_ms=20_000)) as svc:
            block = nativeguard.managed_transcriber(svc.speech_config(), wav)
            timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
            previous = signal.signal(signal.SIGINT, signal.default_int_handler)
            interrupted = time.perf_counter()
            try:
                with block as t:
                    t.start_transcribing_async().get()
                    timer.start()
                    try:
                        time.sleep(30)
                    finally:
                        interrupted = time.perf_counter()
            except KeyboardInterrupt:
                pass
            finally:
                timer.cancel()
                signal.signal(signal.SIGINT, previous)
            exit_s = time.perf_counter() - interrupted
            block.scope.wait_released(15)
            return exit_s

    cases = {
        "refuse: wait for canceled, leave": lambda: refuse_wait_cancel(False),
        "refuse: body stops itself (exit after its stop)": lambda: refuse_wait_cancel(True),
        "cancel atranscribe 0.5 s in, delay 3 s": cancel_atranscribe,
        "wait_for(asynthesize, 1 s), stall (late by)": wait_for_asynthesize,
        "SIGINT in the block, delay 20 s": sigint_in_block,
    }
    for name, once in cases.items():
        gc.collect()
        before = state()
        times = [once() for _ in range(reps)]
        left = drift(before, None)
        rows.append(
            f"| {name} | {reps} | {statistics.median(times) * 1000:.0f} | "
            f"{pct(times, 0.95) * 1000:.0f} | {max(times) * 1000:.0f} | {left} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--cells", default="*", help="fnmatch pattern on cell names")
    parser.add_argument("--issue-reps", type=int, default=5)
    args = parser.parse_args()
    import azure.cognitiveservices.speech as speechsdk  # noqa: PLC0415

    print(
        f"SDK {speechsdk.__version__ if hasattr(speechsdk, '__version__') else '?'}, "
        f"Python {sys.version.split()[0]}, glibc {os.confstr('CS_GNU_LIBC_VERSION')}"
    )
    header = "| cell | reps | exit p50 ms | p95 ms | max ms | drift after all reps |"
    rule = "|---|---|---|---|---|---|"
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "a.wav")
        write_wav(wav, 3.0)
        if args.issue_reps:
            print("\nIssue 9's five cases\n")
            print(header)
            print(rule)
            for row in issue_cases(lambda f: SpeechService(faults=f), wav, args.issue_reps):
                print(row, flush=True)
        chosen: dict[str, Faults] = {"faults": Faults()}
        with SpeechService(faults=lambda i, p: chosen["faults"]) as service:
            print("\nThe matrix\n")
            print(header)
            print(rule)
            for fault, faults in FAULTS.items():
                chosen["faults"] = faults
                for kind in KINDS:
                    for way in WAYS:
                        name = f"{fault}/{kind}/{way}"
                        if fnmatch.fnmatch(name, args.cells):
                            once = lambda k=kind, w=way: sync_once(k, w, service, wav)  # noqa: E731
                            print(run_cell(name, once, args.reps, service), flush=True)
                for helper in ASYNC:
                    for way in ("cancel", "timeout"):
                        name = f"{fault}/{helper}/{way}"
                        if fnmatch.fnmatch(name, args.cells):
                            once = lambda h=helper, w=way: async_once(h, w, service, wav)  # noqa: E731
                            print(run_cell(name, once, args.reps, service), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
