"""The Scope engine against the real SDK: exact native handle counts."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import inspect
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import azure.cognitiveservices.speech as speechsdk
import pytest

import nativeguard
from nativeguard._core import _malloc
from nativeguard._core._adapters import register_adapter, run_bounded
from nativeguard._core._errors import (
    ClosedResourceError,
    NativeGuardError,
    ReleaseError,
    ReleaseTimeout,
)
from nativeguard._core._scope import Scope, creation_tracebacks_enabled, set_creation_tracebacks
from nativeguard.integrations.azure_speech import native_handles
from nativeguard.testing import TokenService


@pytest.fixture(autouse=True)
def inline_release():
    """These tests read what close() itself did (statistics right after it, survivors
    while the caller still holds an object): the inline semantics. The default
    (background) is tested in test_reaper.py and test_fault_matrix.py."""
    old = nativeguard.configure(release="inline")
    yield
    nativeguard.configure(**old)


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
    assert stats.release_steps_run == 2  # no stop wait, stop_transcribing_async
    assert stats.release_errors == 0
    # The caller still held the transcriber while the scope closed.
    assert stats.survivors == 1
    assert stats.collections == (0, 1, 2)


def test_no_collection_when_everything_is_already_dead(speech_service):
    scope = Scope()
    with scope:
        config = scope.register(speech_service.speech_config())
        # Dies before the scope released it: warned, like an unclosed file.
        with pytest.warns(ResourceWarning, match="before its nativeguard scope released it"):
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


def python_threads() -> set[threading.Thread]:
    """Threads Python started. A _DummyThread (an SDK callback thread seen by an
    earlier test) vanishes from enumerate() whenever a new thread reuses its ident."""
    return {t for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}


def test_executor_is_shut_down(no_automatic_gc):
    before = python_threads()
    with Scope() as scope:
        executor = scope.register(ThreadPoolExecutor(max_workers=2))
        assert executor.submit(lambda: 41 + 1).result() == 42
    assert python_threads() - before == set()
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
    assert any("while releasing" in note for note in error.__notes__)
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
    # The stuck action is abandoned by design; wait it out here so it does not
    # end in the middle of a later test that compares thread sets.
    (abandoned,) = [t for t in threading.enumerate() if t.name == "nativeguard-wait: a stuck stop"]
    abandoned.join(5)
    assert not abandoned.is_alive()


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


# -- async release: aclose() and async credentials --------------------------------

TOKEN_SCOPE = "https://cognitiveservices.azure.com/.default"
OTHER_TOKEN_SCOPE = "https://storage.azure.com/.default"  # not cached: needs the transport


def credential_transport(credential):
    """The azure-core transport inside a ManagedIdentityCredential (azure-identity 1.27 layout)."""
    return credential._credential._client._pipeline._transport


def test_async_with_awaits_an_async_credentials_close():
    from azure.identity.aio import ManagedIdentityCredential

    async def main():
        credential = ManagedIdentityCredential()
        async with Scope() as scope:
            scope.register(credential)
            token = await credential.get_token(TOKEN_SCOPE)
            session = credential_transport(credential).session  # aiohttp.ClientSession
            assert not session.closed
        assert session.closed
        with pytest.raises(ValueError, match="transport has already been closed"):
            await credential.get_token(OTHER_TOKEN_SCOPE)
        return token, scope.statistics()

    with TokenService() as tokens, tokens.patch_environ():
        token, stats = asyncio.run(main())
        assert tokens.is_valid(token.token)
    assert stats.release_steps_run == 1
    assert stats.release_errors == 0


def test_sync_close_refuses_an_async_step_instead_of_dropping_a_coroutine():
    from azure.identity.aio import ManagedIdentityCredential

    async def main():
        credential = ManagedIdentityCredential()
        scope = Scope()
        scope.register(credential)
        await credential.get_token(TOKEN_SCOPE)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ReleaseError) as raised:
                scope.close()
            gc.collect()  # a never-awaited coroutine would warn by now
        assert not [w for w in caught if "never awaited" in str(w.message)]
        (error,) = raised.value.exceptions
        assert isinstance(error, NativeGuardError)
        assert isinstance(error, RuntimeError)
        assert "`async with Scope()`" in str(error)
        assert "aclose()" in str(error)
        assert "ManagedIdentityCredential (generic async close())" in error.__notes__[0]
        assert scope.closed  # closed, not clean
        # Nothing was closed behind our back: it still works, and we close it.
        assert not credential_transport(credential).session.closed
        await credential.close()

    with TokenService() as tokens, tokens.patch_environ():
        asyncio.run(main())


def test_sync_credentials_transport_is_closed():
    from azure.identity import ManagedIdentityCredential

    with TokenService() as tokens, tokens.patch_environ():
        credential = ManagedIdentityCredential()
        with Scope() as scope:
            scope.register(credential)
            assert tokens.is_valid(credential.get_token(TOKEN_SCOPE).token)
            transport = credential_transport(credential)
            assert transport.session is not None  # requests.Session
        assert transport.session is None
        with pytest.raises(ValueError, match="transport has already been closed"):
            credential.get_token(OTHER_TOKEN_SCOPE)
    assert scope.statistics().release_steps_run == 1


class AsyncThing:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.closed = False

    async def close(self) -> None:
        await asyncio.sleep(self.delay_s)
        self.closed = True


def test_aclose_awaits_each_step_with_a_bounded_wait():
    quick, slow = AsyncThing(), AsyncThing(delay_s=10)

    async def main():
        scope = Scope(step_timeout_s=0.1)
        scope.register(quick)
        scope.register(slow)
        start = time.monotonic()
        with pytest.raises(ReleaseError) as raised:
            await scope.aclose()
        assert time.monotonic() - start < 1
        return raised.value

    error = asyncio.run(main())
    (timeout,) = error.exceptions
    assert isinstance(timeout, ReleaseTimeout)
    assert quick.closed
    assert not slow.closed


def test_a_cancelled_aclose_still_runs_every_step_then_propagates():
    first, second = AsyncThing(delay_s=10), AsyncThing()
    plain_closed = []

    class Plain:
        def close(self) -> None:
            plain_closed.append(True)

    async def main():
        scope = Scope()
        plain = scope.register(Plain())
        scope.register(second)
        scope.register(first)  # released first (reverse order), and hangs
        task = asyncio.ensure_future(scope.aclose())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del plain
        return scope

    scope = asyncio.run(main())
    assert scope.released
    assert plain_closed == [True]
    assert not second.closed  # its coroutine could not be awaited any more...
    stats = scope.statistics()
    assert stats.release_errors == 2  # ...so it is reported, as is the interrupted one


def test_async_with_in_background_mode_drops_on_the_reaper():
    deaths: list[str] = []

    async def main():
        async with Scope(release="background") as scope:
            thing = scope.register(AsyncThing())
            weakref.finalize(thing, lambda: deaths.append(threading.current_thread().name))
            scope.adopt(thing)
            del thing
        return scope

    scope = asyncio.run(main())
    assert scope.wait_released(5)
    assert deaths == ["nativeguard-reaper"]
    assert scope.statistics().release_steps_run == 1


# -- ResourceWarning for objects that die before release ---------------------------


class Node:
    pass


def test_an_object_that_dies_before_release_warns_where_it_was_registered():
    scope = Scope()
    node = scope.register(Node())
    line = inspect.currentframe().f_lineno - 1
    with pytest.warns(ResourceWarning) as record:
        del node
    (warning,) = record
    assert str(warning.message).startswith(
        f"Node registered at {__file__}:{line} was garbage-collected before its nativeguard "
        "scope released it"
    )
    assert (warning.filename, warning.lineno) == (__file__, line)
    scope.close()
    assert scope.statistics().objects_tracked == 1


def test_with_tracemalloc_the_warning_shows_where_the_object_was_created():
    class Slotted:
        __slots__ = ("__weakref__",)

    def register_here(scope: Scope, obj: object) -> None:
        scope.register(obj)

    tracemalloc.start()
    try:
        slotted, node = Slotted(), Node()
        created = inspect.currentframe().f_lineno - 1
        scope = Scope()
        register_here(scope, slotted)
        register_here(scope, node)
        with pytest.warns(ResourceWarning) as record:
            del slotted, node
    finally:
        tracemalloc.stop()
    allocated, registered = (str(w.message) for w in record)
    assert f"Slotted created at {__file__}:{created} " in allocated
    assert "Object allocated at (most recent call last):" in allocated
    # CPython 3.11 cannot tell where objects with a __dict__ were allocated:
    # the registering stack is shown instead.
    if not registered.startswith("Node created at"):
        assert "Registered at (most recent call last):" in registered
        assert "in register_here" in registered


def test_creation_tracebacks_switch_records_the_registering_stack():
    def register_deep(scope: Scope) -> Node:
        return scope.register(Node())

    assert not creation_tracebacks_enabled()
    set_creation_tracebacks(True)
    try:
        scope = Scope()
        node = register_deep(scope)
    finally:
        set_creation_tracebacks(False)
    with pytest.warns(ResourceWarning) as record:
        del node
    message = str(record[0].message)
    assert "Registered at (most recent call last):" in message
    assert "in register_deep" in message
    assert "in test_creation_tracebacks_switch_records_the_registering_stack" in message


def test_the_warning_comes_from_whichever_thread_the_object_dies_on():
    scope = Scope()
    box = [scope.register(Node())]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker = threading.Thread(target=box.clear)
        worker.start()
        worker.join()
    assert [w.category for w in caught] == [ResourceWarning]


def test_released_survivors_and_living_objects_do_not_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scope = Scope()
        survivor = scope.register(Node())
        dies_at_release = scope.register(Node())
        scope.adopt(dies_at_release)
        del dies_at_release
        scope.close()
        del survivor  # dies after the release: no leak
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert scope.statistics().survivors == 1


def test_a_dropped_unclosed_scope_still_warns_when_its_object_dies():
    scope = Scope()
    node = scope.register(Node())
    del scope  # forgotten, never closed: the object is still unreleased
    gc.collect()
    with pytest.warns(ResourceWarning, match="Node registered at"):
        del node


def test_released_and_refused_objects_leave_nothing_armed():
    from nativeguard._core import _scope as scope_module

    before = len(scope_module._armed)
    kept = Node()
    for _ in range(50):
        with Scope(release="inline") as scope:
            node = scope.register(Node())
            scope.adopt(node)
            del node
        late = Scope()
        late.close()
        with pytest.raises(ClosedResourceError):
            late.register(kept)  # refused: must not stay armed either
    assert len(scope_module._armed) == before


def test_objects_alive_at_interpreter_exit_do_not_warn():
    script = (
        "from nativeguard._core._scope import Scope\n"
        "class Node: pass\n"
        "scope = Scope()\n"
        "node = scope.register(Node())\n"
    )
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


# -- optional heap trim --------------------------------------------------------------

_libc = ctypes.CDLL(None)
c_malloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)(("malloc", _libc))
c_free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(("free", _libc))
glibc_only = pytest.mark.skipif(not _malloc._load().malloc_trim, reason="needs glibc (malloc_trim)")
MiB = 1 << 20


@glibc_only
def test_trim_after_release_gives_freed_native_heap_back():
    # 100k x 256 B freed under one live block: ~27 MB of resident heap that
    # glibc keeps (as after a native teardown) until malloc_trim.
    blocks = [c_malloc(256) for _ in range(100_000)]
    assert all(blocks)
    try:
        with Scope(trim_threshold_bytes=MiB) as scope:
            for block in blocks[:-1]:
                c_free(block)
    finally:
        c_free(blocks[-1])
    stats = scope.statistics()
    assert stats.trim_available is True
    assert stats.trim_attempted is True
    assert stats.bytes_trimmed > 8 * MiB


@glibc_only
def test_no_trim_by_default_or_below_the_threshold():
    with Scope() as default:
        pass
    with Scope(trim_threshold_bytes=1 << 60) as high:
        pass
    for scope in (default, high):
        stats = scope.statistics()
        assert (stats.trim_available, stats.trim_attempted, stats.bytes_trimmed) == (True, False, 0)


def test_without_glibc_trimming_is_a_flagged_no_op(monkeypatch):
    monkeypatch.setattr(_malloc, "_load", lambda: _malloc._Libc(None, None, "not glibc"))
    with Scope(trim_threshold_bytes=0) as scope:
        pass
    stats = scope.statistics()
    assert (stats.trim_available, stats.trim_attempted, stats.bytes_trimmed) == (False, False, 0)


def test_new_arguments_are_checked():
    with pytest.raises(ValueError, match="release must be"):
        Scope(release="lazy")
    with pytest.raises(ValueError, match="trim_threshold_bytes"):
        Scope(trim_threshold_bytes=-1)
    with pytest.raises(ValueError, match="timeout"):
        Scope().wait_released(-1)
    assert Scope(release="background").release_mode == "background"


def test_a_collection_skipped_by_another_threads_collection_is_retried(monkeypatch):
    # Simulate CPython's behaviour while another thread collects: the first
    # call returns at once and the collection counter does not move.
    import nativeguard._core._scope as scope_module

    calls: list[int] = []
    real_collect = gc.collect

    def busy_once(generation=2):
        calls.append(generation)
        if len(calls) == 1:
            return 0
        return real_collect(generation)

    monkeypatch.setattr(scope_module.gc, "collect", busy_once)

    class Node:
        pass

    gc.disable()
    try:
        scope = Scope()
        with scope:
            node = scope.register(Node())
            node.self = node
            del node
    finally:
        gc.enable()
    assert calls[:2] == [0, 0]  # skipped, then retried
    assert scope.statistics().survivors == 0


# -- a release with nothing to do --------------------------------------------------


class _Adoptable:
    """Weak-referenceable and known to no adapter."""


def _empty_case_statistics(scope: Scope) -> nativeguard.ScopeStatistics:
    assert scope.released
    assert scope.wait_released(0)
    return scope.statistics()


@pytest.mark.parametrize("release", ["inline", "background"])
def test_an_empty_release_completes_at_once_and_counts_once(release: str) -> None:
    before = nativeguard.scopes_released()
    with Scope(release=release) as scope:  # type: ignore[arg-type]
        pass
    stats = _empty_case_statistics(scope)
    assert nativeguard.scopes_released() == before + 1
    assert (stats.objects_tracked, stats.release_steps_run, stats.survivors) == (0, 0, 0)
    assert (stats.collections, stats.release_errors, stats.reaper_dropped) == ((), 0, 0)
    assert stats.release_mode == release
    assert not stats.deferred
    assert stats.trim_attempted is False
    assert stats.trim_available is (_malloc._load().malloc_trim is not None)
    with pytest.raises(ClosedResourceError):
        scope.adopt(_Adoptable())
    scope.close()  # idempotent: nothing counted twice
    assert nativeguard.scopes_released() == before + 1


def test_an_empty_async_release_completes_without_a_thread_hop() -> None:
    async def main() -> Scope:
        async with Scope() as scope:
            pass
        return scope

    before = nativeguard.scopes_released()
    scope = asyncio.run(main())
    assert _empty_case_statistics(scope).objects_tracked == 0
    assert nativeguard.scopes_released() == before + 1


def test_a_release_with_only_an_adopted_object_still_drops_it() -> None:
    thing = _Adoptable()
    ref = weakref.ref(thing)
    with Scope(release="inline") as scope:
        scope.adopt(thing)
        del thing
        assert ref() is not None
    assert ref() is None
    assert _empty_case_statistics(scope).objects_adopted == 1


def test_an_empty_scope_with_a_trim_threshold_still_trims() -> None:
    with Scope(release="inline", trim_threshold_bytes=0) as scope:
        pass
    stats = _empty_case_statistics(scope)
    assert stats.trim_attempted is stats.trim_available


def _adopt_when_told(
    scope: Scope, box: list[object], go: threading.Event, outcome: list[str]
) -> None:
    go.wait()
    thing = box.pop()  # from here on the only strong reference: this frame's local
    try:
        scope.adopt(thing)
    except ClosedResourceError:
        outcome.append("refused")
    else:
        outcome.append("adopted")
    del thing


def test_an_adopt_racing_an_empty_close_is_either_dropped_or_refused() -> None:
    """The empty-release shortcut must not lose an object adopted while close() runs."""
    seen: dict[str, int] = {"refused": 0, "adopted": 0}
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # more thread switches: more interleavings of the race
    try:
        _race_adopt_and_close(seen)
    finally:
        sys.setswitchinterval(interval)
    assert sum(seen.values()) == 300
    assert seen["adopted"] >= 100  # every third round adopts first
    assert seen["refused"] >= 1


def _race_adopt_and_close(seen: dict[str, int]) -> None:
    for round_ in range(300):
        scope = Scope(release="inline")
        box: list[object] = [_Adoptable()]
        ref = weakref.ref(box[0])
        go = threading.Event()
        outcome: list[str] = []
        worker = threading.Thread(target=_adopt_when_told, args=(scope, box, go, outcome))
        worker.start()
        go.set()
        if round_ % 3 == 1:
            worker.join(5)  # adopted before close() starts: the normal path must drop it
        elif round_ % 3 == 2:
            time.sleep(0)  # let the two race
        scope.close()
        worker.join(5)
        assert not worker.is_alive()
        assert len(outcome) == 1
        seen[outcome[0]] += 1
        if outcome == ["adopted"]:
            assert scope.wait_released(5), "a release with an adopted object did not complete"
        assert ref() is None, f"{outcome}: the object outlived the release and the worker"
