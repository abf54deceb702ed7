"""Framing, scripts and audio helpers, without the SDK."""

from __future__ import annotations

import json
import wave

import pytest

from nativeguard import ProtocolError
from nativeguard._core._redact import REDACTED, redact_headers, redact_text
from nativeguard.testing import TICKS_PER_SECOND, Phrase, Script, write_wav
from nativeguard.testing._audio import (
    AudioFormat,
    parse_output_format,
    parse_wav_header,
    synthesize_words,
)
from nativeguard.testing._recognition import RecognitionRequest, apply_profanity, phrase_body
from nativeguard.testing._ssml import SsmlError, parse_ssml
from nativeguard.testing._usp import binary_frame, parse_binary, parse_text, text_frame


def test_text_frame_round_trip():
    frame = text_frame("speech.phrase", "abc", {"DisplayText": "hi", "Offset": 5})
    message = parse_text(frame)
    assert message.path == "speech.phrase"
    assert message.request_id == "abc"
    assert message.header("content-type") == "application/json; charset=utf-8"
    assert message.json() == {"DisplayText": "hi", "Offset": 5}
    assert not message.binary


def test_binary_frame_round_trip():
    frame = binary_frame("audio", "r1", b"\x00\x01\x02", {"X-StreamId": "1"})
    assert int.from_bytes(frame[:2], "big") == len(frame) - 2 - 3
    message = parse_binary(frame)
    assert (message.path, message.request_id, message.body) == ("audio", "r1", b"\x00\x01\x02")
    assert message.header("x-streamid") == "1"


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("no separator", "no blank line"),
        ("X-RequestId:1\r\n\r\n{}", "no Path header"),
        ("Path speech.config\r\n\r\n{}", "malformed header line"),
        (b"\x00", "no header length"),
        (b"\x10\x00abc", "exceeds the frame"),
    ],
)
def test_malformed_frames_raise_protocol_error(frame, error):
    parse = parse_binary if isinstance(frame, bytes) else parse_text
    with pytest.raises(ProtocolError, match=error):
        parse(frame)


def test_non_json_body_raises_protocol_error():
    with pytest.raises(ProtocolError, match="not JSON"):
        parse_text("Path:speech.config\r\n\r\n{nope").json()
    assert issubclass(ProtocolError, ValueError)


def test_phrase_layout_defaults():
    (turn,) = Script(["one two three", Phrase("four", duration_s=1.0)]).turns
    first, second = turn
    assert first.offset == int(0.1 * TICKS_PER_SECOND)
    assert first.duration == int(0.9 * TICKS_PER_SECOND)  # 3 words x 0.3 s
    assert first.hypotheses == ("one", "one two")
    assert second.offset == first.end + int(0.2 * TICKS_PER_SECOND)
    assert second.duration == TICKS_PER_SECOND


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"text": 5}, TypeError),
        ({"text": "x", "offset_s": -1}, ValueError),
        ({"text": "x", "duration_s": 0}, ValueError),
        ({"text": "x", "status": "Fine"}, ValueError),
        ({"text": "x", "hypotheses": "x"}, TypeError),
        ({"text": "x", "translations": {"de": 1}}, TypeError),
    ],
)
def test_phrase_validation(kwargs, error):
    with pytest.raises(error):
        Phrase(**kwargs)


def test_script_validation():
    with pytest.raises(TypeError, match="sequence of phrases"):
        Script.cycle("just a string")
    with pytest.raises(TypeError, match="Phrase or str"):
        Script([1, 2])
    with pytest.raises(ValueError, match="at least one turn"):
        Script.cycle()


def test_write_wav(tmp_path):
    path = write_wav(tmp_path / "a.wav", 1.5, sample_rate=8000)
    with wave.open(path) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        assert wav.getnframes() == 12_000
    with open(path, "rb") as f:
        header = parse_wav_header(f.read())
    assert header is not None
    assert header[0] == AudioFormat(sample_rate=8000)
    assert header[1] == 44
    with pytest.raises(ValueError, match="seconds"):
        write_wav(tmp_path / "b.wav", 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("raw-16khz-16bit-mono-pcm", AudioFormat(16000, 16)),
        ("riff-44100hz-16bit-mono-pcm", AudioFormat(44100, 16, riff=True)),
        ("raw-8khz-8bit-mono-mulaw", AudioFormat(8000, 8, encoding="mulaw")),
        ("riff-8khz-8bit-mono-alaw", AudioFormat(8000, 8, encoding="alaw", riff=True)),
        ("audio-16khz-32kbitrate-mono-mp3", None),
        ("ogg-24khz-16bit-mono-opus", None),
    ],
)
def test_parse_output_format(name, expected):
    assert parse_output_format(name) == expected


@pytest.mark.parametrize("name", ["riff-24khz-16bit-mono-pcm", "riff-8khz-8bit-mono-mulaw"])
def test_synthesized_riff_audio_is_a_valid_wav(name):
    fmt = parse_output_format(name)
    assert fmt is not None
    speech = synthesize_words("one two", fmt)
    header = parse_wav_header(speech.audio)
    assert header is not None
    parsed, offset = header
    assert offset == speech.header_bytes == 44
    assert parsed.sample_rate == fmt.sample_rate
    assert len(speech.audio) - offset == round(speech.duration_s * fmt.bytes_per_second)
    assert [w.text for w in speech.words] == ["one", "two"]
    assert len(set(speech.audio[offset:])) > 10  # a tone, not constant silence


def test_redaction():
    headers = redact_headers([("Ocp-Apim-Subscription-Key", "k1"), ("User-Agent", "sdk")])
    assert headers == {"ocp-apim-subscription-key": REDACTED, "user-agent": "sdk"}
    text = 'Authorization: Bearer abc.def subscription_key="k1" ok'
    cleaned = redact_text(text, secrets=["k1"])
    assert "abc.def" not in cleaned
    assert "k1" not in cleaned
    assert cleaned.endswith("ok")
    assert json.dumps(cleaned)


# -- recognition requests and answers (issue 16) -----------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"phraseDetection": 5, "phraseOutput": "x", "languageId": [], "translation": None},
        {"phraseOutput": {"detailed": {"options": "WordTimings"}}},
        {"languageId": {"languages": "en-US", "mode": 3}},
        {"phraseDetection": {"enrichment": {"profanity": "loud", "pronunciationAssessment": 1}}},
    ],
)
def test_hostile_speech_context_bodies_give_defaults(body):
    request = RecognitionRequest.from_body(body, "conversation", {})
    assert request == RecognitionRequest(single_phrase=False)


def test_query_string_alone_asks_for_the_detailed_format():
    query = {
        "format": "detailed",
        "wordLevelTimestamps": "true",
        "profanity": "raw",
        "lidEnabled": "en-US,de-DE",
    }
    request = RecognitionRequest.from_body({}, "interactive", query)
    assert request.detailed
    assert request.word_timings
    assert request.profanity == "raw"
    assert request.languages == ("en-US", "de-DE")
    assert request.single_phrase


def test_profanity_modes():
    assert apply_profanity("Oh damn, DAMN it.", "masked") == "Oh ****, **** it."
    assert apply_profanity("Oh damn, DAMN it.", "removed") == "Oh, it."
    assert apply_profanity("Oh damn, DAMN it.", "raw") == "Oh damn, DAMN it."
    assert apply_profanity("hello shell", "masked") == "hello shell"  # words, not substrings


def test_detailed_body_without_words_unless_asked():
    timed = Script([Phrase("Hi there.", confidence=0.5)]).turns[0][0]
    request = RecognitionRequest(single_phrase=True, detailed=True)
    body = phrase_body(timed, "Success", request, {}, None)
    (best,) = body["NBest"]
    assert set(best) == {"Confidence", "Lexical", "ITN", "MaskedITN", "Display"}
    assert best["Confidence"] == 0.5
    failed = phrase_body(timed, "NoMatch", request, {}, None)
    assert "NBest" not in failed
    assert failed["RecognitionStatus"] == "NoMatch"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"confidence": 1.5}, ValueError),
        ({"confidence": True}, ValueError),
        ({"lexical": 3}, TypeError),
        ({"language": ["en-US"]}, TypeError),
        ({"alternatives": "one"}, TypeError),
        ({"pronunciation": {"word": 101}}, TypeError),
        ({"pronunciation": {"word": float("nan")}}, TypeError),
        ({"pronunciation": [("word", 1.0)]}, TypeError),
    ],
)
def test_phrase_rejects_bad_fidelity_fields(kwargs, error):
    with pytest.raises(error, match="Phrase"):
        Phrase("text", **kwargs)


def test_ssml_text_and_bookmarks():
    document = parse_ssml(
        "<speak version='1.0' xml:lang='en-US' xmlns='http://www.w3.org/2001/10/synthesis'>"
        "<voice name='v'>one <bookmark mark='m'/>two <sub alias='three'>3</sub>"
        "<break time='1s'/>four</voice></speak>"
    )
    assert document.text.split() == ["one", "two", "three", "four"]
    ((position, mark),) = document.bookmarks
    assert mark == "m"
    assert document.text[position:].split()[0] == "two"
    assert document.language == "en-US"


@pytest.mark.parametrize(
    "ssml",
    [
        "",
        "plain text",
        "<speak version='1.0' xml:lang='en-US'><bookmark/></speak>",
        "<speak version='1.0' xml:lang='en-US'><sub>x</sub></speak>",
        "<speak xml:lang='en-US'>x</speak>",
        "<speak version='1.0' xml:lang='en-US'><x:y xmlns:x='urn:other'/></speak>",
        "<speak version='1.0' xml:lang='en-US'>" + "<p>" * 10 + "x" + "</p>" * 10 + "</spk>",
    ],
)
def test_invalid_ssml_reasons_fit_a_close_frame(ssml):
    with pytest.raises(SsmlError) as caught:
        parse_ssml(ssml)
    assert 0 < len(str(caught.value).encode()) <= 123
