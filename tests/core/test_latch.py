"""The one-shot latch that replaced ``threading.Event`` on the release path.

Every Scope waits on two of them (``wait_released`` and close()'s exit
budget); these tests pin the semantics the Scope relies on: any number of
waiters pass once it is set, a second ``set()`` is harmless even while a
waiter holds the lock for an instant, timeouts are honoured, and the latch
stays open for good.
"""

from __future__ import annotations

import threading
import time

import pytest

from nativeguard._core._latch import Latch


def test_unset_latch_times_out_and_reports_false():
    latch = Latch()
    began = time.monotonic()
    assert latch.wait(0.05) is False
    assert time.monotonic() - began >= 0.04
    assert latch.wait(0) is False
    assert latch.wait(-1) is False
    assert latch.is_set() is False


def test_set_latch_passes_every_wait_for_good():
    latch = Latch()
    latch.set()
    latch.set()  # idempotent
    assert latch.is_set() is True
    assert all(latch.wait(timeout) for timeout in (None, 0, -1, 0.01, 1e12))
    assert repr(latch) == "<Latch set>"


@pytest.mark.parametrize("waiters", [1, 8])
def test_every_waiter_passes_when_another_thread_sets_it(waiters: int):
    latch = Latch()
    results: list[bool] = []
    lock = threading.Lock()

    def wait(timeout: float | None) -> None:
        outcome = latch.wait(timeout)
        with lock:
            results.append(outcome)

    threads = [
        threading.Thread(target=wait, args=(None if index % 2 else 10.0,))
        for index in range(waiters)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.05)  # let them block
    assert results == []
    latch.set()
    for thread in threads:
        thread.join(5)
    assert not any(thread.is_alive() for thread in threads)
    assert results == [True] * waiters


def test_racing_sets_and_waits_never_raise_or_lose_the_state():
    for _ in range(200):
        latch = Latch()
        errors: list[BaseException] = []

        def act(index: int, latch: Latch = latch, errors: list[BaseException] = errors) -> None:
            try:
                if index % 2:
                    latch.set()
                else:
                    assert latch.wait(5)
            except BaseException as error:  # collected for the assertion below
                errors.append(error)

        threads = [threading.Thread(target=act, args=(index,)) for index in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert errors == []
        assert latch.is_set()
        assert latch.wait(0)
