"""extract() and plain() against the real Speech SDK talking to SpeechService."""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import pickle
import re
import socket
import threading
import types
import wave
from collections.abc import Iterator
from typing import Any

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard._core._redact import REDACTED
from nativeguard.integrations.azure_speech._extract import (
    Cancellation,
    FrozenMap,
    Segment,
    SessionEvent,
    SpeechDetected,
    SynthesisResult,
    WordBoundary,
    extract,
    plain,
)
from nativeguard.testing import Faults, Phrase, SpeechService

SDK_MODULE = "azure.cognitiveservices.speech"
HEX_ID = re.compile(r"[0-9a-f]{32}")
TRANSCRIBER_SIGNALS = (
    "session_started",
    "speech_start_detected",
    "transcribing",
    "transcribed",
    "speech_end_detected",
    "canceled",
    "session_stopped",
)
SYNTHESIS_SIGNALS = (
    "synthesis_started",
    "synthesizing",
    "synthesis_word_boundary",
    "synthesis_completed",
    "synthesis_canceled",
)


# -- helpers ---------------------------------------------------------------


def audio(path: str) -> speechsdk.audio.AudioConfig:
    return speechsdk.audio.AudioConfig(filename=path)


def recognize_once(config: Any, wav: str) -> Any:
    """recognize_once through the SDK, returning extract(result); no SDK object survives."""
    recognizer = speechsdk.SpeechRecognizer(config, audio(wav))
    return extract(recognizer.recognize_once_async().get())


def translate_once(config: Any, wav: str) -> Any:
    """recognize_once on a TranslationRecognizer, returning extract(result)."""
    # The recognizer must outlive the future: collecting it cancels the request.
    recognizer = speechsdk.translation.TranslationRecognizer(config, audio_config=audio(wav))
    return extract(recognizer.recognize_once_async().get())


def run_transcriber(config: Any, wav: str) -> dict[str, list[Any]]:
    """Transcribe ``wav`` to the end with every callback wrapped in plain().

    ``events["raw_speaker_ids"]`` holds the SDK's own ``speaker_id`` strings.
    """
    transcriber = speechsdk.transcription.ConversationTranscriber(config, audio(wav))
    events: dict[str, list[Any]] = {name: [] for name in TRANSCRIBER_SIGNALS}
    raw_speaker_ids: list[str] = []
    events["raw_speaker_ids"] = raw_speaker_ids
    signals = [getattr(transcriber, name) for name in TRANSCRIBER_SIGNALS]
    stopped = threading.Event()
    for name, signal in zip(TRANSCRIBER_SIGNALS, signals, strict=True):
        signal.connect(plain(events[name].append))
    transcriber.transcribed.connect(lambda evt: raw_speaker_ids.append(evt.result.speaker_id))
    transcriber.session_stopped.connect(lambda _evt: stopped.set())
    try:
        transcriber.start_transcribing_async().get()
        assert stopped.wait(10), "transcription did not stop"
        transcriber.stop_transcribing_async().get()
    finally:
        for signal in signals:
            signal.disconnect_all()
    return events


def synthesize(config: Any, text: str) -> tuple[Any, dict[str, list[Any]]]:
    """speak_text_async through the SDK with plain() callbacks; waits for the last event.

    The SDK can fire synthesis events after ``get()`` returned, so this waits
    for completion or cancellation before disconnecting.
    """
    synthesizer = speechsdk.SpeechSynthesizer(config, audio_config=None)
    events: dict[str, list[Any]] = {name: [] for name in SYNTHESIS_SIGNALS}
    signals = [getattr(synthesizer, name) for name in SYNTHESIS_SIGNALS]
    finished = threading.Event()
    for name, signal in zip(SYNTHESIS_SIGNALS, signals, strict=True):
        signal.connect(plain(events[name].append))
    synthesizer.synthesis_completed.connect(lambda _evt: finished.set())
    synthesizer.synthesis_canceled.connect(lambda _evt: finished.set())
    try:
        result = extract(synthesizer.speak_text_async(text).get())
        assert finished.wait(5), "synthesis did not finish"
    finally:
        for signal in signals:
            signal.disconnect_all()
    return result, events


def _is_sdk(obj: object) -> bool:
    module = obj.__module__ if isinstance(obj, type) else type(obj).__module__
    return isinstance(module, str) and module.startswith(SDK_MODULE)


_OPAQUE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
)


def reachable(root: object) -> Iterator[object]:
    """Every object reachable from ``root`` through gc.get_referents.

    Classes, modules and functions are yielded but not entered: every instance
    refers to its class, whose module imports the SDK, and that is no reference
    *held by the data*.
    """
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if not isinstance(obj, _OPAQUE) and not _is_sdk(obj):
            stack.extend(gc.get_referents(obj))


def sdk_objects(root: object) -> list[object]:
    return [obj for obj in reachable(root) if _is_sdk(obj)]


def pcm_frames(wav_bytes: bytes) -> tuple[tuple[int, int, int], bytes]:
    """((channels, sample width, rate), frames) of a WAV file held in memory."""
    with wave.open(io.BytesIO(wav_bytes)) as reader:
        shape = (reader.getnchannels(), reader.getsampwidth(), reader.getframerate())
        return shape, reader.readframes(reader.getnframes())


def closed_port() -> socket.socket:
    """A bound, never listening loopback socket: connecting to its port is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


# -- recognition -------------------------------------------------------------


def test_recognize_once_result_becomes_segment(wav_path):
    with SpeechService(script=[Phrase("hello world", speaker="Guest-1")]) as service:
        segment = recognize_once(service.speech_config(), wav_path)
    assert type(segment) is Segment
    assert segment.text == "hello world"
    assert segment.reason == "RecognizedSpeech"
    assert segment.offset == 1_000_000
    assert segment.duration == 6_000_000
    assert segment.offset_s == 0.1
    assert segment.duration_s == 0.6
    assert segment.end_s == 0.7
    assert type(segment.offset) is int
    assert isinstance(segment.reason, str)
    # A SpeechRecognitionResult has no speaker, even if the service sent one.
    assert segment.speaker_id is None
    assert segment.language is None
    assert segment.no_match_reason is None
    assert segment.translations == {}
    assert HEX_ID.fullmatch(segment.result_id)
    assert json.loads(segment.json) == {
        "RecognitionStatus": "Success",
        "Offset": 1_000_000,
        "Duration": 6_000_000,
        "DisplayText": "hello world",
        "SpeakerId": "Guest-1",
        "Channel": 0,
    }
    assert set(segment.properties) == {
        "SpeechServiceResponse_JsonResult",
        "SpeechServiceResponse_RecognitionLatencyMs",
        "SpeechServiceResponse_RecognitionBackend",
        "SpeechServiceResponse_RequestId",
    }
    assert segment.properties["SpeechServiceResponse_JsonResult"] == segment.json
    assert segment.properties["SpeechServiceResponse_RecognitionBackend"] == "online"
    # SDK-style lookups keep working on the extracted (detached) result.
    json_id = speechsdk.PropertyId.SpeechServiceResponse_JsonResult
    assert segment.properties[json_id] == segment.json
    assert segment.properties.get(speechsdk.PropertyId.SpeechServiceConnection_Key) is None


@pytest.mark.parametrize(
    ("status", "no_match_reason"),
    [("NoMatch", "NotRecognized"), ("InitialSilenceTimeout", "InitialSilenceTimeout")],
)
def test_no_match_result_becomes_segment_with_no_match_reason(wav_path, status, no_match_reason):
    with SpeechService(script=[Phrase("hello world")], faults=Faults(status=status)) as service:
        segment = recognize_once(service.speech_config(), wav_path)
    assert type(segment) is Segment
    assert (segment.text, segment.reason, segment.no_match_reason) == (
        "",
        "NoMatch",
        no_match_reason,
    )
    assert (segment.offset, segment.duration) == (1_000_000, 6_000_000)
    assert json.loads(segment.json)["RecognitionStatus"] == status


def test_transcriber_events_through_plain(wav_path):
    script = [
        Phrase("good morning everyone", speaker="Guest-1", offset_s=0.2, duration_s=0.9),
        Phrase("let us begin", speaker="Unknown", offset_s=1.5, duration_s=0.6),
        Phrase("thank you", offset_s=2.4, duration_s=0.4),
    ]
    with SpeechService(script=script) as service:
        events = run_transcriber(service.speech_config(), wav_path)

    transcribed = events["transcribed"]
    assert all(type(e) is Segment for e in transcribed)
    # "Unknown" (not attributed) and "" (no speaker info) both become None.
    assert [(s.text, s.speaker_id, s.offset, s.duration, s.reason) for s in transcribed] == [
        ("good morning everyone", "Guest-1", 2_000_000, 9_000_000, "RecognizedSpeech"),
        ("let us begin", None, 15_000_000, 6_000_000, "RecognizedSpeech"),
        ("thank you", None, 24_000_000, 4_000_000, "RecognizedSpeech"),
    ]
    assert [s.offset_s for s in transcribed] == [0.2, 1.5, 2.4]
    assert [s.duration_s for s in transcribed] == [0.9, 0.6, 0.4]
    assert events["raw_speaker_ids"] == ["Guest-1", "Unknown", ""]

    assert [(s.text, s.reason) for s in events["transcribing"]] == [
        ("good", "RecognizingSpeech"),
        ("good morning", "RecognizingSpeech"),
        ("let", "RecognizingSpeech"),
        ("let us", "RecognizingSpeech"),
        ("thank", "RecognizingSpeech"),
    ]

    (started,) = events["session_started"]
    (stopped,) = events["session_stopped"]
    assert type(started) is SessionEvent
    assert started == stopped
    assert HEX_ID.fullmatch(started.session_id)
    # Speech starts at the first phrase and ends with the 3 s of audio.
    assert events["speech_start_detected"] == [SpeechDetected(2_000_000, started.session_id)]
    assert events["speech_end_detected"] == [SpeechDetected(30_000_000, started.session_id)]
    assert events["speech_end_detected"][0].offset_s == 3.0
    assert events["canceled"] == [Cancellation("EndOfStream", "NoError", "")]


# -- cancellation ------------------------------------------------------------


def test_refused_connection_result_becomes_cancellation(wav_path):
    with SpeechService(faults=Faults(refuse=True)) as service:
        cancellation = recognize_once(service.speech_config(), wav_path)
    assert type(cancellation) is Cancellation
    assert (cancellation.reason, cancellation.error_code) == ("Error", "ServiceUnavailable")
    assert re.fullmatch(
        r"WebSocket upgrade failed: Service unavailable \(503\)\. "
        r"Please try the request again\. SessionId: [0-9a-f]{32}",
        cancellation.details,
    )


def test_wrong_key_result_becomes_authentication_failure(wav_path):
    with SpeechService(require_key="right") as service:
        cancellation = recognize_once(service.speech_config(subscription="wrong"), wav_path)
    assert type(cancellation) is Cancellation
    assert (cancellation.reason, cancellation.error_code) == ("Error", "AuthenticationFailure")
    # Aliases under CancellationDetails' names, for detached results.
    assert cancellation.code == "AuthenticationFailure"
    assert cancellation.error_details is cancellation.details
    assert cancellation.details.startswith(
        "WebSocket upgrade failed: Authentication error (401). "
        "Please check subscription information and region name. SessionId: "
    )


def test_canceled_event_becomes_cancellation(wav_path):
    # (A continuous session on a refused service costs 5+ s to tear down; the
    # canceled event of a one-shot recognition arrives in about 1 s.)
    canceled: list[Any] = []
    recognized: list[Any] = []
    fired = threading.Event()
    with SpeechService(faults=Faults(refuse=True)) as service:
        recognizer = speechsdk.SpeechRecognizer(service.speech_config(), audio(wav_path))
        recognizer.canceled.connect(plain(canceled.append))
        recognizer.canceled.connect(lambda _evt: fired.set())
        recognizer.recognized.connect(plain(recognized.append))
        try:
            result = extract(recognizer.recognize_once_async().get())
            assert fired.wait(5), "no canceled event"
        finally:
            recognizer.canceled.disconnect_all()
            recognizer.recognized.disconnect_all()
        del recognizer
    assert recognized == []
    (cancellation,) = canceled
    assert cancellation == result
    assert type(cancellation) is Cancellation
    assert (cancellation.reason, cancellation.error_code) == ("Error", "ServiceUnavailable")
    assert cancellation.details.startswith("WebSocket upgrade failed: Service unavailable (503).")


def test_secret_in_cancellation_details_is_redacted(wav_path):
    # On a connection failure the SDK echoes the endpoint URL, query included,
    # into the error details: a key passed there would leak without redaction.
    listener = closed_port()
    try:
        port = listener.getsockname()[1]
        endpoint = (
            f"ws://127.0.0.1:{port}/speech/recognition/interactive/cognitiveservices/v1"
            "?subscription-key=KEY-IN-QUERY-1234&custom=OPAQUE-SECRET-5678"
        )
        config = speechsdk.SpeechConfig(endpoint=endpoint)
        # On a loaded machine the SDK sometimes gives up with "Timeout: no recognition
        # result received" before it reports the refused connection (seen once in CI):
        # the echo of the URL this test is about comes with the connection failure.
        for _attempt in range(3):
            recognizer = speechsdk.SpeechRecognizer(config, audio(wav_path))
            result = recognizer.recognize_once_async().get()
            raw = result.cancellation_details.error_details
            if "KEY-IN-QUERY-1234" in raw:
                break
        default = extract(result)
        with_secret = extract(result, secrets=["OPAQUE-SECRET-5678"])
        with_one_secret = extract(result, secrets="OPAQUE-SECRET-5678")
        del recognizer, result
    finally:
        listener.close()
    # The SDK really put both secrets into its details.
    assert "subscription-key=KEY-IN-QUERY-1234" in raw
    assert "custom=OPAQUE-SECRET-5678" in raw

    assert type(default) is Cancellation
    assert (default.reason, default.error_code) == ("Error", "ConnectionFailure")
    assert "KEY-IN-QUERY-1234" not in default.details
    assert f"subscription-key={REDACTED}" in default.details
    assert "custom=OPAQUE-SECRET-5678" in default.details
    # Secrets that do not look like one are masked when named.
    assert "OPAQUE-SECRET-5678" not in with_secret.details
    assert f"custom={REDACTED}" in with_secret.details
    assert with_secret.details == default.details.replace("OPAQUE-SECRET-5678", REDACTED)
    assert with_one_secret == with_secret  # a bare str is one secret, not its characters
    assert with_secret.details.startswith("Connection failed (no connection to the remote host).")


# -- synthesis ---------------------------------------------------------------


def test_synthesis_result_and_events_through_plain():
    with SpeechService() as service:
        result, events = synthesize(service.speech_config(), "hi there")
    assert type(result) is SynthesisResult
    assert type(result.audio) is bytes
    # 16 kHz mono 16-bit WAV: 0.05 s lead-in, then per word 0.1 s + 0.05 s/letter + 0.05 s pause.
    shape, pcm = pcm_frames(result.audio)
    assert shape == (1, 2, 16_000)
    assert len(pcm) == 2 * 16_000 * 7 // 10
    assert result.audio.endswith(pcm)
    assert result.duration_s == 0.7
    assert result.reason == "SynthesizingAudioCompleted"
    assert result.cancellation is None
    assert HEX_ID.fullmatch(result.result_id)

    assert events["synthesis_word_boundary"] == [
        WordBoundary("hi", 0, 2, 0.05, 0.2, "Word", result.result_id),
        WordBoundary("there", 3, 5, 0.3, 0.35, "Word", result.result_id),
    ]
    (started,) = events["synthesis_started"]
    assert started == SynthesisResult(b"", 0.0, "SynthesizingAudioStarted", result.result_id)
    chunks = events["synthesizing"]
    assert {c.reason for c in chunks} == {"SynthesizingAudio"}
    assert len(chunks) == 7
    # The SDK hands every chunk over as a WAV file of its own.
    assert b"".join(pcm_frames(c.audio)[1] for c in chunks) == pcm
    assert events["synthesis_completed"] == [result]
    assert events["synthesis_canceled"] == []


def test_canceled_synthesis_keeps_its_cancellation():
    with SpeechService(faults=Faults(refuse=True)) as service:
        result, events = synthesize(service.speech_config(), "hello")
    assert type(result) is SynthesisResult
    assert (result.audio, result.duration_s, result.reason) == (b"", 0.0, "Canceled")
    assert result.cancellation == Cancellation(
        "Error",
        "ServiceUnavailable",
        "WebSocket upgrade failed: Service unavailable (503). Please try the request again. "
        "USP state: Sending. Received audio size: 0 bytes.",
    )
    assert events["synthesis_canceled"] == [result]
    assert events["synthesis_completed"] == []


# -- translation ---------------------------------------------------------------


def test_translation_result_and_events(wav_path):
    script = [
        Phrase("hello world", offset_s=0.2, duration_s=0.8, translations={"de": "hallo welt"}),
        Phrase("good bye", offset_s=1.5, duration_s=0.6),
    ]
    with SpeechService(script=script) as service:
        config = service.translation_config("de", "fr")
        once = translate_once(config, wav_path)
        recognizer = speechsdk.translation.TranslationRecognizer(
            config, audio_config=audio(wav_path)
        )
        recognized: list[Any] = []
        stopped = threading.Event()
        recognizer.recognized.connect(plain(recognized.append))
        recognizer.session_stopped.connect(lambda _evt: stopped.set())
        try:
            recognizer.start_continuous_recognition_async().get()
            assert stopped.wait(10)
            recognizer.stop_continuous_recognition_async().get()
        finally:
            recognizer.recognized.disconnect_all()
            recognizer.session_stopped.disconnect_all()
        del recognizer

    assert type(once) is Segment
    assert (once.text, once.reason, once.offset, once.duration) == (
        "hello world",
        "TranslatedSpeech",
        2_000_000,
        8_000_000,
    )
    assert once.translations == {"de": "hallo welt", "fr": "[fr] hello world"}
    assert type(once.translations) is FrozenMap
    assert list(once.translations) == ["de", "fr"]
    assert [(s.text, dict(s.translations)) for s in recognized if s.text] == [
        ("hello world", {"de": "hallo welt", "fr": "[fr] hello world"}),
        ("good bye", {"de": "[de] good bye", "fr": "[fr] good bye"}),
    ]
    assert {s.reason for s in recognized if s.text} == {"TranslatedSpeech"}


# -- no SDK references, pickling, immutability ----------------------------------


def test_extracted_values_reference_no_sdk_object(wav_path):
    with SpeechService(script=[Phrase("hello world", speaker="Guest-1")]) as service:
        recognizer = speechsdk.transcription.ConversationTranscriber(
            service.speech_config(), audio(wav_path)
        )
        transcribed: list[tuple[Segment, list[object]]] = []
        stopped = threading.Event()

        def on_transcribed(evt: Any) -> None:
            segment = extract(evt)
            # Positive control, while the SDK event is alive: the walk finds it.
            transcribed.append((segment, sdk_objects([{"event": evt}, segment])))

        recognizer.transcribed.connect(on_transcribed)
        recognizer.session_stopped.connect(lambda _evt: stopped.set())
        try:
            recognizer.start_transcribing_async().get()
            assert stopped.wait(10)
            recognizer.stop_transcribing_async().get()
        finally:
            recognizer.transcribed.disconnect_all()
            recognizer.session_stopped.disconnect_all()
        del recognizer
        synthesis, events = synthesize(service.speech_config(), "hi there")

    ((segment, control),) = transcribed
    assert any(type(obj).__name__ == "ConversationTranscriptionEventArgs" for obj in control)
    assert segment.speaker_id == "Guest-1"
    values = [segment, synthesis, *(v for vs in events.values() for v in vs)]
    assert len(values) > 5
    for value in values:
        assert sdk_objects(value) == [], value
    # The walk really entered the data: the JSON string inside properties was reached.
    json_value = segment.properties["SpeechServiceResponse_JsonResult"]
    assert any(obj is json_value for obj in reachable(segment))


def test_pickle_round_trip_and_immutability(wav_path):
    with SpeechService(script=[Phrase("hello world", speaker="Guest-1")]) as service:
        events = run_transcriber(service.speech_config(), wav_path)
        synthesis, synthesis_events = synthesize(service.speech_config(), "hi there")
        translated = translate_once(service.translation_config("de"), wav_path)
    with SpeechService(require_key="right") as service:
        canceled = recognize_once(service.speech_config(subscription="wrong"), wav_path)
    values = [
        *(v for name in TRANSCRIBER_SIGNALS for v in events[name]),
        *(v for vs in synthesis_events.values() for v in vs),
        synthesis,
        translated,
        canceled,
    ]
    kinds = {type(v) for v in values}
    assert kinds == {
        Segment,
        Cancellation,
        SynthesisResult,
        WordBoundary,
        SessionEvent,
        SpeechDetected,
    }
    for value in values:
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            copy = pickle.loads(pickle.dumps(value, protocol=protocol))
            assert copy == value
            assert type(copy) is type(value)
        assert hash(value) == hash(pickle.loads(pickle.dumps(value)))
        assert not hasattr(value, "__dict__")  # slotted
        first = dataclasses.fields(value)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, first, None)
    copy = pickle.loads(pickle.dumps(translated))
    assert copy.translations == {"de": "[de] hello world"}
    assert copy.offset_s == 0.1
    assert type(copy.properties) is FrozenMap


def test_frozen_map_is_an_immutable_picklable_mapping():
    mapping = FrozenMap({"de": "hallo", "fr": "salut"})
    assert mapping == {"de": "hallo", "fr": "salut"}
    assert mapping == FrozenMap([("fr", "salut"), ("de", "hallo")])
    assert mapping != {"de": "hallo"}
    assert list(mapping.items()) == [("de", "hallo"), ("fr", "salut")]
    assert (len(mapping), mapping["de"], mapping.get("it"), "fr" in mapping) == (
        2,
        "hallo",
        None,
        True,
    )
    assert hash(mapping) == hash(FrozenMap({"fr": "salut", "de": "hallo"}))
    assert repr(mapping) == "FrozenMap({'de': 'hallo', 'fr': 'salut'})"
    assert pickle.loads(pickle.dumps(mapping)) == mapping
    with pytest.raises(TypeError):
        mapping["it"] = "ciao"  # type: ignore[index]
    with pytest.raises(AttributeError):
        mapping._data = {}
    with pytest.raises(AttributeError):
        mapping.__dict__  # noqa: B018
    with pytest.raises(KeyError, match="it"):
        mapping["it"]
    with pytest.raises(KeyError):
        mapping[3]
    with pytest.raises(TypeError, match="FrozenMap maps str to str, got str -> int"):
        FrozenMap({"a": 1})  # type: ignore[arg-type]


def test_segment_derives_seconds_from_ticks():
    segment = Segment("hi", "Guest-1", 12_345_678, 5_000_000, "RecognizedSpeech", "id")
    assert (segment.offset_s, segment.duration_s, segment.end_s) == (1.2345678, 0.5, 1.7345678)
    assert segment.properties == {}
    assert segment.translations == {}
    assert segment == pickle.loads(pickle.dumps(segment))


# -- plain() and errors ---------------------------------------------------------


def test_plain_keeps_name_and_doc_and_propagates_exceptions(wav_path):
    received: list[Any] = []

    def on_result(value: Segment) -> str:
        """Keep the plain value."""
        received.append(value)
        return "kept"

    def boom(value: Segment) -> None:
        raise ValueError(f"callback failed on {value.text}")

    wrapped = plain(on_result)
    assert wrapped.__name__ == "on_result"
    assert wrapped.__doc__ == "Keep the plain value."
    assert wrapped.__wrapped__ is on_result  # type: ignore[attr-defined]

    with SpeechService(script=[Phrase("hello world")]) as service:
        recognizer = speechsdk.SpeechRecognizer(service.speech_config(), audio(wav_path))
        result = recognizer.recognize_once_async().get()
        try:
            assert wrapped(result) == "kept"
            with pytest.raises(ValueError, match="callback failed on hello world"):
                plain(boom)(result)
        finally:
            del recognizer, result
    (segment,) = received
    assert type(segment) is Segment
    assert segment.text == "hello world"
    with pytest.raises(TypeError, match=r"got builtins\.str$"):
        wrapped("not an event")
    assert len(received) == 1


def test_extract_returns_extracted_values_unchanged():
    segment = Segment("hi", None, 0, 1, "RecognizedSpeech", "id")
    cancellation = Cancellation("Error", "ConnectionFailure", "boom")
    assert extract(segment) is segment
    assert extract(cancellation) is cancellation


@pytest.mark.parametrize(
    ("junk", "type_name"),
    [
        (None, "builtins.NoneType"),
        ("hello", "builtins.str"),
        (42, "builtins.int"),
        ({"text": "hello"}, "builtins.dict"),
        (object(), "builtins.object"),
        (
            speechsdk.ResultReason.RecognizedSpeech,
            "azure.cognitiveservices.speech.ResultReason",
        ),
    ],
)
def test_extract_rejects_unknown_objects(junk, type_name):
    with pytest.raises(TypeError) as raised:
        extract(junk)
    message = str(raised.value)
    assert message.endswith(f"; got {type_name}")
    assert message.startswith("extract() takes a Speech SDK result (recognition, transcription")


def test_extract_rejects_sdk_objects_that_are_not_results():
    config = speechsdk.SpeechConfig(host="ws://127.0.0.1:9", subscription="unused")
    with pytest.raises(TypeError, match=r"; got azure\.cognitiveservices\.speech\.SpeechConfig$"):
        extract(config)


# -- the SDK's names and enum members (issue 10) ------------------------------------


def test_synthesis_result_reads_like_the_sdks_own():
    """Code moved from the SDK's result to the plain one keeps working, field by field."""
    with SpeechService() as service:
        synthesizer = speechsdk.SpeechSynthesizer(service.speech_config(), audio_config=None)
        raw = synthesizer.speak_text_async("hi there").get()
        res = extract(raw)
        try:
            assert res.audio_data == raw.audio_data == res.audio
            assert res.audio_duration == raw.audio_duration
            assert res.audio_duration.total_seconds() == res.duration_s == 0.7
            assert res.reason == raw.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
            assert speechsdk.ResultReason.SynthesizingAudioCompleted == res.reason
            assert res.reason != speechsdk.ResultReason.Canceled
            assert res.cancellation_details is None
        finally:
            del raw, synthesizer
    assert res.reason == "SynthesizingAudioCompleted"  # still the plain name
    assert repr(res.reason) == "'SynthesizingAudioCompleted'"
    assert {res.reason} == {"SynthesizingAudioCompleted"}
    assert hash(res.reason) == hash(speechsdk.ResultReason.SynthesizingAudioCompleted)
    copy = pickle.loads(pickle.dumps(res))
    assert copy == res
    assert copy.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    # No SDK object is referenced: the reason is ours, not the SDK's enum.
    assert not any(_is_sdk(ref) for ref in gc.get_referents(res.reason))
    assert type(res.reason).__module__ == "nativeguard.integrations.azure_speech._extract"


def test_cancellation_codes_compare_equal_to_the_sdk_members_of_their_own_enum():
    with SpeechService(faults=Faults(refuse=True)) as service:
        synthesizer = speechsdk.SpeechSynthesizer(service.speech_config(), audio_config=None)
        res = extract(synthesizer.speak_text_async("hello").get())
        del synthesizer
    assert res.reason == speechsdk.ResultReason.Canceled
    details = res.cancellation_details
    assert details is not None
    assert details.reason == speechsdk.CancellationReason.Error
    assert details.error_code == speechsdk.CancellationErrorCode.ServiceUnavailable
    # Same member name, another enum: not equal.
    assert details.reason != speechsdk.ResultReason.Canceled
    assert speechsdk.CancellationReason.Error != res.reason


@pytest.mark.parametrize("callback", [None, 42, "print"])
def test_plain_refuses_a_non_callable_at_wrap_time(callback):
    with pytest.raises(TypeError, match=r"plain\(\) argument 'callback' must be callable"):
        plain(callback)  # type: ignore[arg-type]


@pytest.mark.parametrize("secrets", [42, [b"key"], [None]])
def test_plain_and_extract_name_bad_secrets(secrets):
    with pytest.raises(TypeError, match="argument 'secrets'"):
        plain(print, secrets=secrets)  # type: ignore[arg-type]
