"""Scope and managed_* under hostile use: issue 10's core items and issue 17's items 1-2.

Each test failed on the code before the fix (0757ff9), which is what it pins.
"""

from __future__ import annotations

import gc
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import nativeguard as ng
from nativeguard import ReleaseError, Scope
from nativeguard._core._adapters import _registry, register_adapter


class Thing:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def scratch_adapters():
    """Adapters registered by a test are removed afterwards (the registry is global)."""
    before = list(_registry)
    yield
    _registry[:] = before


def test_close_from_a_signal_handler_during_register_does_not_deadlock():
    # Issue 10 high 1: hung within seconds in _begin (non-reentrant lock).
    script = textwrap.dedent(
        """
        import signal, time, nativeguard as ng
        class O: pass
        cur = [ng.Scope()]
        signal.signal(signal.SIGALRM, lambda *a: cur[0].close())
        signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
        end = time.monotonic() + 3
        rounds = refused = 0
        while time.monotonic() < end:
            cur[0] = s = ng.Scope()
            try:
                for _ in range(50):
                    s.register(O())
            except ng.ClosedResourceError:
                refused += 1
            rounds += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(rounds, refused)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    rounds, refused = map(int, done.stdout.split())
    assert rounds > 100
    assert refused > 0  # the handler really interrupted register() loops


def test_a_raising_predicate_fails_that_object_and_the_others_are_released(scratch_adapters):
    class Odd:
        pass

    def predicate(obj: object) -> bool:
        if isinstance(obj, Odd):
            raise RuntimeError("boom in predicate")
        return False

    register_adapter(predicate, [lambda o, t: None])
    scope = Scope()
    a = scope.register(Thing())
    odd = scope.register(Odd())
    with pytest.raises(ReleaseError) as caught:
        scope.close()
    assert a.closed == 1
    (error,) = caught.value.exceptions
    assert str(error) == "boom in predicate"
    assert any("predicate raised" in note for note in error.__notes__)
    assert scope.wait_released(5)
    assert scope.statistics().release_errors == 1
    scope.close()  # idempotent
    del odd


def test_a_hanging_custom_step_is_bounded_and_the_object_released_when_it_returns(
    scratch_adapters,
):
    class Slow:
        pass

    release = threading.Event()
    register_adapter(Slow, [lambda o, t: release.wait(30)], name="slow")
    scope = Scope(step_timeout_s=0.3, exit_budget_s=0.5, release="inline")
    slow = scope.register(Slow())
    died = threading.Event()
    weakref.finalize(slow, died.set)
    scope.adopt(slow)
    del slow
    start = time.perf_counter()
    scope.close()  # past the step's bound: nothing raised now, the rest goes on
    assert time.perf_counter() - start < 2
    assert not died.is_set()  # never dropped while the step still runs
    release.set()
    with pytest.raises(ReleaseError) as caught:
        scope.wait_released(10)
    assert "did not finish within 0.3 s" in str(caught.value.exceptions[0])
    assert died.is_set()
    stats = scope.statistics()
    assert (stats.steps_timed_out, stats.survivors) == (1, 0)


def test_close_returns_within_the_exit_budget_whatever_a_step_does(scratch_adapters):
    class Stuck:
        pass

    gate = threading.Event()
    register_adapter(Stuck, [lambda o, t: gate.wait(10)], name="stuck")
    scope = Scope(exit_budget_s=0.2)
    stuck = scope.register(Stuck())
    start = time.perf_counter()
    scope.close()
    assert time.perf_counter() - start < 0.8
    assert not scope.released
    gate.set()
    assert scope.wait_released(10)
    assert scope.statistics().exit_budget_exceeded is True
    del stuck


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_a_step_raising_an_interrupt_does_not_skip_the_other_objects(scratch_adapters, exc_type):
    class Rude:
        pass

    def step(obj: object, timeout_s: float) -> None:
        raise exc_type("from a step")

    register_adapter(Rude, [step], name="rude")
    scope = Scope()
    first = scope.register(Thing())
    rude = scope.register(Rude())  # released first (reverse order)
    with pytest.raises(ReleaseError) as caught:
        scope.close()
    assert first.closed == 1
    assert exc_type.__name__ in str(caught.value.exceptions[0])
    del rude


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0, 1e300, True, "5", None])
def test_step_timeout_rejects_what_cannot_bound_a_wait(value):
    if value is None:
        assert Scope(step_timeout_s=None)  # the configured default
        return
    error = TypeError if isinstance(value, (bool, str)) else ValueError
    with pytest.raises(error, match="step_timeout_s"):
        Scope(step_timeout_s=value)


@pytest.mark.parametrize("value", [None, "1", -0.5, math.nan])
def test_wait_released_names_a_bad_timeout(value):
    scope = Scope()
    scope.close()
    with pytest.raises((TypeError, ValueError), match="timeout"):
        scope.wait_released(value)


def test_configure_sets_defaults_and_returns_the_old_ones():
    old = ng.configure(exit_budget_s=0.25, release="background")
    try:
        scope = Scope()
        assert (scope.exit_budget_s, scope.release_mode) == (0.25, "background")
        with pytest.raises(ValueError, match="release"):
            ng.configure(release="later")
        with pytest.raises(ValueError, match="exit_budget_s"):
            ng.configure(exit_budget_s=math.inf)
    finally:
        ng.configure(**old)  # type: ignore[arg-type]
    assert Scope().exit_budget_s == 1.0


def test_registering_the_same_object_twice_tracks_it_once(scratch_adapters):
    # Issue 17 item 2: release steps then ran twice and objects_tracked doubled.
    scope = Scope()
    thing = Thing()
    assert scope.register(thing) is thing
    assert scope.register(thing) is thing
    with ng.managed(thing, scope=scope) as proxy:
        assert proxy.closed == 0
    scope.close()
    assert thing.closed == 1  # an independent measure: close() ran once
    assert scope.wait_released(5)
    stats = scope.statistics()
    assert stats.objects_tracked == 1
    assert stats.release_steps_run == 1


def test_a_callback_connected_through_the_scope_is_dropped_with_what_it_holds():
    # Issue 17 item 1: the closure holds a tracked object; only dropping the
    # callback lets it die by refcount, with no collection.
    class Signal:
        def __init__(self) -> None:
            self.callbacks: list[object] = []

        def connect(self, callback: object) -> None:
            self.callbacks.append(callback)

        def is_connected(self) -> bool:
            return False  # not an SDK signal: disconnect_all is never called

        def disconnect_all(self) -> None:  # pragma: no cover - not called
            self.callbacks.clear()

    gc.disable()
    try:
        scope = Scope()
        held = scope.register(Thing())
        died = threading.Event()
        weakref.finalize(held, died.set)
        signal_ = Signal()
        scope.connect(signal_, lambda evt, held=held: held)
        signal_.callbacks.clear()  # the signal lets go; only the scope holds it now
        del held
        assert not died.is_set()
        scope.close()
        assert died.is_set()
        stats = scope.statistics()
        assert stats.survivors == 0
        assert stats.collections == ()
    finally:
        gc.enable()


def test_ten_thousand_registrations_are_linear():
    # Issue 10: 10,000 objects took 6.25 s (linear scans). Counted, not timed:
    # the duplicate check looks one entry up instead of scanning the list.
    scope = Scope()
    things = [Thing() for _ in range(10_000)]
    for thing in things:
        scope.register(thing)
    assert len(scope._index) == 10_000
    scope.close()
    # close() returns within its exit budget; on a loaded machine the rest of the
    # 10,000 steps finish on the reaper.
    assert scope.wait_released(60)
    assert sum(thing.closed for thing in things) == 10_000


def test_kept_release_errors_hold_no_frame(scratch_adapters):
    """A kept ReleaseError must not pin the object through the step's frame."""

    class Failing:
        pass

    def step(obj: object, timeout_s: float) -> None:
        raise OSError("native close failed")

    register_adapter(Failing, [step], name="failing")
    scope = Scope()
    failing = scope.register(Failing())
    died = threading.Event()
    weakref.finalize(failing, died.set)
    scope.adopt(failing)
    del failing
    with pytest.raises(ReleaseError) as caught:
        scope.close()
    kept = caught.value
    assert died.is_set()
    (error,) = kept.exceptions
    assert error.__traceback__ is None
    assert any(note.startswith("Traceback") for note in error.__notes__)


class Config:
    pass


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ng.managed_synthesizer(123), "speech_config must be a speechsdk.SpeechConfig"),
        (lambda: ng.managed_recognizer(None), "speech_config must be"),
        (lambda: ng.managed_transcriber(Config()), "speech_config must be"),
        (lambda: ng.managed_translation_recognizer(42), "translation_config must be"),
    ],
)
def test_managed_names_a_wrong_argument(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_managed_transcriber_takes_a_wav_path(speech_service, wav_path):
    config = speech_service.speech_config()
    with ng.managed_transcriber(config, wav_path) as transcriber:
        assert transcriber.start_transcribing_async().get() is None
    with pytest.raises(FileNotFoundError, match="audio_config"):
        ng.managed_transcriber(config, os.path.join(os.path.dirname(wav_path), "missing.wav"))
    with pytest.raises(TypeError, match="audio_config"):
        ng.managed_synthesizer(config, wav_path)  # a path is input audio, not output


def test_synthesize_names_a_wrong_config_and_text(speech_service):
    with pytest.raises(TypeError, match="speech_config"):
        ng.synthesize(None, "x")
    with pytest.raises(TypeError, match="text_or_ssml"):
        ng.synthesize(speech_service.speech_config(), 42)  # type: ignore[arg-type]


def test_keyboard_interrupt_in_a_block_propagates_within_the_budget(speech_service, wav_path):
    """Real SIGINT while the body waits on a slow service: prompt, and released later."""
    from nativeguard.testing import Faults

    speech_service_faults = Faults(delay_ms=4000)
    from nativeguard.testing import SpeechService

    with SpeechService(faults=speech_service_faults) as slow:
        config = slow.speech_config()
        block = ng.managed_transcriber(config, wav_path)
        timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupted_at = 0.0
        try:
            with pytest.raises(KeyboardInterrupt), block as transcriber:
                transcriber.start_transcribing_async().get()
                timer.start()
                try:
                    time.sleep(10)
                finally:
                    interrupted_at = time.perf_counter()
            assert time.perf_counter() - interrupted_at < 1.6
        finally:
            timer.cancel()
            signal.signal(signal.SIGINT, previous)
        assert block.scope.wait_released(10)
        assert block.scope.statistics().survivors == 0


def test_guarded_none_is_refused_but_guarded_with_no_argument_is_a_decorator():
    with pytest.raises(TypeError, match="guarded\\(None\\)"):
        ng.guarded(None)

    @ng.guarded()
    def f() -> int:
        return 1

    assert f() == 1
