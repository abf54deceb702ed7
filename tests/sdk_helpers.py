"""Drive the real SDK the way an application does, for tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import azure.cognitiveservices.speech as speechsdk


@dataclass
class Session:
    recognized: list[Any] = field(default_factory=list)
    recognizing: list[str] = field(default_factory=list)
    canceled: list[Any] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    elapsed_s: float = 0.0


def run_continuous(recognizer: Any, *, timeout_s: float = 20.0) -> Session:
    """Run continuous recognition/transcription to the end of the audio.

    Stores plain tuples (text, speaker, offset, duration, reason), never SDK
    results, and disconnects every callback before returning.
    """
    session = Session()
    transcriber = isinstance(recognizer, speechsdk.transcription.ConversationTranscriber)
    final = recognizer.transcribed if transcriber else recognizer.recognized
    interim = recognizer.transcribing if transcriber else recognizer.recognizing

    def on_final(evt: Any) -> None:
        r = evt.result
        session.recognized.append(
            (r.text, getattr(r, "speaker_id", None), r.offset, r.duration, r.reason)
        )

    def on_canceled(evt: Any) -> None:
        d = evt.cancellation_details
        session.canceled.append((d.reason, d.code, d.error_details))
        session.stopped.set()

    final.connect(on_final)
    interim.connect(lambda evt: session.recognizing.append(evt.result.text))
    recognizer.canceled.connect(on_canceled)
    recognizer.session_stopped.connect(lambda evt: session.stopped.set())
    start = time.monotonic()
    try:
        if transcriber:
            recognizer.start_transcribing_async().get()
        else:
            recognizer.start_continuous_recognition_async().get()
        assert session.stopped.wait(timeout_s), f"session did not stop within {timeout_s} s"
        session.elapsed_s = time.monotonic() - start
        if transcriber:
            recognizer.stop_transcribing_async().get()
        else:
            recognizer.stop_continuous_recognition_async().get()
    finally:
        for signal in (final, interim, recognizer.canceled, recognizer.session_stopped):
            signal.disconnect_all()
    return session
