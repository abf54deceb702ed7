"""A one-shot event: set once, waited on by any number of threads.

Why not ``threading.Event``: every Scope needs two of these and every
release one more, on the path of every guarded request. An ``Event`` is a
``Condition`` over a lock (two allocations, and ``set()`` takes the lock,
walks the waiters and notifies each), about 2 us to make and 2 us to set on
Python 3.11.7; a latch is one lock taken at creation and released by
``set()`` (~0.2 us each). Waiting acquires the lock and hands it straight
back, so every waiter passes, however many there are, and the lock stays
free once set. Like ``Event.wait``, a wait can be interrupted by a signal
(``KeyboardInterrupt``) on POSIX.
"""

from __future__ import annotations

import _thread
import time

__all__ = ["Latch"]

_SLICE_S = 1.0
"""Longest single sleep of a waiter (see :meth:`Latch.wait`)."""


class Latch:
    """``set()`` once (later calls do nothing); ``wait(timeout)`` until then."""

    __slots__ = ("_is_set", "_lock")

    def __init__(self) -> None:
        self._is_set = False
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        """Open the latch; idempotent and safe from any thread."""
        self._is_set = True
        _release(self._lock)

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the latch was set within ``timeout`` seconds (None: wait for it).

        Waits in slices of at most :data:`_SLICE_S`, checking the flag between
        them: an interrupt that lands right after a waiter took the lock, before
        it handed it back, leaves the lock held for good, and the other waiters
        then see the flag at their next slice instead of sleeping out their
        whole timeout (or for ever). Normally no waiter wakes before ``set()``.
        """
        if self._is_set:
            return True
        if timeout is not None and timeout <= 0:
            acquired = self._lock.acquire(False)
            if acquired:
                _release(self._lock)
            return self._is_set
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._is_set:
            remaining = _SLICE_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._lock.acquire(True, min(remaining, _SLICE_S)):
                _release(self._lock)  # the next waiter passes too
        return self._is_set

    def __repr__(self) -> str:
        return f"<Latch {'set' if self._is_set else 'unset'}>"


def _release(lock: _thread.LockType) -> None:
    """Release ``lock``; already released (a second ``set()``, or a waiter racing one) is fine."""
    try:  # noqa: SIM105 - contextlib.suppress costs a context manager on a hot path
        lock.release()
    except RuntimeError:
        pass
