"""The reaper thread, background release and deferral off SDK callback threads.

Against the real SDK: the native handle table is the ground truth, and
weakref.finalize callbacks record on which thread each recognizer died.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard import quick_step, register_adapter
from nativeguard._core import _reaper
from nativeguard._core._errors import ClosedResourceError, ReleaseError
from nativeguard._core._reaper import REAPER_THREAD_NAME, Reaper, get_reaper
from nativeguard._core._scope import Scope
from nativeguard.integrations.azure_speech import native_handles


def recognizers() -> int:
    return native_handles().get("ISpxRecognizer", 0)


def new_recognizer(service, wav) -> speechsdk.SpeechRecognizer:
    return speechsdk.SpeechRecognizer(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav)
    )


def foreign(ident: int) -> bool:
    """Whether no thread Python started has this ident (an SDK callback thread).

    Tests record ``threading.get_ident()`` in callbacks: ``current_thread()``
    there would leave a _DummyThread in ``threading.enumerate()`` for later
    tests that compare thread sets.
    """
    return not any(
        t.ident == ident and not isinstance(t, threading._DummyThread)
        for t in threading.enumerate()
    )


def died_on(obj: object) -> list[str]:
    """Names of the threads ``obj`` died on (one entry, once it has)."""
    names: list[str] = []
    weakref.finalize(obj, lambda: names.append(threading.current_thread().name))
    return names


class Gate:
    """Blocks a reaper until opened, so its queue can be inspected deterministically."""

    def __init__(self, reaper: Reaper) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        assert reaper.submit("test gate", self._block)
        assert self.entered.wait(2)

    def _block(self) -> None:
        self.entered.set()
        self.opened.wait(5)

    def open(self) -> None:
        self.opened.set()


class Node:
    """A plain weak-referenceable object."""


@pytest.fixture
def small_reaper(monkeypatch):
    """The process reaper replaced by one with room for one queued job."""
    reaper = Reaper(max_pending=1)
    monkeypatch.setattr(_reaper, "_reaper", reaper)
    yield reaper
    reaper.wait_idle(5)


# -- the reaper itself ---------------------------------------------------------


def test_jobs_start_in_order_on_named_daemon_python_threads():
    reaper = Reaper(max_workers=1)  # one worker: order of start is order of run
    ran: list[tuple[int, threading.Thread]] = []
    for index in range(3):
        assert reaper.submit("probe", lambda i=index: ran.append((i, threading.current_thread())))
    assert reaper.wait_idle(2)
    assert [index for index, _ in ran] == [0, 1, 2]
    threads = {thread for _, thread in ran}
    assert len(threads) == 1
    (thread,) = threads
    assert thread.name == REAPER_THREAD_NAME
    assert thread.daemon
    assert not isinstance(thread, threading._DummyThread)
    assert thread is reaper.thread
    assert reaper.threads() == [thread]


def test_a_stuck_job_does_not_hold_up_the_next_one():
    """One release stuck in the native core must not delay everyone else's."""
    reaper = Reaper(max_workers=4)
    stuck, ran = threading.Event(), threading.Event()
    assert reaper.submit("stuck job", lambda: stuck.wait(10))
    assert reaper.submit("next job", ran.set)
    try:
        assert ran.wait(2)
        assert len(reaper.threads()) == 2
        assert reaper.pending() == 1
    finally:
        stuck.set()
    assert reaper.wait_idle(2)


def test_a_full_queue_refuses_at_once_instead_of_blocking(small_reaper):
    gate = Gate(small_reaper)
    try:
        assert small_reaper.submit("fills the queue", lambda: None)
        start = time.monotonic()
        assert small_reaper.submit("one too many", lambda: None) is False
        assert time.monotonic() - start < 0.1
        assert small_reaper.submit("must not run here", lambda: None, bounded=False)
        assert small_reaper.pending() == 3  # the gate runs, two wait
    finally:
        gate.open()
    assert small_reaper.wait_idle(2)


def test_a_failing_job_is_reported_and_the_reaper_keeps_going(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    reaper = get_reaper()
    ran = threading.Event()

    def fail() -> None:
        raise OSError("native release failed")

    assert reaper.submit("failing job", fail)
    assert reaper.submit("next job", ran.set)
    assert ran.wait(2)
    assert reaper.wait_idle(2)
    (report,) = reported
    assert isinstance(report.exc_value, OSError)
    assert "failing job" in report.err_msg


# -- background release ----------------------------------------------------------


def test_background_release_drops_on_the_reaper_and_waiting_tells_when(
    speech_service, wav_path, small_reaper
):
    baseline = recognizers()
    gate = Gate(small_reaper)  # hold its one worker: "before" and "after" are then certain
    try:
        # The job waits behind the gate, so close() returns at its exit budget.
        scope = Scope(release="background", exit_budget_s=0.05)
        recognizer = scope.register(new_recognizer(speech_service, wav_path))
        deaths = died_on(recognizer)
        assert recognizer.recognize_once_async().get().text
        scope.adopt(recognizer)
        del recognizer
        scope.close()
        # close() returned; the teardown is queued behind the gate.
        assert recognizers() == baseline + 1
        assert not scope.released
        assert scope.wait_released(0.05) is False
        with pytest.raises(RuntimeError, match="wait_released"):
            scope.statistics()
    finally:
        gate.open()
    assert scope.wait_released(5) is True
    assert recognizers() == baseline
    assert deaths == [REAPER_THREAD_NAME]
    stats = scope.statistics()
    assert stats.release_mode == "background"
    assert stats.deferred is False
    assert stats.objects_adopted == 1
    # The adopted reference and the scope's own temporary strong one.
    assert stats.reaper_dropped == 2
    assert stats.reaper_queue_full is False
    assert stats.survivors == 0
    assert stats.collections == ()
    assert stats.release_steps_run == 2  # no stop wait + stop
    assert stats.reaper_seconds > 0


def test_background_close_costs_the_caller_far_less_than_inline(speech_service, wav_path):
    baseline = recognizers()
    timings: dict[str, list[float]] = {"inline": [], "background": []}
    threads: dict[str, list[str]] = {"inline": [], "background": []}
    for _ in range(3):
        for mode in ("inline", "background"):
            scope = Scope(release=mode)
            recognizer = scope.register(new_recognizer(speech_service, wav_path))
            deaths = died_on(recognizer)
            recognizer.recognize_once_async().get()
            scope.adopt(recognizer)
            del recognizer
            start = time.perf_counter()
            scope.close()
            timings[mode].append(time.perf_counter() - start)
            assert scope.wait_released(5)
            assert recognizers() == baseline
            threads[mode] += deaths
    # Both drop on the reaper; inline waits for it before close() returns.
    assert threads == {
        "inline": [REAPER_THREAD_NAME] * 3,
        "background": [REAPER_THREAD_NAME] * 3,
    }
    inline, background = (statistics.median(timings[m]) for m in ("inline", "background"))
    # Measured: ~55 ms inline, ~1 ms background. A wide margin, medians of three.
    assert background * 5 < inline, timings


def test_inline_release_is_done_when_the_block_ends(speech_service, wav_path):
    baseline = recognizers()
    with Scope(release="inline") as scope:
        recognizer = scope.register(new_recognizer(speech_service, wav_path))
        deaths = died_on(recognizer)
        recognizer.recognize_once_async().get()
        scope.adopt(recognizer)
        del recognizer
    assert recognizers() == baseline
    assert deaths == [REAPER_THREAD_NAME]  # dropped there, before the block ended
    assert scope.released
    assert scope.wait_released(0) is True
    stats = scope.statistics()
    assert (stats.release_mode, stats.objects_adopted, stats.reaper_dropped) == (
        "inline",
        1,
        2,
    )  # the tracked + the adopted reference
    assert stats.exit_budget_exceeded is False


def test_a_full_reaper_queue_makes_the_caller_drop_and_says_so(small_reaper):
    gate = Gate(small_reaper)
    try:
        assert small_reaper.submit("fills the queue", lambda: None)
        scope = Scope(release="background")
        node = scope.register(Node())
        # Not a quick_step: the release goes to the reaper (a quick one never queues).
        scope.add_finalizer(lambda: None)
        deaths = died_on(node)
        scope.adopt(node)
        del node
        scope.close()
        # Not queued: released at once, on this thread.
        assert scope.released
        assert deaths == [threading.current_thread().name]
        stats = scope.statistics()
        assert stats.reaper_queue_full is True
        assert stats.reaper_dropped == 0
        assert stats.survivors == 0
    finally:
        gate.open()


def test_waiting_on_the_reaper_itself_is_refused():
    scope = Scope(release="background")  # never released while the probe runs
    outcome: list[BaseException] = []

    def probe() -> None:
        try:
            scope.wait_released(1)
        except RuntimeError as error:
            outcome.append(error)

    assert get_reaper().submit("probe", probe)
    assert get_reaper().wait_idle(5)
    scope.close()
    assert scope.wait_released(5)
    (error,) = outcome
    assert "wait for itself" in str(error)
    assert Scope().wait_released(0.01) is False  # never closed


def test_adopt_is_refused_once_references_were_dropped():
    scope = Scope(release="background")
    scope.close()
    assert scope.wait_released(5)
    with pytest.raises(ClosedResourceError, match="already dropped"):
        scope.adopt(Node())


def test_finalizers_may_adopt_what_they_cut():
    box = {"target": Node()}
    deaths = died_on(box["target"])
    scope = Scope(release="background")
    scope.register(box["target"])
    scope.add_finalizer(lambda: scope.adopt(box.pop("target")))
    scope.close()
    assert scope.wait_released(5)
    assert deaths == [REAPER_THREAD_NAME]
    stats = scope.statistics()
    assert (stats.objects_adopted, stats.survivors) == (1, 0)


# -- SDK callback threads --------------------------------------------------------


def test_without_nativeguard_a_last_reference_dropped_in_a_callback_never_releases(tmp_path):
    """Why close() on an SDK callback thread must defer: the native core deadlocks.

    In a subprocess, since it leaves an SDK thread stuck in ``_Handle.__del__``.
    """
    script = textwrap.dedent(
        """
        import sys, threading, time
        import azure.cognitiveservices.speech as speechsdk
        from nativeguard.integrations.azure_speech import native_handles
        from nativeguard.testing import SpeechService, write_wav

        wav = write_wav(sys.argv[1], 1.0)
        baseline = native_handles().get("ISpxRecognizer", 0)
        with SpeechService(script=["one"]) as service:
            box = [speechsdk.SpeechRecognizer(
                service.speech_config(), speechsdk.audio.AudioConfig(filename=wav))]
            done = threading.Event()

            def on_stopped(evt):
                box.clear()  # now only the SDK's trampoline holds it
                done.set()

            box[0].session_stopped.connect(on_stopped)
            box[0].start_continuous_recognition_async().get()
            assert done.wait(10)
            time.sleep(0.5)
            print(native_handles().get("ISpxRecognizer", 0) - baseline)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "a.wav")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip() == "1"  # stuck for good: not released


def test_close_in_an_sdk_callback_defers_the_whole_release_to_the_reaper(speech_service, wav_path):
    baseline = recognizers()
    scope = Scope()  # inline, yet it must not release on the SDK thread
    recognizer = scope.register(new_recognizer(speech_service, wav_path))
    deaths = died_on(recognizer)
    seen: dict[str, object] = {}
    done = threading.Event()

    def on_session_stopped(evt) -> None:
        # The SDK swallows exceptions raised in callbacks: record everything.
        try:
            seen["thread"] = threading.get_ident()
            scope.close()
            seen["released_in_callback"] = scope.released
            try:
                scope.wait_released(1)
            except RuntimeError as error:
                # Without its traceback: the frames would pin the SDK's dispatch
                # frame, and with it the recognizer (docs/core.md).
                seen["wait_error"] = error.with_traceback(None)
        except BaseException as error:
            seen["error"] = error.with_traceback(None)
        finally:
            done.set()

    recognizer.session_stopped.connect(on_session_stopped)
    scope.adopt(recognizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recognizer.start_continuous_recognition_async().get()
        del recognizer  # the scope's adopted reference is the only one left
        assert done.wait(10)
        assert scope.wait_released(5)
    assert "error" not in seen, seen
    assert foreign(seen["thread"])
    assert seen["released_in_callback"] is False
    assert "wait for itself" in str(seen["wait_error"])
    (warning,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert "SDK callback thread of the azure_speech integration" in str(warning.message)
    assert "deferred" in str(warning.message)
    assert recognizers() == baseline
    assert deaths == [REAPER_THREAD_NAME]
    stats = scope.statistics()
    assert stats.deferred is True
    assert stats.release_steps_run == 2  # no stop wait + stop_continuous_recognition_async
    assert stats.signals_disconnected == 1
    assert stats.survivors == 0
    assert stats.release_errors == 0


def test_a_deferred_release_waits_for_the_callback_to_return(speech_service, wav_path):
    """The scope's references must outlive the SDK trampoline's, or the SDK thread drops last."""
    baseline = recognizers()
    scope = Scope()
    box = [scope.register(new_recognizer(speech_service, wav_path))]
    deaths = died_on(box[0])
    returning = threading.Event()
    done = threading.Event()

    def on_session_stopped(evt) -> None:
        try:
            # Not adopted, not kept: from here only the SDK's trampoline frame
            # and the scope's deferred strong reference hold the recognizer.
            box.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                scope.close()
            time.sleep(0.3)  # the reaper must wait out this callback
            returning.set()
        finally:
            done.set()

    box[0].session_stopped.connect(on_session_stopped)
    box[0].start_continuous_recognition_async().get()
    assert done.wait(10)
    assert scope.wait_released(5)
    assert returning.is_set()
    assert deaths == [REAPER_THREAD_NAME]
    assert recognizers() == baseline
    assert scope.statistics().reaper_seconds >= 0


def test_deferred_release_errors_are_raised_by_wait_released(speech_service, wav_path):
    from nativeguard._core._adapters import register_adapter

    class Fragile(Node):
        pass

    def boom(obj, timeout_s):
        raise OSError("release failed on the reaper")

    register_adapter(Fragile, [boom], name="fragile")
    scope = Scope()
    fragile = scope.register(Fragile())
    recognizer = new_recognizer(speech_service, wav_path)
    done = threading.Event()

    def on_session_stopped(evt) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                scope.close()  # must not raise here: nothing ran yet
        finally:
            done.set()

    recognizer.session_stopped.connect(on_session_stopped)
    recognizer.start_continuous_recognition_async().get()
    assert done.wait(10)
    with pytest.raises(ReleaseError) as caught:
        scope.wait_released(5)
    (error,) = caught.value.exceptions
    assert isinstance(error, OSError)
    with pytest.raises(ReleaseError):
        scope.wait_released(0)  # every time, like Future.result()
    assert scope.statistics().release_errors == 1
    recognizer.stop_continuous_recognition_async().get()
    recognizer.session_stopped.disconnect_all()
    del recognizer, fragile


class QuickNode:
    """Released by an adapter made of one quick step (as gRPC's and onnxruntime's are)."""


@quick_step
def _release_quick_node(obj: object, timeout_s: float) -> None:
    """Nothing to free: the step only has to be quick."""


register_adapter(QuickNode, [_release_quick_node], name="test quick node")


def test_a_quick_background_release_drops_on_the_caller_and_never_queues(small_reaper):
    """Quick steps only: the drop and the judgement stay on the closing thread."""
    gate = Gate(small_reaper)
    try:
        assert small_reaper.submit("fills the queue", lambda: None)
        scope = Scope(release="background")
        node = scope.register(QuickNode())
        deaths = died_on(node)
        scope.adopt(node)
        del node
        scope.close()
        assert scope.released  # at once: nothing was queued behind the gate
        assert deaths == [threading.current_thread().name]
        stats = scope.statistics()
        assert (stats.reaper_queue_full, stats.reaper_dropped, stats.survivors) == (False, 0, 0)
        assert stats.objects_adopted == 1
    finally:
        gate.open()


def test_a_survivor_of_a_quick_background_release_is_judged_on_the_reaper():
    """A survivor needs a collection to be judged: that goes to the reaper, not the caller."""
    scope = Scope(release="background")
    node = scope.register(QuickNode())
    kept = node  # a reference the scope cannot reach: the node survives its release
    del node
    scope.close()
    assert scope.wait_released(10) is True
    stats = scope.statistics()
    assert stats.survivors == 1
    assert stats.collections == (0, 1, 2)  # the reaper collected, in vain
    assert stats.reaper_dropped == 0  # the drop itself ran on the caller
    del kept


def test_an_object_no_adapter_knows_is_dropped_on_the_reaper_in_background_mode():
    """Nothing says a plain object's __del__ is cheap (or lock-free): the reaper drops it."""
    scope = Scope(release="background")
    node = scope.register(Node())
    deaths = died_on(node)
    scope.adopt(node)
    del node
    scope.close()
    assert scope.wait_released(10) is True
    assert deaths == [REAPER_THREAD_NAME]
    assert scope.statistics().reaper_dropped == 2  # the tracked and the adopted reference
