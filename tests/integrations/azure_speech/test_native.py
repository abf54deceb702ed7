"""The Speech handle table reader (integrations/azure_speech/_handles.py): ground truth."""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
import threading

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard import NativeGuardError
from nativeguard.integrations.azure_speech import _handles as _native
from nativeguard.integrations.azure_speech._handles import (
    NativeDiagnosticsFormatError,
    NativeDiagnosticsUnavailable,
    native_diagnostics_available,
    native_handle_count,
    native_handles,
)
from nativeguard.testing import SpeechService


def settled() -> dict[str, int]:
    """The handle table once garbage from earlier tests has been collected."""
    gc.collect()
    return native_handles()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per-type change from ``before`` to ``after``, unchanged types left out."""
    changes = {n: after.get(n, 0) - before.get(n, 0) for n in before.keys() | after.keys()}
    return {name: change for name, change in changes.items() if change}


@pytest.fixture
def fresh_load():
    """Let a test re-run the cached loader, and restore the real bindings after."""
    _native._load.cache_clear()
    yield
    _native._load.cache_clear()


# -- the real table ------------------------------------------------------


def test_available_with_sdk_1_53():
    assert native_diagnostics_available() is True


def test_count_is_the_sum_of_the_table():
    assert native_handle_count() == sum(native_handles().values())


def test_fresh_process_baseline_is_one_audio_config():
    # SpeechSynthesizer's default argument AudioOutputConfig(use_default_speaker=True)
    # is evaluated when the SDK is imported and lives for the whole process.
    code = (
        "from nativeguard.integrations.azure_speech import native_handles, native_handle_count\n"
        "print(native_handles(), native_handle_count())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert out.strip() == "{'ISpxAudioConfig': 1} 1"


def test_speech_config_adds_exactly_one_handle_and_releases_it(speech_service: SpeechService):
    before = settled()
    config = speech_service.speech_config()
    during = native_handles()
    assert during.get("ISpxSpeechConfig", 0) == before.get("ISpxSpeechConfig", 0) + 1
    # A config also owns its property bag.
    assert delta(before, during) == {"ISpxSpeechConfig": 1, "ISpxNamedProperties": 1}
    del config
    gc.collect()
    assert native_handles() == before


def test_recognizer_adds_exactly_one_handle_and_releases_it(
    speech_service: SpeechService, wav_path: str
):
    before = settled()
    config = speech_service.speech_config()
    audio = speechsdk.audio.AudioConfig(filename=wav_path)
    with_inputs = native_handles()
    recognizer = speechsdk.SpeechRecognizer(speech_config=config, audio_config=audio)
    during = native_handles()
    assert during.get("ISpxRecognizer", 0) == before.get("ISpxRecognizer", 0) + 1
    assert during["ISpxSpeechConfig"] == before.get("ISpxSpeechConfig", 0) + 1
    # The recognizer itself: its handle plus its property bag.
    assert delta(with_inputs, during) == {"ISpxRecognizer": 1, "ISpxNamedProperties": 1}

    del recognizer
    gc.collect()
    assert native_handles() == with_inputs
    del config, audio
    gc.collect()
    assert native_handles() == before


def test_recognizer_that_recognized_returns_to_baseline(
    speech_service: SpeechService, wav_path: str
):
    before = settled()
    config = speech_service.speech_config()
    audio = speechsdk.audio.AudioConfig(filename=wav_path)
    recognizer = speechsdk.SpeechRecognizer(speech_config=config, audio_config=audio)
    result = recognizer.recognize_once_async().get()
    assert result.reason == speechsdk.ResultReason.RecognizedSpeech
    during = native_handles()
    assert during["ISpxRecognizer"] == before.get("ISpxRecognizer", 0) + 1
    assert during["ISpxRecognitionResult"] == before.get("ISpxRecognitionResult", 0) + 1

    del result, recognizer, audio, config
    gc.collect()
    assert native_handles() == before
    assert native_handle_count() == sum(before.values())


def test_concurrent_readers_while_handles_churn():
    before = settled()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                assert all(count > 0 for count in native_handles().values())
                native_handle_count()
        except BaseException as error:
            errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        for _ in range(300):
            config = speechsdk.SpeechConfig(subscription="key", region="local")
            del config
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert errors == []
    assert settled() == before


# -- ownership of the returned string ------------------------------------


def fake_diagnostics(text: bytes, freed: list[int]) -> tuple[_native._Diagnostics, int]:
    buffer = ctypes.create_string_buffer(text)
    address = ctypes.addressof(buffer)

    def info() -> int:
        assert buffer  # keep the buffer alive as long as the fake
        return address

    fake = _native._Diagnostics(handle_count=lambda: 0, handle_info=info, free_string=freed.append)
    return fake, address


def test_string_is_freed_once_with_the_same_pointer(monkeypatch: pytest.MonkeyPatch):
    freed: list[int] = []
    fake, address = fake_diagnostics(b'[{"id":1,"name":"ISpxRecognizer","count":2}]', freed)
    monkeypatch.setattr(_native, "_load", lambda: fake)
    assert native_handles() == {"ISpxRecognizer": 2}
    assert freed == [address]


def test_string_is_freed_even_when_it_does_not_parse(monkeypatch: pytest.MonkeyPatch):
    freed: list[int] = []
    fake, address = fake_diagnostics(b"not json", freed)
    monkeypatch.setattr(_native, "_load", lambda: fake)
    with pytest.raises(NativeDiagnosticsFormatError, match="invalid JSON"):
        native_handles()
    assert freed == [address]


def test_null_info_is_a_format_error(monkeypatch: pytest.MonkeyPatch):
    freed: list[int] = []
    fake = _native._Diagnostics(
        handle_count=lambda: 0, handle_info=lambda: None, free_string=freed.append
    )
    monkeypatch.setattr(_native, "_load", lambda: fake)
    with pytest.raises(NativeDiagnosticsFormatError, match="NULL"):
        native_handles()
    assert freed == []


# -- parser ------------------------------------------------------------------


def test_parser_drops_zero_counts_and_sums_duplicates():
    raw = (
        b'[{"id":64701607,"name":"ISpxSpeechConfig","count":1},'
        b'{"id":733483882,"name":"ISpxRecognizer","count":0},'
        b'{"id":1,"name":"ISpxSpeechConfig","count":2},'
        b'{"id":2,"name":"CSpxAsyncOp<std::shared_ptr<ISpxRecognitionResult>>","count":3}]'
    )
    assert _native._parse_handle_info(raw) == {
        "ISpxSpeechConfig": 3,
        "CSpxAsyncOp<std::shared_ptr<ISpxRecognitionResult>>": 3,
    }
    assert _native._parse_handle_info(b"[]") == {}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "invalid JSON"),
        (b'[{"id":1,"name":"ISpxRecognizer","count":1}', "invalid JSON"),
        (b"\xff\xfe[]", "invalid JSON"),
        (b'{"ISpxRecognizer": 1}', "a JSON dict, expected a list"),
        (b"[1]", "not an object"),
        (b'[{"id":1,"count":1}]', "'name'"),
        (b'[{"id":1,"name":"","count":1}]', "'name'"),
        (b'[{"id":1,"name":"ISpxRecognizer"}]', "'count'"),
        (b'[{"id":1,"name":"ISpxRecognizer","count":-1}]', "'count'"),
        (b'[{"id":1,"name":"ISpxRecognizer","count":1.5}]', "'count'"),
        (b'[{"id":1,"name":"ISpxRecognizer","count":true}]', "'count'"),
        (b'[{"id":1,"name":"ISpxRecognizer","count":"1"}]', "'count'"),
    ],
)
def test_parser_rejects_malformed_info(raw: bytes, reason: str):
    with pytest.raises(NativeDiagnosticsFormatError, match=reason) as caught:
        _native._parse_handle_info(raw)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, NativeGuardError)
    assert "diagnostics_get_handle_info()" in str(caught.value)


def test_parser_error_quotes_at_most_200_characters():
    raw = b"x" * 5000
    with pytest.raises(NativeDiagnosticsFormatError, match="first 200 of 5000") as caught:
        _native._parse_handle_info(raw)
    assert len(str(caught.value)) < 500


# -- SDKs without the table -------------------------------------------------


def test_library_without_exports_is_unavailable():
    libc = ctypes.CDLL(None)
    with pytest.raises(NativeDiagnosticsUnavailable) as caught:
        _native._bind(libc)
    assert isinstance(caught.value, RuntimeError)
    message = str(caught.value)
    for name in ("diagnostics_get_handle_count", "diagnostics_get_handle_info"):
        assert name in message


@pytest.mark.usefixtures("fresh_load")
def test_old_sdk_is_reported_not_raised_by_available(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_native, "_sdk_library", lambda: ctypes.CDLL(None))
    assert native_diagnostics_available() is False
    with pytest.raises(NativeDiagnosticsUnavailable, match="does not export"):
        native_handles()
    with pytest.raises(NativeDiagnosticsUnavailable, match="does not export"):
        native_handle_count()


@pytest.mark.usefixtures("fresh_load")
def test_missing_sdk_is_unavailable(monkeypatch: pytest.MonkeyPatch):
    def no_sdk() -> ctypes.CDLL:
        raise ImportError("No module named 'azure.cognitiveservices.speech'")

    monkeypatch.setattr(_native, "_sdk_library", no_sdk)
    assert native_diagnostics_available() is False
    with pytest.raises(NativeDiagnosticsUnavailable, match="could not be loaded"):
        native_handle_count()


@pytest.mark.usefixtures("fresh_load")
def test_loader_binds_the_sdk_core_after_a_cache_reset():
    assert native_diagnostics_available() is True
    assert native_handle_count() >= 1


def test_handle_in_a_reference_cycle_lives_until_collected(
    speech_service: SpeechService, wav_path: str
):
    before = settled()
    gc.disable()
    try:
        config = speech_service.speech_config()
        audio = speechsdk.audio.AudioConfig(filename=wav_path)
        cycle: list[object] = [speechsdk.SpeechRecognizer(speech_config=config, audio_config=audio)]
        cycle.append(cycle)
        del cycle, config, audio
        # Unreachable, but not yet released: the table sees what `del` alone leaves.
        assert native_handles().get("ISpxRecognizer", 0) == before.get("ISpxRecognizer", 0) + 1
    finally:
        gc.enable()
    gc.collect()
    assert native_handles() == before
