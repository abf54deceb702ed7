"""@guarded against the real SDK: exact native handle counts, every exit path."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import time
import wave

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard._core import _guarded
from nativeguard._core._adapters import register_adapter
from nativeguard._core._errors import LeakError, ReleaseError
from nativeguard._core._guarded import (
    GuardStatistics,
    Survivor,
    SurvivorReport,
    bind,
    current_scope,
    guarded,
)
from nativeguard._core._scope import Scope
from nativeguard.integrations.azure_speech import native_handles


def live(type_name: str) -> int:
    """Live Python wrappers of an SDK type (tests only: walks the whole heap)."""
    return sum(
        1
        for obj in gc.get_objects()
        if type(obj).__name__ == type_name
        and type(obj).__module__.startswith("azure.cognitiveservices.speech")
    )


def config() -> speechsdk.SpeechConfig:
    """A SpeechConfig that never connects anywhere: cheap, no service needed."""
    return speechsdk.SpeechConfig(subscription="not-a-real-key", region="westus")


# A SpeechConfig makes one PropertyCollection in its own __init__: both hold a
# native handle, both are tracked.
PER_CONFIG = 2


def transcribe_naively(service, wav) -> list[str]:
    """The field write-ups' pattern: a closure that captures the transcriber."""
    transcriber = speechsdk.transcription.ConversationTranscriber(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
    )
    texts: list[str] = []
    done = threading.Event()

    def on_transcribed(evt):
        texts.append(evt.result.text)
        assert transcriber is not None  # the cycle: closure -> cell -> transcriber

    transcriber.transcribed.connect(on_transcribed)
    transcriber.session_stopped.connect(lambda evt: done.set())
    transcriber.start_transcribing_async().get()
    assert done.wait(10)
    return texts


def recognizer(service, wav) -> speechsdk.SpeechRecognizer:
    return speechsdk.SpeechRecognizer(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
    )


# -- the naive pattern -----------------------------------------------------------


def test_naive_pattern_leaks_unguarded_and_not_guarded(speech_service, wav_path, no_automatic_gc):
    baseline = native_handles()
    assert len(transcribe_naively(speech_service, wav_path)) == 2
    # The closure cycle keeps the transcriber and its native handles alive.
    leaked = native_handles()
    assert leaked.get("ISpxRecognizer", 0) == baseline.get("ISpxRecognizer", 0) + 1
    assert live("ConversationTranscriber") == 1
    gc.collect()
    assert native_handles() == baseline

    seen: list[GuardStatistics] = []
    texts = guarded(on_release=seen.append)(transcribe_naively)(speech_service, wav_path)
    assert len(texts) == 2
    # No gc.collect() and gc disabled: the release broke the cycle, exactly.
    assert native_handles() == baseline
    assert live("ConversationTranscriber") == 0
    (stats,) = seen
    # SpeechConfig, AudioConfig, ConversationTranscriber and one
    # PropertyCollection each: every one holds a native handle.
    # Six made on this thread, plus the events and results the SDK built on
    # its threads for this call's transcriber (how many depends on timing).
    assert stats.objects_created > 6
    # Only the transcriber and its PropertyCollection were alive at exit (the
    # cycle); the configs, passed inline, had died already: nothing to release.
    assert stats.scope.objects_tracked == 2
    assert stats.scope.signals_disconnected == 2
    assert stats.scope.release_steps_run == 2  # no stop wait, stop_transcribing_async
    assert stats.scope.release_errors == 0
    assert stats.scope.survivors == 0
    assert stats.scope.collections == ()


def test_a_returned_closure_keeps_a_stopped_transcriber_until_dropped(
    speech_service, wav_path, no_automatic_gc
):
    """Released at exit even when a returned closure holds it: stopped, disconnected."""
    baseline = native_handles()

    @guarded
    def transcribe_and_keep_callback():
        transcriber = speechsdk.transcription.ConversationTranscriber(
            speech_service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
        )
        done = threading.Event()

        def on_stopped(evt):
            done.set()
            assert transcriber is not None

        transcriber.session_stopped.connect(on_stopped)
        transcriber.start_transcribing_async().get()
        assert done.wait(10)
        return on_stopped

    callback = transcribe_and_keep_callback()
    (held,) = (
        cell.cell_contents
        for cell in callback.__closure__
        if isinstance(cell.cell_contents, speechsdk.transcription.ConversationTranscriber)
    )
    assert not held.session_stopped.is_connected()  # the scope disconnected it
    del held
    assert native_handles().get("ISpxRecognizer", 0) == baseline.get("ISpxRecognizer", 0) + 1
    del callback  # no cycle is left: refcounting alone frees it
    assert native_handles() == baseline


# -- strict ------------------------------------------------------------------------


def test_strict_reports_a_recognizer_in_the_returned_list(
    speech_service, wav_path, no_automatic_gc
):
    baseline = native_handles()

    @guarded(strict=True)
    def make():
        return [recognizer(speech_service, wav_path)]

    with pytest.raises(LeakError) as caught:
        make()
    message = str(caught.value)
    assert "release: SpeechRecognizer <- list <- return value;" in message
    assert "make" in message
    report = caught.value.report
    assert isinstance(report, SurvivorReport)
    assert report.survivors[0] == Survivor(
        "SpeechRecognizer", ("SpeechRecognizer", "list", "return value"), held_by_survivor=False
    )
    # Its PropertyCollection lives only through the recognizer.
    assert report.survivors[1] == Survivor(
        "PropertyCollection",
        (
            "PropertyCollection SpeechRecognizer.__properties",
            "SpeechRecognizer",
            "list",
            "return value",
        ),
        held_by_survivor=True,
    )
    assert report.omitted == 0
    assert report.statistics.scope.survivors == 2
    # The returned list is dropped with the error: nothing else holds it.
    del caught
    assert native_handles() == baseline


def test_strict_names_a_returned_sdk_object_as_the_return_value(no_automatic_gc):
    @guarded(strict=True)
    def make() -> speechsdk.SpeechConfig:
        return config()

    with pytest.raises(LeakError, match=r"release: SpeechConfig <- return value;"):
        make()


def test_strict_passes_when_only_plain_data_escapes(speech_service, wav_path):
    baseline = native_handles()

    @guarded(strict=True)
    def recognize_text() -> str:
        speech = recognizer(speech_service, wav_path)
        result = speech.recognize_once_async().get()
        assert result.reason == speechsdk.ResultReason.RecognizedSpeech
        text: str = result.text
        return text

    assert recognize_text() == "Hello from the nativeguard speech service."
    assert native_handles() == baseline


def test_strict_names_closure_cells_instance_dicts_and_globals(no_automatic_gc):
    class Holder:
        pass

    @guarded(strict=True)
    def scatter():
        in_closure = config()
        holder = Holder()
        holder.config = config()
        global _GLOBAL_CONFIG  # noqa: PLW0603
        _GLOBAL_CONFIG = config()

        def keep():
            return in_closure

        return keep, holder

    with pytest.raises(LeakError) as caught:
        scatter()
    chains = {s.chain for s in caught.value.report.survivors if not s.held_by_survivor}
    keep = f"{scatter.__wrapped__.__qualname__}.<locals>.keep"
    assert chains == {
        (
            "SpeechConfig",
            f"cell of {keep} (variable in_closure)",
            f"function {keep}",
            "tuple",
            "return value",
        ),
        (
            f"SpeechConfig {Holder.__qualname__}.config",
            Holder.__qualname__,
            "tuple",
            "return value",
        ),
        ("SpeechConfig", f"global _GLOBAL_CONFIG in module {__name__}"),
    }
    del caught
    global _GLOBAL_CONFIG  # noqa: PLW0603
    assert isinstance(_GLOBAL_CONFIG, speechsdk.SpeechConfig)
    del _GLOBAL_CONFIG


def test_strict_report_is_bounded_and_never_shows_values(no_automatic_gc):
    secret = "s3cr3t-subscription-key"

    @guarded(strict=True)
    def many():
        configs = [speechsdk.SpeechConfig(subscription=secret, region="westus") for _ in range(15)]
        return {"key": secret, "configs": configs}

    with pytest.raises(LeakError) as caught:
        many()
    report = caught.value.report
    assert len(report.survivors) == 10
    assert report.omitted == 15 * PER_CONFIG - 10
    assert "20 more not described" in str(caught.value)
    assert secret not in str(caught.value)
    assert secret not in repr(report)


def test_strict_is_not_checked_when_the_body_raised(speech_service, wav_path, no_automatic_gc):
    """The traceback holds the body's frame, so its locals survive: not a leak."""
    baseline = native_handles()
    seen: list[GuardStatistics] = []

    @guarded(strict=True, on_release=seen.append)
    def fail():
        kept = recognizer(speech_service, wav_path)
        raise ValueError(f"failed with {type(kept).__name__}")

    with pytest.raises(ValueError, match="failed with SpeechRecognizer"):
        fail()
    assert seen[0].scope.survivors > 0
    assert native_handles() == baseline


# -- failure paths -----------------------------------------------------------------


def listen(service, wav, on_text) -> speechsdk.transcription.ConversationTranscriber:
    """Start transcribing a push stream that is never closed: it stays mid-recognition."""
    stream = speechsdk.audio.PushAudioInputStream()
    with wave.open(wav) as audio:
        stream.write(audio.readframes(audio.getnframes()))
    transcriber = speechsdk.transcription.ConversationTranscriber(
        service.speech_config(), speechsdk.audio.AudioConfig(stream=stream)
    )

    def on_transcribed(evt):
        on_text(evt.result.text)
        assert transcriber is not None  # the closure cycle, again

    transcriber.transcribed.connect(on_transcribed)
    transcriber.start_transcribing_async().get()
    return transcriber


# The naive pattern's six objects, plus the push stream and its AudioStreamFormat.
LISTEN_TRACKED = 8


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_release_on_exception_mid_recognition(speech_service, wav_path, no_automatic_gc, error):
    baseline = native_handles()
    seen: list[GuardStatistics] = []
    heard = threading.Event()

    @guarded(on_release=seen.append)
    def body():
        transcriber = listen(speech_service, wav_path, lambda text: heard.set())
        assert heard.wait(10)
        assert transcriber.transcribed.is_connected()
        raise error

    with pytest.raises(type(error)) as caught:
        body()
    assert caught.value is error
    (stats,) = seen
    assert stats.objects_created > LISTEN_TRACKED  # + events built on SDK threads
    # stop_transcribing_async; the push stream's wrapper died when listen() returned.
    assert stats.scope.release_steps_run == 2  # no stop wait + stop_transcribing_async
    assert stats.scope.release_errors == 0
    # The traceback holds body's frame and so its locals until the error goes.
    assert stats.scope.survivors > 0
    assert native_handles() != baseline
    del caught
    error.__traceback__ = None
    assert native_handles() == baseline
    assert live("ConversationTranscriber") == 0


def test_body_error_wins_and_release_failures_become_notes():
    class Stuck:
        pass

    def refuse(obj, timeout_s):
        raise OSError("cannot release")

    register_adapter(Stuck, [refuse], name="stuck")
    stuck = Stuck()

    @guarded
    def body():
        scope = current_scope()
        assert scope is not None
        scope.register(stuck)
        raise KeyError("body")

    with pytest.raises(KeyError) as caught:
        body()
    assert any("release step(s) failed" in note for note in caught.value.__notes__)

    @guarded
    def succeeds():
        current_scope().register(stuck)
        return "value"

    with pytest.raises(ReleaseError, match="release step"):
        succeeds()


def test_on_release_errors_propagate_or_become_notes():
    def broken(stats):
        raise RuntimeError("metrics backend down")

    @guarded(on_release=broken)
    def fine():
        return config()

    with pytest.raises(RuntimeError, match="metrics backend down"):
        fine()

    @guarded(on_release=broken)
    def failing():
        raise LookupError("body")

    with pytest.raises(LookupError) as caught:
        failing()
    assert any("metrics backend down" in note for note in caught.value.__notes__)


def test_cancelling_a_guarded_coroutine_mid_recognition_releases(
    speech_service, wav_path, no_automatic_gc
):
    baseline = native_handles()
    seen: list[GuardStatistics] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first: asyncio.Future[str] = loop.create_future()

        def on_text(text: str) -> None:
            loop.call_soon_threadsafe(lambda: first.done() or first.set_result(text))

        @guarded(on_release=seen.append)
        async def transcribe_forever() -> None:
            transcriber = listen(speech_service, wav_path, on_text)
            await asyncio.Event().wait()  # never set: only cancellation ends this
            del transcriber

        task = asyncio.create_task(transcribe_forever())
        assert await asyncio.wait_for(first, 10) == "Hello from the nativeguard speech service."
        assert native_handles().get("ISpxRecognizer") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (stats,) = seen
    assert stats.objects_created > LISTEN_TRACKED  # + events built on SDK threads
    assert stats.scope.release_errors == 0
    assert native_handles() == baseline


# -- contexts: threads, tasks, nesting ---------------------------------------------


def test_concurrent_threads_track_only_their_own_objects(speech_service, wav_path):
    baseline = native_handles()
    per_thread: dict[int, list[GuardStatistics]] = {i: [] for i in range(4)}
    start = threading.Barrier(4)
    made = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        @guarded(on_release=per_thread[index].append)
        def recognize() -> str:
            start.wait(5)
            speech = recognizer(speech_service, wav_path)
            extra = [config() for _ in range(index)]  # a different count per thread
            made.wait(5)  # every thread's objects exist at once before any release
            text: str = speech.recognize_once_async().get().text
            del extra
            return text

        try:
            assert recognize() == "Hello from the nativeguard speech service."
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors
    # SpeechConfig, AudioConfig, SpeechRecognizer and the SpeechRecognitionResult
    # from get(), each with its PropertyCollection, plus this thread's configs.
    for index, seen in per_thread.items():
        (stats,) = seen
        assert stats.objects_created == 8 + index * PER_CONFIG
        assert stats.scope.survivors == 0
    assert native_handles() == baseline


def test_concurrent_tasks_each_get_their_own_scope():
    seen: dict[int, GuardStatistics] = {}

    @guarded(on_release=lambda stats: seen.__setitem__(stats.objects_created, stats))
    async def make(count: int) -> Scope | None:
        for _ in range(count):
            config()
            await asyncio.sleep(0)  # interleave with the other task
        return current_scope()

    async def main() -> None:
        scope_a, scope_b = await asyncio.gather(make(2), make(5))
        assert scope_a is not scope_b
        assert scope_a is not None
        assert scope_b is not None

    asyncio.run(main())
    assert sorted(seen) == [2 * PER_CONFIG, 5 * PER_CONFIG]
    assert current_scope() is None


def test_bind_carries_the_guarded_call_into_a_thread(no_automatic_gc):
    seen: list[GuardStatistics] = []
    scopes: dict[str, Scope | None] = {}

    def in_thread(label: str) -> None:
        scopes[label] = current_scope()
        config()

    @guarded(on_release=seen.append)
    def body() -> Scope | None:
        config()
        bound = threading.Thread(target=bind(in_thread), args=("bound",))
        plain = threading.Thread(target=in_thread, args=("plain",))
        for thread in (bound, plain):
            thread.start()
            thread.join(5)
        return current_scope()

    scope = body()
    (stats,) = seen
    # Its own config and the bound thread's; the plain thread starts with an
    # empty context, like the SDK's callback threads.
    assert stats.objects_created == 2 * PER_CONFIG
    assert scopes == {"bound": scope, "plain": None}
    assert scope is not None
    assert scope.closed


def test_a_bound_function_running_after_the_call_tracks_nothing():
    @guarded
    def body():
        return bind(lambda: (current_scope(), config()))

    late = body()
    scope, made = late()  # the scope is closed; the object is simply not tracked
    assert scope is not None
    assert scope.closed
    assert isinstance(made, speechsdk.SpeechConfig)


def test_bind_runs_concurrently_and_rejects_coroutines():
    entered = threading.Barrier(3)
    bound = bind(lambda: entered.wait(5))  # one context object entered by 3 threads
    threads = [threading.Thread(target=bound) for _ in range(2)]
    for thread in threads:
        thread.start()
    bound()
    for thread in threads:
        thread.join(5)

    async def coroutine() -> None:
        pass

    with pytest.raises(TypeError, match="create_task"):
        bind(coroutine)


def test_nested_guarded_calls_own_what_they_create():
    seen: dict[str, GuardStatistics] = {}

    @guarded(on_release=lambda stats: seen.__setitem__("inner", stats))
    def inner() -> str:
        config()
        config()
        return "inner done"

    @guarded(on_release=lambda stats: seen.__setitem__("outer", stats))
    def outer() -> Scope | None:
        config()
        outer_scope = current_scope()
        assert inner() == "inner done"
        assert current_scope() is outer_scope
        config()
        return outer_scope

    outer()
    assert seen["inner"].objects_created == 2 * PER_CONFIG
    assert seen["outer"].objects_created == 2 * PER_CONFIG


# -- the decorator ------------------------------------------------------------------


def test_signature_name_and_coroutine_flag_are_kept():
    async def fetch(url: str, *, retries: int = 3) -> bytes:
        return b""

    def plain(a: int, /, b: str = "x", *args: int, **kw: float) -> None:
        """Plain docs."""

    for original in (fetch, plain):
        for decorated in (guarded(original), guarded(strict=True)(original)):
            assert inspect.signature(decorated) == inspect.signature(original)
            assert decorated.__name__ == original.__name__
            assert decorated.__qualname__ == original.__qualname__
            assert decorated.__doc__ == original.__doc__
            assert decorated.__wrapped__ is original
    assert inspect.iscoroutinefunction(guarded(fetch))
    assert not inspect.iscoroutinefunction(guarded(plain))


def test_methods_classmethods_and_staticmethods():
    seen: list[tuple[str, int]] = []

    def record(label: str):
        return lambda stats: seen.append((label, stats.objects_created))

    class Client:
        def __init__(self) -> None:
            self.count = 1

        @guarded(on_release=record("method"))
        def method(self, extra: int) -> int:
            for _ in range(self.count + extra):
                config()
            return self.count

        @guarded(on_release=record("classmethod"))
        @classmethod
        def create(cls, n: int) -> type:
            for _ in range(n):
                config()
            return cls

        @classmethod
        @guarded(on_release=record("classmethod, other order"))
        def create_too(cls) -> type:
            config()
            return cls

        @guarded(on_release=record("staticmethod"))
        @staticmethod
        def helper(n: int) -> int:
            for _ in range(n):
                config()
            return n

    client = Client()
    assert client.method(2) == 1
    assert Client.create(2) is Client
    assert client.create(1) is Client
    assert Client.create_too() is Client
    assert Client.helper(3) == 3
    assert client.helper(1) == 1
    assert list(inspect.signature(Client.create).parameters) == ["n"]
    assert list(inspect.signature(client.method).parameters) == ["extra"]
    assert list(inspect.signature(Client.helper).parameters) == ["n"]
    assert seen == [
        ("method", 3 * PER_CONFIG),
        ("classmethod", 2 * PER_CONFIG),
        ("classmethod", 1 * PER_CONFIG),
        ("classmethod, other order", 1 * PER_CONFIG),
        ("staticmethod", 3 * PER_CONFIG),
        ("staticmethod", 1 * PER_CONFIG),
    ]


def test_misuse_is_refused_at_decoration_time():
    def gen():
        yield config()

    async def agen():
        yield config()

    for function in (gen, agen):
        with pytest.raises(TypeError, match="generator"):
            guarded(function)
    with pytest.raises(ValueError, match="step_timeout_s"):
        guarded(step_timeout_s=0)
    with pytest.raises(TypeError, match="on_release"):
        guarded(on_release="print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callables"):
        guarded(42)  # type: ignore[type-var]


# -- the instrumentation ----------------------------------------------------------


def test_instrumentation_is_installed_lazily_and_reversibly():
    signature = inspect.signature(speechsdk.SpeechConfig)
    _guarded._uninstall()
    try:
        pristine = speechsdk.SpeechConfig.__dict__["__init__"]
        assert not hasattr(pristine, "__wrapped__")
        seen: list[GuardStatistics] = []
        guarded(on_release=seen.append)(config)()
        patched = speechsdk.SpeechConfig.__dict__["__init__"]
        assert patched is not pristine
        assert patched.__wrapped__ is pristine
        assert inspect.signature(speechsdk.SpeechConfig) == signature
        assert seen[0].objects_created == PER_CONFIG
        classes = set(_guarded._installed)
        # Introspection found the recognizers, configs, streams, results...
        for cls in (
            speechsdk.SpeechRecognizer,
            speechsdk.transcription.ConversationTranscriber,
            speechsdk.translation.TranslationRecognizer,
            speechsdk.SpeechSynthesizer,
            speechsdk.audio.PushAudioInputStream,
            speechsdk.SpeechRecognitionResult,
            speechsdk.PropertyCollection,
        ):
            assert cls in classes
        # ... and nothing without a native handle.
        assert speechsdk.EventSignal not in classes
        assert speechsdk.CancellationDetails not in classes
    finally:
        _guarded._uninstall()
    assert speechsdk.SpeechConfig.__dict__["__init__"] is pristine
    guarded(config)()  # leave it installed, as any earlier guarded call would


def test_objects_made_outside_guarded_calls_are_not_tracked():
    seen: list[GuardStatistics] = []
    outside = config()

    @guarded(on_release=seen.append)
    def uses(existing: speechsdk.SpeechConfig) -> speechsdk.SpeechConfig:
        return existing

    assert uses(outside) is outside
    assert seen[0].objects_created == 0
    assert seen[0].scope.survivors == 0


def test_a_long_call_keeps_bounded_bookkeeping(no_automatic_gc):
    """Short-lived objects are forgotten as they die; only the live ones reach the scope."""
    seen: list[GuardStatistics] = []
    sizes: list[int] = []

    @guarded(on_release=seen.append)
    def churn() -> speechsdk.SpeechConfig:
        kept = config()
        for _ in range(3000):
            config()
        call = _guarded._active.get()
        assert call is not None
        sizes.append(len(call.alive()))
        sizes.append(len(call._refs))
        return kept

    kept = churn()
    (stats,) = seen
    assert stats.objects_created == 3001 * PER_CONFIG
    assert sizes[0] == PER_CONFIG  # `kept` and its PropertyCollection
    assert sizes[1] < 200  # dead refs pruned as the call runs
    assert stats.scope.objects_tracked == PER_CONFIG
    assert stats.scope.survivors == PER_CONFIG  # returned, not strict: allowed
    del kept


def test_a_guarded_call_on_an_sdk_callback_thread_is_released_by_the_reaper(
    speech_service, wav_path
):
    """The Scope never releases on an SDK thread; the statistics are not final then."""
    seen: list[GuardStatistics] = []
    scopes: list[Scope | None] = []
    failures: list[BaseException] = []

    @guarded(strict=True, on_release=seen.append)
    def in_callback() -> None:
        scopes.append(current_scope())
        config()

    def on_recognized(evt):
        try:
            in_callback()
        except BaseException as exc:  # the SDK would only log it
            failures.append(exc)

    speech = recognizer(speech_service, wav_path)
    speech.recognized.connect(on_recognized)
    with pytest.warns(RuntimeWarning, match="deferred"):
        assert speech.recognize_once_async().get().text
    speech.recognized.disconnect_all()
    assert not failures
    (stats,) = seen
    assert stats.objects_created == PER_CONFIG
    assert stats.scope is None
    (scope,) = scopes
    assert scope is not None
    assert scope.wait_released(5)
    assert scope.statistics().deferred


def test_strict_sees_results_kept_by_callbacks_connected_on_raw_objects(speech_service, wav_path):
    """Issue 9: results built on SDK threads belong to the call that made their recognizer."""
    config = speech_service.speech_config()
    baseline = native_handles()

    @guarded(strict=True)
    def transcribe_keeping_results():
        results = []
        transcriber = speechsdk.transcription.ConversationTranscriber(
            speech_config=config, audio_config=speechsdk.audio.AudioConfig(filename=wav_path)
        )
        done = threading.Event()
        transcriber.transcribed.connect(lambda evt: results.append(evt.result))
        transcriber.session_stopped.connect(lambda evt: done.set())
        transcriber.start_transcribing_async().get()
        assert done.wait(10)
        return results

    with pytest.raises(LeakError) as caught:
        transcribe_keeping_results()
    assert "ConversationTranscriptionResult <- list <- return value" in str(caught.value)
    del caught
    deadline = time.monotonic() + 5
    while native_handles() != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert native_handles() == baseline


def test_an_object_with_an_async_call_is_guarded_as_a_coroutine():
    """An ASGI-style app object: its release must wait for the coroutine, not the call."""
    seen: list[GuardStatistics] = []

    class App:
        async def __call__(self, made: list) -> None:
            made.append(config())
            await asyncio.sleep(0)

    made: list = []
    app = guarded(on_release=seen.append)(App())
    asyncio.run(app(made))
    (stats,) = seen
    # A SpeechConfig and its PropertyCollection, made inside the coroutine (0 before the fix).
    assert stats.objects_created == 2
