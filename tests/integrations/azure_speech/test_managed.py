"""managed_* against the real SDK: exact native handles, instances, threads, fds."""

from __future__ import annotations

import gc
import threading
from concurrent.futures import ThreadPoolExecutor

import azure.cognitiveservices.speech as speechsdk
import pytest
from leakcheck import assert_back_to, snapshot

from nativeguard._core._errors import CallbackError, ClosedResourceError
from nativeguard._core._managed import managed, managed_executor
from nativeguard.integrations.azure_speech import native_handles
from nativeguard.integrations.azure_speech._extract import Segment
from nativeguard.integrations.azure_speech._managed import (
    managed_connection,
    managed_recognizer,
    managed_synthesizer,
    managed_transcriber,
    managed_translation_recognizer,
)
from nativeguard.testing import Faults, Phrase, SpeechService

SCRIPT = [
    Phrase("first words", speaker="Guest-1", offset_s=0.1, duration_s=0.5),
    Phrase("second words", speaker="Guest-2", offset_s=1.0, duration_s=0.5),
]


@pytest.fixture(scope="module", autouse=True)
def warm_sdk(wav_path):
    """The SDK creates some process-wide state on first use; keep it out of baselines."""
    with SpeechService(script=SCRIPT) as service:
        transcriber = speechsdk.transcription.ConversationTranscriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
        )
        done = threading.Event()
        transcriber.session_stopped.connect(lambda evt: done.set())
        transcriber.start_transcribing_async().get()
        done.wait(10)
        transcriber.stop_transcribing_async().get()
        transcriber.session_stopped.disconnect_all()
        del transcriber
        synthesizer = speechsdk.SpeechSynthesizer(service.speech_config(), audio_config=None)
        synthesizer.speak_text_async("warm").get()
        del synthesizer
    # nativeguard's reaper thread lives for the whole process once started.
    with managed_executor(max_workers=1, release="background") as executor:
        executor.submit(int).result()
    gc.collect()


@pytest.fixture
def service():
    with SpeechService(script=SCRIPT, response_timeout_s=1.0) as svc:
        yield svc


def transcribe(transcriber, kept: list, *, raise_in_callback: bool = False) -> threading.Event:
    """The field write-ups' leaky pattern, unchanged: closures and kept results."""
    done = threading.Event()

    def on_transcribed(evt):
        kept.append(evt.result)  # kept past the callback
        assert transcriber is not None  # closure captures the transcriber
        if raise_in_callback:
            raise ValueError("bug in user callback")

    transcriber.transcribed.connect(on_transcribed)
    transcriber.session_stopped.connect(lambda evt: done.set())
    transcriber.canceled.connect(lambda evt: done.set())
    transcriber.start_transcribing_async().get()
    assert done.wait(15), "session did not end"
    return done


def test_naive_pattern_leaks_and_managed_transcriber_does_not(service, wav_path):
    gc.disable()
    try:
        before = snapshot()
        # Without nativeguard: the transcriber and every kept result stay native.
        kept: list = []
        transcriber = speechsdk.transcription.ConversationTranscriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
        )
        transcribe(transcriber, kept)
        transcriber.stop_transcribing_async().get()
        del transcriber
        leaked = native_handles()
        assert leaked.get("ISpxRecognizer", 0) == before.handles.get("ISpxRecognizer", 0) + 1
        assert leaked.get("ISpxRecognitionResult", 0) >= 2
        kept.clear()
        gc.collect()

        before = snapshot()
        kept = []
        with managed_transcriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
        ) as transcriber:
            transcribe(transcriber, kept)
        assert_back_to(before)  # no gc.collect() anywhere
        # The kept results still read like SDK results, but are plain data now.
        assert [(r.text, r.speaker_id) for r in kept] == [
            ("first words", "Guest-1"),
            ("second words", "Guest-2"),
        ]
        assert kept[0].offset == 1_000_000
        assert isinstance(kept[0].__wrapped__, Segment)
    finally:
        gc.enable()


def test_use_after_exit_names_the_object_and_where(service, wav_path):
    with managed_recognizer(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
    ) as recognizer:
        assert recognizer.recognize_once_async().get().text == "first words"
    with pytest.raises(ClosedResourceError, match=r"SpeechRecognizer object was released") as e:
        recognizer.recognize_once_async()
    assert "test_managed.py" in str(e.value)


def test_recognizer_continuous_and_plain_callbacks(service, wav_path):
    before = snapshot()
    segments: list = []
    with managed_recognizer(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
    ) as recognizer:
        done = threading.Event()
        recognizer.recognized.connect(segments.append, plain=True)
        recognizer.session_stopped.connect(lambda evt: done.set())
        recognizer.start_continuous_recognition_async().get()
        assert done.wait(10)
    assert_back_to(before)
    assert [type(s) for s in segments] == [Segment, Segment]
    assert [s.text for s in segments] == ["first words", "second words"]


def test_translation_recognizer(service, wav_path):
    before = snapshot()
    with managed_translation_recognizer(
        service.translation_config("de"), speechsdk.audio.AudioConfig(filename=wav_path)
    ) as recognizer:
        result = recognizer.recognize_once_async().get()
        assert dict(result.translations) == {"de": "[de] first words"}
        del result
    assert_back_to(before)


def test_synthesizer_and_its_connection(service):
    before = snapshot()
    words: list = []
    with (
        managed_synthesizer(service.speech_config()) as synthesizer,
        managed_connection(synthesizer) as connection,
    ):
        connection.open(False)
        finished = threading.Event()
        synthesizer.synthesis_word_boundary.connect(lambda evt: words.append(evt.text))
        synthesizer.synthesis_completed.connect(lambda evt: finished.set())
        result = synthesizer.speak_text_async("managed speech").get()
        assert result.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
        assert finished.wait(5)
        del result
    assert words == ["managed", "speech"]
    assert_back_to(before)


def test_credential_is_closed(service):
    from azure.identity import ManagedIdentityCredential

    from nativeguard._core._managed import managed_credential
    from nativeguard.testing import TokenService

    scope_url = "https://cognitiveservices.azure.com/.default"
    with TokenService() as tokens, tokens.patch_environ():
        credential = ManagedIdentityCredential()
        with managed_credential(credential) as managed_cred:
            assert tokens.is_valid(managed_cred.get_token(scope_url).token)
        # A token for another resource is not cached: it needs the (closed) transport.
        with pytest.raises(ValueError, match="transport has already been closed"):
            credential.get_token("https://storage.azure.com/.default")
        with pytest.raises(ClosedResourceError):
            managed_cred.get_token(scope_url)


def test_executor_threads_are_gone(service):
    before = snapshot()
    with managed_executor(max_workers=3) as executor:
        assert sorted(executor.map(lambda x: x * 2, range(5))) == [0, 2, 4, 6, 8]
    assert_back_to(before)


def test_generic_managed_push_stream(service):
    before = snapshot()
    with managed(speechsdk.audio.PushAudioInputStream()) as stream:
        stream.write(b"\x00" * 320)
    assert_back_to(before)


FAULTS = [
    pytest.param(Faults(refuse=True), None, "ServiceUnavailable", id="connection-refused"),
    pytest.param(Faults(close_after=3), None, "ConnectionFailure", id="socket-dropped-mid-stream"),
    # A silent service is given up on when the release stops the session.
    pytest.param(Faults(stall=True), None, "ServiceTimeout", id="stalled-service"),
    pytest.param(None, "wrong-key", "AuthenticationFailure", id="auth-refused"),
]


def start_continuous(kind: str, service, config, wav):
    audio = speechsdk.audio.AudioConfig(filename=wav)
    if kind == "recognizer":
        block = managed_recognizer(config, audio)
        return block, lambda r: r.start_continuous_recognition_async().get()
    if kind == "translation":
        block = managed_translation_recognizer(config, audio)
        return block, lambda r: r.start_continuous_recognition_async().get()
    block = managed_transcriber(config, audio)
    return block, lambda r: r.start_transcribing_async().get()


@pytest.mark.parametrize("kind", ["recognizer", "transcriber", "translation"])
@pytest.mark.parametrize(("faults", "key", "code"), FAULTS)
def test_recognition_failure_paths_release_everything(wav_path, kind, faults, key, code):
    with SpeechService(
        script=SCRIPT, faults=faults, require_key="right-key", response_timeout_s=1.0
    ) as service:
        before = snapshot()
        subscription = key or "right-key"
        config = (
            service.translation_config("de", subscription=subscription)
            if kind == "translation"
            else service.speech_config(subscription=subscription)
        )
        kept: list = []
        block, start = start_continuous(kind, service, config, wav_path)
        with block as recognizer:
            done = threading.Event()
            recognizer.canceled.connect(lambda evt: (kept.append(evt), done.set()))
            start(recognizer)
            if faults is not None and faults.stall:
                assert not done.wait(1.5)  # a silent service cancels only on stop
            else:
                assert done.wait(15)
        del config, block
        assert_back_to(before)
    # The kept canceled event is plain data now, with the SDK's error code.
    assert [evt.cancellation_details.code for evt in kept] == [code]


@pytest.mark.parametrize(("faults", "key", "code"), FAULTS)
def test_synthesis_failure_paths_release_everything(faults, key, code):
    with SpeechService(faults=faults, require_key="right-key", response_timeout_s=1.0) as service:
        before = snapshot()
        config = service.speech_config(subscription=key or "right-key")
        with managed_synthesizer(config) as synthesizer:
            result = synthesizer.speak_text_async("failing speech").get()
            got = result.cancellation_details.error_code.name
            del result
        del config
        assert_back_to(before)
    assert got == code


def test_exception_in_callback_is_raised_at_exit_after_release(service, wav_path):
    before = snapshot()
    kept: list = []
    with (
        pytest.raises(CallbackError) as caught,
        managed_transcriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
        ) as transcriber,
    ):
        transcribe(transcriber, kept, raise_in_callback=True)
    assert [type(e) for e in caught.value.exceptions] == [ValueError, ValueError]
    assert_back_to(before)


@pytest.mark.parametrize("error", [RuntimeError("body failed"), KeyboardInterrupt()])
def test_exception_in_body_propagates_and_releases(service, wav_path, error):
    before = snapshot()
    with (
        pytest.raises(type(error)),
        managed_transcriber(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
        ) as transcriber,
    ):
        transcriber.start_transcribing_async().get()
        raise error
    assert_back_to(before)


def test_async_with(service, wav_path):
    import asyncio

    async def main() -> str:
        async with managed_recognizer(
            service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
        ) as recognizer:
            future = recognizer.recognize_once_async()
            result = await asyncio.get_running_loop().run_in_executor(None, future.get)
            text = result.text
            del result, future
            return text

    before = snapshot()
    assert asyncio.run(main()) == "first words"
    assert_back_to(before)


def test_eight_threads_transcribe_without_cross_talk(wav_path):
    services = [SpeechService(script=[f"thread {i} speaking"]).start() for i in range(8)]
    try:
        before = snapshot()

        def work(i: int) -> list[str]:
            kept: list = []
            with managed_transcriber(
                services[i].speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
            ) as transcriber:
                transcribe(transcriber, kept)
            return [r.text for r in kept]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        assert results == [[f"thread {i} speaking"] for i in range(8)]
        assert_back_to(before)
    finally:
        for service in services:
            service.stop()


def test_managed_objects_refuse_reuse_and_bad_input(service):
    block = managed_executor(max_workers=1)
    with block:
        pass
    with pytest.raises(RuntimeError, match="already entered"), block:
        pass
    with pytest.raises(TypeError, match="recognizer or a synthesizer"), managed_connection(42):
        pass
    with pytest.raises(TypeError, match="Scope"):
        managed_executor(scope="nope")


def test_executor_tasks_belong_to_the_guarded_call(service):
    from nativeguard._core._guarded import GuardStatistics, guarded

    seen: list[GuardStatistics] = []

    @guarded(on_release=seen.append)
    def fan_out(make_executor) -> int:
        with make_executor(max_workers=2) as executor:
            configs = list(executor.map(lambda _: service.speech_config(), range(3)))
        return len(configs)

    assert fan_out(managed_executor) == 3
    assert fan_out(ThreadPoolExecutor) == 3
    managed_stats, plain_stats = seen
    # Each SpeechConfig is two native-backed objects (config + property bag):
    # made on worker threads, they belong to the call only through managed_executor.
    assert managed_stats.objects_created == 6
    assert plain_stats.objects_created == 0


def test_background_release_frees_everything_off_the_callers_thread(service, wav_path):
    before = snapshot()
    kept: list = []
    block = managed_transcriber(
        service.speech_config(),
        speechsdk.audio.AudioConfig(filename=wav_path),
        release="background",
    )
    with block as transcriber:
        transcribe(transcriber, kept)
    assert block.scope.wait_released(5)
    stats = block.scope.statistics()
    assert stats.release_mode == "background"
    assert stats.objects_adopted == 1  # the proxy's cut reference went to the reaper
    assert stats.reaper_dropped >= 1
    assert stats.survivors == 0
    del block, transcriber
    assert_back_to(before)
    assert [r.text for r in kept] == ["first words", "second words"]


def test_async_credential_is_closed_on_the_event_loop():
    import asyncio

    from azure.identity.aio import ManagedIdentityCredential

    from nativeguard._core._managed import managed_credential
    from nativeguard.testing import TokenService

    async def main():
        credential = ManagedIdentityCredential()
        async with managed_credential(credential) as managed_cred:
            token = await managed_cred.get_token("https://cognitiveservices.azure.com/.default")
        with pytest.raises(ValueError, match="transport has already been closed"):
            await credential.get_token("https://storage.azure.com/.default")
        return token

    with TokenService() as tokens, tokens.patch_environ():
        assert tokens.is_valid(asyncio.run(main()).token)


def test_release_option_is_checked():
    with pytest.raises(ValueError, match="'inline' or 'background'"):
        managed_executor(release="later")


def test_async_aclose_is_awaited_on_the_event_loop():
    # The adapters treat an `async def aclose()` like an async close(): so must
    # `async with managed(...)`, or the release would fail with AsyncReleaseRequired.
    import asyncio

    class Session:
        def __init__(self) -> None:
            self.closed_on: asyncio.AbstractEventLoop | None = None

        async def aclose(self) -> None:
            self.closed_on = asyncio.get_running_loop()

    session = Session()

    async def main() -> asyncio.AbstractEventLoop:
        async with managed(session):
            pass
        return asyncio.get_running_loop()

    assert asyncio.run(main()) is session.closed_on
