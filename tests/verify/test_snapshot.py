"""Live-object registry, snapshots, deltas and settling, against the real SDK 1.53."""

from __future__ import annotations

import _thread
import json
import os
import pickle
import tempfile
import threading
import time
from typing import Any

import azure.cognitiveservices.speech as speechsdk
import psutil
import pytest

from nativeguard._core import _construction
from nativeguard._core._reaper import REAPER_THREAD_NAME, get_reaper
from nativeguard.integrations.azure_speech import native_handles
from nativeguard.verify import _registry
from nativeguard.verify._snapshot import Counts, Delta, Snapshot, settle, snapshot


@pytest.fixture(autouse=True)
def registry_enabled() -> None:
    _registry.enable()


def recognizer(service: Any, wav: str) -> speechsdk.SpeechRecognizer:
    return speechsdk.SpeechRecognizer(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
    )


def count(name: str) -> int:
    return _registry.counts().get(name, 0)


# -- the registry -----------------------------------------------------------------


def test_registry_counts_each_recognizer_exactly_once_and_uncounts_it_on_release(
    speech_service, wav_path
):
    config = speech_service.speech_config()
    before = _registry.counts()
    handles_before = native_handles().get("ISpxRecognizer", 0)
    made = []
    for n in range(1, 4):
        made.append(
            speechsdk.SpeechRecognizer(config, speechsdk.audio.AudioConfig(filename=wav_path))
        )
        assert count("SpeechRecognizer") == before.get("SpeechRecognizer", 0) + n
        # Independent measures: a walk of the whole heap, and the SDK core's own table.
        assert _registry.scan_heap().get("SpeechRecognizer", 0) == count("SpeechRecognizer")
        assert native_handles().get("ISpxRecognizer", 0) == handles_before + n
    # Each recognizer owns a property bag; the AudioConfigs were temporaries.
    assert count("PropertyCollection") == before.get("PropertyCollection", 0) + 3
    assert count("AudioConfig") == before.get("AudioConfig", 0)
    assert [type(obj) for obj in _registry.live("SpeechRecognizer")] == [
        speechsdk.SpeechRecognizer
    ] * 3
    while made:
        made.pop()
        assert count("SpeechRecognizer") == before.get("SpeechRecognizer", 0) + len(made)
        assert native_handles().get("ISpxRecognizer", 0) == handles_before + len(made)
    assert _registry.counts() == before
    assert _registry.scan_heap().get("SpeechRecognizer", 0) == before.get("SpeechRecognizer", 0)


def test_registry_sees_results_built_on_sdk_callback_threads(speech_service, wav_path):
    speech = recognizer(speech_service, wav_path)
    kept: list[speechsdk.SpeechRecognitionResult] = []
    done = threading.Event()
    speech.recognized.connect(lambda evt: kept.append(evt.result))
    speech.session_stopped.connect(lambda evt: done.set())
    before = count("SpeechRecognitionResult")
    speech.start_continuous_recognition_async().get()
    assert done.wait(10)
    speech.stop_continuous_recognition_async().get()
    speech.recognized.disconnect_all()
    speech.session_stopped.disconnect_all()
    assert len(kept) == 2
    assert count("SpeechRecognitionResult") == before + 2
    assert _registry.scan_heap().get("SpeechRecognitionResult", 0) == before + 2
    # Counted on the SDK's threads without registering them as _DummyThreads.
    assert not [t for t in threading.enumerate() if isinstance(t, threading._DummyThread)]
    kept.clear()
    assert count("SpeechRecognitionResult") == before


def test_registry_counts_stay_exact_under_concurrent_construction(speech_service):
    config = speech_service.speech_config()
    before = _registry.counts()
    peak: list[int] = []
    start = threading.Barrier(4)

    def churn() -> None:
        start.wait()
        for _ in range(300):
            bag = speechsdk.SpeechConfig(subscription="k", region="westus")
            del bag
        peak.append(count("SpeechConfig"))

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(peak) == 4
    assert _registry.counts() == before
    # Independently: the heap holds exactly what the registry says, per type.
    assert _registry.scan_heap().get("SpeechConfig", 0) == before.get("SpeechConfig", 0)
    del config


def test_track_counts_any_weakly_referenceable_object_once():
    class Held:
        pass

    first, second = Held(), Held()
    _registry.track(first)
    _registry.track(first)
    _registry.track(second)
    assert count("test_track_counts_any_weakly_referenceable_object_once.<locals>.Held") == 2
    assert set(map(id, _registry.live(Held.__qualname__))) == {id(first), id(second)}
    del first
    assert count(Held.__qualname__) == 1
    del second
    assert Held.__qualname__ not in _registry.counts()
    with pytest.raises(TypeError, match="weak references"):
        _registry.track(42)


def test_track_counts_a_proxy_as_its_proxy_class():
    import wrapt

    class Target:
        pass

    class Proxy(wrapt.ObjectProxy):  # type: ignore[type-arg]
        pass

    target = Target()
    proxy = Proxy(target)
    _registry.track(proxy)
    assert count(Proxy.__qualname__) == 1
    assert count(Target.__qualname__) == 0
    del proxy
    assert count(Proxy.__qualname__) == 0


def test_track_types_counts_new_and_existing_instances_and_subclasses():
    class Plain:
        def __init__(self, value: int) -> None:
            self.value = value

    class Derived(Plain):
        pass

    class WithNew:  # no __init__: object.__init__ must not receive the arguments
        def __new__(cls, value: int) -> WithNew:
            return super().__new__(cls)

    existing = Plain(0)
    _registry.track_types(Plain, WithNew)
    _registry.track_types(Plain)  # idempotent: not wrapped twice
    assert count(Plain.__qualname__) == 1  # seeded from the heap
    made = [Plain(1), Derived(2), WithNew(3)]
    assert made[0].value == 1
    assert made[1].value == 2
    assert (count(Plain.__qualname__), count(Derived.__qualname__)) == (2, 1)
    assert count(WithNew.__qualname__) == 1
    assert set(_registry.tracked_types()) >= {Plain, WithNew}
    del made, existing
    for cls in (Plain, Derived, WithNew):
        assert count(cls.__qualname__) == 0


def test_track_types_refuses_what_it_cannot_track():
    class Slotted:
        __slots__ = ("x",)

    with pytest.raises(TypeError, match="weak references"):
        _registry.track_types(Slotted)

    class Fine:
        pass

    pristine = Fine.__dict__.get("__init__")
    with pytest.raises(TypeError, match="cannot track set"):
        _registry.track_types(Fine, set)  # a built-in type's __init__ is read-only
    assert Fine.__dict__.get("__init__") is pristine  # all or nothing
    assert Fine not in _registry.tracked_types()
    with pytest.raises(TypeError, match="classes"):
        _registry.track_types("SpeechRecognizer")  # type: ignore[arg-type]


def test_enable_seeds_the_registry_from_the_heap(speech_service):
    config = speech_service.speech_config()
    _registry.disable()
    try:
        assert not _registry.enabled()
        unseen = speechsdk.SpeechConfig(subscription="k", region="westus")
        with_unseen = count("SpeechConfig")
        _registry.enable()
        assert _registry.enabled()
        assert count("SpeechConfig") == with_unseen + 1
        del unseen
        assert count("SpeechConfig") == with_unseen
    finally:
        _registry.enable()
    del config


def test_no_listener_means_no_work_in_the_constructor(monkeypatch: pytest.MonkeyPatch):
    def must_not_run(obj: object) -> bool:
        raise AssertionError("the constructor hook did work with nobody listening")

    before = _registry.counts()
    monkeypatch.setattr(_construction, "_listeners", ())  # nobody listens: not @guarded either
    monkeypatch.setattr(_construction, "holds_handle", must_not_run)
    made = speechsdk.SpeechConfig(subscription="k", region="westus")
    assert _registry.counts() == before
    monkeypatch.undo()
    del made


def test_construction_listener_is_called_once_per_object_and_removable():
    seen: list[str] = []
    remove = _construction.add_listener(lambda obj: seen.append(type(obj).__name__))
    try:
        made = speechsdk.SpeechConfig(subscription="k", region="westus")
    finally:
        remove()
        remove()  # idempotent
    speechsdk.SpeechConfig(subscription="k", region="westus")
    # The outermost constructor only: one SpeechConfig (plus its property bag).
    assert sorted(seen) == ["PropertyCollection", "SpeechConfig"]
    assert speechsdk.SpeechRecognizer in _construction.installed_classes()
    with pytest.raises(TypeError, match="callable"):
        _construction.add_listener("print")  # type: ignore[arg-type]
    del made


# -- snapshots and deltas ---------------------------------------------------------


def test_a_kept_recognizer_is_a_leak_and_a_released_one_is_not(speech_service, wav_path):
    kept: list[speechsdk.SpeechRecognizer] = []
    before = snapshot()
    speech = recognizer(speech_service, wav_path)
    assert speech.recognize_once_async().get().text
    kept.append(speech)
    del speech
    after, delta = settle(before, timeout=0.4)
    assert delta.leaked()
    assert delta.instances == {"SpeechRecognizer": 1, "PropertyCollection": 1}
    assert delta.native_handles == {"ISpxRecognizer": 1, "ISpxNamedProperties": 1}
    # A recognizer that ran holds SDK threads and its connection.
    assert delta.os_threads > 0
    assert delta.fds > 0
    assert delta.leaked(native_handles=False, threads=False, fds=False)  # instances alone
    assert "SpeechRecognizer +1" in str(delta)
    assert after.native_handles == native_handles()

    kept.clear()
    _, delta = settle(before)
    assert not delta.leaked(), str(delta)
    assert delta.instances == {}
    assert delta.native_handles == {}
    assert delta.new_threads == ()
    assert delta.os_threads <= 0
    assert delta.fds <= 0


def test_settle_waits_for_a_late_release_on_another_thread(speech_service, wav_path):
    kept = [recognizer(speech_service, wav_path)]
    before = snapshot()
    kept.append(recognizer(speech_service, wav_path))
    timer = threading.Timer(0.2, kept.pop)  # the release happens on the timer thread
    start = time.monotonic()
    timer.start()
    _, delta = settle(before, timeout=2.0)
    elapsed = time.monotonic() - start
    assert not delta.leaked(), str(delta)
    assert 0.15 < elapsed < 1.0
    timer.join()
    kept.clear()


def test_settle_gives_up_within_its_timeout(speech_service, wav_path):
    before = snapshot()
    kept = [recognizer(speech_service, wav_path)]
    start = time.monotonic()
    _, delta = settle(before, timeout=0.6, interval=0.02)
    elapsed = time.monotonic() - start
    assert delta.leaked()
    assert delta.instances["SpeechRecognizer"] == 1
    # Counts that stay put for half the timeout end the wait early.
    assert 0.25 < elapsed < 0.6 + 0.2
    start = time.monotonic()
    _, delta = settle(before, timeout=0)
    assert delta.leaked()
    assert time.monotonic() - start < 0.1
    kept.clear()
    with pytest.raises(ValueError, match="timeout"):
        settle(before, timeout=-1)
    with pytest.raises(ValueError, match="interval"):
        settle(before, interval=0)


def quiet_snapshot() -> Snapshot:
    """A baseline once threads of earlier tests have finished exiting.

    A joined thread can still be in the kernel's task list for a moment after
    Python's join() returned: a baseline taken then would count it.
    """
    previous = snapshot()
    for _ in range(100):
        time.sleep(0.01)
        now = snapshot()
        if now.os_threads == previous.os_threads:
            return now
        previous = now
    return previous


def test_a_new_thread_and_an_open_file_are_growth():
    before = quiet_snapshot()
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="leaky-thread")
    thread.start()
    with tempfile.TemporaryFile() as handle:
        delta = before.diff(snapshot())
        assert delta.new_threads == ("leaky-thread",)
        assert delta.os_threads == 1
        assert delta.fds == 1
        assert delta.leaked()
        assert delta.leaked(fds=False)
        assert not delta.leaked(threads=False, fds=False)
        handle.write(b"x")
    release.set()
    thread.join()
    # The kernel may count a joined thread a moment longer: poll, bounded.
    deadline = time.monotonic() + 2
    delta = before.diff(snapshot())
    while delta.os_threads and time.monotonic() < deadline:
        time.sleep(0.01)
        delta = before.diff(snapshot())
    assert (delta.new_threads, delta.os_threads, delta.fds) == ((), 0, 0)
    assert not delta.leaked()


def test_foreign_threads_count_as_os_threads_only():
    """A native thread registered by current_thread() is not a Python thread we compare."""
    before = quiet_snapshot()
    registered = threading.Event()
    release = threading.Event()

    def foreign() -> None:
        threading.current_thread()  # what logging on an SDK thread does
        registered.set()
        release.wait()

    _thread.start_new_thread(foreign, ())
    assert registered.wait(5)
    try:
        assert any(isinstance(t, threading._DummyThread) for t in threading.enumerate())
        during = snapshot()
        delta = before.diff(during)
        assert not any(name.startswith("Dummy") for name in during.python_threads)
        assert delta.new_threads == ()
        assert delta.os_threads == 1
    finally:
        release.set()


def test_the_reaper_is_left_out_of_both_thread_figures():
    reaper = get_reaper()
    done = threading.Event()
    assert reaper.submit("test job", done.set)
    assert done.wait(5)
    thread = reaper.thread
    assert thread is not None
    assert thread.is_alive()
    now = snapshot()
    assert REAPER_THREAD_NAME not in now.python_threads
    reapers = [t for t in threading.enumerate() if t.name == REAPER_THREAD_NAME]
    assert thread in reapers  # others: Reapers made by tests of the reaper
    assert now.os_threads == psutil.Process().num_threads() - len(reapers)


def test_full_heap_agrees_with_the_registry(speech_service, wav_path):
    class Extra:
        pass

    _registry.track_types(Extra)
    kept = [recognizer(speech_service, wav_path), speech_service.speech_config(), Extra()]
    registry, heap = snapshot(), snapshot(full_heap=True)
    assert heap.full_heap
    assert not registry.full_heap
    assert heap.instances == registry.instances
    assert registry.instances["SpeechRecognizer"] >= 1
    assert registry.instances[Extra.__qualname__] == 1
    assert _registry.scan_heap() == dict(registry.instances)
    kept.clear()
    assert snapshot(full_heap=True).instances == snapshot().instances


def test_snapshot_is_cheap():
    snapshot()
    start = time.perf_counter()
    for _ in range(50):
        snapshot()
    assert (time.perf_counter() - start) / 50 < 0.005


# -- the data types ------------------------------------------------------------------


def make_snapshot(**changes: Any) -> Snapshot:
    values: dict[str, Any] = {
        "instances": Counts({"SpeechRecognizer": 1}),
        "native_handles": Counts({"ISpxRecognizer": 1, "ISpxAudioConfig": 1}),
        "python_threads": ("MainThread", "worker"),
        "os_threads": 4,
        "fds": 10,
        "rss_bytes": 100 << 20,
        "allocated_blocks": 1000,
        "full_heap": False,
    }
    values.update(changes)
    return Snapshot(**values)


def test_diff_lists_only_what_grew():
    before = make_snapshot()
    after = make_snapshot(
        instances=Counts({"SpeechRecognizer": 3, "PropertyCollection": 1}),
        native_handles=Counts({"ISpxRecognizer": 1}),  # one type fewer: not listed
        python_threads=("MainThread", "worker", "worker", "Thread-7"),
        os_threads=3,
        fds=12,
        rss_bytes=99 << 20,
        allocated_blocks=1500,
    )
    delta = before.diff(after)
    assert delta == Delta(
        instances={"PropertyCollection": 1, "SpeechRecognizer": 2},
        native_handles={},
        new_threads=("Thread-7", "worker"),
        os_threads=-1,
        fds=2,
        rss_bytes=-(1 << 20),
        allocated_blocks=500,
    )
    assert delta.leaked()
    assert before.diff(before) == Delta({}, {}, (), 0, 0, 0, 0)
    assert not before.diff(before).leaked()


def test_leaked_never_counts_rss_or_blocks_and_honours_its_switches():
    quiet = Delta({}, {}, (), 0, 0, 500 << 20, 10**6)
    assert not quiet.leaked()
    handles = Delta({}, {"ISpxRecognizer": 1}, (), 0, 0, 0, 0)
    assert handles.leaked()
    assert not handles.leaked(native_handles=False)
    threads = Delta({}, {}, ("t",), 0, 0, 0, 0)
    assert threads.leaked()
    assert not threads.leaked(threads=False)
    os_only = Delta({}, {}, (), 1, 0, 0, 0)
    assert os_only.leaked()
    assert not os_only.leaked(threads=False)
    fds = Delta({}, {}, (), 0, 1, 0, 0)
    assert not fds.leaked(fds=False)
    assert Delta({"X": 1}, {}, (), 0, 0, 0, 0).leaked(
        native_handles=False, threads=False, fds=False
    )


def test_snapshots_and_deltas_are_frozen_hashable_picklable_and_serialisable():
    snap = snapshot()
    with pytest.raises(AttributeError):
        snap.fds = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.instances["X"] = 1  # type: ignore[index]
    assert hash(snap) == hash(pickle.loads(pickle.dumps(snap)))
    assert pickle.loads(pickle.dumps(snap)) == snap
    delta = make_snapshot().diff(make_snapshot(instances=Counts({"SpeechRecognizer": 2})))
    assert json.loads(json.dumps(delta.to_dict())) == {
        "instances": {"SpeechRecognizer": 1},
        "native_handles": {},
        "new_threads": [],
        "os_threads": 0,
        "fds": 0,
        "rss_bytes": 0,
        "allocated_blocks": 0,
        "native_threads": None,  # hand-made snapshots carry no thread ids
        "collected": {},
    }
    assert json.loads(json.dumps(snap.to_dict()))["python_threads"] == list(snap.python_threads)
    assert list(Counts({"b": 1, "a": 2})) == ["a", "b"]
    assert repr(Counts({"a": 1})) == "{'a': 1}"


# -- file descriptors on their own (issue 17) -----------------------------------------


def open_fds() -> int:
    """Counted independently of psutil: the kernel's fd directory (minus listdir's own)."""
    return len(os.listdir("/proc/self/fd")) - 1


def test_fd_growth_alone_is_a_leak_and_fd_shrinkage_is_not():
    assert Delta({}, {}, (), 0, 1, 0, 0).leaked()
    assert not Delta({}, {}, (), 0, 1, 0, 0).leaked(fds=False)
    assert not Delta({}, {}, (), 0, -1, 0, 0).leaked()
    before = quiet_snapshot()
    kernel_before = open_fds()
    read_end, write_end = os.pipe()
    try:
        delta = before.diff(snapshot())
        assert open_fds() - kernel_before == 2
        assert delta.fds == 2
        assert (dict(delta.instances), dict(delta.native_handles), delta.new_threads) == (
            {},
            {},
            (),
        )
        assert delta.new_native_threads == 0  # only fds grew
        assert delta.leaked()
        assert not delta.leaked(fds=False)
    finally:
        os.close(read_end)
        os.close(write_end)
    # The other way: fds open at the baseline and closed since are no leak.
    read_end, write_end = os.pipe()
    baseline = snapshot()
    os.close(read_end)
    os.close(write_end)
    shrunk = baseline.diff(snapshot())
    assert shrunk.fds == -2
    assert not shrunk.leaked()


def test_settle_waits_for_fds_that_close_late():
    pending: list[int] = []
    go = threading.Event()

    def close_late() -> None:
        go.wait(5)
        time.sleep(0.3)
        for fd in pending:
            os.close(fd)

    closer = threading.Thread(target=close_late, name="late-closer")
    closer.start()  # before the baseline: its exit is no growth either way
    before = quiet_snapshot()
    kernel_before = open_fds()
    pending.extend(os.pipe())
    go.set()
    kernel_open = open_fds() - kernel_before
    try:
        started = time.monotonic()
        _, delta = settle(before, timeout=3.0)
        waited = time.monotonic() - started
    finally:
        closer.join()
    assert kernel_open == 2  # the pipe was open when settle began
    assert delta.fds <= 0
    assert not delta.leaked()
    assert 0.2 <= waited < 3.0  # it polled until they closed, not to its timeout
