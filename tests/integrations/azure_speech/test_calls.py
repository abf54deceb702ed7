"""One-call helpers against the real SDK: plain data out, nothing left behind."""

from __future__ import annotations

import asyncio
import gc
import pickle

import pytest
from leakcheck import assert_back_to, snapshot

from nativeguard._core._errors import RequestTimeout
from nativeguard.integrations.azure_speech._calls import (
    Transcript,
    arecognize_once,
    asynthesize,
    atranscribe,
    recognize_once,
    synthesize,
    transcribe,
)
from nativeguard.integrations.azure_speech._extract import Cancellation, Segment, SynthesisResult
from nativeguard.testing import Faults, Phrase, SpeechService

SCRIPT = [
    Phrase("alpha beta", speaker="Guest-1", offset_s=0.1, duration_s=0.6),
    Phrase("gamma delta", speaker="Guest-2", offset_s=1.2, duration_s=0.6),
]


@pytest.fixture(scope="module", autouse=True)
def warm_sdk(wav_path):
    with SpeechService(script=SCRIPT) as service:
        transcribe(service.speech_config(), wav_path)
        synthesize(service.speech_config(), "warm up")
    gc.collect()


@pytest.fixture
def service():
    with SpeechService(script=SCRIPT, response_timeout_s=1.0) as svc:
        yield svc


def test_transcribe_returns_plain_segments(service, wav_path):
    before = snapshot()
    transcript = transcribe(service.speech_config(), wav_path, timeout=20)
    assert_back_to(before)
    assert isinstance(transcript, Transcript)
    assert [(s.text, s.speaker_id, s.offset_s) for s in transcript.segments] == [
        ("alpha beta", "Guest-1", 0.1),
        ("gamma delta", "Guest-2", 1.2),
    ]
    assert transcript.cancellation is None
    assert transcript.text == "alpha beta gamma delta"
    assert pickle.loads(pickle.dumps(transcript)) == transcript


def test_transcribe_reports_a_cancellation(wav_path):
    with SpeechService(faults=Faults(refuse=True), response_timeout_s=1.0) as service:
        before = snapshot()
        transcript = transcribe(service.speech_config(), wav_path, timeout=20)
        assert_back_to(before)
    assert transcript.segments == ()
    assert transcript.cancellation is not None
    assert (transcript.cancellation.reason, transcript.cancellation.error_code) == (
        "Error",
        "ServiceUnavailable",
    )


def test_transcribe_timeout_releases_first(wav_path):
    with SpeechService(faults=Faults(stall=True), response_timeout_s=1.0) as service:
        before = snapshot()
        with pytest.raises(RequestTimeout, match=r"within 0\.5 s"):
            transcribe(service.speech_config(), wav_path, timeout=0.5)
        assert_back_to(before)


def test_recognize_once(service, wav_path):
    before = snapshot()
    segment = recognize_once(service.speech_config(), wav_path, timeout=20)
    assert_back_to(before)
    assert isinstance(segment, Segment)
    assert segment.text == "alpha beta"


def test_recognize_once_feeds_a_short_wav_through_a_push_stream_once_connected(
    service, wav_path, monkeypatch
):
    """The audio goes when the connection opens; the fallback timer, never needed here,
    is cancelled and joined: no thread, stream or Connection is left behind."""
    from nativeguard.integrations.azure_speech import _calls

    fed: list[str] = []
    original = _calls._Feed.when_connected

    def spy(self, scope, recognizer):
        original(self, scope, recognizer)
        fed.append(type(self.connection).__name__)

    monkeypatch.setattr(_calls._Feed, "when_connected", spy)
    before = snapshot()
    segment = recognize_once(service.speech_config(), wav_path, timeout=20)
    assert_back_to(before)
    assert fed == ["Connection"]
    assert isinstance(segment, Segment)
    assert segment.text == "alpha beta"


def test_recognize_once_feeds_from_the_fallback_when_connected_never_comes(
    service, wav_path, monkeypatch
):
    """With the fallback due at once, the audio goes from the timer thread; same result."""
    from nativeguard.integrations.azure_speech import _calls

    monkeypatch.setattr(_calls, "_FEED_FALLBACK_S", 0.0)
    before = snapshot()
    segment = recognize_once(service.speech_config(), wav_path, timeout=20)
    assert_back_to(before)
    assert isinstance(segment, Segment)
    assert segment.text == "alpha beta"


def test_recognize_once_canceled(wav_path):
    with SpeechService(require_key="right") as service:
        outcome = recognize_once(service.speech_config(subscription="wrong"), wav_path)
    assert isinstance(outcome, Cancellation)
    assert outcome.error_code == "AuthenticationFailure"


def test_synthesize_text_and_ssml(service):
    before = snapshot()
    spoken = synthesize(service.speech_config(), "two words")
    ssml = synthesize(
        service.speech_config(),
        "<speak version='1.0' xml:lang='en-US'><voice name='x'>three small words</voice></speak>",
    )
    assert_back_to(before)
    assert isinstance(spoken, SynthesisResult)
    assert spoken.reason == "SynthesizingAudioCompleted"
    assert len(ssml.audio) > len(spoken.audio) > 0


def test_bad_arguments(service, tmp_path):
    with pytest.raises(FileNotFoundError):
        transcribe(service.speech_config(), tmp_path / "missing.wav")
    with pytest.raises(TypeError, match="WAV file path or"):
        recognize_once(service.speech_config(), 42)
    with pytest.raises(ValueError, match="timeout"):
        transcribe(service.speech_config(), tmp_path / "x.wav", timeout=0)
    with pytest.raises(ValueError, match="non-empty"):
        synthesize(service.speech_config(), "   ")


def test_async_helpers(service, wav_path):
    async def main():
        return await asyncio.gather(
            atranscribe(service.speech_config(), wav_path, timeout=20),
            arecognize_once(service.speech_config(), wav_path, timeout=20),
            asynthesize(service.speech_config(), "async speech"),
        )

    before = snapshot()
    transcript, segment, spoken = asyncio.run(main())
    assert_back_to(before)
    assert [s.text for s in transcript.segments] == ["alpha beta", "gamma delta"]
    assert segment.text == "alpha beta"
    assert spoken.reason == "SynthesizingAudioCompleted"


def test_cancelling_atranscribe_releases_everything(wav_path):
    # A stalled service keeps the session open until the task is cancelled.
    with SpeechService(faults=Faults(stall=True), response_timeout_s=1.0) as service:

        async def main():
            task = asyncio.create_task(atranscribe(service.speech_config(), wav_path))
            while not service.connections or service.connections[-1].audio_bytes == 0:
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        before = snapshot()
        asyncio.run(main())
        assert_back_to(before)


def test_eight_asyncio_tasks_without_cross_talk(wav_path):
    services = [SpeechService(script=[f"task {i} says hi"]).start() for i in range(8)]
    try:

        async def main():
            return await asyncio.gather(
                *(atranscribe(s.speech_config(), wav_path, timeout=30) for s in services)
            )

        before = snapshot()
        transcripts = asyncio.run(main())
        assert_back_to(before)
        assert [t.text for t in transcripts] == [f"task {i} says hi" for i in range(8)]
    finally:
        for service in services:
            service.stop()
