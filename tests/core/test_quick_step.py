"""``quick_step``: steps bounded by themselves run on the closing thread, interrupts included.

The fast path must keep every promise of the normal one: the object released
(dead by the time an inline close() returns), failures raised as ReleaseError,
a Ctrl-C during a step raised only once the release finished, and no fast path
at all when one step of the release is not quick or the scope has finalizers.
"""

from __future__ import annotations

import gc
import signal
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

import nativeguard
from nativeguard import ReleaseError, Scope, quick_step, register_adapter


class Quick:
    """Released by quick steps only."""

    def __init__(self) -> None:
        self.released_on: int | None = None
        self.bound: float | None = None


class Slow(Quick):
    """One quick step and one ordinary step."""


class Failing(Quick):
    pass


class Interrupted(Quick):
    pass


@quick_step
def _record(obj: Quick, timeout_s: float) -> None:
    obj.released_on = threading.get_ident()
    obj.bound = timeout_s


def _ordinary(obj: Quick, timeout_s: float) -> None:
    obj.released_on = threading.get_ident()


@quick_step
def _fail(obj: Quick, timeout_s: float) -> None:
    raise ValueError("the quick step failed")


@quick_step
def _sleep_through_a_signal(obj: Quick, timeout_s: float) -> None:
    obj.released_on = threading.get_ident()
    time.sleep(0.5)  # the timer's handler raises KeyboardInterrupt in here


@pytest.fixture(scope="module", autouse=True)
def _adapters() -> None:
    register_adapter(Quick, [_record], name="test quick")
    register_adapter(Slow, [_record, _ordinary], name="test slow")
    register_adapter(Failing, [_fail], name="test failing")
    register_adapter(Interrupted, [_sleep_through_a_signal], name="test interrupted")


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_quick_steps_run_on_the_closing_thread(mode: str) -> None:
    obj = Quick()
    ref = weakref.ref(obj)
    scope = Scope(release=mode, exit_budget_s=0.75, step_timeout_s=5.0)
    scope.register(obj)
    scope.close()
    assert obj.released_on == threading.get_ident()
    assert obj.bound == 0.75  # bounded by the exit budget, not step_timeout_s
    del obj
    assert scope.wait_released(5.0)
    assert ref() is None
    assert scope.statistics().release_steps_run == 1


def test_one_ordinary_step_keeps_the_whole_release_off_this_thread() -> None:
    quick, slow = Quick(), Slow()
    scope = Scope(release="inline", step_timeout_s=5.0)
    scope.register(quick)
    scope.register(slow)
    scope.close()
    assert slow.released_on is not None
    assert slow.released_on != threading.get_ident()
    assert quick.released_on is not None
    assert slow.bound == 5.0  # the normal path keeps step_timeout_s


def test_finalizers_keep_the_release_off_this_thread() -> None:
    obj = Quick()
    ran_on: list[int] = []
    scope = Scope(release="inline")
    scope.register(obj)
    scope.add_finalizer(lambda: ran_on.append(threading.get_ident()))
    scope.close()
    assert len(ran_on) == 1
    assert ran_on[0] != threading.get_ident()
    assert obj.released_on != threading.get_ident()


def test_quick_finalizers_and_managed_blocks_keep_the_fast_path() -> None:
    """nativeguard's own finalizers (a managed block cuts its proxy) are quick steps."""
    ran_on: list[int] = []
    scope = Scope(release="inline")
    obj = Quick()
    scope.register(obj)
    scope.add_finalizer(quick_step(lambda: ran_on.append(threading.get_ident())))
    scope.close()
    assert ran_on == [threading.get_ident()]
    assert obj.released_on == threading.get_ident()
    with nativeguard.managed(Quick(), release="inline") as proxy:
        assert proxy.released_on is None
    with pytest.raises(nativeguard.ClosedResourceError):
        proxy.released_on  # noqa: B018 - the proxy was cut on this thread, at exit


def test_an_inline_close_returns_released_and_judged() -> None:
    obj = Quick()
    ref = weakref.ref(obj)
    with Scope(release="inline") as scope:
        scope.register(obj)
    assert obj.released_on == threading.get_ident()
    stats = scope.statistics()  # available at once: judged on this thread
    assert (stats.release_steps_run, stats.release_errors) == (1, 0)
    del obj
    assert ref() is None


def test_a_failing_quick_step_is_a_release_error_and_the_others_still_run() -> None:
    failing, quick = Failing(), Quick()
    scope = Scope(release="inline")
    scope.register(quick)
    scope.register(failing)
    with pytest.raises(ReleaseError, match="1 release step") as caught:
        scope.close()
    assert quick.released_on == threading.get_ident()
    (error,) = caught.value.exceptions
    assert isinstance(error, ValueError)
    assert error.__traceback__ is None  # no frame that reaches the object


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
@pytest.mark.parametrize("mode", ["inline", "background"])
def test_ctrl_c_during_a_quick_step_is_raised_after_the_release(mode: str) -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("ctrl-c")

    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupted, after = Interrupted(), Quick()
    ref = weakref.ref(interrupted)
    scope = Scope(release=mode)
    scope.register(after)  # released first (reverse order), then the interrupted one
    scope.register(interrupted)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt, match="ctrl-c") as caught:
            scope.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert caught.value.__traceback__ is not None  # raised here, from close()
    assert interrupted.released_on == threading.get_ident()
    assert after.released_on == threading.get_ident()  # the release went on
    del interrupted
    # The interrupted step is the release's one failure; close() raised the interrupt
    # instead, so wait_released() raises it, naming what happened.
    with pytest.raises(ReleaseError) as reported:
        scope.wait_released(5.0)
    (failure,) = reported.value.exceptions
    assert "raised KeyboardInterrupt(ctrl-c); the release went on" in str(failure)
    assert scope.statistics().release_errors == 1
    gc.collect()
    assert ref() is None
    # closed, and closing again does nothing
    scope.close()


@pytest.mark.parametrize("bad", [None, 3, "step"])
def test_quick_step_refuses_what_is_not_a_step(bad: object) -> None:
    with pytest.raises(TypeError, match="quick_step\\(\\) takes a release step callable"):
        quick_step(bad)  # type: ignore[type-var]


def test_quick_step_refuses_a_callable_it_cannot_mark() -> None:
    with pytest.raises(TypeError, match="cannot mark builtin_function_or_method"):
        quick_step(len)  # type: ignore[type-var]


def test_quick_step_is_public_and_returns_the_step() -> None:
    def step(obj: object, timeout_s: float) -> None:
        return None

    assert nativeguard.quick_step(step) is step


def test_closed_at_names_the_callers_line_not_nativeguards() -> None:
    """The location a closed scope reports is the user's code, even through a managed block
    (whose code lives in nativeguard/_core/ since the layout change)."""
    with nativeguard.managed(Quick(), release="inline") as proxy:
        pass
    line = sys._getframe().f_lineno - 2
    with pytest.raises(nativeguard.ClosedResourceError, match=rf"{Path(__file__).name}:{line}"):
        proxy.released_on  # noqa: B018


def test_every_module_of_the_package_counts_as_nativeguards_own_code() -> None:
    """A scope closed by a helper in integrations/ reports the helper's caller."""
    from nativeguard._core import _scope
    from nativeguard.integrations import executors

    assert _scope._in_package(executors.__file__)
    assert _scope._in_package(_scope.__file__)
    assert not _scope._in_package(__file__)
