"""check() / assert_no_leaks(): allowlist rules as pure logic, then against the real SDK."""

from __future__ import annotations

import _thread
import gc
import os
import threading
import time
import weakref

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard._core._errors import LeakError
from nativeguard._core._reaper import REAPER_THREAD_NAME
from nativeguard.integrations.azure_speech._managed import managed_recognizer
from nativeguard.verify import _registry
from nativeguard.verify._check import Allow, assert_no_leaks, check, findings, type_names
from nativeguard.verify._report import LeakReport
from nativeguard.verify._snapshot import Counts, Delta, snapshot


def delta(instances=None, handles=None, threads=(), os_threads=0, fds=0, rss=0, blocks=0) -> Delta:
    return Delta(
        instances=Counts(instances or {}),
        native_handles=Counts(handles or {}),
        new_threads=tuple(threads),
        os_threads=os_threads,
        fds=fds,
        rss_bytes=rss,
        allocated_blocks=blocks,
    )


# -- Allow ------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_allow_needs_a_reason(reason):
    with pytest.raises(ValueError, match="needs a reason"):
        Allow("SpeechRecognizer", reason)


@pytest.mark.parametrize("what", ["", " ", "thread:"])
def test_allow_needs_a_target(what):
    with pytest.raises(ValueError, match="Allow"):
        Allow(what, "because")


def test_allow_entries_must_be_allow_objects():
    with pytest.raises(TypeError, match=r"Allow\('fds', reason="):
        findings(delta(fds=1), allow=["fds"])  # type: ignore[list-item]


# -- findings: switches, types, allowlist ------------------------------------------


def test_findings_keep_everything_that_grew():
    found = findings(
        delta({"SpeechRecognizer": 1}, {"ISpxRecognizer": 1}, ["worker"], os_threads=3, fds=2)
    )
    assert dict(found.instances) == {"SpeechRecognizer": 1}
    assert dict(found.native_handles) == {"ISpxRecognizer": 1}
    assert found.new_threads == ("worker",)
    assert found.native_threads == 2  # three OS threads, one of them the named Python one
    assert found.fds == 2
    assert found


def test_findings_nothing_grew_is_falsy():
    assert not findings(delta(os_threads=-2, fds=-1, rss=10 << 20, blocks=5000))


def test_switches_turn_comparisons_off():
    found = findings(
        delta({"SpeechRecognizer": 1}, {"ISpxRecognizer": 1}, ["w"], os_threads=2, fds=1),
        native_handles=False,
        threads=False,
        fds=False,
    )
    assert dict(found.instances) == {"SpeechRecognizer": 1}
    assert not found.native_handles
    assert not found.new_threads
    assert found.native_threads == 0
    assert found.fds == 0


def test_types_limit_instances_only():
    found = findings(
        delta({"SpeechRecognizer": 1, "SpeechConfig": 2}, {"ISpxRecognizer": 1}),
        types=frozenset({"SpeechConfig"}),
    )
    assert dict(found.instances) == {"SpeechConfig": 2}
    assert dict(found.native_handles) == {"ISpxRecognizer": 1}


def test_allowlist_excuses_by_name_prefix_and_kind_and_says_which_applied():
    allow = [
        Allow("SpeechConfig", "cached by the client for the process"),
        Allow("ISpxNamedProperties", "the cached config's property bag"),
        Allow("thread:pool-", "a pool that lives for the process"),
        Allow("native_threads", "the native core keeps a timer thread"),
        Allow("fds", "the log file opened on first use"),
        Allow("SpeechSynthesizer", "unused here"),
    ]
    found = findings(
        delta(
            {"SpeechConfig": 1, "SpeechRecognizer": 1},
            {"ISpxNamedProperties": 1},
            ["pool-1", "other"],
            os_threads=3,
            fds=1,
        ),
        allow=allow,
    )
    assert dict(found.instances) == {"SpeechRecognizer": 1}
    assert not found.native_handles
    assert found.new_threads == ("other",)
    assert found.native_threads == 0
    assert found.fds == 0
    assert [a.what for a in found.allowed] == [
        "SpeechConfig",
        "ISpxNamedProperties",
        "thread:pool-",
        "native_threads",
        "fds",
    ]


def test_type_names_accept_names_and_tracked_classes_only():
    assert type_names(None) is None
    assert type_names("SpeechRecognizer") == {"SpeechRecognizer"}
    _registry.enable()
    assert type_names([speechsdk.SpeechRecognizer, "X"]) == {"SpeechRecognizer", "X"}

    class NotTracked:
        pass

    with pytest.raises(ValueError, match="NotTracked is not a tracked type"):
        type_names([NotTracked])
    with pytest.raises(TypeError, match="type names or classes"):
        type_names([3])  # type: ignore[list-item]


# -- against the real SDK -------------------------------------------------------------


def recognizer(service, wav_path) -> speechsdk.SpeechRecognizer:
    return speechsdk.SpeechRecognizer(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
    )


def naive_recognize(service, wav_path) -> None:
    """The field write-ups' pattern: the callback's closure captures the recognizer."""
    r = recognizer(service, wav_path)
    r.recognized.connect(lambda evt: print(r))
    assert r.recognize_once_async().get().text


def test_clean_block_reports_nothing(speech_service, wav_path):
    before = snapshot()
    with managed_recognizer(
        speech_service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
    ) as r:
        assert r.recognize_once_async().get().text
    assert check(before) is None
    assert_no_leaks(before)


def test_closure_cycle_is_reported_with_type_and_holder(speech_service, wav_path):
    gc.disable()  # the point: only a full enough collection would ever free it
    try:
        before = snapshot()
        naive_recognize(speech_service, wav_path)
        report = check(before, settle_s=0.3)
        assert isinstance(report, LeakReport)
        assert report.instances["SpeechRecognizer"] == 1
        assert report.native_handles["ISpxRecognizer"] == 1
        text = str(report)
        assert "SpeechRecognizer" in text
        assert "cell" in text  # the closure cell is what holds it
        with pytest.raises(LeakError) as caught:
            assert_no_leaks(before, settle_s=0.1)
        assert caught.value.report is not None
        assert str(caught.value) == str(caught.value.report)
        del caught
    finally:
        gc.enable()
        gc.collect()
    assert check(before) is None


def test_kept_result_allowed_with_reason(speech_service, wav_path):
    kept: list = []
    before = snapshot()
    r = recognizer(speech_service, wav_path)
    kept.append(r.recognize_once_async().get())
    del r
    report = check(before, settle_s=0.2)
    assert report is not None
    assert "RecognitionResult" in dict(report.instances) or report.native_handles
    names = [*report.instances, *report.native_handles]
    allow = [Allow(name, "kept on purpose for this test") for name in names]
    assert check(before, allow=allow, settle_s=0.2) is None
    kept.clear()
    assert check(before) is None


def test_thread_and_fd_leaks_are_reported(tmp_path):
    before = snapshot()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="forgotten-worker")
    thread.start()
    handle = open(tmp_path / "f", "w")  # noqa: SIM115 - leaked on purpose
    try:
        report = check(before, settle_s=0.2)
        assert report is not None
        assert "forgotten-worker" in report.new_threads
        assert report.fds == 1
        assert check(before, threads=False, fds=False, settle_s=0.1) is None
        allowed = check(
            before,
            allow=[Allow("thread:forgotten", "joined below"), Allow("fds", "closed below")],
            settle_s=0.1,
        )
        assert allowed is None
    finally:
        stop.set()
        thread.join()
        handle.close()
    assert check(before) is None


def test_after_snapshot_is_compared_as_is(speech_service, wav_path):
    before = snapshot()
    r = recognizer(speech_service, wav_path)
    after = snapshot()
    with pytest.raises(LeakError, match="SpeechRecognizer"):
        assert_no_leaks(before, after)
    del r
    assert_no_leaks(before, snapshot())


def test_verify_is_the_public_facade():
    import nativeguard.verify as verify
    from nativeguard.verify import _check, _leakcheck, _memory, _report, _snapshot

    assert sorted(verify.__all__) == [
        "Allow",
        "Delta",
        "HeapStats",
        "LeakCheck",
        "LeakReport",
        "MemoryBreakdown",
        "Snapshot",
        "assert_no_leaks",
        "check",
        "heap_stats",
        "leak_check",
        "memory_breakdown",
        "snapshot",
        "trim",
    ]
    assert verify.check is _check.check
    assert verify.leak_check is _leakcheck.leak_check
    assert verify.LeakReport is _report.LeakReport
    assert verify.snapshot is _snapshot.snapshot
    assert verify.trim is _memory.trim


# -- argument checks (issue 10) ----------------------------------------------------


@pytest.mark.parametrize("value", [None, "x", 42, {"instances": {}}])
def test_check_and_assert_no_leaks_name_a_bad_baseline(value):
    with pytest.raises(TypeError, match=r"check\(\) argument 'before' must be a Snapshot"):
        check(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"assert_no_leaks\(\) argument 'before' must be"):
        assert_no_leaks(value)  # type: ignore[arg-type]
    if value is not None:  # after=None means "settle and compare with now"
        with pytest.raises(TypeError, match=r"assert_no_leaks\(\) argument 'after' must be"):
            assert_no_leaks(snapshot(), value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error"),
    [("1", TypeError), (None, TypeError), (True, TypeError), (-1, ValueError)],
)
def test_check_names_a_bad_settle_time(value, error):
    with pytest.raises(error, match="'settle_s'"):
        check(snapshot(), settle_s=value)


# -- reference cycles, whatever the collector does (issue 9) -------------------------


def naive_synthesize(service) -> weakref.ref:
    """The field write-ups' pattern on a synthesizer: its callback's closure captures it."""
    s = speechsdk.SpeechSynthesizer(service.speech_config(), audio_config=None)
    events: list[weakref.ref] = []
    done = threading.Event()

    def on_completed(evt: speechsdk.SpeechSynthesisEventArgs) -> None:
        print(s)
        events.append(weakref.ref(evt))
        done.set()

    s.synthesis_completed.connect(on_completed)
    result = s.speak_text_async("hello there").get()
    assert result.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    del result
    assert done.wait(10)
    # The SDK thread drops the event once the callback returned: only the cycle remains.
    wait_until(lambda: events[0]() is None, "the SDK callback to return")
    return weakref.ref(s)


@pytest.fixture
def eager_collector():
    """Automatic collections on (almost) every allocation, for the span of the test."""
    thresholds = gc.get_threshold()
    was_enabled = gc.isenabled()
    gc.collect()
    yield lambda: (gc.enable(), gc.set_threshold(1, 1, 1))
    gc.set_threshold(*thresholds)
    if not was_enabled:
        gc.disable()
    gc.collect()


def test_cycle_collected_during_the_settle_is_still_a_leak(speech_service, eager_collector):
    gc.disable()  # until the cycle exists: then the check's own allocations collect it
    before = snapshot()
    alive = naive_synthesize(speech_service)
    assert alive() is not None  # the cycle, nothing collected yet
    collected_before = _registry.collected().get("SpeechSynthesizer", 0)
    eager_collector()
    report = check(before, settle_s=0.3)
    # An independent measure that the collector did run and free it meanwhile:
    assert alive() is None
    assert _registry.collected().get("SpeechSynthesizer", 0) == collected_before + 1
    assert report is not None
    assert report.instances["SpeechSynthesizer"] == 1
    assert report.collected["SpeechSynthesizer"] == 1
    assert "left in reference cycles, already freed by an automatic garbage collection" in str(
        report
    )
    assert "SpeechSynthesizer +1" in str(report)


def test_cycle_collected_before_the_check_starts_is_a_leak(speech_service, eager_collector):
    gc.disable()
    before = snapshot()
    alive = naive_synthesize(speech_service)
    eager_collector()
    junk = [[] for _ in range(100)]  # allocations: automatic collections run now
    del junk
    assert alive() is None
    with pytest.raises(LeakError, match="SpeechSynthesizer"):
        assert_no_leaks(before, settle_s=0.2)


def test_an_explicit_collection_is_the_codes_own_release(speech_service, eager_collector):
    """The manual pattern (drop it, then ``gc.collect()``) frees it on purpose: no leak."""
    gc.disable()
    before = snapshot()
    alive = naive_synthesize(speech_service)
    gc.enable()  # the counts are far above the threshold now, but this call is explicit
    gc.collect()
    assert alive() is None
    assert check(before, settle_s=0.3) is None


# -- threads by identity (issue 10) --------------------------------------------------


def task_ids() -> set[int]:
    return {int(entry) for entry in os.listdir("/proc/self/task")}


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_leaked_native_thread_is_found_while_another_native_thread_exits():
    gates = {"old": threading.Event(), "new": threading.Event()}
    ids: dict[str, int] = {}

    def native(name: str) -> None:  # started with _thread: no threading.Thread, no name
        ids[name] = threading.get_native_id()
        gates[name].wait()

    _thread.start_new_thread(native, ("old",))  # "an SDK thread of an earlier test"
    wait_until(lambda: ids.get("old") in task_ids(), "the earlier native thread")
    before = snapshot()
    try:
        _thread.start_new_thread(native, ("new",))  # the leak
        wait_until(lambda: ids.get("new") in task_ids(), "the leaked native thread")
        gates["old"].set()  # the earlier thread ends during the same test
        wait_until(lambda: ids["old"] not in task_ids(), "the earlier thread's exit")
        # A count says nothing changed (other threads aside); identity says one is new.
        assert before.diff(snapshot()).new_native_threads == 1
        report = check(before, settle_s=0.2)
        assert report is not None
        assert report.new_threads == ("1 native thread(s) without a Python name",)
    finally:
        gates["new"].set()
        gates["old"].set()
    wait_until(lambda: ids["new"] not in task_ids(), "the leaked thread's exit")
    assert check(before, settle_s=1.0) is None


def test_a_user_thread_named_like_the_reaper_is_checked():
    before = snapshot()
    stop = threading.Event()
    impostor = threading.Thread(target=stop.wait, name=REAPER_THREAD_NAME, daemon=True)
    impostor.start()
    try:
        report = check(before, settle_s=0.2)
        assert report is not None
        assert report.new_threads == (REAPER_THREAD_NAME,)
        assert "native thread" not in str(report)  # counted once, by its name
    finally:
        stop.set()
        impostor.join()
    assert check(before) is None


def test_check_waits_for_releases_queued_on_the_reaper():
    """A release handed to the reaper is "later", not "never": check() waits for it."""
    from nativeguard._core._reaper import get_reaper

    before = snapshot()
    kept = [speechsdk.SpeechConfig(subscription="k", region="westus")]
    alive = weakref.ref(kept[0])

    def release_late() -> None:
        time.sleep(0.6)  # longer than the whole settle below
        kept.clear()

    assert get_reaper().submit("test: a late release", release_late)
    assert check(before, settle_s=0.1) is None
    assert alive() is None  # independently: the object really is gone
