"""The field write-ups' leaky service pattern, made safe with nativeguard.

Run: python examples/managed_transcription.py
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import azure.cognitiveservices.speech as speechsdk

import nativeguard
from nativeguard.testing import Phrase, SpeechService, write_wav

HISTORY: list = []  # a long-lived service keeps results around, as real ones do


def handle_request(speech_config: speechsdk.SpeechConfig, wav: str) -> list[str]:
    # The same code as before, inside managed_transcriber: the closure that
    # captures the transcriber and the results kept past the callback no longer
    # keep native objects alive.
    with nativeguard.managed_transcriber(
        speech_config, speechsdk.audio.AudioConfig(filename=wav)
    ) as transcriber:
        done = threading.Event()

        def on_transcribed(evt):
            HISTORY.append(evt.result)  # becomes plain data when the block ends
            assert transcriber is not None

        transcriber.transcribed.connect(on_transcribed)
        transcriber.session_stopped.connect(lambda evt: done.set())
        transcriber.canceled.connect(lambda evt: done.set())
        transcriber.start_transcribing_async().get()
        done.wait(30)
        transcriber.stop_transcribing_async().get()
    return [f"{r.speaker_id}: {r.text}" for r in HISTORY]


def main() -> None:
    script = [Phrase("Hello there.", speaker="Guest-1"), Phrase("Hi!", speaker="Guest-2")]
    with tempfile.TemporaryDirectory() as tmp, SpeechService(script=script) as service:
        wav = write_wav(Path(tmp) / "call.wav", seconds=2.0)
        print(handle_request(service.speech_config(), wav))
        # Or let nativeguard do the whole dance and get plain data back:
        transcript = nativeguard.transcribe(service.speech_config(), wav, timeout=30)
        print(transcript.text, transcript.elapsed_s > 0)


if __name__ == "__main__":
    main()
