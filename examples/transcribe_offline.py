"""Transcribe a recording with the real Azure Speech SDK, offline.

Run: python examples/transcribe_offline.py
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import azure.cognitiveservices.speech as speechsdk

from nativeguard.testing import Phrase, SpeechService, write_wav


def main() -> None:
    script = [
        Phrase("Thanks for joining.", speaker="Guest-1"),
        Phrase("Glad to be here.", speaker="Guest-2"),
    ]
    with tempfile.TemporaryDirectory() as tmp, SpeechService(script=script) as service:
        wav = write_wav(Path(tmp) / "call.wav", seconds=3.0)
        transcriber = speechsdk.transcription.ConversationTranscriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
        )
        done = threading.Event()
        transcriber.transcribed.connect(
            lambda evt: print(f"{evt.result.speaker_id}: {evt.result.text}")
        )
        transcriber.session_stopped.connect(lambda evt: done.set())
        transcriber.canceled.connect(lambda evt: done.set())
        transcriber.start_transcribing_async().get()
        done.wait(30)
        transcriber.stop_transcribing_async().get()
        # Disconnect before dropping the transcriber: the lambdas above are
        # exactly the kind of callback that keeps native objects alive.
        for signal in (transcriber.transcribed, transcriber.session_stopped, transcriber.canceled):
            signal.disconnect_all()
        del transcriber
        print("service saw:", [(c.path, c.audio_bytes) for c in service.connections])


if __name__ == "__main__":
    main()
