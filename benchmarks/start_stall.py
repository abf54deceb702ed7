"""Reproduces the Speech SDK's ~0.5 s start stall and shows what decides it.

A request whose audio input reaches its end before the SDK's starting thread
has seen the audio pump running waits out a 500 ms timed wait inside
``start_transcribing_async()`` / ``recognize_once_async()``, before the SDK even
opens its connection (docs/core.md, "The 0.5 s start stall"). This script:

1. Runs the same ``ConversationTranscriber`` request with different audio
   inputs, interleaved, and counts the requests whose start took > 0.3 s:
   a 1.5 s WAV file (what the demo and the field write-ups use), 4.5 s and 6 s
   WAV files, a ``PullAudioInputStream`` answering every read at once, a
   ``PushAudioInputStream`` filled and closed before the start, and the
   workaround: the same push stream written only after
   ``start_transcribing_async().get()`` returned. Then ``recognize_once`` with
   the 1.5 s file and with a push stream written from the ``Connection``'s
   ``connected`` event (it has no start future to wait for), and with a push stream
   written earlier (on ``session_started``; written then and closed on
   ``connected``), which shows what the helper's choice costs.
2. With the SDK's own log on (``Speech_LogFilename``), pairs each 1.5 s-file
   request with what ``CSpxAudioPump::WaitForPumpStart`` saw: ``'Idle'`` (the
   pump already read the whole file) or ``'Processing'``, and when the client
   saw the connection open.

Run: python benchmarks/start_stall.py [--requests N]
"""

from __future__ import annotations

import argparse
import math
import platform
import re
import statistics
import tempfile
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import azure.cognitiveservices.speech as speechsdk

from nativeguard.testing import Phrase, SpeechService, write_wav

STALL_S = 0.3
_PUMP_STATE = re.compile(r"WaitForPumpStart\(\) \.\.\. post m_cv\.wait_for\(\); state='(\w+)'")


@dataclass
class Timing:
    start_s: float  # start_transcribing_async().get()
    connected_s: float | None  # Connection.connected, from the start call
    total_s: float


class _PullPcm(speechsdk.audio.PullAudioInputStreamCallback):  # type: ignore[misc]
    """Hands out a PCM buffer as fast as the SDK asks for it."""

    def __init__(self, pcm: bytes) -> None:
        super().__init__()
        self._pcm = pcm
        self._position = 0

    def read(self, buffer: memoryview) -> int:
        count = min(len(buffer), len(self._pcm) - self._position)
        buffer[:count] = self._pcm[self._position : self._position + count]
        self._position += count
        return count

    def close(self) -> None:
        pass


def _recognize_once(
    config: Any,
    audio: Any,
    on_connected: Callable[[], None] | None,
    on_session_started: Callable[[], None] | None = None,
) -> float:
    recognizer = speechsdk.SpeechRecognizer(config, audio)
    connection = speechsdk.Connection.from_recognizer(recognizer)
    if on_connected is not None:
        connection.connected.connect(lambda _evt: on_connected())
    if on_session_started is not None:
        recognizer.session_started.connect(lambda _evt: on_session_started())
    begin = time.perf_counter()
    recognizer.recognize_once_async().get()
    elapsed = time.perf_counter() - begin
    connection.connected.disconnect_all()
    recognizer.session_started.disconnect_all()
    return elapsed


def _request(config: Any, audio: Any, after_start: Callable[[], None] | None = None) -> Timing:
    transcriber = speechsdk.transcription.ConversationTranscriber(config, audio)
    connection = speechsdk.Connection.from_recognizer(transcriber)
    done = threading.Event()
    connected: list[float] = []
    transcriber.session_stopped.connect(lambda _evt: done.set())
    transcriber.canceled.connect(lambda _evt: done.set())
    connection.connected.connect(lambda _evt: connected.append(time.perf_counter()))
    begin = time.perf_counter()
    transcriber.start_transcribing_async().get()
    started = time.perf_counter()
    if after_start is not None:
        after_start()
    if not done.wait(15):
        raise RuntimeError("session did not end within 15 s")
    transcriber.stop_transcribing_async().get()
    end = time.perf_counter()
    for signal in (transcriber.session_stopped, transcriber.canceled, connection.connected):
        signal.disconnect_all()
    return Timing(started - begin, connected[0] - begin if connected else None, end - begin)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=12)
    runs: int = parser.parse_args().requests
    script = (Phrase("Thanks for calling.", speaker="Guest-1", offset_s=0.1, duration_s=0.5),)
    with tempfile.TemporaryDirectory() as tmp, SpeechService(script=script) as service:
        short = str(write_wav(Path(tmp) / "short.wav", 1.5))
        medium = str(write_wav(Path(tmp) / "medium.wav", 4.5))
        long = str(write_wav(Path(tmp) / "long.wav", 6.0))
        kept: list[Any] = []  # pull callbacks must outlive every SDK thread that may call them
        with wave.open(short, "rb") as reader:
            pcm = reader.readframes(reader.getnframes())

        def file_input(path: str) -> Callable[[Any], Timing]:
            return lambda config: _request(config, speechsdk.audio.AudioConfig(filename=path))

        def pushed_before(config: Any) -> Timing:
            stream = speechsdk.audio.PushAudioInputStream()
            stream.write(pcm)
            stream.close()
            return _request(config, speechsdk.audio.AudioConfig(stream=stream))

        def pulled(config: Any) -> Timing:
            callback = _PullPcm(pcm)
            stream = speechsdk.audio.PullAudioInputStream(callback)
            kept.append((callback, stream))
            return _request(config, speechsdk.audio.AudioConfig(stream=stream))

        def pushed_after(config: Any) -> Timing:
            stream = speechsdk.audio.PushAudioInputStream()

            def feed() -> None:
                stream.write(pcm)
                stream.close()

            return _request(config, speechsdk.audio.AudioConfig(stream=stream), feed)

        def once_file(config: Any) -> float:
            return _recognize_once(config, speechsdk.audio.AudioConfig(filename=short), None)

        def once_pushed_on_connected(config: Any) -> float:
            stream = speechsdk.audio.PushAudioInputStream()
            fed = threading.Event()

            def feed() -> None:
                if not fed.is_set():  # connected fires again on a reconnect
                    fed.set()
                    stream.write(pcm)
                    stream.close()

            return _recognize_once(config, speechsdk.audio.AudioConfig(stream=stream), feed)

        def once_pushed_on_session_started(config: Any) -> float:
            stream = speechsdk.audio.PushAudioInputStream()
            fed = threading.Event()

            def feed() -> None:
                if not fed.is_set():
                    fed.set()
                    stream.write(pcm)
                    stream.close()

            return _recognize_once(config, speechsdk.audio.AudioConfig(stream=stream), None, feed)

        def once_written_on_session_closed_on_connected(config: Any) -> float:
            stream = speechsdk.audio.PushAudioInputStream()
            lock = threading.Lock()
            state = {"written": False, "closed": False}

            def write() -> None:
                with lock:
                    if not state["written"]:
                        state["written"] = True
                        stream.write(pcm)

            def close() -> None:
                write()
                with lock:
                    if not state["closed"]:
                        state["closed"] = True
                        stream.close()

            return _recognize_once(config, speechsdk.audio.AudioConfig(stream=stream), close, write)

        variants: dict[str, Callable[[Any], Timing]] = {
            "1.5 s WAV file": file_input(short),
            "4.5 s WAV file": file_input(medium),
            "6 s WAV file": file_input(long),
            "pull stream (1.5 s), read as fast as asked": pulled,
            "push stream, filled before start": pushed_before,
            "push stream, written after start returned": pushed_after,
        }
        timings: dict[str, list[Timing]] = {name: [] for name in variants}
        pushed_after(service.speech_config())  # warm-up
        once: dict[str, list[float]] = {
            "recognize_once, 1.5 s WAV file": [],
            "recognize_once, push stream written on Connection.connected": [],
            "recognize_once, push stream written on session_started": [],
            "recognize_once, written on session_started, closed on connected": [],
        }
        for _ in range(runs):  # interleaved
            for name, variant in variants.items():
                timings[name].append(variant(service.speech_config()))
            once["recognize_once, 1.5 s WAV file"].append(once_file(service.speech_config()))
            once["recognize_once, push stream written on Connection.connected"].append(
                once_pushed_on_connected(service.speech_config())
            )
            once["recognize_once, push stream written on session_started"].append(
                once_pushed_on_session_started(service.speech_config())
            )
            once["recognize_once, written on session_started, closed on connected"].append(
                once_written_on_session_closed_on_connected(service.speech_config())
            )

        sdk = metadata.version("azure-cognitiveservices-speech")
        print(f"azure-cognitiveservices-speech {sdk}, glibc {platform.libc_ver()[1]}")
        print(f"1. {runs} transcription requests per input, interleaved")
        for name, values in timings.items():
            starts = [t.start_s for t in values]
            stalled = sum(s > STALL_S for s in starts)
            print(
                f"  {name:44s} start stalled {stalled:2d}/{len(values)}  "
                f"start median {statistics.median(starts) * 1000:6.1f} ms  "
                f"request median {statistics.median(t.total_s for t in values) * 1000:6.0f} ms"
                f"  max {max(t.total_s for t in values) * 1000:6.0f} ms"
            )
        for name, seconds in once.items():
            unstalled = [v for v in seconds if v <= STALL_S] or [math.nan]
            print(
                f"  {name:66s} stalled {sum(v > STALL_S for v in seconds):2d}/{len(seconds)}  "
                f"median {statistics.median(seconds) * 1000:6.1f} ms  "
                f"unstalled median {statistics.median(unstalled) * 1000:6.1f} ms  "
                f"max {max(seconds) * 1000:6.0f} ms"
            )

        log = Path(tmp) / "sdk.log"
        logged: list[Timing] = []
        for _ in range(runs):
            config = service.speech_config()
            config.set_property(speechsdk.PropertyId.Speech_LogFilename, str(log))
            logged.append(file_input(short)(config))
        states = _PUMP_STATE.findall(log.read_text(errors="replace"))

    print(f"2. {runs} requests of the 1.5 s WAV file with the SDK log on")
    if len(states) != len(logged):
        print(f"  (the log has {len(states)} pump starts for {len(logged)} requests)")
    for index, (timing, state) in enumerate(zip(logged, states, strict=False)):
        connected = "-" if timing.connected_s is None else f"{timing.connected_s * 1000:5.0f}"
        print(
            f"  request {index:2d}: pump seen {state!r:13s} start {timing.start_s * 1000:5.0f} ms"
            f"  connected at {connected} ms  request {timing.total_s * 1000:5.0f} ms"
        )
    agree = sum(
        (state == "Idle") == (timing.start_s > STALL_S)
        for timing, state in zip(logged, states, strict=False)
    )
    print(f"  stalled exactly when the pump was seen 'Idle': {agree}/{min(len(states), runs)}")


if __name__ == "__main__":
    main()
