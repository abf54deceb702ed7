"""Every fault mode ends in the SDK's own cancellation or no-match, in bounded time."""

from __future__ import annotations

import time

import azure.cognitiveservices.speech as speechsdk
import pytest
from sdk_helpers import run_continuous

from nativeguard import RequestTimeout, transcribe
from nativeguard.testing import Faults, Phrase, SpeechService

Code = speechsdk.CancellationErrorCode
TIMEOUT_S = 1.0


def recognize_once(service: SpeechService, wav: str):
    recognizer = speechsdk.SpeechRecognizer(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
    )
    start = time.monotonic()
    result = recognizer.recognize_once_async().get()
    elapsed = time.monotonic() - start
    outcome = (result.reason, None, None)
    if result.reason == speechsdk.ResultReason.Canceled:
        details = result.cancellation_details
        outcome = (result.reason, details.code, details.error_details)
    elif result.reason == speechsdk.ResultReason.NoMatch:
        outcome = (result.reason, result.no_match_details.reason, None)
    del recognizer, result
    return outcome, elapsed


def synthesize(service: SpeechService):
    synthesizer = speechsdk.SpeechSynthesizer(service.speech_config(), audio_config=None)
    start = time.monotonic()
    result = synthesizer.speak_text_async("fault injection").get()
    elapsed = time.monotonic() - start
    code = (
        result.cancellation_details.error_code
        if result.reason == speechsdk.ResultReason.Canceled
        else None
    )
    outcome = (result.reason, code)
    del synthesizer, result
    return outcome, elapsed


# (faults, expected error code, service response timeout, bound on seconds).
# The SDK retries a failed connection about five times within ~3 s, so faults
# that fail fast keep the default 5 s response timeout; a silent service is
# given up on after about twice the timeout (one-shot wait, then stop wait).
CANCELING = [
    pytest.param(Faults(refuse=True), Code.ServiceUnavailable, 5, 5, id="refuse-503"),
    # Measured: the SDK reports a 403 as an authentication failure, like a 401.
    pytest.param(
        Faults(refuse=True, refuse_status=403), Code.AuthenticationFailure, 5, 5, id="refuse-403"
    ),
    pytest.param(
        Faults(refuse=True, refuse_status=429), Code.TooManyRequests, 5, 5, id="refuse-429"
    ),
    pytest.param(Faults(close_after=0), Code.ConnectionFailure, 5, 5, id="drop-at-once"),
    pytest.param(Faults(close_after=2), Code.ConnectionFailure, 5, 5, id="drop-mid-stream"),
    pytest.param(Faults(status="Error"), Code.ServiceError, 5, 5, id="status-error"),
    pytest.param(Faults(stall=True), Code.ServiceTimeout, TIMEOUT_S, 2 * TIMEOUT_S + 3, id="stall"),
    pytest.param(
        Faults(malformed=True), Code.ServiceTimeout, TIMEOUT_S, 2 * TIMEOUT_S + 3, id="malformed"
    ),
]


@pytest.mark.parametrize(("faults", "code", "timeout_s", "bound_s"), CANCELING)
def test_recognize_once_fault_is_canceled(wav_path, faults, code, timeout_s, bound_s):
    with SpeechService(faults=faults, response_timeout_s=timeout_s) as service:
        (reason, got_code, details), elapsed = recognize_once(service, wav_path)
        logs = service.connections
    assert reason == speechsdk.ResultReason.Canceled
    assert got_code == code, details
    assert elapsed < bound_s
    assert all(log.faults == faults for log in logs)


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        pytest.param(Faults(refuse=True), Code.ServiceUnavailable, id="refuse"),
        pytest.param(Faults(close_after=3), Code.ConnectionFailure, id="drop-mid-stream"),
        pytest.param(Faults(status="Error"), Code.ServiceError, id="status-error"),
    ],
)
def test_transcriber_fault_is_canceled(wav_path, faults, code):
    # Stopping a canceled session waits for the stop timeout: keep it short.
    with SpeechService(faults=faults, response_timeout_s=TIMEOUT_S) as service:
        transcriber = speechsdk.transcription.ConversationTranscriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
        )
        session = run_continuous(transcriber, timeout_s=15)
        del transcriber
    assert [(c[0], c[1]) for c in session.canceled] == [(speechsdk.CancellationReason.Error, code)]
    assert session.elapsed_s < 10


def test_stalled_transcription_times_out_on_stop(wav_path):
    # A continuous session whose service never answers does not end by itself;
    # stopping it gives up after the configured timeout with ServiceTimeout.
    with SpeechService(faults=Faults(stall=True), response_timeout_s=TIMEOUT_S) as service:
        transcriber = speechsdk.transcription.ConversationTranscriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
        )
        canceled = []
        transcriber.canceled.connect(lambda evt: canceled.append(evt.cancellation_details.code))
        transcriber.start_transcribing_async().get()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            logs = service.connections
            if logs and logs[-1].audio_bytes >= 3 * 32_000:
                break
            time.sleep(0.05)
        start = time.monotonic()
        transcriber.stop_transcribing_async().get()
        elapsed = time.monotonic() - start
        transcriber.canceled.disconnect_all()
        del transcriber
    assert canceled == [Code.ServiceTimeout]
    assert elapsed < TIMEOUT_S + 3


@pytest.mark.parametrize(
    "faults", [Faults(stall=True), Faults(malformed=True)], ids=["stall", "malformed"]
)
def test_transcribe_of_a_silent_service_raises_request_timeout(wav_path, faults):
    # What the README's fault table says for a continuous session: it never ends
    # by itself, so transcribe() gives up with RequestTimeout (after releasing).
    with SpeechService(faults=faults, response_timeout_s=TIMEOUT_S) as service:
        start = time.monotonic()
        with pytest.raises(RequestTimeout, match=r"did not end within 2 s"):
            transcribe(service.speech_config(), wav_path, timeout=2)
        assert time.monotonic() - start < 2 + TIMEOUT_S + 3


@pytest.mark.parametrize(
    ("status", "no_match_reason"),
    [
        ("NoMatch", speechsdk.NoMatchReason.NotRecognized),
        ("InitialSilenceTimeout", speechsdk.NoMatchReason.InitialSilenceTimeout),
    ],
)
def test_no_match_statuses(wav_path, status, no_match_reason):
    with SpeechService(faults=Faults(status=status)) as service:
        (reason, got, _), elapsed = recognize_once(service, wav_path)
    assert (reason, got) == (speechsdk.ResultReason.NoMatch, no_match_reason)
    assert elapsed < 5


def test_status_from_the_script(wav_path):
    with SpeechService(script=[Phrase("ignored", status="InitialSilenceTimeout")]) as service:
        (reason, got, _), _ = recognize_once(service, wav_path)
    assert (reason, got) == (
        speechsdk.ResultReason.NoMatch,
        speechsdk.NoMatchReason.InitialSilenceTimeout,
    )


def test_delay_slows_every_answer_but_still_succeeds(wav_path):
    with SpeechService(script=["slow"], faults=Faults(delay_ms=150)) as service:
        (reason, _, _), elapsed = recognize_once(service, wav_path)
        (log,) = service.connections
    assert reason == speechsdk.ResultReason.RecognizedSpeech
    # turn.start, startDetected, phrase, endDetected, turn.end: 5 delayed answers.
    assert log.messages_sent == 5
    assert elapsed >= 5 * 0.15


def test_faults_per_connection_index(wav_path):
    # Only the first connection is dropped; the SDK's own retry then succeeds.
    with SpeechService(script=["second try"], faults={0: Faults(close_after=0)}) as service:
        (reason, _, _), _ = recognize_once(service, wav_path)
        logs = service.connections
    assert reason == speechsdk.ResultReason.RecognizedSpeech
    assert [log.faults.close_after for log in logs] == [0, None]


def test_faults_chosen_by_path(wav_path):
    def plan(index: int, path: str) -> Faults | None:
        return Faults(refuse=True) if path.startswith("/cognitiveservices/") else None

    with SpeechService(script=["fine"], faults=plan) as service:
        (reason, _, _), _ = recognize_once(service, wav_path)
        (synthesis, code), elapsed = synthesize(service)
    assert reason == speechsdk.ResultReason.RecognizedSpeech
    assert (synthesis, code) == (speechsdk.ResultReason.Canceled, Code.ServiceUnavailable)
    assert elapsed < 5


def test_faults_can_change_while_running(wav_path):
    with SpeechService(script=["ok"]) as service:
        (first, _, _), _ = recognize_once(service, wav_path)
        service.faults = Faults(refuse=True)
        (second, code, _), _ = recognize_once(service, wav_path)
    assert first == speechsdk.ResultReason.RecognizedSpeech
    assert (second, code) == (speechsdk.ResultReason.Canceled, Code.ServiceUnavailable)


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        pytest.param(Faults(close_after=1), Code.ConnectionFailure, id="drop"),
        pytest.param(Faults(stall=True), Code.ServiceTimeout, id="stall"),
    ],
)
def test_synthesis_faults(faults, code):
    with SpeechService(faults=faults, response_timeout_s=TIMEOUT_S) as service:
        (reason, got), elapsed = synthesize(service)
    assert (reason, got) == (speechsdk.ResultReason.Canceled, code)
    assert elapsed < 4 * TIMEOUT_S + 3


def test_bad_fault_plans_fail_early():
    with pytest.raises(TypeError, match="fault mapping"):
        SpeechService(faults={"0": Faults()})
    with pytest.raises(TypeError, match="faults must be"):
        SpeechService(faults="stall")
    with pytest.raises(ValueError, match="close_after"):
        Faults(close_after=-1)
    with pytest.raises(ValueError, match="status"):
        Faults(status="Sucess")
