"""Functions for ``nativeguard soak`` to call in tests: leaking and clean, plain Python and SDK.

Named ``module:function`` on the command line; the tests run the command with
this directory on ``PYTHONPATH``. The SDK targets take what ``service`` (a
generator setup) yields: a SpeechConfig for a SpeechService in the same
process and a short WAV file; the service stops when the soak resumes it.
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import azure.cognitiveservices.speech as speechsdk

import nativeguard
from nativeguard.testing import Phrase, SpeechService, write_wav

MIB = 1 << 20
kept: list[Any] = []
"""What the leaking targets keep, for the life of the process: the leak itself."""


def plain_leak() -> None:
    """Keeps 1 MiB of written bytes per call."""
    kept.append(b"x" * MIB)


def plain_clean() -> None:
    """Allocates 1 MiB per call and lets it go."""
    data = b"x" * MIB
    del data


def plateau() -> None:
    """Keeps 1 MiB per call for the first 8 calls, then nothing: growth that stops."""
    if len(kept) < 8:
        kept.append(b"x" * MIB)


def raises() -> None:
    raise RuntimeError("soak target failed on purpose")


def not_callable_value() -> None:  # the attribute below is what the test names
    return None


NOT_CALLABLE = 42


def service() -> Iterator[tuple[Any, str]]:
    """Setup: a SpeechService (one phrase per connection) and a WAV; stopped after the soak."""
    script = [Phrase("soak this", offset_s=0.1, duration_s=0.4)]
    folder = tempfile.mkdtemp(prefix="soak-")
    wav = write_wav(os.path.join(folder, "one-second.wav"), 1.0)
    with SpeechService(script=script, max_connections=10_000) as svc:
        yield (svc.speech_config(), wav)
        # What sdk_leak kept holds open connections: let them go before the service stops.
        kept.clear()
        gc.collect()
    os.remove(wav)
    os.rmdir(folder)


def sdk_leak(config: Any, wav: str) -> None:
    """The field pattern: a callback whose closure captures its recognizer, results kept."""
    audio = speechsdk.audio.AudioConfig(filename=wav)
    recognizer = speechsdk.SpeechRecognizer(speech_config=config, audio_config=audio)
    done = threading.Event()

    def on_recognized(evt: Any) -> None:
        kept.append(evt.result)
        _ = recognizer  # the capture that makes a reference cycle

    recognizer.recognized.connect(on_recognized)
    recognizer.session_stopped.connect(lambda evt: done.set())
    recognizer.canceled.connect(lambda evt: done.set())
    recognizer.start_continuous_recognition_async().get()
    done.wait(10)
    recognizer.stop_continuous_recognition_async().get()


def sdk_clean(config: Any, wav: str) -> None:
    """The same request through nativeguard: plain data out, everything released."""
    segment = nativeguard.recognize_once(config, wav)
    assert isinstance(segment, nativeguard.Segment), segment


def bad_teardown() -> Iterator[None]:
    """Setup whose teardown fails: the soak's samples still stand."""
    yield None
    raise OSError("teardown failed on purpose")


def slow() -> None:
    """20 ms per call: a soak long enough to interrupt."""
    time.sleep(0.02)


def hang() -> None:
    """Never returns in time: for --call-timeout."""
    time.sleep(60)
