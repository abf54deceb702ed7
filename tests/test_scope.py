"""The Scope engine against the real SDK: exact native handle counts."""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard._adapters import register_adapter, run_bounded
from nativeguard._errors import ClosedResourceError, ReleaseError, ReleaseTimeout
from nativeguard._native import native_handles
from nativeguard._scope import Scope


@pytest.fixture
def no_automatic_gc():
    """Keep the cyclic collector from running behind the test's back."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def recognizers() -> int:
    return native_handles().get("ISpxRecognizer", 0)


def transcribe_naively(service, wav, scope: Scope | None) -> list[str]:
    """The field write-ups' pattern: a closure that captures the transcriber."""
    transcriber = speechsdk.transcription.ConversationTranscriber(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
    )
    texts: list[str] = []
    done = threading.Event()

    def on_transcribed(evt):
        texts.append(evt.result.text)
        assert transcriber is not None  # the cycle: closure -> cell -> transcriber

    if scope is not None:
        scope.register(transcriber)
    transcriber.transcribed.connect(on_transcribed)
    transcriber.session_stopped.connect(lambda evt: done.set())
    transcriber.start_transcribing_async().get()
    assert done.wait(10)
    if scope is not None:
        scope.close()
    return texts


def test_naive_pattern_leaks_a_native_handle_and_the_scope_does_not(
    speech_service, wav_path, no_automatic_gc
):
    baseline = recognizers()
    texts = transcribe_naively(speech_service, wav_path, scope=None)
    assert len(texts) == 2
    # The cycle keeps the recognizer, and its native handle, alive.
    assert recognizers() == baseline + 1
    gc.collect()
    assert recognizers() == baseline

    scope = Scope()
    texts = transcribe_naively(speech_service, wav_path, scope=scope)
    assert len(texts) == 2
    # No gc.collect(): disconnecting the signals broke the cycle.
    assert recognizers() == baseline
    stats = scope.statistics()
    assert stats.objects_tracked == 1
    assert stats.signals_disconnected == 2
    assert stats.release_steps_run == 1  # stop_transcribing_async
    assert stats.release_errors == 0
    # The caller still held the transcriber while the scope closed.
    assert stats.survivors == 1
    assert stats.collections == (0, 1, 2)


def test_no_collection_when_everything_is_already_dead(speech_service):
    scope = Scope()
    with scope:
        config = scope.register(speech_service.speech_config())
        del config
    stats = scope.statistics()
    assert stats.collections == ()
    assert stats.collection_seconds < 0.05
    assert stats.survivors == 0


def test_cycles_get_the_youngest_collection_that_frees_them(no_automatic_gc):
    class Node:
        pass

    scope = Scope()
    with scope:
        node = scope.register(Node())
        node.self = node
        del node
    stats = scope.statistics()
    assert stats.collections == (0,)
    assert stats.survivors == 0


def test_callbacks_connected_through_the_scope_are_dropped(speech_service, wav_path):
    recognizer = speechsdk.SpeechRecognizer(
        speech_service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
    )
    seen = []
    with Scope() as scope:
        scope.connect(recognizer.recognized, lambda evt: seen.append(evt.result.text))
        assert recognizer.recognized.is_connected()
    assert not recognizer.recognized.is_connected()
    assert scope.statistics().callbacks_dropped == 1
    del recognizer


def test_executor_is_shut_down(no_automatic_gc):
    before = set(threading.enumerate())
    with Scope() as scope:
        executor = scope.register(ThreadPoolExecutor(max_workers=2))
        assert executor.submit(lambda: 41 + 1).result() == 42
    assert set(threading.enumerate()) == before
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(print)


def test_every_step_runs_and_failures_are_raised_together():
    released: list[str] = []

    class Flaky:
        pass

    def boom(obj, timeout_s):
        raise OSError("native close failed")

    def record(obj, timeout_s):
        released.append("second step ran")

    register_adapter(Flaky, [boom, record], name="flaky")
    scope = Scope()
    scope.register(flaky := Flaky())
    with pytest.raises(ReleaseError) as caught:
        scope.close()
    assert released == ["second step ran"]
    (error,) = caught.value.exceptions
    assert isinstance(error, OSError)
    assert "while releasing" in error.__notes__[0]
    scope.close()  # idempotent: nothing raised the second time
    assert scope.closed
    with pytest.raises(ClosedResourceError, match="closed Scope"):
        scope.register(flaky)


def test_body_exception_wins_and_carries_the_release_error_as_a_note():
    class Sticky:
        pass

    register_adapter(Sticky, [lambda obj, t: (_ for _ in ()).throw(OSError("stuck"))])
    sticky = Sticky()
    with pytest.raises(KeyError) as caught, Scope() as scope:
        scope.register(sticky)
        raise KeyError("body")
    assert any("release step(s) failed" in note for note in caught.value.__notes__)


def test_bounded_wait():
    start = time.monotonic()
    with pytest.raises(ReleaseTimeout, match=r"within 0\.2 s"):
        run_bounded(lambda: time.sleep(2), 0.2, "a stuck stop")
    assert time.monotonic() - start < 1


def test_misuse_is_reported():
    with pytest.raises(TypeError, match="weak references"):
        Scope().register(42)
    with pytest.raises(TypeError, match="not an event signal"):
        Scope().connect(object(), print)
    scope = Scope()
    with scope:
        pass
    with pytest.raises(ClosedResourceError), scope:
        pass
    with pytest.raises(RuntimeError, match="once the scope is closed"):
        Scope().statistics()


def test_finalizers_run_after_release_and_before_the_survivor_check():
    class Holder:
        pass

    order: list[str] = []
    holder = Holder()
    box = {"target": holder}
    del holder
    scope = Scope()
    scope.register(box["target"])
    scope.add_finalizer(lambda: order.append("first added"))
    scope.add_finalizer(lambda: (order.append("cut"), box.clear()))
    scope.close()
    assert order == ["cut", "first added"]
    assert scope.statistics().survivors == 0
    with pytest.raises(ClosedResourceError):
        scope.add_finalizer(print)
