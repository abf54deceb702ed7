"""Adversarial tests of the quick release path: interrupts, races, survivors, re-entry.

Since the quick path, a Scope whose every release step is a ``quick_step``
(objects with no adapter included) releases on the calling thread in both
modes, background too: steps, drop and judgement there, and only a survivor's
collection, the heap trim and held futures on the reaper. That moved code that
used to run on a reaper thread onto the thread a Ctrl-C lands on, and made
objects' ``__del__`` run there. These tests try to break it; each asserts
exact outcomes (threads by identity, objects by weak reference, the size of
the ``_armed`` table). Known bugs are strict xfails that name the bug.

An interrupt "at a given point" is simulated with ``sys.setprofile``: CPython
3.11 runs a pending signal handler right after a call returns, which is where
a profile function sees ``c_return``; raising there is what a SIGINT handler
landing at that instant does, made deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import nativeguard
from nativeguard import (
    ClosedResourceError,
    ReleaseError,
    Scope,
    quick_step,
    register_adapter,
    scopes_released,
)
from nativeguard._core import _latch as _latch_module
from nativeguard._core import _scope
from nativeguard._core._latch import Latch
from nativeguard._core._reaper import get_reaper, get_step_runner

# -- objects and adapters of this module only ----------------------------------


class Plain:
    """No adapter: counts as quick."""


class QuickOne:
    """Released by one quick step that records the thread it ran on."""

    def __init__(self) -> None:
        self.released_on: list[int] = []


class Ordinary(QuickOne):
    """Released by an ordinary (not quick) step."""


class Interrupting(QuickOne):
    """Its quick step raises KeyboardInterrupt (Ctrl-C while it ran)."""


class Registering(QuickOne):
    """Its quick step registers a new object into the scope being closed."""

    def __init__(self, scope: Scope) -> None:
        super().__init__()
        self.scope = scope
        self.refused: list[BaseException] = []
        self.newcomer: weakref.ref[Plain] | None = None


class PredicateInterrupted:
    """Matched by a predicate that raises KeyboardInterrupt (Ctrl-C while it ran)."""

    def __init__(self) -> None:
        self.released_on: list[int] = []


@quick_step
def _record(obj: QuickOne, timeout_s: float) -> None:
    obj.released_on.append(threading.get_ident())


def _record_ordinary(obj: QuickOne, timeout_s: float) -> None:
    obj.released_on.append(threading.get_ident())


@quick_step
def _interrupt(obj: QuickOne, timeout_s: float) -> None:
    obj.released_on.append(threading.get_ident())
    raise KeyboardInterrupt("ctrl-c in a quick step")


@quick_step
def _register_more(obj: Registering, timeout_s: float) -> None:
    obj.released_on.append(threading.get_ident())
    newcomer = Plain()
    obj.newcomer = weakref.ref(newcomer)
    try:
        obj.scope.register(newcomer)
    except ClosedResourceError as exc:
        obj.refused.append(exc)
        raise


def _interrupting_predicate(obj: object) -> bool:
    if type(obj) is PredicateInterrupted:
        raise KeyboardInterrupt("ctrl-c in an adapter predicate")
    return False


@quick_step
def _never(obj: object, timeout_s: float) -> None:  # pragma: no cover - the predicate raises
    raise AssertionError("unreachable")


@pytest.fixture(scope="module", autouse=True)
def _adapters() -> None:
    # Exact-type predicates: the registry is global, other tests' objects never match.
    register_adapter(lambda o: type(o) is QuickOne, [_record], name="adv quick")
    register_adapter(lambda o: type(o) is Ordinary, [_record_ordinary], name="adv ordinary")
    register_adapter(lambda o: type(o) is Interrupting, [_interrupt], name="adv interrupting")
    register_adapter(lambda o: type(o) is Registering, [_register_more], name="adv registering")
    register_adapter(_interrupting_predicate, [_never], name="adv predicate")


# -- accounting: threads by identity, the armed table ---------------------------


def _ours() -> set[threading.Thread]:
    return set(get_reaper().threads()) | set(get_step_runner().threads())


def _user_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if t not in _ours() and not isinstance(t, threading._DummyThread)
    }


@pytest.fixture(autouse=True)
def _exact_accounting() -> Iterator[None]:
    """Every test leaves the same threads (reaper/step runners aside) and armed refs."""
    gc.collect()
    threads, armed = _user_threads(), len(_scope._armed)
    yield
    get_reaper().wait_idle(10)
    get_step_runner().wait_idle(10)
    gc.collect()
    assert _user_threads() == threads
    assert len(_scope._armed) == armed


def _interrupt_at(function: str, callee: str, make: Callable[[], BaseException]) -> None:
    """Raise ``make()`` once, as a signal handler would, when ``function`` returns from a
    call to the C function named ``callee`` (this thread only)."""

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        if (
            event == "c_return"
            and frame.f_code.co_name == function
            and getattr(arg, "__name__", None) == callee
        ):
            sys.setprofile(None)
            raise make()

    sys.setprofile(profile)


# -- interrupts on the closing thread -------------------------------------------


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_ctrl_c_in_a_quick_step_is_raised_once_after_a_complete_release(mode: str) -> None:
    before = scopes_released()
    interrupting, after = Interrupting(), QuickOne()
    logs = [interrupting.released_on, after.released_on]
    refs = [weakref.ref(interrupting), weakref.ref(after)]
    scope = Scope(release=mode)
    for obj in (after, interrupting):  # the interrupting one is released first
        scope.register(obj)
        scope.adopt(obj)
    del obj, interrupting, after  # the scope's drop is the last
    with pytest.raises(KeyboardInterrupt, match="ctrl-c in a quick step"):
        scope.close()
    me = threading.get_ident()
    assert logs == [[me], [me]]  # the release went on after the interrupt
    assert [ref() for ref in refs] == [None, None]
    assert scope.released  # finished on this thread: nothing was left for the reaper
    assert scopes_released() == before + 1
    scope.close()  # idempotent: nothing raised the second time
    with pytest.raises(ReleaseError) as reported:
        scope.wait_released(5.0)
    (failure,) = reported.value.exceptions
    assert "raised KeyboardInterrupt(ctrl-c in a quick step)" in str(failure)
    with pytest.raises(ReleaseError):  # every time, like Future.result()
        scope.wait_released(0)
    stats = scope.statistics()
    assert (stats.release_steps_run, stats.release_errors, stats.survivors) == (2, 1, 0)
    assert (stats.objects_adopted, stats.collections) == (2, ())
    if mode == "background":  # inline: see the reaper_dropped xfail below
        assert stats.reaper_dropped == 0
    assert scopes_released() == before + 1


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_ctrl_c_in_a_quick_finalizer_is_raised_as_the_interrupt(mode: str) -> None:
    obj = QuickOne()
    scope = Scope(release=mode)
    scope.register(obj)

    @quick_step
    def finalizer() -> None:
        raise KeyboardInterrupt("ctrl-c in a finalizer")

    scope.add_finalizer(finalizer)
    with pytest.raises(KeyboardInterrupt, match="ctrl-c in a finalizer"):
        scope.close()  # raises ReleaseError(RuntimeError("a scope finalizer raised ..."))
    assert obj.released_on == [threading.get_ident()]


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_ctrl_c_in_an_adapter_predicate_on_the_closing_thread_still_releases(
    mode: str,
) -> None:
    obj = PredicateInterrupted()
    scope = Scope(release=mode)
    scope.register(obj)
    with pytest.raises(KeyboardInterrupt):
        scope.close()
    scope.close()
    with contextlib.suppress(ReleaseError):  # the predicate's failure may be reported
        assert scope.wait_released(0.5)  # fails here: the release never completes
    del obj


@pytest.mark.parametrize(
    ("mode", "where"), [("background", "_release_here"), ("inline", "_run_release")]
)
def test_ctrl_c_between_the_quick_steps_and_the_drop_still_completes_the_release(
    mode: str, where: str
) -> None:
    obj = QuickOne()
    ref = weakref.ref(obj)
    scope = Scope(release=mode)
    scope.register(obj)
    _interrupt_at(where, "perf_counter", lambda: KeyboardInterrupt("late ctrl-c"))
    try:
        with pytest.raises(KeyboardInterrupt, match="late ctrl-c"):
            scope.close()
    finally:
        sys.setprofile(None)
    del obj
    # close() hands the rest of the release to the reaper before the interrupt propagates.
    if where == "_run_release":  # before any step ran: the skipped steps are reported
        with pytest.raises(ReleaseError) as caught:
            scope.wait_released(5.0)
        assert "steps not yet run were skipped" in str(caught.value.exceptions[0])
    else:
        assert scope.wait_released(5.0)
    assert ref() is None


def test_an_interrupted_latch_waiter_leaves_the_latch_open() -> None:
    latch = Latch()

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        if frame.f_code.co_name != "wait" or getattr(arg, "__name__", None) != "acquire":
            return
        if event == "c_call":  # about to block: another thread sets the latch
            setter = threading.Thread(target=latch.set)
            setter.start()
            setter.join()
        elif event == "c_return":  # acquired: the signal handler runs here
            sys.setprofile(None)
            raise KeyboardInterrupt("ctrl-c as the waiter wakes")

    sys.setprofile(profile)
    try:
        with pytest.raises(KeyboardInterrupt):
            latch.wait(5.0)
    finally:
        sys.setprofile(None)
    assert latch.is_set()
    assert latch.wait(None)  # later waiters read the flag first


def test_a_lock_left_held_by_an_interrupted_waiter_delays_others_by_a_slice_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A waiter blocked before set() wakes within one slice even if the lock stays held."""
    monkeypatch.setattr(_latch_module, "_SLICE_S", 0.05)
    latch = Latch()
    results: list[tuple[bool, float]] = []

    def wait(timeout: float | None) -> None:
        began = time.monotonic()
        results.append((latch.wait(timeout), time.monotonic() - began))

    waiters = [threading.Thread(target=wait, args=(timeout,)) for timeout in (None, 30.0)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.2)  # both blocked in acquire()
    # What an interrupted waiter leaves behind: the flag set, the lock never handed back.
    latch._is_set = True
    for waiter in waiters:
        waiter.join(5)
    assert [ok for ok, _ in results] == [True, True]
    assert all(waited < 2.0 for _, waited in results)


# -- __del__ on the closing thread ----------------------------------------------


def test_a_del_that_needs_a_lock_the_closer_holds_does_not_run_on_the_closer() -> None:
    lock = threading.Lock()
    outcome: list[tuple[bool, int]] = []

    class NeedsLock:
        def __del__(self) -> None:
            acquired = lock.acquire(timeout=0.5)
            outcome.append((acquired, threading.get_ident()))
            if acquired:
                lock.release()

    scope = Scope(release="background", exit_budget_s=0.2)
    obj = NeedsLock()
    scope.register(obj)
    scope.adopt(obj)
    del obj
    with lock:
        scope.close()
    assert scope.wait_released(5.0)
    assert outcome, "__del__ did not run"
    ((acquired, ident),) = outcome
    assert ident != threading.get_ident()
    assert acquired


def test_inline_quick_release_does_not_count_caller_drops_as_reaper_drops() -> None:
    dropped_on: list[int] = []

    class Noted:
        def __del__(self) -> None:
            dropped_on.append(threading.get_ident())

    scope = Scope(release="inline")
    obj = Noted()
    scope.register(obj)
    scope.adopt(obj)
    del obj
    scope.close()
    assert dropped_on == [threading.get_ident()]  # dropped on the caller...
    assert scope.statistics().reaper_dropped == 0  # ...so none on the reaper


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_a_raising_del_is_unraisable_and_the_release_completes(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[type[BaseException] | None, int]] = []
    monkeypatch.setattr(
        sys, "unraisablehook", lambda args: seen.append((args.exc_type, threading.get_ident()))
    )

    class Raising:
        def __del__(self) -> None:
            raise ValueError("__del__ failed")

    before = scopes_released()
    scope = Scope(release=mode)
    obj = Raising()
    ref = weakref.ref(obj)
    scope.register(obj)
    scope.adopt(obj)
    del obj
    scope.close()  # no ReleaseError: __del__'s failure is not a release step's
    assert scope.wait_released(5.0)
    assert ref() is None
    # No adapter declares its drop cheap: background mode drops it on the reaper.
    dropped_on = threading.get_ident() if mode == "inline" else seen[0][1]
    assert seen == [(ValueError, dropped_on)]
    if mode == "background":
        assert dropped_on in {t.ident for t in get_reaper().threads()}
    stats = scope.statistics()
    assert (stats.objects_tracked, stats.objects_adopted, stats.survivors) == (1, 1, 0)
    assert stats.release_errors == 0
    assert scopes_released() == before + 1


_resurrected: list[object] = []


def test_an_object_resurrecting_itself_is_judged_a_survivor_off_the_caller() -> None:
    collected_on: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected_on.append(threading.get_ident())

    class Phoenix:
        def __del__(self) -> None:
            _resurrected.append(self)

    scope = Scope(release="background")
    obj = Phoenix()
    ref = weakref.ref(obj)
    scope.register(obj)
    scope.adopt(obj)
    del obj
    gc.callbacks.append(note)
    try:
        scope.close()
        assert scope.wait_released(10.0)
    finally:
        gc.callbacks.remove(note)
    stats = scope.statistics()
    assert stats.survivors == 1
    assert stats.reaper_dropped == 2  # no adapter: dropped on the reaper (tracked + adopted)
    assert stats.collections == (0, 1, 2)
    reaper_idents = {t.ident for t in get_reaper().threads()}
    assert collected_on
    assert set(collected_on) <= reaper_idents  # judged off the caller
    assert ref() is _resurrected[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # disarmed: no warning on its death
        _resurrected.clear()
        gc.collect()
    assert ref() is None


def test_a_survivor_in_background_is_judged_on_the_reaper() -> None:
    keeper = QuickOne()  # someone else holds it: a survivor
    waiters = 16
    scope = Scope(release="background")
    scope.register(keeper)
    gate = threading.Event()
    started = threading.Barrier(waiters + 1)
    results: list[bool] = []
    lock = threading.Lock()

    def wait() -> None:
        started.wait()
        gate.wait(5)
        ok = scope.wait_released(10.0)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=wait) for _ in range(waiters)]
    for thread in threads:
        thread.start()
    started.wait()
    scope.close()
    gate.set()
    for thread in threads:
        thread.join()
    assert results == [True] * waiters
    stats = scope.statistics()
    assert keeper.released_on == [threading.get_ident()]  # the step ran on the caller
    assert (stats.survivors, stats.reaper_dropped, stats.objects_tracked) == (1, 0, 1)
    assert stats.collections == (0, 1, 2)


# -- races ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_close_racing_from_many_threads_releases_once(mode: str) -> None:
    closers = 8
    for _ in range(20):
        before = scopes_released()
        objs = [QuickOne() for _ in range(5)]
        scope = Scope(release=mode)
        for obj in objs:
            scope.register(obj)
        start = threading.Barrier(closers)
        outcomes: list[BaseException | None] = []

        def close(
            scope: Scope = scope,
            start: threading.Barrier = start,
            outcomes: list[BaseException | None] = outcomes,
        ) -> None:
            start.wait()
            try:
                scope.close()
            except BaseException as exc:  # pragma: no cover - reported below
                outcomes.append(exc)
            else:
                outcomes.append(None)

        threads = [threading.Thread(target=close) for _ in range(closers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes == [None] * closers
        assert scope.wait_released(10.0)
        assert [len(obj.released_on) for obj in objs] == [1] * 5
        assert len({obj.released_on[0] for obj in objs}) == 1  # all by the one closer
        assert scopes_released() == before + 1


def test_close_in_a_signal_handler_during_register_releases_what_it_took() -> None:
    """The handler runs right after register() armed the new ref (before the lock)."""
    before = scopes_released()
    first, second = QuickOne(), QuickOne()
    scope = Scope(release="background")
    scope.register(first)

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        # _arm's dict store is its last C call: close() from a "handler" right after it.
        if event == "return" and frame.f_code.co_name == "_arm":
            sys.setprofile(None)
            scope.close()

    sys.setprofile(profile)
    try:
        with pytest.raises(ClosedResourceError):
            scope.register(second)
    finally:
        sys.setprofile(None)
    assert scope.wait_released(5.0)
    assert first.released_on == [threading.get_ident()]
    assert second.released_on == []  # refused, never tracked
    assert scope.statistics().objects_tracked == 1
    assert scopes_released() == before + 1


def test_close_in_a_signal_handler_inside_registers_locked_block() -> None:
    """The handler runs after the entry was appended, with the scope's lock held."""
    first, second = QuickOne(), QuickOne()
    scope = Scope(release="background", exit_budget_s=0.5)
    scope.register(first)

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        if (
            event == "c_return"
            and frame.f_code.co_name == "register"
            and getattr(arg, "__name__", None) == "append"
        ):
            sys.setprofile(None)
            scope.close()

    sys.setprofile(profile)
    try:
        scope.register(second)  # taken by the close: released, not orphaned
    finally:
        sys.setprofile(None)
    assert scope.wait_released(5.0)
    assert len(first.released_on) == 1
    assert len(second.released_on) == 1
    # The lock was held: the quick path must not run here, the reaper did it.
    assert first.released_on[0] != threading.get_ident()
    assert scope.statistics().objects_tracked == 2


def test_a_quick_step_registering_into_the_closing_scope_is_refused() -> None:
    scope = Scope(release="background")
    obj = Registering(scope)
    scope.register(obj)
    with pytest.raises(ReleaseError) as caught:
        scope.close()
    (error,) = caught.value.exceptions
    assert isinstance(error, ClosedResourceError)
    assert len(obj.refused) == 1
    assert obj.newcomer is not None
    assert obj.newcomer() is None  # nothing kept it
    assert scope.wait_released(10.0)  # close() raised the failure: not raised again
    assert scope.statistics().objects_tracked == 1


# -- mixes, nesting, statistics ----------------------------------------------------


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_one_ordinary_step_sends_the_whole_release_to_the_reaper(mode: str) -> None:
    quick, ordinary, plain = QuickOne(), Ordinary(), Plain()
    scope = Scope(release=mode, step_timeout_s=5.0)
    for obj in (quick, ordinary, plain):
        scope.register(obj)
    scope.close()
    assert scope.wait_released(10.0)
    me = threading.get_ident()
    assert len(quick.released_on) == 1
    assert quick.released_on[0] != me
    assert len(ordinary.released_on) == 1
    assert ordinary.released_on[0] != me
    step_runners = {t.ident for t in get_step_runner().threads()}
    assert ordinary.released_on[0] in step_runners
    stats = scope.statistics()
    assert (stats.release_steps_run, stats.objects_tracked, stats.survivors) == (2, 3, 3)


def test_nested_managed_blocks_release_inner_first_on_this_thread() -> None:
    before = scopes_released()
    outer, inner = QuickOne(), QuickOne()
    with nativeguard.managed(outer, release="background") as outer_proxy:
        with nativeguard.managed(inner, release="background") as inner_proxy:
            assert inner_proxy.released_on == []
        assert inner.released_on == [threading.get_ident()]
        assert outer.released_on == []
        assert outer_proxy.released_on == []
    assert outer.released_on == [threading.get_ident()]
    assert get_reaper().wait_idle(10)  # this test holds both: survivors, judged there
    assert scopes_released() == before + 2
    for proxy in (outer_proxy, inner_proxy):
        with pytest.raises(ClosedResourceError):
            proxy.released_on  # noqa: B018 - cut at exit


def test_statistics_before_close_while_open_and_right_after_a_quick_background_close() -> None:
    scope = Scope(release="background")
    obj = QuickOne()
    scope.register(obj)
    scope.adopt(obj)
    del obj
    with pytest.raises(RuntimeError, match="once the scope is closed"):
        scope.statistics()
    scope.close()
    assert scope.released  # judged on this thread: nothing survived
    first = scope.statistics()
    assert first == scope.statistics()  # built lazily, but the same every time
    assert first is not scope.statistics()
    assert (first.release_mode, first.reaper_dropped, first.survivors) == ("background", 0, 0)
    assert (first.objects_tracked, first.release_steps_run, first.deferred) == (1, 1, False)
    assert first.collections == ()


def test_a_trim_threshold_moves_the_drop_to_the_reaper() -> None:
    dropped_on: list[int] = []

    class Noted:
        def __del__(self) -> None:
            dropped_on.append(threading.get_ident())

    scope = Scope(release="background", trim_threshold_bytes=0)
    obj = Noted()
    scope.register(obj)
    scope.adopt(obj)
    del obj
    scope.close()
    assert scope.wait_released(10.0)
    assert len(dropped_on) == 1
    assert dropped_on[0] != threading.get_ident()
    stats = scope.statistics()
    assert stats.trim_attempted == stats.trim_available
    assert stats.reaper_dropped == 2  # the registered object, adopted too


def test_thousands_of_scopes_leave_the_armed_table_as_it_was() -> None:
    before, armed = scopes_released(), len(_scope._armed)
    kept: list[Plain] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        for index in range(3000):
            scope = Scope(release="background" if index % 2 else "inline")
            a, b = QuickOne(), Plain()
            scope.register(a)
            scope.register(b)
            scope.register(a)  # already tracked: no second ref
            scope.adopt(a)
            scope.adopt(b)
            if index % 300 == 0:
                kept.append(b)  # a survivor now and then: judged on the reaper
            del a, b
            assert len(_scope._armed) == armed + 2
            scope.close()
            assert len(_scope._armed) == armed
        get_reaper().wait_idle(10)
    assert scopes_released() == before + 3000
    assert len(kept) == 10


def test_an_unclosed_scope_warns_once_per_object_and_disarms() -> None:
    armed = len(_scope._armed)
    scope = Scope(release="background")
    obj = QuickOne()
    scope.register(obj)
    assert len(_scope._armed) == armed + 1
    with pytest.warns(ResourceWarning, match="garbage-collected before") as caught:
        del obj
    assert len(caught) == 1
    assert len(_scope._armed) == armed
    scope.close()  # nothing to release: the object is gone
    stats = scope.statistics()
    assert (stats.objects_tracked, stats.release_steps_run, stats.survivors) == (1, 0, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_releases_quickly_after_a_background_quick_release() -> None:
    survivor = QuickOne()
    scope = Scope(release="background")
    scope.register(survivor)
    scope.close()  # the survivor's judgement goes to the reaper
    assert scope.wait_released(10.0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            child = Scope(release="background")
            obj, kept = QuickOne(), QuickOne()
            child.register(obj)
            child.register(kept)
            child.close()
            ok = child.wait_released(10.0) and scope.wait_released(0)
            stats = child.statistics()
            if ok and stats.survivors == 2 and obj.released_on == [threading.get_ident()]:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert scope.statistics().survivors == 1


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_aclose_with_quick_steps_releases_everything(mode: str) -> None:
    before = scopes_released()
    objs: list[object] = [QuickOne(), Plain(), QuickOne()]
    refs = [weakref.ref(obj) for obj in objs]

    async def main(objs: list[object]) -> Scope:
        async with Scope(release=mode) as scope:
            for obj in objs:
                scope.register(obj)
            scope.adopt(objs[1])
        return scope

    scope = asyncio.run(main(objs))
    assert scope.wait_released(10.0)
    assert [len(o.released_on) for o in objs if isinstance(o, QuickOne)] == [1, 1]
    stats = scope.statistics()
    assert (stats.release_steps_run, stats.objects_adopted, stats.survivors) == (2, 1, 3)
    del objs
    assert [ref() for ref in refs] == [None, None, None]
    assert scopes_released() == before + 1


def test_a_quick_step_may_adopt_and_the_release_drops_it_here() -> None:
    adopted: list[weakref.ref[Plain]] = []
    scope = Scope(release="background")

    class Adopting(QuickOne):
        pass

    @quick_step
    def adopt_one(obj: Adopting, timeout_s: float) -> None:
        extra = Plain()
        adopted.append(weakref.ref(extra))
        scope.adopt(extra)  # allowed while releasing: dropped with the rest

    register_adapter(lambda o: type(o) is Adopting, [adopt_one], name="adv adopting")
    obj = Adopting()
    scope.register(obj)
    scope.adopt(obj)
    del obj
    scope.close()
    assert scope.released
    assert len(adopted) == 1
    assert adopted[0]() is None
    stats = scope.statistics()
    assert (stats.objects_adopted, stats.reaper_dropped, stats.survivors) == (2, 0, 0)
    with pytest.raises(ClosedResourceError):
        scope.adopt(Plain())  # dropped its references: too late now


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_statistics_are_final_as_soon_as_the_scope_is_released(mode: str) -> None:
    scope = Scope(release=mode)
    obj = QuickOne()
    scope.register(obj)
    scope.adopt(obj)
    del obj
    seen: list[tuple[bool, Any]] = []
    calls: list[None] = []

    def profile(frame: types.FrameType, event: str, arg: Any) -> None:
        # The instant the scope's latch opens: a thread woken by wait_released() reads
        # the statistics here, before close() has returned.
        if (
            event == "return"
            and frame.f_code.co_name == "set"
            and frame.f_locals.get("self") is scope._released
        ):
            calls.append(None)
            sys.setprofile(None)
            seen.append((scope.released, scope.statistics()))

    sys.setprofile(profile)
    try:
        scope.close()
    finally:
        sys.setprofile(None)
    ((released, early),) = seen
    assert released
    assert early == scope.statistics()


def test_ctrl_c_in_a_quick_step_during_aclose_is_raised_as_the_interrupt() -> None:
    obj = Interrupting()
    log = obj.released_on

    async def main(scope: Scope) -> None:
        await scope.aclose()

    scope = Scope(release="background")
    scope.register(obj)
    scope.adopt(obj)
    del obj
    try:
        with pytest.raises(KeyboardInterrupt, match="ctrl-c in a quick step"):
            asyncio.run(main(scope))
    finally:
        assert len(log) == 1  # the step ran, once
        # The release completes; as after close(), wait_released() reports the step's failure.
        with pytest.raises(ReleaseError) as caught:
            scope.wait_released(10.0)
        assert "raised KeyboardInterrupt" in str(caught.value.exceptions[0])


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_register_racing_close_on_another_thread_leaks_nothing(mode: str) -> None:
    """Every object register() accepted is released once; the refused one is never armed."""
    for _ in range(30):  # the accepted ones are held here: each close collects
        scope = Scope(release=mode)
        accepted: list[QuickOne] = []
        refused: list[QuickOne] = []
        go = threading.Event()

        def registering(
            scope: Scope = scope,
            accepted: list[QuickOne] = accepted,
            refused: list[QuickOne] = refused,
            go: threading.Event = go,
        ) -> None:
            go.set()
            while True:
                obj = QuickOne()
                try:
                    scope.register(obj)
                except ClosedResourceError:
                    refused.append(obj)
                    return
                accepted.append(obj)

        thread = threading.Thread(target=registering)
        thread.start()
        go.wait(5)
        scope.close()
        thread.join()
        assert scope.wait_released(10.0)
        assert len(refused) == 1
        assert refused[0].released_on == []
        assert [len(obj.released_on) for obj in accepted] == [1] * len(accepted)
        assert scope.statistics().objects_tracked == len(accepted)
        assert scope.statistics().release_steps_run == len(accepted)


# -- a future held on to while the quick path drops ------------------------------


def test_a_future_held_after_the_quick_steps_is_waited_for_before_the_judgement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``_hold_until`` from another thread can land between the steps and the drop.

    The thread behind that future still holds the object; the release must
    judge survivors only once it is done (as the reaper path always did), not
    count the object as a survivor it cannot collect.
    """
    import concurrent.futures

    scope = Scope(release="background")
    obj = QuickOne()
    ref = weakref.ref(obj)
    scope.register(obj)
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    holder_done = threading.Event()

    def holder(held: list[QuickOne]) -> None:
        time.sleep(0.2)
        held.clear()  # the SDK call returned: its reference goes
        holder_done.set()
        future.set_result(None)

    original = _scope._mark_steps_done
    calls: list[int] = []
    workers: list[threading.Thread] = []

    def steps_done_then_held(release: Any) -> None:
        original(release)
        calls.append(1)
        if len(calls) == 2:  # the drop's call: after close() looked for held futures
            future.set_running_or_notify_cancel()
            worker = threading.Thread(target=holder, args=([ref()],), daemon=True)
            workers.append(worker)
            worker.start()
            scope._hold_until(future)  # what a helper's wait does, racing the drop

    monkeypatch.setattr(_scope, "_mark_steps_done", steps_done_then_held)
    del obj
    scope.close()
    assert scope.wait_released(5)
    stats = scope.statistics()
    assert stats.survivors == 0
    assert stats.collections == ()
    assert ref() is None
    assert holder_done.is_set()
    assert len(calls) == 2  # the race was staged where it can happen
    for worker in workers:
        worker.join(5)
