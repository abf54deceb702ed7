"""Request latency: naive vs the manual pattern vs nativeguard, and helpers vs managed_*.

Side by side in one run, against the real Speech SDK and the bundled
``SpeechService`` (running in this process; every measured mode runs in a fresh
child process, so one mode's leaks, threads and heap never slow another):

Transcription, a seed-style request (a ``ConversationTranscriber`` per request,
callbacks that capture it, every ``evt.result`` kept in a history list, as in
the field write-ups and ``nativeguard demo``), 1.5 s WAV file:

- ``naive``: as written; the transcriber leaks until the collector finds it.
- ``manual``: the write-ups' cleanup: ``disconnect_all()`` every signal, ``del``,
  ``gc.collect()`` after every request.
- ``inline`` / ``background``: ``managed_transcriber(release=...)``.
- ``default``: ``managed_transcriber()`` with whatever default nativeguard has at
  run time (the child reports the release mode the block actually used).
- ``naive, audio after start``: ``naive`` with the WAV's PCM written to a
  ``PushAudioInputStream`` once ``start_transcribing_async()`` returned: the
  workaround for the SDK's 0.5 s start stall (docs/core.md, "The 0.5 s start
  stall"); ``inline`` and ``background`` again with that input, against it.

One-call helpers against their ``managed_*`` equivalents doing the same work
(sync and async, concurrency 1 and 4): ``transcribe`` / ``managed_transcriber``,
``recognize_once`` / ``managed_recognizer``, ``synthesize`` /
``managed_synthesizer``, ``atranscribe``, ``arecognize_once``, ``asynthesize``.
The transcription and recognize_once helpers write their audio into a push
stream after the start (on ``Connection.connected`` for recognize_once) to
avoid the start stall; they are also measured against the same blocks fed that
way (``... (again)`` rows), which isolates the helper's own cost from the feed.

Modes are interleaved (each round runs every mode once, in a rotated order);
per mode it prints p50 and p95 over all requests, how many took > 0.3 s (with
audio input: the SDK's start stall, which lands on any mode at random), the
median and spread of the per-round medians of the others, throughput, and the
ratios of the medians of per-round medians to the reference (naive; the
managed equivalent), with and without the requests over 0.3 s.
No pass/fail; ``--markdown`` prints the tables for benchmarks/README.md.

Run: python benchmarks/latency.py [--rounds 5] [--requests 12] [--only SUBSTRING]
     [--live-objects N] [--markdown] [--raw latencies.json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

STALL_S = 0.3
"""A request slower than this hit the SDK's ~0.5 s start stall (docs/core.md)."""
SESSION_TIMEOUT_S = 15.0
CHILD_TIMEOUT_S = 180.0
WAV_SECONDS = 1.5
TEXT = "Thanks for calling, how can I help?"


@dataclass(frozen=True)
class Mode:
    key: str
    label: str
    group: str
    concurrency: int
    reference: str | None  # key of the mode the ratio is taken against


def _modes() -> list[Mode]:
    t = "transcription request"
    modes = [
        Mode("naive", "naive (leaks)", t, 1, None),
        Mode("manual", "manual pattern (disconnect, del, gc.collect())", t, 1, "naive"),
        Mode("inline", 'managed_transcriber(release="inline")', t, 1, "naive"),
        Mode("background", 'managed_transcriber(release="background")', t, 1, "naive"),
        Mode("default", "managed_transcriber() default", t, 1, "naive"),
        Mode("naive-push", "naive, audio pushed after start (stall workaround)", t, 1, "naive"),
        Mode("inline-push", "inline, audio pushed after start", t, 1, "naive-push"),
        Mode("background-push", "background, audio pushed after start", t, 1, "naive-push"),
    ]
    pairs = [
        ("transcribe", "managed_transcriber"),
        ("atranscribe", "async managed_transcriber"),
        ("recognize_once", "managed_recognizer"),
        ("arecognize_once", "async managed_recognizer"),
        ("synthesize", "managed_synthesizer"),
        ("asynthesize", "async managed_synthesizer"),
    ]
    # The same blocks with their audio written the way the helpers write it (after the
    # start; on Connection.connected for recognize_once): the helper's own cost, apart
    # from the feed that keeps it out of the SDK's start stall.
    fed = [
        ("transcribe", "managed_transcriber", "audio after start"),
        ("atranscribe", "async managed_transcriber", "audio after start"),
        ("recognize_once", "managed_recognizer", "audio on connected"),
        ("arecognize_once", "async managed_recognizer", "audio on connected"),
    ]
    for concurrency in (1, 4):
        group = f"helpers vs managed_*, concurrency {concurrency}"
        for helper, managed in pairs:
            managed_key = f"{managed.replace(' ', '-')}@{concurrency}"
            modes.append(Mode(managed_key, managed, group, concurrency, None))
            modes.append(Mode(f"{helper}@{concurrency}", helper, group, concurrency, managed_key))
        for helper, managed, how in fed:
            managed_key = f"{managed.replace(' ', '-')}-fed@{concurrency}"
            modes.append(Mode(managed_key, f"{managed}, {how}", group, concurrency, None))
            modes.append(
                Mode(
                    f"{helper}-fed@{concurrency}",
                    f"{helper} (again)",
                    group,
                    concurrency,
                    managed_key,
                )
            )
    return modes


# -- child side: one mode, fresh process ------------------------------------------


class _Child:
    """Runs one mode's requests in this (fresh) process."""

    def __init__(self, url: str, wav: str) -> None:
        import azure.cognitiveservices.speech as speechsdk  # noqa: PLC0415

        from nativeguard.testing import DEFAULT_KEY, SpeechService  # noqa: PLC0415

        self.sdk: Any = speechsdk
        self.url = url
        self.wav = wav
        self.key = DEFAULT_KEY
        self.timeouts = SpeechService()  # never started: applies its client-side timeouts
        with wave.open(wav, "rb") as reader:
            self.pcm = reader.readframes(reader.getnframes())
        self.history: list[Any] = []  # every result, kept across requests
        self.scopes: list[Any] = []

    def release_modes(self) -> list[str]:
        """The release modes the managed blocks used, once their releases finished."""
        modes: set[str] = set()
        for scope in self.scopes:
            if not scope.wait_released(30):
                raise RuntimeError("a background release did not finish within 30 s")
            modes.add(scope.statistics().release_mode)
        return sorted(modes)

    def config(self) -> Any:
        config = self.sdk.SpeechConfig(host=self.url, subscription=self.key)
        self.timeouts.apply_timeouts(config)
        return config

    def audio(self) -> Any:
        return self.sdk.audio.AudioConfig(filename=self.wav)

    # The write-ups' request, as written.
    def seed_session(self, transcriber: Any, after_start: Callable[[], None] | None = None) -> int:
        results: list[Any] = []
        done = threading.Event()

        def on_transcribed(evt: Any) -> None:
            results.append(evt.result)

        def on_canceled(evt: Any) -> None:
            if evt.cancellation_details.reason == self.sdk.CancellationReason.Error:
                transcriber.stop_transcribing_async()  # the closure holds the transcriber
            done.set()

        transcriber.transcribed.connect(on_transcribed)
        transcriber.canceled.connect(on_canceled)
        transcriber.session_stopped.connect(lambda evt: done.set())
        transcriber.start_transcribing_async().get()
        if after_start is not None:
            after_start()
        if not done.wait(SESSION_TIMEOUT_S):
            raise RuntimeError("transcription session did not end")
        transcriber.stop_transcribing_async().get()
        self.history.extend(results)
        return len(results)

    def naive(self) -> int:
        transcriber = self.sdk.transcription.ConversationTranscriber(self.config(), self.audio())
        return self.seed_session(transcriber)

    def pushed_audio(self) -> tuple[Any, Callable[[], None]]:
        """A push stream for the WAV's PCM and the function that fills it after the start."""
        stream = self.sdk.audio.PushAudioInputStream()

        def feed() -> None:
            stream.write(self.pcm)
            stream.close()

        return self.sdk.audio.AudioConfig(stream=stream), feed

    def naive_push(self) -> int:
        audio, feed = self.pushed_audio()
        transcriber = self.sdk.transcription.ConversationTranscriber(self.config(), audio)
        return self.seed_session(transcriber, feed)

    def manual(self) -> int:
        audio_config = self.audio()
        transcriber = self.sdk.transcription.ConversationTranscriber(self.config(), audio_config)
        count = self.seed_session(transcriber)
        for name in (
            "transcribed",
            "transcribing",
            "canceled",
            "session_started",
            "session_stopped",
            "speech_start_detected",
            "speech_end_detected",
        ):
            getattr(transcriber, name).disconnect_all()
        del transcriber, audio_config
        gc.collect()
        return count

    def managed(self, release: str | None, push: bool = False) -> int:
        from nativeguard import managed_transcriber  # noqa: PLC0415

        kwargs: dict[str, Any] = {} if release is None else {"release": release}
        audio, feed = self.pushed_audio() if push else (self.audio(), None)
        block = managed_transcriber(self.config(), audio, **kwargs)
        del audio
        with block as transcriber:
            count = self.seed_session(transcriber, feed)
        self.scopes.append(block.scope)  # its release mode is read after the timed part
        return count

    # Helpers and their managed_* equivalents (the same work, by hand).
    def transcribe(self) -> int:
        import nativeguard  # noqa: PLC0415

        return len(nativeguard.transcribe(self.config(), self.wav).segments)

    def _input(self, fed: bool) -> tuple[Any, Callable[[], None]]:
        """The WAV file, or (``fed``) a push stream and the function that fills it."""
        return self.pushed_audio() if fed else (self.audio(), lambda: None)

    def managed_transcriber(self, fed: bool = False) -> int:
        """``fed``: the audio written after the start, as ``transcribe`` does."""
        from nativeguard import managed_transcriber  # noqa: PLC0415

        segments: list[Any] = []
        ended = threading.Event()
        audio, feed = self._input(fed)
        block = managed_transcriber(self.config(), audio)
        del audio
        with block as transcriber:
            transcriber.transcribed.connect(segments.append, plain=True)
            transcriber.canceled.connect(lambda _c: ended.set(), plain=True)
            transcriber.session_stopped.connect(lambda _e: ended.set(), plain=True)
            transcriber.start_transcribing_async().get()
            feed()
            if not ended.wait(SESSION_TIMEOUT_S):
                raise RuntimeError("transcription session did not end")
            transcriber.stop_transcribing_async().get()
        return len(segments)

    async def atranscribe(self) -> int:
        import nativeguard  # noqa: PLC0415

        return len((await nativeguard.atranscribe(self.config(), self.wav)).segments)

    async def amanaged_transcriber(self, fed: bool = False) -> int:
        from nativeguard import managed_transcriber  # noqa: PLC0415

        loop = asyncio.get_running_loop()
        segments: list[Any] = []
        ended = asyncio.Event()

        def end(_evt: Any) -> None:
            loop.call_soon_threadsafe(ended.set)

        audio, feed = self._input(fed)
        block = managed_transcriber(self.config(), audio)
        del audio
        async with block as transcriber:
            transcriber.transcribed.connect(segments.append, plain=True)
            transcriber.canceled.connect(end, plain=True)
            transcriber.session_stopped.connect(end, plain=True)

            def start_and_feed() -> None:
                transcriber.start_transcribing_async().get()
                feed()

            await asyncio.to_thread(start_and_feed)
            await asyncio.wait_for(ended.wait(), SESSION_TIMEOUT_S)
            await asyncio.to_thread(lambda: transcriber.stop_transcribing_async().get())
        return len(segments)

    def recognize_once(self) -> int:
        import nativeguard  # noqa: PLC0415

        return int(
            isinstance(nativeguard.recognize_once(self.config(), self.wav), nativeguard.Segment)
        )

    def managed_recognizer(self, fed: bool = False) -> int:
        """``fed``: the audio written on Connection.connected, as ``recognize_once`` does."""
        import nativeguard  # noqa: PLC0415

        audio, feed = self._input(fed)
        block = nativeguard.managed_recognizer(self.config(), audio)
        del audio
        with block as recognizer:
            connection = self._fed_recognizer(block, recognizer, feed) if fed else None
            result = recognizer.recognize_once_async().get()
            plain = nativeguard.extract(result)
            del result, connection
        return int(isinstance(plain, nativeguard.Segment))

    async def arecognize_once(self) -> int:
        import nativeguard  # noqa: PLC0415

        plain = await nativeguard.arecognize_once(self.config(), self.wav)
        return int(isinstance(plain, nativeguard.Segment))

    async def amanaged_recognizer(self, fed: bool = False) -> int:
        import nativeguard  # noqa: PLC0415

        audio, feed = self._input(fed)
        block = nativeguard.managed_recognizer(self.config(), audio)
        del audio
        async with block as recognizer:
            connection = self._fed_recognizer(block, recognizer, feed) if fed else None
            result = await asyncio.to_thread(lambda: recognizer.recognize_once_async().get())
            plain = nativeguard.extract(result)
            del result, connection
        return int(isinstance(plain, nativeguard.Segment))

    def _fed_recognizer(self, block: Any, recognizer: Any, audio_feed: Callable[[], None]) -> Any:
        """Write the audio on the recognizer's Connection.connected (as recognize_once does)."""
        fed = threading.Lock()
        connection = block.scope.register(
            self.sdk.Connection.from_recognizer(recognizer.__wrapped__)
        )

        def on_connected(_evt: Any) -> None:
            if fed.acquire(blocking=False):  # once, whatever reconnects
                audio_feed()

        block.scope.connect(connection.connected, on_connected)
        return connection

    def synthesize(self) -> int:
        import nativeguard  # noqa: PLC0415

        return int(bool(nativeguard.synthesize(self.config(), TEXT).audio))

    def managed_synthesizer(self) -> int:
        import nativeguard  # noqa: PLC0415

        with nativeguard.managed_synthesizer(self.config(), None) as synthesizer:
            result = synthesizer.speak_text_async(TEXT).get()
            plain = nativeguard.extract(result)
            del result
        return int(isinstance(plain, nativeguard.SynthesisResult) and bool(plain.audio))

    async def asynthesize(self) -> int:
        import nativeguard  # noqa: PLC0415

        return int(bool((await nativeguard.asynthesize(self.config(), TEXT)).audio))

    async def amanaged_synthesizer(self) -> int:
        import nativeguard  # noqa: PLC0415

        async with nativeguard.managed_synthesizer(self.config(), None) as synthesizer:
            result = await asyncio.to_thread(lambda: synthesizer.speak_text_async(TEXT).get())
            plain = nativeguard.extract(result)
            del result
        return int(isinstance(plain, nativeguard.SynthesisResult) and bool(plain.audio))

    def request(self, key: str) -> Callable[[], int] | Callable[[], Awaitable[int]]:
        name = key.split("@", maxsplit=1)[0]
        simple: dict[str, Callable[[], int]] = {
            "naive": self.naive,
            "naive-push": self.naive_push,
            "manual": self.manual,
            "inline": lambda: self.managed("inline"),
            "background": lambda: self.managed("background"),
            "default": lambda: self.managed(None),
            "inline-push": lambda: self.managed("inline", push=True),
            "background-push": lambda: self.managed("background", push=True),
        }
        if name in simple:
            return simple[name]
        if name.startswith("async-"):
            name = "a" + name[len("async-") :]
        if name.endswith("-fed"):
            base = name[: -len("-fed")]
            helpers = ("transcribe", "atranscribe", "recognize_once", "arecognize_once")
            if base not in helpers:  # the block fed like the helper (which feeds that way itself)
                fed: Callable[[], int] | Callable[[], Awaitable[int]] = functools.partial(
                    getattr(self, base), fed=True
                )
                return fed
            name = base
        method: Callable[[], int] | Callable[[], Awaitable[int]] = getattr(self, name)
        return method


def _run_child(args: argparse.Namespace) -> None:
    live = [[index] for index in range(args.live_objects)]
    gc.collect()
    child = _Child(args.url, args.wav)
    request = child.request(args.child)
    concurrency: int = args.concurrency
    latencies: list[float] = []
    outcomes: list[int] = []

    if asyncio.iscoroutinefunction(request):

        async def run_async(count: int, record: bool) -> float:
            gate = asyncio.Semaphore(concurrency)

            async def one() -> None:
                async with gate:
                    start = time.perf_counter()
                    outcome = await request()
                    if record:
                        latencies.append(time.perf_counter() - start)
                        outcomes.append(outcome)

            start = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(count)))
            return time.perf_counter() - start

        asyncio.run(run_async(2, False))  # warm-up: first connection, lazy imports
        wall = asyncio.run(run_async(args.requests, True))
    else:

        def one(record: bool) -> None:
            start = time.perf_counter()
            outcome = request()
            if record:
                latencies.append(time.perf_counter() - start)
                outcomes.append(outcome)  # type: ignore[arg-type]

        def run_sync(count: int, record: bool) -> float:
            start = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as executor:
                list(executor.map(lambda _i: one(record), range(count)))
            return time.perf_counter() - start

        run_sync(2, False)
        wall = run_sync(args.requests, True)

    from nativeguard._core._reaper import get_reaper  # noqa: PLC0415

    get_reaper().wait_idle(30)  # background releases finish before the process exits
    del live
    print(
        json.dumps(
            {
                "latencies": latencies,
                "wall": wall,
                "failed": sum(1 for outcome in outcomes if outcome < 1),
                "release_modes": child.release_modes(),
            }
        )
    )


# -- parent side ----------------------------------------------------------------


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    clean_round_medians: list[float] = field(default_factory=list)  # stalled requests left out
    throughputs: list[float] = field(default_factory=list)
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    release_modes: set[str] = field(default_factory=set)

    def median(self) -> float:
        return statistics.median(self.round_medians) if self.round_medians else float("nan")

    def clean_median(self) -> float:
        values = self.clean_round_medians
        return statistics.median(values) if values else float("nan")


def _p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}" if not math.isnan(seconds) else "-"


def _spawn(mode: Mode, url: str, wav: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode.key,
        "--url",
        url,
        "--wav",
        wav,
        "--requests",
        str(args.requests),
        "--concurrency",
        str(mode.concurrency),
        "--live-objects",
        str(args.live_objects),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{mode.key}: exit {done.returncode}: {tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _versions() -> str:
    sdk = metadata.version("azure-cognitiveservices-speech")
    libc, libc_version = platform.libc_ver()
    return (
        f"azure-cognitiveservices-speech {sdk}, {libc} {libc_version}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )


def _report(modes: list[Mode], samples: dict[str, Samples], markdown: bool) -> None:
    groups: dict[str, list[Mode]] = {}
    for mode in modes:
        groups.setdefault(mode.group, []).append(mode)
    for group, members in groups.items():
        print()
        print(f"### {group}" if markdown else f"== {group}")
        if markdown:
            print(
                "| mode | p50 ms | p95 ms | > 0.3 s | p50 w/o those (round spread) ms "
                "| req/s | ratio | ratio w/o those |"
            )
            print("|---|---|---|---|---|---|---|---|")
        for mode in members:
            s = samples[mode.key]
            if not s.latencies:
                print(f"| {mode.label} | failed: {'; '.join(s.errors)} |")
                continue
            ratio = clean_ratio = "1"
            if mode.reference is not None:
                reference = samples[mode.reference]
                ratio = f"{s.median() / reference.median():.2f}x"
                clean_ratio = f"{s.clean_median() / reference.clean_median():.2f}x"
            clean = s.clean_round_medians
            spread = f"({_ms(min(clean))}-{_ms(max(clean))})" if clean else ""
            label = mode.label
            if mode.reference is not None:
                label += f" vs {_label(modes, mode.reference)}"
            if s.release_modes:
                label += f" [{'/'.join(sorted(s.release_modes))}]"
            if s.failed:
                label += f" ({s.failed} failed requests)"
            cells = [
                label,
                _ms(statistics.median(s.latencies)),
                _ms(_p95(s.latencies)),
                f"{sum(v > STALL_S for v in s.latencies)}/{len(s.latencies)}",
                f"{_ms(s.clean_median())} {spread}",
                f"{statistics.median(s.throughputs):.1f}",
                ratio,
                clean_ratio,
            ]
            if markdown:
                print("| " + " | ".join(cells) + " |")
            else:
                print(
                    f"  {cells[0]}\n      p50 {cells[1]:>4s}  p95 {cells[2]:>4s}  "
                    f"> 0.3 s {cells[3]:>6s}  w/o those {cells[4]:14s}  {cells[5]:>5s} req/s  "
                    f"ratio {cells[6]:>6s}  w/o those {cells[7]:>6s}"
                )
            for error in s.errors:
                print(f"    error: {error}")


def _label(modes: list[Mode], key: str) -> str:
    return next(mode.label for mode in modes if mode.key == key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=12, help="timed requests per mode, round")
    parser.add_argument("--only", action="append", default=[], help="modes whose key has this")
    parser.add_argument("--live-objects", type=int, default=0, help="extra live objects")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--raw", help="also write every request's latency to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--wav", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _run_child(args)
        return
    if args.rounds < 1 or args.requests < 1:
        parser.error("--rounds and --requests must be >= 1")

    from nativeguard.testing import Phrase, SpeechService, write_wav  # noqa: PLC0415

    modes = _modes()
    if args.only:
        wanted = {m.key for m in modes if any(o in m.key for o in args.only)}
        wanted |= {m.reference for m in modes if m.key in wanted and m.reference}
        modes = [m for m in modes if m.key in wanted]
    script = (
        Phrase(TEXT, speaker="Guest-1", offset_s=0.1, duration_s=0.5),
        Phrase("I would like to check my order.", speaker="Guest-2", offset_s=0.7, duration_s=0.5),
    )
    samples = {mode.key: Samples() for mode in modes}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, SpeechService(script=script) as service:
        wav = str(write_wav(Path(tmp) / "request.wav", WAV_SECONDS))
        for round_index in range(args.rounds):
            shift = round_index % len(modes)
            for mode in modes[shift:] + modes[:shift]:  # interleaved, rotated each round
                s = samples[mode.key]
                try:
                    result = _spawn(mode, service.url, wav, args)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    s.errors.append(str(error))
                    continue
                s.latencies.extend(result["latencies"])
                s.round_medians.append(statistics.median(result["latencies"]))
                clean = [v for v in result["latencies"] if v <= STALL_S]
                if clean:
                    s.clean_round_medians.append(statistics.median(clean))
                s.throughputs.append(len(result["latencies"]) / result["wall"])
                s.failed += result["failed"]
                s.release_modes.update(result["release_modes"])
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(
        f"{args.rounds} rounds x {args.requests} requests per mode, fresh process per mode, "
        f"interleaved; {WAV_SECONDS:g} s WAV; {args.live_objects:,} extra live objects per child; "
        f"{time.perf_counter() - started:.0f} s"
    )
    print(_versions())
    print(
        "ratio: median of per-round medians over the reference's; w/o those: requests "
        "over 0.3 s left out (for audio input, the SDK's start stall of docs/core.md)"
    )
    _report(modes, samples, args.markdown)
    if args.raw:
        raw = {key: s.latencies for key, s in samples.items()}
        Path(args.raw).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
