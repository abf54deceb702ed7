"""How a user tests their own Speech SDK code in CI with nativeguard.testing.

Run: python -m pytest examples/test_with_local_service.py
"""

from __future__ import annotations

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard.testing import Faults, SpeechService, write_wav


def recognize(config: speechsdk.SpeechConfig, wav: str) -> str:
    """The application code under test."""
    recognizer = speechsdk.SpeechRecognizer(config, speechsdk.audio.AudioConfig(filename=wav))
    result = recognizer.recognize_once_async().get()
    if result.reason == speechsdk.ResultReason.Canceled:
        raise ConnectionError(result.cancellation_details.error_details)
    return str(result.text)


@pytest.fixture
def wav(tmp_path):
    return write_wav(tmp_path / "hello.wav", 2.0)


def test_happy_path(wav):
    with SpeechService(script=["turn on the lights"]) as service:
        assert recognize(service.speech_config(), wav) == "turn on the lights"


def test_service_outage_surfaces_as_an_error(wav):
    with SpeechService(faults=Faults(refuse=True)) as service, pytest.raises(ConnectionError):
        recognize(service.speech_config(), wav)
