"""Keys and tokens: accepted when right, refused like Azure refuses them."""

from __future__ import annotations

import time

import azure.cognitiveservices.speech as speechsdk
import pytest
from azure.identity import ManagedIdentityCredential

from nativeguard import managed_recognizer
from nativeguard.testing import SpeechService, TokenService

KEY = "3f2b8c1e9d7a4b6c8e0f1a2b3c4d5e6f"
SCOPE = "https://cognitiveservices.azure.com/.default"


def outcome(config, wav):
    recognizer = speechsdk.SpeechRecognizer(config, speechsdk.audio.AudioConfig(filename=wav))
    result = recognizer.recognize_once_async().get()
    code = (
        result.cancellation_details.code
        if result.reason == speechsdk.ResultReason.Canceled
        else None
    )
    reason = result.reason
    del recognizer, result
    return reason, code


def test_right_key_passes_wrong_and_missing_keys_are_refused(wav_path):
    with SpeechService(require_key=KEY) as service:
        assert outcome(service.speech_config(), wav_path) == (
            speechsdk.ResultReason.RecognizedSpeech,
            None,
        )
        assert outcome(service.speech_config(subscription="wrong"), wav_path) == (
            speechsdk.ResultReason.Canceled,
            speechsdk.CancellationErrorCode.AuthenticationFailure,
        )
        missing = speechsdk.SpeechConfig(host=service.url)
        assert (
            outcome(missing, wav_path)[1] == speechsdk.CancellationErrorCode.AuthenticationFailure
        )
        refused = [log.refused for log in service.connections]
    assert refused[0] is None
    assert set(refused[1:]) == {401}


def test_synthesis_with_wrong_key_is_refused():
    with SpeechService(require_key=KEY) as service:
        synthesizer = speechsdk.SpeechSynthesizer(
            service.speech_config(subscription="nope"), audio_config=None
        )
        result = synthesizer.speak_text_async("x").get()
        assert result.reason == speechsdk.ResultReason.Canceled
        assert (
            result.cancellation_details.error_code
            == speechsdk.CancellationErrorCode.AuthenticationFailure
        )
        del synthesizer, result


def test_managed_identity_token_from_token_service_is_accepted(wav_path):
    with TokenService() as tokens, tokens.patch_environ():
        credential = ManagedIdentityCredential()
        try:
            token = credential.get_token(SCOPE)
            assert tokens.is_valid(token.token)
            with SpeechService(require_token=tokens.is_valid) as service:
                assert outcome(service.speech_config(auth_token=token.token), wav_path) == (
                    speechsdk.ResultReason.RecognizedSpeech,
                    None,
                )
                assert outcome(service.speech_config(auth_token="forged"), wav_path)[1] == (
                    speechsdk.CancellationErrorCode.AuthenticationFailure
                )
                # The SDK itself asks the credential for tokens (token_credential).
                config = speechsdk.SpeechConfig(
                    endpoint=service.url + "/speech/recognition/interactive/cognitiveservices/v1",
                    token_credential=credential,
                )
                service.apply_timeouts(config)
                # Measured with SDK 1.53: a recognizer built from a token_credential
                # config sits in a cycle with its own token-refresh callback, so
                # `del` does not free it; the managed block does, without gc.
                with managed_recognizer(
                    config, speechsdk.audio.AudioConfig(filename=wav_path)
                ) as recognizer:
                    reason = recognizer.recognize_once_async().get().reason
                assert reason == speechsdk.ResultReason.RecognizedSpeech
                assert all(
                    log.headers["authorization"] == "<redacted>" for log in service.connections
                )
            tokens.revoke_all()
            assert not tokens.is_valid(token.token)
        finally:
            credential.close()
    (request, *_) = tokens.requests
    assert request.resource == "https://cognitiveservices.azure.com"
    assert request.api_version == "2019-08-01"
    assert request.authorized


def test_token_service_refuses_a_wrong_identity_header():
    import json
    import urllib.error
    import urllib.request

    with TokenService() as tokens:
        request = urllib.request.Request(
            tokens.endpoint + "?api-version=2019-08-01&resource=r",
            headers={"X-IDENTITY-HEADER": "wrong"},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        assert caught.value.code == 401
        assert json.load(caught.value)["error"] == "invalid_request"
        caught.value.close()
    assert tokens.tokens_issued == 0


def test_expired_tokens_are_refused(wav_path):
    with TokenService(lifetime_s=0.01) as tokens, tokens.patch_environ():
        credential = ManagedIdentityCredential()
        try:
            token = credential.get_token(SCOPE)
        finally:
            credential.close()
        time.sleep(0.05)
        assert not tokens.is_valid(token.token)
        with SpeechService(require_token=tokens.is_valid) as service:
            assert outcome(service.speech_config(auth_token=token.token), wav_path)[1] == (
                speechsdk.CancellationErrorCode.AuthenticationFailure
            )


def test_patch_environ_restores_the_environment(monkeypatch):
    import os

    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://example.invalid/before")
    monkeypatch.delenv("IDENTITY_HEADER", raising=False)
    with TokenService() as tokens:
        with tokens.patch_environ() as env:
            assert os.environ["IDENTITY_ENDPOINT"] == tokens.endpoint == env["IDENTITY_ENDPOINT"]
            assert os.environ["IDENTITY_HEADER"] == tokens.identity_header
        assert os.environ["IDENTITY_ENDPOINT"] == "http://example.invalid/before"
        assert "IDENTITY_HEADER" not in os.environ
