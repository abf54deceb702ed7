"""How a Scope releases gRPC channels and servers, and the callbacks they hold.

Measured with grpcio 1.85.4 (glibc 2.36, Python 3.11.7):

- A sync channel's ``close()`` cancels its calls, destroys the core channel
  and drops its connectivity subscriptions; the polling thread that
  ``subscribe()`` started ends within its 0.2 s poll. Without ``close()`` the
  core channel lives until the Python object is collected: a channel left in
  a reference cycle keeps its socket (and, if subscribed, its polling thread)
  until ``gc.collect()``, and a subscribed callback that references the
  channel keeps it alive for good (the polling thread is a GC root).
- A sync server's ``stop(None)`` aborts its calls and returns a
  ``threading.Event`` set when it has shut down; its ``_serve`` thread ends.
- ``grpc.aio`` channels and servers close with coroutines that must run on
  the event loop the object was made on (the object keeps it as ``_loop``).
  The release step returns a coroutine that runs the close there (hopping
  loops with ``run_coroutine_threadsafe`` when ``Scope.aclose()`` runs on
  another one); a synchronous ``Scope.close()`` refuses it with
  ``AsyncReleaseRequired``, as for every async close. When that loop is
  closed or not running (``asyncio.run()`` has returned), a channel is closed
  the way grpc's own ``__del__`` does: the core channel is destroyed
  synchronously, nothing being left to await.

Each step is bounded by the Scope (``step_timeout_s``, on a step-runner
thread), so the steps call grpc directly; the one wait that has a bound of
its own (the server's shutdown event) is given the step's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import functools
import sys
import time
from collections.abc import Awaitable, Callable
from types import CodeType, FrameType
from typing import Any

from nativeguard import ReleaseTimeout, quick_step

from ._kinds import is_aio_channel, is_aio_server, is_sync_channel, is_sync_server

__all__ = ["RELEASE", "ConnectivitySubscriptions", "subscriptions"]


_POLLER_SETTLE_S = 1.0
"""How long a release waits for a connectivity poller to park in its watch (normally < 1 ms)."""


@functools.cache
def _watch_call(code: CodeType) -> range | None:
    """Offsets of the instruction that calls ``watch_connectivity_state`` in ``code``, or None.

    The call whose result is stored (``event = channel.watch_connectivity_state(...)``):
    the last ``CALL`` before the first store after the method is looked up, with its
    inline cache entries (up to the store). A frame whose ``f_lasti`` is in that range is
    inside the call: for grpc's C watch ``f_lasti`` is the ``CALL`` itself, for a Python
    callee its last cache entry (Python 3.11). No thread switch happens between starting
    a ``CALL`` and entering the callee, and grpcio 1.85.4's Cython watch checks the
    channel and registers its watch before it releases the GIL to block. Being on the
    call's *lines* is not enough: evaluating its arguments (``time.time() + 0.2``) is on
    them too, and a close landing then makes the poller watch a closed channel
    (``ValueError: Cannot monitor channel state: Channel closed!`` in its thread; seen
    once in a full CI run).
    """
    call: int | None = None
    seen_method = False
    for instruction in dis.get_instructions(code):
        if instruction.argval == "watch_connectivity_state":
            seen_method = True
        elif seen_method and instruction.opname.startswith("CALL"):
            call = instruction.offset
        elif seen_method and instruction.opname.startswith("STORE") and call is not None:
            return range(call, instruction.offset)
    return None


def _poller_busy(state: object) -> bool:
    """Whether ``state``'s connectivity poller runs anywhere but inside its blocking watch."""
    for frame in list(sys._current_frames().values()):
        current: FrameType | None = frame
        while current is not None:
            code = current.f_code
            if code.co_name == "_poll_connectivity" and current.f_locals.get("state") is state:
                watching = _watch_call(code)
                # A grpcio whose poller reads differently: busy until the settle bound.
                return watching is None or current.f_lasti not in watching
            current = current.f_back
    return False


@quick_step  # its waits are bounded (the poller settle, grpc's own close)
def _close_channel(obj: Any, timeout_s: float) -> None:
    """Unsubscribe, cancel a pending connect, let the poller park, then ``close()``.

    Measured with grpcio 1.85.4: a bare ``close()`` while ``subscribe()``'s
    poller thread runs can race it. The poller waits in
    ``watch_connectivity_state`` (0.2 s at a time); when the watch ends it
    checks, under the state's lock, whether any callback or connect request
    is left, and otherwise calls ``check_connectivity_state`` outside the lock.
    A close landing in that window (a pending ``try_to_connect``, a state
    change just seen, or a poller that has not made its first check)
    makes the poller raise ``ValueError: Cannot monitor channel state:
    Channel closed!``, printed as an unhandled thread exception (about one
    release in ten under load when subscribed with ``try_to_connect=True``).
    So: drop the callbacks and the pending connect under the lock, wait
    until the poller is back in its watch (normally under 1 ms; bounded),
    then close; closing ends the watch, the poller finds nothing left and
    returns. Waiting for the poll to time out instead would cost 0.2 s.
    """
    state = getattr(obj, "_connectivity_state", None)
    lock = getattr(state, "lock", None)
    if state is not None and lock is not None:
        ConnectivitySubscriptions(obj).disconnect_all()
        with lock:
            state.try_to_connect = False
            polling = bool(state.polling)
        if polling:
            deadline = time.monotonic() + min(timeout_s, _POLLER_SETTLE_S)
            while _poller_busy(state) and time.monotonic() < deadline:
                time.sleep(0.0005)
    obj.close()


@quick_step  # bounded by timeout_s
def _stop_server(obj: Any, timeout_s: float) -> None:
    event = obj.stop(None)
    if not event.wait(timeout_s):
        raise ReleaseTimeout(f"grpc server stop(None) did not finish within {timeout_s:g} s")


def _loop_of(obj: Any) -> asyncio.AbstractEventLoop | None:
    loop = getattr(obj, "_loop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


async def _run_on(
    loop: asyncio.AbstractEventLoop | None,
    make: Callable[[], Awaitable[Any]],
    fallback: Callable[[], None],
) -> None:
    """Await ``make()`` on ``loop``: here, or on its own thread; ``fallback()`` if it is gone."""
    running = asyncio.get_running_loop()
    if loop is None or loop is running:
        await make()
        return
    if loop.is_closed() or not loop.is_running():
        fallback()
        return

    async def on_its_loop() -> None:
        await make()

    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_its_loop(), loop))


def _destroy_aio_channel(obj: Any) -> None:
    """What grpc 1.85's ``aio.Channel.__del__`` does: destroy the core channel, synchronously."""
    core: Any = getattr(obj, "_channel", None)
    closed = getattr(core, "closed", None)
    if callable(closed) and not closed():
        core.close()


def _aio_channel_closed(obj: Any) -> bool:
    closed = getattr(getattr(obj, "_channel", None), "closed", None)
    return bool(closed()) if callable(closed) else False


def _close_aio_channel(obj: Any, timeout_s: float) -> Awaitable[None] | None:
    if _aio_channel_closed(obj):
        return None
    loop = _loop_of(obj)
    if loop is not None and (loop.is_closed() or not loop.is_running()):
        _destroy_aio_channel(obj)
        return None
    return _run_on(loop, lambda: obj.close(None), lambda: _destroy_aio_channel(obj))


def _aio_server_gone(obj: Any) -> None:
    raise RuntimeError(
        "the grpc.aio server's event loop is closed or stopped, so the server can no longer "
        "be stopped (grpc.aio servers shut down on their own loop)"
    )


def _stop_aio_server(obj: Any, timeout_s: float) -> Awaitable[None] | None:
    running = getattr(getattr(obj, "_server", None), "is_running", None)
    if callable(running) and not running():
        return None
    loop = _loop_of(obj)
    if loop is not None and (loop.is_closed() or not loop.is_running()):
        _aio_server_gone(obj)
    return _run_on(loop, lambda: obj.stop(None), lambda: _aio_server_gone(obj))


RELEASE: tuple[tuple[str, Callable[[object], bool], tuple[Callable[[Any, float], object]]], ...] = (
    ("grpc channel", is_sync_channel, (_close_channel,)),
    ("grpc.aio channel", is_aio_channel, (_close_aio_channel,)),
    ("grpc server", is_sync_server, (_stop_server,)),
    ("grpc.aio server", is_aio_server, (_stop_aio_server,)),
)


# -- connectivity callbacks ----------------------------------------------------


def _subscribed(channel: Any) -> tuple[Any, list[Any] | None]:
    """(connectivity state, its callback entries) of a sync channel; entries None if unknown.

    grpcio 1.85.4 keeps them in ``_connectivity_state.callbacks_and_connectivities``.
    Read without the state's lock: callers that need a consistent copy take it.
    """
    state = getattr(channel, "_connectivity_state", None)
    entries = getattr(state, "callbacks_and_connectivities", None)
    return state, entries if isinstance(entries, list) else None


class ConnectivitySubscriptions:
    """The ``subscribe()`` callbacks of one sync channel, as a slot a Scope disconnects.

    ``is_connected()`` and ``disconnect_all()``, the two methods the Scope
    calls. The callbacks live in the channel's connectivity state (grpcio
    1.85.4: ``_connectivity_state.callbacks_and_connectivities``, guarded by
    its ``lock``); each is removed with the public ``unsubscribe()``.
    """

    __slots__ = ("_channel",)

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def _callbacks(self) -> list[Any]:
        state, entries = _subscribed(self._channel)
        if entries is None:
            return []
        lock = getattr(state, "lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            return [entry[0] for entry in entries]

    def is_connected(self) -> bool:
        return bool(self._callbacks())

    def disconnect_all(self) -> None:
        callbacks = self._callbacks()
        if not callbacks:
            return
        for callback in callbacks:
            self._channel.unsubscribe(callback)
        del callbacks
        left = len(self._callbacks())
        if left:
            raise RuntimeError(f"{left} connectivity callback(s) stayed subscribed")

    def __repr__(self) -> str:
        return f"<grpc connectivity subscriptions: {len(self._callbacks())}>"


def subscriptions(obj: object) -> list[ConnectivitySubscriptions]:
    """The connectivity-callback slot of a sync channel that has callbacks (else empty).

    A channel without callbacks (every channel once ``_close_channel`` ran, and
    most never subscribe) has nothing to disconnect: no slot, so a release
    does not build one and take the state's lock twice for nothing. The
    list's truth is read without the lock (atomic); ``subscribe()`` after
    that is a use of a channel being released.
    """
    if not is_sync_channel(obj):
        return []
    _state, entries = _subscribed(obj)
    if entries is not None and not entries:
        return []
    return [ConnectivitySubscriptions(obj)]
