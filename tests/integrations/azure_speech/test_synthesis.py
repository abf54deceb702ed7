"""Text to speech through SpeechService with the real SDK."""

from __future__ import annotations

import threading

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard.testing import SpeechService
from nativeguard.testing._audio import parse_wav_header


def synthesize(service: SpeechService, text: str, *, ssml: bool = False, fmt=None):
    config = service.speech_config()
    if fmt is not None:
        config.set_speech_synthesis_output_format(fmt)
    synthesizer = speechsdk.SpeechSynthesizer(config, audio_config=None)
    words: list[tuple[str, int, int]] = []
    synthesizer.synthesis_word_boundary.connect(
        lambda evt: words.append((evt.text, evt.text_offset, evt.audio_offset))
    )
    finished = threading.Event()
    synthesizer.synthesis_completed.connect(lambda evt: finished.set())
    synthesizer.synthesis_canceled.connect(lambda evt: finished.set())
    call = synthesizer.speak_ssml_async if ssml else synthesizer.speak_text_async
    result = call(text).get()
    # Events arrive on the SDK's thread and may trail .get(): wait for the last one.
    assert finished.wait(5)
    for signal in (
        synthesizer.synthesis_word_boundary,
        synthesizer.synthesis_completed,
        synthesizer.synthesis_canceled,
    ):
        signal.disconnect_all()
    outcome = (result.reason, bytes(result.audio_data), result.audio_duration, words)
    if result.reason == speechsdk.ResultReason.Canceled:
        details = result.cancellation_details
        outcome = (result.reason, details.error_code, details.error_details, words)
    del synthesizer, result
    return outcome


def test_speak_text_returns_pcm_audio_with_word_boundaries(speech_service):
    reason, audio, duration, words = synthesize(speech_service, "hello big world")
    assert reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    # The SDK asks for raw 16 kHz 16-bit mono and wraps it in a WAV header itself.
    header = parse_wav_header(audio)
    assert header is not None
    fmt, data_offset = header
    assert (fmt.sample_rate, fmt.bits_per_sample, fmt.channels) == (16_000, 16, 1)
    assert len(audio) - data_offset == pytest.approx(duration.total_seconds() * 32_000, abs=2)
    assert 0.8 < duration.total_seconds() < 2.0
    assert [(w, offset) for w, offset, _ in words] == [("hello", 0), ("big", 6), ("world", 10)]
    audio_offsets = [a for _, _, a in words]
    assert audio_offsets == sorted(audio_offsets)
    assert audio_offsets[0] > 0
    (log,) = speech_service.connections
    assert log.kind == "synthesis"
    assert log.path == "/cognitiveservices/websocket/v1"
    assert "hello big world" in log.ssml[0]


def test_longer_text_gives_longer_audio(speech_service):
    _, short, _, _ = synthesize(speech_service, "hi")
    _, long, _, _ = synthesize(speech_service, "a considerably longer sentence to speak aloud")
    assert len(long) > 4 * len(short)
    assert any(sample != 0 for sample in long[:4000])  # real sound, not silence only


def test_speak_ssml(speech_service):
    ssml = (
        "<speak version='1.0' xml:lang='en-US'><voice name='en-US-AvaNeural'>"
        "ssml <break time='100ms'/> works</voice></speak>"
    )
    reason, audio, _, words = synthesize(speech_service, ssml, ssml=True)
    assert reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    assert [w for w, _, _ in words] == ["ssml", "works"]
    assert len(audio) > 0


def test_riff_output_format_has_a_wav_header(speech_service):
    fmt = speechsdk.SpeechSynthesisOutputFormat.Riff24Khz16BitMonoPcm
    reason, audio, duration, _ = synthesize(speech_service, "format test", fmt=fmt)
    assert reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    header = parse_wav_header(audio)
    assert header is not None
    fmt, data_offset = header
    assert fmt.sample_rate == 24_000
    assert len(audio) - data_offset == pytest.approx(duration.total_seconds() * 48_000, abs=4)
    assert speech_service.connections[0].contexts[0]["synthesis"]["audio"]["outputFormat"] == (
        "raw-24khz-16bit-mono-pcm"  # the SDK asks for raw PCM and adds the header itself
    )


def test_compressed_format_is_refused_clearly(speech_service):
    fmt = speechsdk.SpeechSynthesisOutputFormat.Audio16Khz32KBitRateMonoMp3
    reason, code, _, _ = synthesize(speech_service, "mp3 please", fmt=fmt)
    assert reason == speechsdk.ResultReason.Canceled
    assert code != speechsdk.CancellationErrorCode.NoError
    assert speech_service.connections[0].errors == (
        "unsupported output format 'audio-16khz-32kbitrate-mono-mp3'",
    )
