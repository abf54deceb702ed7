"""One-call helpers: the whole SDK dance under a scope, plain data out.

``transcribe``, ``recognize_once`` and ``synthesize`` (and their ``a*`` async
twins) create the SDK object, wait for the outcome, release everything and
return only frozen dataclasses: nothing they return can pin a native handle.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import azure.cognitiveservices.speech as speechsdk

from nativeguard import Managed, RequestTimeout, Scope, detach_traceback

from ._extract import Cancellation, Segment, SynthesisResult, extract
from ._managed import _unwrap, managed_recognizer, managed_synthesizer, managed_transcriber

__all__ = [
    "Transcript",
    "arecognize_once",
    "asynthesize",
    "atranscribe",
    "recognize_once",
    "synthesize",
    "transcribe",
]

AudioSource = str | os.PathLike[str] | Any
"""A WAV file path, or an SDK ``AudioConfig`` built by the caller."""

_DEFAULT_TIMEOUT_S = 300.0
_MAX_TIMEOUT_S = 86_400.0
"""The longest timeout a helper takes: one day (as for every nativeguard wait)."""
_STEP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Transcript:
    """A finished transcription as plain data."""

    segments: tuple[Segment, ...]
    cancellation: Cancellation | None
    """Why the session was canceled with an error; None when the audio simply ended."""
    elapsed_s: float

    @property
    def text(self) -> str:
        return " ".join(segment.text for segment in self.segments if segment.text)


def _audio_config(audio: AudioSource) -> Any:
    if isinstance(audio, (str, os.PathLike)):
        path = os.fspath(audio)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"audio file not found: {path}")
        return speechsdk.audio.AudioConfig(filename=path)
    if isinstance(audio, speechsdk.audio.AudioConfig):
        return audio
    raise TypeError(
        "audio must be a WAV file path or a speechsdk.audio.AudioConfig, "
        f"got {type(audio).__name__}"
    )


def _check_timeout(timeout: float) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not (math.isfinite(timeout) and 0 < timeout <= _MAX_TIMEOUT_S):
        raise ValueError(f"timeout must be > 0 and at most {_MAX_TIMEOUT_S:g} s, got {timeout!r}")


@dataclass
class _Session:
    """Collects a continuous session's plain events; ``finish`` is called once it ends."""

    finish: Callable[[], None]
    segments: list[Segment]
    cancellation: Cancellation | None = None

    def on_segment(self, segment: Any) -> None:
        if isinstance(segment, Segment) and segment.reason != "NoMatch":
            self.segments.append(segment)

    def on_canceled(self, cancellation: Any) -> None:
        if isinstance(cancellation, Cancellation) and cancellation.reason != "EndOfStream":
            self.cancellation = cancellation
        self.finish()

    def on_stopped(self, _event: Any) -> None:
        self.finish()

    def connect(self, transcriber: Any) -> None:
        transcriber.transcribed.connect(self.on_segment, plain=True)
        transcriber.canceled.connect(self.on_canceled, plain=True)
        transcriber.session_stopped.connect(self.on_stopped, plain=True)


_FEED_FALLBACK_S = 1.0
"""recognize_once: feed the audio this long after the start if ``connected`` has not come."""

_PUSH_MAX_BYTES = 32 << 20
"""Largest PCM payload a helper feeds through a push stream instead of ``filename=``."""


class _Feed:
    """Audio for a transcription: the file itself, or a push stream filled after the start.

    Measured with SDK 1.53 (benchmarks/start_stall.py, docs/core.md "The 0.5 s
    start stall"): given ``AudioConfig(filename=...)`` for a short file, the
    SDK's audio pump can reach the end of the file before the starting thread
    checks it runs, and the start then waits out a 500 ms timer (5-7 requests
    in 12). Writing the PCM into a push stream only after
    ``start_transcribing_async().get()`` returned stalled 0 of 180 requests.
    Compressed or unusual WAVs, and SDK ``AudioConfig`` objects, go as given.
    """

    def __init__(self, audio: AudioSource) -> None:
        self.stream: Any = None
        self.connection: Any = None
        self.fallback: threading.Timer | None = None
        self.pcm = b""
        if isinstance(audio, (str, os.PathLike)):
            path = os.fspath(audio)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"audio file not found: {path}")
            pcm_format = _pcm_wav(path)
            if pcm_format is not None:
                (rate, bits, channels), self.pcm = pcm_format
                stream_format = speechsdk.audio.AudioStreamFormat(
                    samples_per_second=rate, bits_per_sample=bits, channels=channels
                )
                self.stream = speechsdk.audio.PushAudioInputStream(stream_format=stream_format)
                self.config: Any = speechsdk.audio.AudioConfig(stream=self.stream)
                return
        self.config = _audio_config(audio)

    def when_connected(self, scope: Scope, recognizer: Any) -> None:
        """``recognize_once``: feed the audio once the recognizer's connection opens.

        It has no start future to wait for; measured with SDK 1.53
        (benchmarks/start_stall.py), a push stream written from
        ``Connection.connected`` stalled 0 of 12 requests against 2-3 of 12
        with the file. The stream and the Connection belong to the scope.
        """
        stream, self.stream = self.stream, None
        pcm, self.pcm = self.pcm, b""
        if stream is None:
            return
        scope.register(stream)
        # The scope holds it weakly: kept here until drop() (its events need it alive).
        self.connection = connection = scope.register(
            speechsdk.Connection.from_recognizer(recognizer)
        )
        fed = threading.Lock()

        def feed(_event: Any) -> None:
            if fed.acquire(blocking=False):  # once: the event, a reconnect or the fallback
                stream.write(pcm)
                stream.close()

        scope.connect(connection.connected, feed)
        # Should the event not come (seen once in a loaded full test run: the request
        # then waited for audio until the SDK's ServiceTimeout), the audio goes anyway.
        self.fallback = threading.Timer(_FEED_FALLBACK_S, feed, args=(None,))
        self.fallback.daemon = True
        self.fallback.name = "nativeguard-feed-fallback"
        self.fallback.start()

    def drop(self) -> None:
        """Let go of the Connection before the block ends (the scope releases it)."""
        self.connection = None
        fallback, self.fallback = self.fallback, None
        if fallback is not None:
            fallback.cancel()
            fallback.join()

    def after_start(self, scope: Scope) -> None:
        """Feed the audio and end the stream (a no-op for file or caller-made input)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            scope.register(stream)  # closed by the release if writing fails
            stream.write(self.pcm)
            stream.close()
        self.pcm = b""


def _pcm_wav(path: str) -> tuple[tuple[int, int, int], bytes] | None:
    """((rate, bits, channels), frames) of an uncompressed 8/16-bit WAV file, else None."""
    try:
        with wave.open(path, "rb") as reader:
            width, frames = reader.getsampwidth(), reader.getnframes()
            if reader.getcomptype() != "NONE" or width not in (1, 2):
                return None
            if frames * width * reader.getnchannels() > _PUSH_MAX_BYTES:
                return None
            shape = (reader.getframerate(), 8 * width, reader.getnchannels())
            return shape, reader.readframes(frames)
    except (wave.Error, EOFError):
        return None  # not a WAV the standard library reads: the SDK reads it itself


def transcribe(
    speech_config: Any, audio: AudioSource, *, timeout: float = _DEFAULT_TIMEOUT_S
) -> Transcript:
    """Transcribe ``audio`` with a ConversationTranscriber (speakers included).

    Raises :class:`RequestTimeout` (after releasing everything) if the session
    has not ended within ``timeout`` seconds.
    """
    _check_timeout(timeout)
    start = time.monotonic()
    ended = threading.Event()
    session = _Session(ended.set, [])
    feed = _Feed(audio)
    block = managed_transcriber(speech_config, feed.config)
    feed.config = None
    with block as transcriber:
        session.connect(transcriber)
        transcriber.start_transcribing_async().get()
        feed.after_start(block.scope)
        if not ended.wait(timeout):
            raise RequestTimeout(f"transcription did not end within {timeout:g} s")
        # No stop here: after a session that ended in an error the SDK's stop
        # waits 5 s; the scope's release stops it without that wait.
    return Transcript(tuple(session.segments), session.cancellation, time.monotonic() - start)


async def atranscribe(
    speech_config: Any, audio: AudioSource, *, timeout: float = _DEFAULT_TIMEOUT_S
) -> Transcript:
    """Async :func:`transcribe`; SDK waits and native release run off the event loop.

    Cancelling the awaiting task stops the session and releases everything.
    """
    _check_timeout(timeout)
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    ended = asyncio.Event()
    session = _Session(lambda: _set_threadsafe(loop, ended), [])
    feed = _Feed(audio)
    block = managed_transcriber(speech_config, feed.config)
    feed.config = None
    async with block as transcriber:
        session.connect(transcriber)

        def start_and_feed() -> None:
            transcriber.start_transcribing_async().get()
            feed.after_start(block.scope)

        await asyncio.to_thread(start_and_feed)
        try:
            await asyncio.wait_for(ended.wait(), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"transcription did not end within {timeout:g} s") from None
    return Transcript(tuple(session.segments), session.cancellation, time.monotonic() - start)


def _set_threadsafe(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    # Called on an SDK thread; the loop may already be gone if the caller was
    # cancelled and the session ends late, which is harmless.
    if not loop.is_closed():
        loop.call_soon_threadsafe(event.set)


class _SdkWait:
    """``future.get()`` on a thread of its own that owns the SDK object until get() returns.

    The SDK's get() has no timeout, and dropping the last reference to a
    recognizer while another thread is inside its get() can hang the native
    teardown for good (seen with SDK 1.53: minutes in
    ``recognizer_handle_release``). So the waiting thread holds the object and
    drops it itself once get() has returned; the scope's release stops the
    session (which ends the get()) and judges only after that (``_hold_until``).
    """

    def __init__(self, future: Any, target: Any, scope: Scope, what: str) -> None:
        self.what = what
        self.done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        """The outcome; an awaiting task that is cancelled may cancel it."""
        finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        """Set once the thread has dropped the SDK object: what the release waits for."""
        scope._hold_until(finished)
        thread = threading.Thread(
            target=self._wait,
            args=(future, target, finished),
            name=f"nativeguard-wait: {what}",
            daemon=True,
        )
        thread.start()

    def _wait(self, future: Any, target: Any, finished: concurrent.futures.Future[None]) -> None:
        try:
            try:
                value = future.get()
            except BaseException as exc:  # handed to the waiting caller
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    self.done.set_exception(detach_traceback(exc))
            else:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    self.done.set_result(value)  # a cancelled caller does not want it
                del value
            del future, target  # the last reference, maybe: the teardown runs here
        finally:
            finished.set_result(None)

    def result(self, timeout: float) -> Any:
        try:
            return self.done.result(timeout)
        except concurrent.futures.TimeoutError:
            if self.done.done():
                raise
            raise RequestTimeout(f"{self.what} did not finish within {timeout:g} s") from None

    async def aresult(self, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self.done), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"{self.what} did not finish within {timeout:g} s") from None


def recognize_once(
    speech_config: Any, audio: AudioSource, *, timeout: float = _DEFAULT_TIMEOUT_S
) -> Segment | Cancellation:
    """Recognize one utterance; a canceled request returns its Cancellation."""
    _check_timeout(timeout)
    feed = _Feed(audio)
    block = managed_recognizer(speech_config, feed.config)
    feed.config = None
    with block as recognizer:
        try:
            feed.when_connected(block.scope, _unwrap(recognizer))
            wait = _SdkWait(
                recognizer.recognize_once_async(),
                _unwrap(recognizer),
                block.scope,
                "recognize_once",
            )
            return _plain_recognition(wait.result(timeout))
        finally:
            feed.drop()


async def arecognize_once(
    speech_config: Any, audio: AudioSource, *, timeout: float = _DEFAULT_TIMEOUT_S
) -> Segment | Cancellation:
    """Async :func:`recognize_once`: the event loop never blocks, and cancelling the
    awaiting task (or a timeout around it) stops the recognition and releases everything."""
    _check_timeout(timeout)
    feed = _Feed(audio)
    block = managed_recognizer(speech_config, feed.config)
    feed.config = None
    async with block as recognizer:
        try:
            feed.when_connected(block.scope, _unwrap(recognizer))
            wait = _SdkWait(
                recognizer.recognize_once_async(),
                _unwrap(recognizer),
                block.scope,
                "recognize_once",
            )
            return _plain_recognition(await wait.aresult(timeout))
        finally:
            feed.drop()


def _plain_recognition(result: Any) -> Segment | Cancellation:
    plain = extract(result)
    del result  # the native result must not outlive the block
    if not isinstance(plain, (Segment, Cancellation)):  # pragma: no cover - SDK contract
        raise TypeError(f"recognize_once produced {type(plain).__name__}")
    return plain


def _check_text(text_or_ssml: object) -> bool:
    """Whether ``text_or_ssml`` is SSML; raises for anything but non-empty text."""
    if not isinstance(text_or_ssml, str):
        raise TypeError(f"text_or_ssml must be a str, got {type(text_or_ssml).__name__}")
    if not text_or_ssml.strip():
        raise ValueError("synthesize needs non-empty text or SSML")
    return text_or_ssml.lstrip().startswith("<speak")


def _speak(block: Managed[Any], synthesizer: Any, text_or_ssml: str, is_ssml: bool) -> _SdkWait:
    speak = synthesizer.speak_ssml_async if is_ssml else synthesizer.speak_text_async
    return _SdkWait(speak(text_or_ssml), _unwrap(synthesizer), block.scope, "synthesis")


def synthesize(
    speech_config: Any, text_or_ssml: str, *, timeout: float = _DEFAULT_TIMEOUT_S
) -> SynthesisResult:
    """Synthesize text (or SSML, when it starts with ``<speak``) to in-memory audio."""
    _check_timeout(timeout)
    is_ssml = _check_text(text_or_ssml)
    block = managed_synthesizer(speech_config, None)
    with block as synthesizer:
        return _plain_synthesis(_speak(block, synthesizer, text_or_ssml, is_ssml).result(timeout))


async def asynthesize(
    speech_config: Any, text_or_ssml: str, *, timeout: float = _DEFAULT_TIMEOUT_S
) -> SynthesisResult:
    """Async :func:`synthesize`: the event loop never blocks, and cancelling the awaiting
    task (or a timeout around it) stops the synthesis and releases everything."""
    _check_timeout(timeout)
    is_ssml = _check_text(text_or_ssml)
    block = managed_synthesizer(speech_config, None)
    async with block as synthesizer:
        wait = _speak(block, synthesizer, text_or_ssml, is_ssml)
        return _plain_synthesis(await wait.aresult(timeout))


def _plain_synthesis(result: Any) -> SynthesisResult:
    plain = extract(result)
    del result
    if not isinstance(plain, SynthesisResult):  # pragma: no cover - SDK contract
        raise TypeError(f"synthesis produced {type(plain).__name__}")
    return plain
