"""``nativeguard demo``: the main job, runnable on a fresh machine, offline."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any, TextIO

import azure.cognitiveservices.speech as speechsdk

from .testing import Phrase, SpeechService, write_wav

__all__ = ["run_demo"]

_DEMO_SCRIPT = (
    Phrase("Welcome to the nativeguard demo.", speaker="Guest-1"),
    Phrase("This transcript came from the real Speech SDK.", speaker="Guest-2"),
    Phrase("It talked to a local service on loopback.", speaker="Guest-1"),
)
_SESSION_TIMEOUT_S = 30.0


def run_demo(out: TextIO) -> int:
    """Start the local service, transcribe a short recording, print the transcript."""
    with tempfile.TemporaryDirectory(prefix="nativeguard-demo-") as tmp:
        wav = write_wav(Path(tmp) / "demo.wav", 5.0)
        with SpeechService(script=_DEMO_SCRIPT) as service:
            out.write(f"SpeechService listening on {service.url}\n")
            lines = _transcribe(service, wav)
    for line in lines:
        out.write(line + "\n")
    return 0 if len(lines) == len(_DEMO_SCRIPT) else 1


def _transcribe(service: SpeechService, wav: str) -> list[str]:
    transcriber = speechsdk.transcription.ConversationTranscriber(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
    )
    lines: list[str] = []
    done = threading.Event()

    def on_transcribed(evt: Any) -> None:
        result = evt.result
        start = result.offset / 10_000_000
        lines.append(f"[{start:6.2f}s] {result.speaker_id}: {result.text}")

    transcriber.transcribed.connect(on_transcribed)
    transcriber.session_stopped.connect(lambda evt: done.set())
    transcriber.canceled.connect(lambda evt: done.set())
    try:
        transcriber.start_transcribing_async().get()
        if not done.wait(_SESSION_TIMEOUT_S):
            raise TimeoutError(f"transcription did not finish within {_SESSION_TIMEOUT_S} s")
        transcriber.stop_transcribing_async().get()
    finally:
        for signal in (transcriber.transcribed, transcriber.session_stopped, transcriber.canceled):
            signal.disconnect_all()
    return lines
