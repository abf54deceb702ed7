"""Client code written for the real Azure Speech service runs unchanged against SpeechService.

Each test holds client code in the style of the Speech SDK's own Python
documentation and samples (quickstarts, "How to recognize speech", "Get
detailed results", "Language identification", "Pronunciation assessment",
"How to synthesize speech", "Speech synthesis events"), run against the
bundled service with only the endpoint changed: ``SpeechConfig(host=...)``
instead of ``SpeechConfig(subscription=..., region=...)``. The assertions read
what the client reads, and check each JSON shape against the message
formats the SDK documents (sources in docs/testing.md).
"""

from __future__ import annotations

import itertools
import json
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard.testing import Phrase, SpeechService

SPEECH_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
TICK = 10_000_000


@pytest.fixture
def make_service() -> Iterator[type[SpeechService]]:
    started: list[SpeechService] = []

    def make(*args: object, **kwargs: object) -> SpeechService:
        service = SpeechService(*args, require_key=SPEECH_KEY, **kwargs).start()  # type: ignore[arg-type]
        started.append(service)
        return service

    yield make  # type: ignore[misc]
    for service in started:
        service.stop()


def config_for(service: SpeechService) -> speechsdk.SpeechConfig:
    """The one line that differs from the docs: the endpoint instead of the region."""
    speech_config = speechsdk.SpeechConfig(host=service.url, subscription=SPEECH_KEY)
    service.apply_timeouts(speech_config)  # keep a failing test fast
    return speech_config


# -- recognition: what already worked ------------------------------------------


def test_recognize_once_from_a_file(make_service, wav_path):
    service = make_service(script=["Turn on the lights."])
    speech_config = config_for(service)
    speech_config.speech_recognition_language = "en-US"
    audio_config = speechsdk.audio.AudioConfig(filename=wav_path)
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=speech_config, audio_config=audio_config
    )
    result = speech_recognizer.recognize_once_async().get()
    assert result.reason == speechsdk.ResultReason.RecognizedSpeech
    assert result.text == "Turn on the lights."
    # Simple format, as documented: RecognitionStatus, DisplayText, Offset, Duration.
    body = json.loads(result.json)
    assert body["RecognitionStatus"] == "Success"
    assert body["DisplayText"] == result.text
    assert (body["Offset"], body["Duration"]) == (result.offset, result.duration)
    assert "NBest" not in body
    assert service.connections[0].query["language"] == "en-US"
    del speech_recognizer, result


def test_recognize_from_a_push_stream(make_service, wav_path):
    service = make_service(script=["Pushed audio."])
    speech_config = config_for(service)
    push_stream = speechsdk.audio.PushAudioInputStream()
    audio_config = speechsdk.audio.AudioConfig(stream=push_stream)
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=speech_config, audio_config=audio_config
    )
    future = speech_recognizer.recognize_once_async()
    with wave.open(wav_path, "rb") as wav:
        while frames := wav.readframes(1600):
            push_stream.write(frames)
    push_stream.close()
    result = future.get()
    assert result.reason == speechsdk.ResultReason.RecognizedSpeech
    assert result.text == "Pushed audio."
    del speech_recognizer, result, future


def test_continuous_recognition_with_events(make_service, wav_path):
    service = make_service(script=["First sentence.", "Second sentence."])
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=config_for(service),
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    done = threading.Event()
    recognized: list[str] = []
    speech_recognizer.recognized.connect(lambda evt: recognized.append(evt.result.text))
    speech_recognizer.session_stopped.connect(lambda evt: done.set())
    speech_recognizer.canceled.connect(lambda evt: done.set())
    speech_recognizer.start_continuous_recognition_async().get()
    assert done.wait(20)
    speech_recognizer.stop_continuous_recognition_async().get()
    for signal in (
        speech_recognizer.recognized,
        speech_recognizer.session_stopped,
        speech_recognizer.canceled,
    ):
        signal.disconnect_all()
    assert [t for t in recognized if t] == ["First sentence.", "Second sentence."]
    del speech_recognizer


def test_conversation_transcription_with_speakers_in_detailed_format(make_service, wav_path):
    script = [
        Phrase("Good morning.", speaker="Guest-1"),
        Phrase("Morning to you.", speaker="Guest-2"),
    ]
    service = make_service(script=script)
    speech_config = config_for(service)
    speech_config.speech_recognition_language = "en-US"
    speech_config.output_format = speechsdk.OutputFormat.Detailed
    conversation_transcriber = speechsdk.transcription.ConversationTranscriber(
        speech_config=speech_config,
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    transcribing_stop = threading.Event()
    transcribed: list[tuple[str, str, str]] = []

    def conversation_transcriber_transcribed_cb(evt: speechsdk.SpeechRecognitionEventArgs) -> None:
        if evt.result.reason == speechsdk.ResultReason.RecognizedSpeech:
            display = json.loads(evt.result.json)["NBest"][0]["Display"]
            transcribed.append((evt.result.text, evt.result.speaker_id, display))

    conversation_transcriber.transcribed.connect(conversation_transcriber_transcribed_cb)
    conversation_transcriber.session_stopped.connect(lambda evt: transcribing_stop.set())
    conversation_transcriber.canceled.connect(lambda evt: transcribing_stop.set())
    conversation_transcriber.start_transcribing_async().get()
    assert transcribing_stop.wait(20)
    conversation_transcriber.stop_transcribing_async().get()
    for signal in (
        conversation_transcriber.transcribed,
        conversation_transcriber.session_stopped,
        conversation_transcriber.canceled,
    ):
        signal.disconnect_all()
    assert transcribed == [
        ("Good morning.", "Guest-1", "Good morning."),
        ("Morning to you.", "Guest-2", "Morning to you."),
    ]
    del conversation_transcriber


def test_translation_once(make_service, wav_path):
    service = make_service(script=[Phrase("Good morning.", translations={"de": "Guten Morgen."})])
    translation_config = speechsdk.translation.SpeechTranslationConfig(
        host=service.url, subscription=SPEECH_KEY
    )
    service.apply_timeouts(translation_config)
    translation_config.speech_recognition_language = "en-US"
    translation_config.add_target_language("de")
    translation_config.add_target_language("fr")
    recognizer = speechsdk.translation.TranslationRecognizer(
        translation_config=translation_config,
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    result = recognizer.recognize_once()
    assert result.reason == speechsdk.ResultReason.TranslatedSpeech
    assert result.text == "Good morning."
    assert result.translations["de"] == "Guten Morgen."
    assert result.translations["fr"] == "[fr] Good morning."
    del recognizer, result


# -- recognition: detailed output, words, profanity ------------------------------


def test_detailed_output_with_word_level_timestamps(make_service, wav_path):
    script = [
        Phrase(
            "Call Dr. Smith at 5 pm.",
            lexical="call doctor smith at five p m",
            itn="call dr smith at 5 pm",
            confidence=0.87,
            alternatives=("Call doctor Smith at five.",),
            offset_s=0.2,
            duration_s=1.4,
        )
    ]
    service = make_service(script=script)
    speech_config = config_for(service)
    speech_config.output_format = speechsdk.OutputFormat.Detailed
    speech_config.request_word_level_timestamps()
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=speech_config,
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    result = speech_recognizer.recognize_once()
    assert result.reason == speechsdk.ResultReason.RecognizedSpeech
    assert result.text == "Call Dr. Smith at 5 pm."
    # The docs' way to the details: the JSON result (also in the property bag).
    assert result.properties[speechsdk.PropertyId.SpeechServiceResponse_JsonResult] == result.json
    detailed = json.loads(result.json)
    assert detailed["RecognitionStatus"] == "Success"
    assert detailed["DisplayText"] == "Call Dr. Smith at 5 pm."
    assert (detailed["Offset"], detailed["Duration"]) == (2_000_000, 14_000_000)
    best, alternative = detailed["NBest"]
    assert best["Confidence"] == 0.87
    assert best["Lexical"] == "call doctor smith at five p m"
    assert best["ITN"] == "call dr smith at 5 pm"
    assert best["MaskedITN"] == "call dr smith at 5 pm"
    assert best["Display"] == "Call Dr. Smith at 5 pm."
    assert alternative["Display"] == "Call doctor Smith at five."
    assert alternative["Confidence"] < best["Confidence"]
    words = best["Words"]
    assert [w["Word"] for w in words] == ["call", "doctor", "smith", "at", "five", "p", "m"]
    # Word timings tile the phrase, in 100 ns ticks.
    assert words[0]["Offset"] == detailed["Offset"]
    for before, after in itertools.pairwise(words):
        assert before["Offset"] + before["Duration"] == after["Offset"]
    assert words[-1]["Offset"] + words[-1]["Duration"] == detailed["Offset"] + detailed["Duration"]
    (log,) = service.connections
    assert log.query["format"] == "detailed"
    assert log.query["wordLevelTimestamps"] == "true"
    del speech_recognizer, result


def test_simple_format_has_no_nbest_even_when_the_phrase_has_details(make_service, wav_path):
    service = make_service(script=[Phrase("Plain.", lexical="plain", confidence=0.5)])
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=config_for(service),
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    result = speech_recognizer.recognize_once()
    assert set(json.loads(result.json)) == {
        "RecognitionStatus",
        "Offset",
        "Duration",
        "DisplayText",
        "Channel",
    }
    del speech_recognizer, result


@pytest.mark.parametrize(
    ("option", "display", "masked_itn"),
    [
        (None, "Well ****, it works.", "well **** it works"),  # masked is the default
        (speechsdk.ProfanityOption.Masked, "Well ****, it works.", "well **** it works"),
        (speechsdk.ProfanityOption.Removed, "Well, it works.", "well it works"),
        (speechsdk.ProfanityOption.Raw, "Well damn, it works.", "well damn it works"),
    ],
)
def test_profanity_option(make_service, wav_path, option, display, masked_itn):
    service = make_service(script=["Well damn, it works."])
    speech_config = config_for(service)
    speech_config.output_format = speechsdk.OutputFormat.Detailed
    if option is not None:
        speech_config.set_profanity(option)
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=speech_config,
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    result = speech_recognizer.recognize_once()
    assert result.text == display
    best = json.loads(result.json)["NBest"][0]
    assert best["MaskedITN"] == masked_itn
    assert best["Lexical"] == "well damn it works"  # the lexical form is never masked
    del speech_recognizer, result


# -- language identification ------------------------------------------------------


def test_at_start_language_detection_with_recognize_once(make_service, wav_path):
    service = make_service(script=[Phrase("Guten Morgen.", language="de-DE")])
    speech_config = config_for(service)
    auto_detect_source_language_config = speechsdk.languageconfig.AutoDetectSourceLanguageConfig(
        languages=["en-US", "de-DE"]
    )
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=speech_config,
        auto_detect_source_language_config=auto_detect_source_language_config,
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    result = speech_recognizer.recognize_once()
    auto_detect_source_language_result = speechsdk.AutoDetectSourceLanguageResult(result)
    detected_language = auto_detect_source_language_result.language
    assert result.text == "Guten Morgen."
    assert detected_language == "de-DE"
    assert (
        result.properties[
            speechsdk.PropertyId.SpeechServiceConnection_AutoDetectSourceLanguageResult
        ]
        == "de-DE"
    )
    assert json.loads(result.json)["PrimaryLanguage"] == {"Language": "de-DE", "Confidence": "High"}
    (log,) = service.connections
    assert log.query["lidEnabled"] == "en-US,de-DE"
    del speech_recognizer, result


def test_detected_language_defaults_to_the_first_candidate(make_service, wav_path):
    service = make_service(script=["Bonjour."])
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=config_for(service),
        auto_detect_source_language_config=speechsdk.languageconfig.AutoDetectSourceLanguageConfig(
            languages=["fr-FR", "en-US"]
        ),
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    result = speech_recognizer.recognize_once()
    assert speechsdk.AutoDetectSourceLanguageResult(result).language == "fr-FR"
    del speech_recognizer, result


def test_a_language_outside_the_candidates_is_unknown(make_service, wav_path):
    service = make_service(script=[Phrase("Buongiorno.", language="it-IT")])
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=config_for(service),
        auto_detect_source_language_config=speechsdk.languageconfig.AutoDetectSourceLanguageConfig(
            languages=["en-US", "de-DE"]
        ),
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    result = speech_recognizer.recognize_once()
    primary = json.loads(result.json)["PrimaryLanguage"]
    assert primary == {"Language": "Unknown", "Confidence": "Unknown"}
    assert speechsdk.AutoDetectSourceLanguageResult(result).language == "Unknown"
    del speech_recognizer, result


def test_continuous_language_identification(make_service, tmp_wav):
    script = [
        Phrase("Hello there.", language="en-US"),
        Phrase("Guten Tag.", language="de-DE"),
        Phrase("Bonjour.", language="fr-FR"),
    ]
    service = make_service(script=script)
    speech_config = config_for(service)
    speech_config.set_property(
        property_id=speechsdk.PropertyId.SpeechServiceConnection_LanguageIdMode,
        value="Continuous",
    )
    auto_detect_source_language_config = speechsdk.languageconfig.AutoDetectSourceLanguageConfig(
        languages=["en-US", "de-DE", "fr-FR"]
    )
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=speech_config,
        auto_detect_source_language_config=auto_detect_source_language_config,
        audio_config=speechsdk.audio.AudioConfig(filename=tmp_wav(4.0)),
    )
    done = threading.Event()
    detected: list[tuple[str, str]] = []

    def recognized_cb(evt: speechsdk.SpeechRecognitionEventArgs) -> None:
        if evt.result.reason == speechsdk.ResultReason.RecognizedSpeech:
            language = evt.result.properties[
                speechsdk.PropertyId.SpeechServiceConnection_AutoDetectSourceLanguageResult
            ]
            detected.append((evt.result.text, language))

    speech_recognizer.recognized.connect(recognized_cb)
    speech_recognizer.session_stopped.connect(lambda evt: done.set())
    speech_recognizer.canceled.connect(lambda evt: done.set())
    speech_recognizer.start_continuous_recognition_async().get()
    assert done.wait(20)
    speech_recognizer.stop_continuous_recognition_async().get()
    for signal in (
        speech_recognizer.recognized,
        speech_recognizer.session_stopped,
        speech_recognizer.canceled,
    ):
        signal.disconnect_all()
    assert detected == [
        ("Hello there.", "en-US"),
        ("Guten Tag.", "de-DE"),
        ("Bonjour.", "fr-FR"),
    ]
    del speech_recognizer


def test_at_start_detection_keeps_the_first_language_for_the_turn(make_service, tmp_wav):
    script = [Phrase("Hello there.", language="en-US"), Phrase("Guten Tag.", language="de-DE")]
    service = make_service(script=script)
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=config_for(service),
        auto_detect_source_language_config=speechsdk.languageconfig.AutoDetectSourceLanguageConfig(
            languages=["en-US", "de-DE"]
        ),
        audio_config=speechsdk.audio.AudioConfig(filename=tmp_wav(3.0)),
    )
    done = threading.Event()
    languages: list[str] = []
    speech_recognizer.recognized.connect(
        lambda evt: (
            languages.append(json.loads(evt.result.json)["PrimaryLanguage"]["Language"])
            if evt.result.reason == speechsdk.ResultReason.RecognizedSpeech
            else None
        )
    )
    speech_recognizer.session_stopped.connect(lambda evt: done.set())
    speech_recognizer.start_continuous_recognition_async().get()
    assert done.wait(20)
    speech_recognizer.stop_continuous_recognition_async().get()
    speech_recognizer.recognized.disconnect_all()
    speech_recognizer.session_stopped.disconnect_all()
    assert languages == ["en-US", "en-US"]
    del speech_recognizer


def test_source_language_recognizer(make_service, wav_path):
    service = make_service(script=[Phrase("Hola.", language="es-ES")])
    source_language_recognizer = speechsdk.SourceLanguageRecognizer(
        speech_config=config_for(service),
        auto_detect_source_language_config=speechsdk.languageconfig.AutoDetectSourceLanguageConfig(
            languages=["en-US", "es-ES"]
        ),
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    result = source_language_recognizer.recognize_once()
    assert result.reason == speechsdk.ResultReason.RecognizedSpeech
    detected_language = result.properties[
        speechsdk.PropertyId.SpeechServiceConnection_AutoDetectSourceLanguageResult
    ]
    assert detected_language == "es-ES"
    # Language identification only: no text is recognised.
    assert "DisplayText" not in json.loads(result.json)
    del source_language_recognizer, result


# -- pronunciation assessment -----------------------------------------------------


def test_pronunciation_assessment(make_service, wav_path):
    script = [
        Phrase(
            "Good morning world.",
            pronunciation={"morning": 42.0, "FluencyScore": 81.0},
        )
    ]
    service = make_service(script=script)
    speech_config = config_for(service)
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=speech_config,
        language="en-US",
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    pronunciation_assessment_config = speechsdk.PronunciationAssessmentConfig(
        reference_text="good morning everyone",
        grading_system=speechsdk.PronunciationAssessmentGradingSystem.HundredMark,
        granularity=speechsdk.PronunciationAssessmentGranularity.Phoneme,
        enable_miscue=True,
    )
    pronunciation_assessment_config.apply_to(speech_recognizer)
    result = speech_recognizer.recognize_once()
    pronunciation_assessment_result = speechsdk.PronunciationAssessmentResult(result)
    assert pronunciation_assessment_result.accuracy_score == pytest.approx(71.0)
    assert pronunciation_assessment_result.fluency_score == 81.0
    # Two of the three reference words were spoken.
    assert pronunciation_assessment_result.completeness_score == pytest.approx(66.7)
    assert pronunciation_assessment_result.prosody_score is None
    assert 0 < pronunciation_assessment_result.pronunciation_score < 100
    words = {w.word: w for w in pronunciation_assessment_result.words}
    assert words["good"].accuracy_score == 100.0
    assert words["good"].error_type == "None"
    assert words["morning"].accuracy_score == 42.0
    assert words["morning"].error_type == "Mispronunciation"
    assert words["world"].error_type == "Insertion"
    assert words["everyone"].error_type == "Omission"
    assert [p.phoneme for p in words["good"].phonemes] == ["g", "o", "o", "d"]
    assert words["good"].syllables[0].accuracy_score == 100.0
    (log,) = service.connections
    (context,) = log.contexts
    assert context["phraseDetection"]["enrichment"]["pronunciationAssessment"]["referenceText"] == (
        "good morning everyone"
    )
    del speech_recognizer, result


def test_pronunciation_assessment_with_prosody(make_service, wav_path):
    service = make_service(script=["Hello world."])
    speech_recognizer = speechsdk.SpeechRecognizer(
        speech_config=config_for(service),
        audio_config=speechsdk.audio.AudioConfig(filename=wav_path),
    )
    config = speechsdk.PronunciationAssessmentConfig(reference_text="hello world")
    config.enable_prosody_assessment()
    config.apply_to(speech_recognizer)
    result = speech_recognizer.recognize_once()
    scores = speechsdk.PronunciationAssessmentResult(result)
    assert scores.prosody_score == 100.0
    assert scores.accuracy_score == 100.0
    assert scores.completeness_score == 100.0
    assert scores.pronunciation_score == 100.0
    del speech_recognizer, result


# -- synthesis ----------------------------------------------------------------


def test_synthesize_to_a_file(make_service, tmp_path: Path):
    service = make_service()
    speech_config = config_for(service)
    speech_config.speech_synthesis_voice_name = "en-US-AvaMultilingualNeural"
    target = tmp_path / "output.wav"
    audio_config = speechsdk.audio.AudioOutputConfig(filename=str(target))
    speech_synthesizer = speechsdk.SpeechSynthesizer(
        speech_config=speech_config, audio_config=audio_config
    )
    result = speech_synthesizer.speak_text_async("I'm excited to try text to speech").get()
    assert result.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    duration = result.audio_duration.total_seconds()
    del speech_synthesizer, result
    with wave.open(str(target), "rb") as wav:
        assert wav.getnframes() / wav.getframerate() == pytest.approx(duration, abs=0.01)
    assert "en-US-AvaMultilingualNeural" in service.connections[0].ssml[0]


def test_synthesis_events_bookmarks_visemes_and_boundaries(make_service):
    service = make_service()
    speech_config = config_for(service)
    speech_config.set_property(
        speechsdk.PropertyId.SpeechServiceResponse_RequestSentenceBoundary, "true"
    )
    speech_config.set_property(
        speechsdk.PropertyId.SpeechServiceResponse_RequestPunctuationBoundary, "true"
    )
    speech_synthesizer = speechsdk.SpeechSynthesizer(speech_config=speech_config, audio_config=None)
    bookmarks: list[tuple[int, str]] = []
    visemes: list[tuple[int, int]] = []
    boundaries: list[tuple[str, str, int, int]] = []
    speech_synthesizer.bookmark_reached.connect(
        lambda evt: bookmarks.append((evt.audio_offset, evt.text))
    )
    speech_synthesizer.viseme_received.connect(
        lambda evt: visemes.append((evt.audio_offset, evt.viseme_id))
    )
    speech_synthesizer.synthesis_word_boundary.connect(
        lambda evt: boundaries.append(
            (evt.boundary_type.name, evt.text, evt.audio_offset, evt.text_offset)
        )
    )
    completed = threading.Event()
    speech_synthesizer.synthesis_completed.connect(lambda evt: completed.set())
    ssml = (
        "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' "
        "xmlns:mstts='https://www.w3.org/2001/mstts' xml:lang='en-US'>"
        "<voice name='en-US-AvaMultilingualNeural'>"
        "We are selling <bookmark mark='flower_1'/>roses and <bookmark mark='flower_2'/>daisies."
        "</voice></speak>"
    )
    result = speech_synthesizer.speak_ssml_async(ssml).get()
    assert result.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    assert completed.wait(5)
    for signal in (
        speech_synthesizer.bookmark_reached,
        speech_synthesizer.viseme_received,
        speech_synthesizer.synthesis_word_boundary,
        speech_synthesizer.synthesis_completed,
    ):
        signal.disconnect_all()
    words = {text: (offset, text_offset) for kind, text, offset, text_offset in boundaries}
    # A bookmark fires at the audio offset of the word that follows it.
    assert sorted(bookmarks) == [
        (words["roses"][0], "flower_1"),
        (words["daisies"][0], "flower_2"),
    ]
    kinds = {(kind, text) for kind, text, _, _ in boundaries}
    assert ("Word", "selling") in kinds
    assert ("Punctuation", ".") in kinds
    assert ("Sentence", "We are selling roses and daisies.") in kinds
    # The SDK finds each word in the SSML it sent: text offsets point into it.
    assert ssml[words["roses"][1] :].startswith("roses")
    # Visemes start and end in silence (0) and run in audio order.
    visemes.sort()
    assert visemes[0][1] == 0
    assert visemes[-1][1] == 0
    assert {viseme_id for _, viseme_id in visemes} <= set(range(22))
    assert len(visemes) > 10
    assert visemes[-1][0] <= result.audio_duration.total_seconds() * TICK
    del speech_synthesizer, result


@pytest.mark.parametrize(
    ("ssml", "reason"),
    [
        pytest.param("<speak>bad", "SSML is not well-formed XML", id="not-xml"),
        pytest.param(
            "<speak>Hello world</speak>", "Ssml should only contain one language.", id="no-lang"
        ),
        pytest.param(
            "<speak version='1.0' xml:lang='en-US'><voice name='en-US-AvaNeural'>"
            "<blink>hi</blink></voice></speak>",
            "[blink] element is not allowed.",
            id="unknown-element",
        ),
        pytest.param(
            "<speak version='1.0' xml:lang='en-US'><voice>hi</voice></speak>",
            "must have a name",
            id="voice-without-name",
        ),
        pytest.param("<p>hi</p>", "root element of SSML must be <speak>", id="not-speak"),
    ],
)
def test_malformed_ssml_is_canceled_like_the_real_service(make_service, ssml, reason):
    service = make_service()
    speech_synthesizer = speechsdk.SpeechSynthesizer(
        speech_config=config_for(service), audio_config=None
    )
    result = speech_synthesizer.speak_ssml_async(ssml).get()
    assert result.reason == speechsdk.ResultReason.Canceled
    cancellation_details = result.cancellation_details
    assert cancellation_details.reason == speechsdk.CancellationReason.Error
    assert cancellation_details.error_code == speechsdk.CancellationErrorCode.BadRequest
    assert "Error code: 1007" in cancellation_details.error_details
    assert reason in cancellation_details.error_details
    # The synthesizer stays usable, as with the real service.
    ok = speech_synthesizer.speak_text_async("still fine").get()
    assert ok.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    rejected = [e for log in service.connections for e in log.errors]
    assert len(rejected) == 1
    assert rejected[0].startswith("rejected SSML: ")
    del speech_synthesizer, result, ok, cancellation_details
