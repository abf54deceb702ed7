"""Recognition and transcription through SpeechService with the real SDK."""

from __future__ import annotations

import azure.cognitiveservices.speech as speechsdk
import pytest
from sdk_helpers import run_continuous

from nativeguard.testing import TICKS_PER_SECOND, Phrase, Script, SpeechService

SCRIPT = [
    Phrase("good morning everyone", speaker="Guest-1", offset_s=0.2, duration_s=0.9),
    Phrase("let us begin", speaker="Guest-2", offset_s=1.5, duration_s=0.6),
    Phrase("thank you", speaker="Guest-1", offset_s=2.4, duration_s=0.4),
]


def audio(path: str) -> speechsdk.audio.AudioConfig:
    return speechsdk.audio.AudioConfig(filename=path)


def test_recognize_once_returns_first_scripted_phrase(wav_path):
    with SpeechService(script=SCRIPT) as service:
        recognizer = speechsdk.SpeechRecognizer(service.speech_config(), audio(wav_path))
        result = recognizer.recognize_once_async().get()
        assert result.reason == speechsdk.ResultReason.RecognizedSpeech
        assert result.text == "good morning everyone"
        assert result.offset == 2_000_000
        assert result.duration == 9_000_000
        del recognizer, result
        (log,) = service.connections
    assert log.kind == "interactive"
    assert log.path == "/speech/recognition/interactive/cognitiveservices/v1"
    assert log.query["language"] == "en-us"
    assert log.turns == 1
    assert log.speech_configs[0]["context"]["system"]["name"] == "SpeechSDK"
    assert log.contexts[0]["phraseDetection"]["language"] == "en-us"
    # The SDK stops streaming once the phrase arrived: at least up to its end.
    assert log.audio_bytes >= 32_000 * 1.1


def test_continuous_recognition_returns_every_phrase_with_ticks(wav_path):
    with SpeechService(script=SCRIPT) as service:
        recognizer = speechsdk.SpeechRecognizer(service.speech_config(), audio(wav_path))
        session = run_continuous(recognizer)
        del recognizer
        (log,) = service.connections
    assert [(text, offset, duration) for text, _, offset, duration, _ in session.recognized] == [
        ("good morning everyone", 2_000_000, 9_000_000),
        ("let us begin", 15_000_000, 6_000_000),
        ("thank you", 24_000_000, 4_000_000),
    ]
    assert session.recognizing == ["good", "good morning", "let", "let us", "thank"]
    assert [c[0] for c in session.canceled] == [speechsdk.CancellationReason.EndOfStream]
    assert log.kind == "conversation"
    assert log.turns == 1  # the trailing audio is acknowledged, not replayed
    assert log.audio_bytes == 3 * 32_000


def test_conversation_transcriber_uses_universal_path_with_speakers(wav_path):
    with SpeechService(script=SCRIPT) as service:
        transcriber = speechsdk.transcription.ConversationTranscriber(
            service.speech_config(), audio(wav_path)
        )
        session = run_continuous(transcriber)
        del transcriber
        (log,) = service.connections
    assert [(t, s, o) for t, s, o, _, _ in session.recognized] == [
        ("good morning everyone", "Guest-1", int(0.2 * TICKS_PER_SECOND)),
        ("let us begin", "Guest-2", int(1.5 * TICKS_PER_SECOND)),
        ("thank you", "Guest-1", int(2.4 * TICKS_PER_SECOND)),
    ]
    assert log.path == "/speech/universal/v2"
    assert log.contexts[0]["phraseDetection"]["mode"] == "Conversation"


def test_dictation_path(wav_path):
    with SpeechService(script=SCRIPT) as service:
        config = service.speech_config()
        config.enable_dictation()
        recognizer = speechsdk.SpeechRecognizer(config, audio(wav_path))
        result = recognizer.recognize_once_async().get()
        assert result.text == "good morning everyone"
        del recognizer, result
        assert service.connections[0].kind == "dictation"


def test_translation_recognizer_gets_translations(wav_path):
    script = [Phrase("good morning", translations={"de": "guten Morgen"})]
    with SpeechService(script=script) as service:
        recognizer = speechsdk.translation.TranslationRecognizer(
            service.translation_config("de", "fr"), audio_config=audio(wav_path)
        )
        result = recognizer.recognize_once_async().get()
        assert result.reason == speechsdk.ResultReason.TranslatedSpeech
        assert result.text == "good morning"
        assert dict(result.translations) == {"de": "guten Morgen", "fr": "[fr] good morning"}
        del recognizer, result
        assert service.connections[0].contexts[0]["translation"]["targetLanguages"] == ["de", "fr"]


def test_default_script_without_arguments(wav_path, speech_service):
    recognizer = speechsdk.SpeechRecognizer(speech_service.speech_config(), audio(wav_path))
    session = run_continuous(recognizer)
    del recognizer
    assert [r[0] for r in session.recognized] == [
        "Hello from the nativeguard speech service.",
        "Every native handle is released.",
    ]


def test_script_cycles_per_turn(wav_path):
    script = Script.cycle(["first"], ["second"])
    with SpeechService(script=script) as service:
        recognizer = speechsdk.SpeechRecognizer(service.speech_config(), audio(wav_path))
        texts = [recognizer.recognize_once_async().get().text for _ in range(3)]
        del recognizer
        # One connection carries the three turns.
        assert [log.turns for log in service.connections] == [3]
    assert texts == ["first", "second", "first"]


def test_script_per_connection(wav_path):
    script = Script.per_connection(["alpha"], ["beta"])
    with SpeechService(script=script) as service:
        texts = []
        for _ in range(3):
            recognizer = speechsdk.SpeechRecognizer(service.speech_config(), audio(wav_path))
            texts.append(recognizer.recognize_once_async().get().text)
            del recognizer
    assert texts == ["alpha", "beta", "alpha"]


def test_phrases_wait_for_the_audio_that_contains_them(tmp_wav):
    # A phrase scripted at 5 s is not heard in 1 s of audio until the stream ends:
    # it still arrives, flushed at end of stream, and nothing is lost.
    script = [Phrase("early", offset_s=0.1, duration_s=0.3), Phrase("late", offset_s=5.0)]
    with SpeechService(script=script) as service:
        recognizer = speechsdk.SpeechRecognizer(service.speech_config(), audio(tmp_wav(1.0)))
        session = run_continuous(recognizer)
        del recognizer
    assert [r[0] for r in session.recognized] == ["early", "late"]


def test_recorded_headers_never_hold_the_key(wav_path):
    key = "0123456789abcdef0123456789abcdef"
    with SpeechService(require_key=key) as service:
        recognizer = speechsdk.SpeechRecognizer(service.speech_config(), audio(wav_path))
        assert recognizer.recognize_once_async().get().text
        del recognizer
        (log,) = service.connections
    assert log.headers["ocp-apim-subscription-key"] == "<redacted>"
    assert key not in repr(log)


@pytest.mark.parametrize("n", [100])
def test_many_sequential_recognitions(wav_path, n):
    with SpeechService(script=["one phrase"]) as service:
        config = service.speech_config()
        texts = set()
        for _ in range(n):
            recognizer = speechsdk.SpeechRecognizer(config, audio(wav_path))
            result = recognizer.recognize_once_async().get()
            assert result.reason == speechsdk.ResultReason.RecognizedSpeech, result
            texts.add(result.text)
            del recognizer, result
        assert len(service.connections) == n
        assert all(log.errors == () for log in service.connections)
    assert texts == {"one phrase"}
