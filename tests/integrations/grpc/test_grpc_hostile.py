"""Hostile use of the gRPC integration: bad input, faults, interrupts, threads, fork, secrets.

Each test ends with exact counts (grpc's counters, thread ids, fd numbers)
back at the baseline: a failure path must release as much as the success path.
"""

from __future__ import annotations

import _thread
import asyncio
import os
import threading
from concurrent import futures
from typing import Any

import pytest
from grpc_support import (
    Counts,
    assert_back_to,
    counts,
    fd_links,
    method,
    start_server,
    thread_names,
    wait_for,
)

import nativeguard
from nativeguard.integrations.grpc import (
    ChannelArgumentError,
    ChannelTargetError,
    grpc_counters,
    managed_aio_channel,
    managed_channel,
)
from nativeguard.verify import check

grpc = pytest.importorskip("grpc")


# -- wrong types and values ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"target": None}, ChannelArgumentError, "target must be a str"),
        ({"target": b"127.0.0.1:1"}, ChannelArgumentError, "got bytes"),
        ({"target": ""}, ChannelTargetError, "non-empty"),
        ({"target": " 127.0.0.1:1"}, ChannelTargetError, "without spaces"),
        ({"target": "127.0.0.1:1\n"}, ChannelTargetError, "control characters"),
        ({"target": "http://127.0.0.1:1"}, ChannelTargetError, "is a URL"),
        ({"target": "https://example.com"}, ChannelTargetError, "ssl_channel_credentials"),
        ({"target": "127.0.0.1:notaport"}, ChannelTargetError, "'127.0.0.1:<redacted>' has a port"),
        ({"target": "localhost:70000"}, ChannelTargetError, "1 to 65535"),
        ({"target": "localhost:0"}, ChannelTargetError, "1 to 65535"),
        ({"target": ":50051"}, ChannelTargetError, "no host"),
        ({"target": "dns:///localhost:99999"}, ChannelTargetError, "1 to 65535"),
        ({"credentials": "insecure"}, ChannelArgumentError, "grpc.ChannelCredentials"),
        ({"options": "grpc.x=1"}, ChannelArgumentError, "sequence of (name, value) pairs"),
        ({"options": {"grpc.x": 1}}, ChannelArgumentError, "got dict"),
        ({"options": [("grpc.x",)]}, ChannelArgumentError, "options[0] must be a (name, value)"),
        ({"options": [(1, 2)]}, ChannelArgumentError, "options[0]'s name"),
        ({"options": [("grpc.x", 1.5)]}, ChannelArgumentError, "str, bytes or int value"),
        ({"options": [("grpc.x", True)]}, ChannelArgumentError, "got bool"),
        ({"compression": "gzip"}, ChannelArgumentError, "grpc.Compression"),
        ({"scope": "scope"}, TypeError, "scope must be a nativeguard Scope"),
        ({"release": "later"}, ValueError, "release must be 'inline' or 'background'"),
    ],
)
def test_bad_arguments_are_refused_by_name_before_anything_is_made(
    grpc_server: Any, baseline: Counts, kwargs: dict[str, Any], error: type, message: str
) -> None:
    arguments: dict[str, Any] = {"target": grpc_server.target, **kwargs}
    target = arguments.pop("target")
    for factory in (managed_channel, managed_aio_channel):
        with pytest.raises(error) as caught:
            factory(target, **arguments)
        assert message in str(caught.value)
        if error in (ChannelArgumentError, ChannelTargetError):
            assert isinstance(caught.value, nativeguard.NativeGuardError)
    assert issubclass(ChannelArgumentError, TypeError)
    assert issubclass(ChannelTargetError, ValueError)
    assert_back_to(baseline)


def test_call_credentials_alone_get_a_hint(baseline: Counts) -> None:
    token = grpc.access_token_call_credentials("tok-0123456789")
    with pytest.raises(ChannelArgumentError, match="composite_channel_credentials"):
        managed_channel("127.0.0.1:1", credentials=token)
    assert_back_to(baseline)


def test_valid_target_forms_are_accepted(baseline: Counts) -> None:
    for target in ("localhost", "[::1]:50051", "dns:///host:443", "unix:/tmp/x.sock", "xds:///a"):
        managed_channel(target)  # checked, not entered: nothing is made
    assert_back_to(baseline)


# -- service faults --------------------------------------------------------------


def test_server_gone(baseline: Counts) -> None:
    server = start_server(workers=2)
    target = server.target
    with managed_channel(target) as channel:
        assert method(channel, "Echo")(b"x", timeout=10) == b"x"
    server.stop()
    del server
    with pytest.raises(grpc.RpcError) as caught, managed_channel(target) as channel:
        method(channel, "Echo")(b"x", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    del caught
    assert_back_to(baseline)


def test_deadline_exceeded(grpc_server: Any, baseline: Counts) -> None:
    with pytest.raises(grpc.RpcError) as caught, managed_channel(grpc_server.target) as channel:
        method(channel, "Sleep")(b"5", timeout=0.2)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    del caught
    assert_back_to(baseline)


def test_service_error_status(grpc_server: Any, baseline: Counts) -> None:
    with pytest.raises(grpc.RpcError) as caught, managed_channel(grpc_server.target) as channel:
        method(channel, "Fail")(b"bad input", timeout=10)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "bad input"
    del caught
    assert_back_to(baseline)


def test_sync_future_cancelled(grpc_server: Any, baseline: Counts) -> None:
    with managed_channel(grpc_server.target) as channel:
        call = method(channel, "Sleep").future(b"10", timeout=30)
        assert call.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            call.result(timeout=10)
        del call
    assert_back_to(baseline)


def test_call_in_flight_when_block_exits_is_cancelled_by_close(
    grpc_server: Any, baseline: Counts
) -> None:
    with managed_channel(grpc_server.target) as channel:
        call = method(channel, "Sleep").future(b"10", timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        call.result(timeout=10)
    assert caught.value.code() is grpc.StatusCode.CANCELLED
    del call, caught
    assert_back_to(baseline)


def test_asyncio_task_cancelled(grpc_server: Any, baseline: Counts) -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def body() -> None:
            async with managed_aio_channel(grpc_server.target) as channel:
                started.set()
                await method(channel, "Sleep")(b"10", timeout=30)

        task = asyncio.create_task(body())
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert_back_to(baseline)


def test_exception_in_the_body_propagates_unchanged(grpc_server: Any, baseline: Counts) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom) as caught, managed_channel(grpc_server.target) as channel:
        method(channel, "Echo")(b"x", timeout=10)
        raise Boom("from the body")
    assert str(caught.value) == "from the body"
    del caught
    assert_back_to(baseline)


def test_keyboard_interrupt_in_the_body(grpc_server: Any, baseline: Counts) -> None:
    with pytest.raises(KeyboardInterrupt), managed_channel(grpc_server.target) as channel:
        method(channel, "Echo")(b"x", timeout=10)
        raise KeyboardInterrupt
    assert_back_to(baseline)


def test_keyboard_interrupt_while_waiting_for_a_call(grpc_server: Any, baseline: Counts) -> None:
    """Ctrl-C lands in the main thread while it waits on a call's result."""
    timer = threading.Timer(0.2, _thread.interrupt_main)
    with pytest.raises(KeyboardInterrupt), managed_channel(grpc_server.target) as channel:
        call = method(channel, "Sleep").future(b"10", timeout=30)
        timer.start()
        call.result(timeout=30)
    timer.join()
    del call
    assert_back_to(baseline)


# -- concurrency and fork --------------------------------------------------------


def test_concurrent_managed_channels(grpc_server: Any, baseline: Counts) -> None:
    def worker(index: int) -> int:
        done = 0
        for _ in range(5):
            with managed_channel(grpc_server.target) as channel:
                payload = f"{index}".encode()
                assert method(channel, "Echo")(payload, timeout=10) == payload
                done += 1
        return done

    with futures.ThreadPoolExecutor(8, thread_name_prefix="grpc-test-client") as clients:
        assert sum(clients.map(worker, range(8))) == 40
    assert_back_to(baseline)


def _call_with(callable_: Any, payload: bytes) -> Any:
    return callable_(payload, timeout=10)


def test_one_channel_shared_by_threads_released_once(grpc_server: Any, baseline: Counts) -> None:
    with (
        managed_channel(grpc_server.target) as channel,
        futures.ThreadPoolExecutor(4, thread_name_prefix="grpc-test-client") as clients,
    ):
        echo = method(channel, "Echo")
        replies = list(clients.map(_call_with, [echo] * 32, [bytes([i]) for i in range(32)]))
        assert replies == [bytes([i]) for i in range(32)]
        del echo
    assert_back_to(baseline)


def test_fork_inside_a_managed_block(grpc_server: Any, baseline: Counts) -> None:
    """A child forked while a channel is open exits cleanly; the parent's channel still works.

    Measured with grpcio 1.85.4: grpc's fork handlers stop its core threads
    (``grpc_global_tim``, ``event_engine`` x4, ``lifeguard``) before fork and
    start new ones after, in the parent; so the parent ends with the same
    threads by name and count, six of them with new ids, and replaces its
    eventfd (same count, a new fd number); when another thread is inside grpc
    at that moment it skips its handlers and nothing changes. The restarted
    threads are native (no Python thread has their id): ``grpc_global_tim``,
    ``lifeguard`` and unnamed ones (``python``, the process's name).
    Everything else is exact.
    """
    core = {"grpc_global_tim", "lifeguard", "python"}  # event_engine threads are not compared
    with managed_channel(grpc_server.target) as channel:
        assert method(channel, "Echo")(b"before", timeout=10) == b"before"
        pid = os.fork()
        if pid == 0:  # the child touches nothing of grpc's and leaves at once
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert method(channel, "Echo")(b"after", timeout=10) == b"after"
    assert wait_for(lambda: counts().counters == baseline.counters)
    after = counts()
    assert len(after.fds) == len(baseline.fds)
    renewed = fd_links(after.fds - baseline.fds)
    assert set(renewed.values()) <= {"anon_inode:[eventfd]", "anon_inode:[eventpoll]"}, renewed
    replaced = {baseline.fd_links[fd] for fd in baseline.fds - after.fds} - {"<gone>"}
    assert replaced <= set(renewed.values())
    new = thread_names(after.threads - baseline.threads)
    # Only grpc's restarted core threads are compared: in a process that ran other
    # subsystems' tests first, an unrelated native thread may end meanwhile.
    gone = [baseline.names.get(t) for t in baseline.threads - after.threads]
    assert set(new.values()) <= core, new  # the kernel's names only: no Python thread is new
    # grpc's named core threads come back one for one; unnamed ("python") ones may
    # include another subsystem's native thread that ended meanwhile.
    for name in ("grpc_global_tim", "lifeguard"):
        assert list(new.values()).count(name) == gone.count(name), (name, new, gone)
    assert list(new.values()).count("python") <= gone.count("python"), (new, gone)


# -- secrets ------------------------------------------------------------------------

SECRET = "s3cr3t-0123456789abcdef"


@pytest.mark.parametrize(
    "target",
    [
        f"https://user:{SECRET}@example.com:443/",
        f"http://example.com/?token={SECRET}",
        f"example.com:{SECRET}",
        f"dns://user:{SECRET}@8.8.8.8/host:99999",
    ],
)
def test_a_secret_in_a_bad_target_is_not_echoed(target: str) -> None:
    with pytest.raises(ChannelTargetError) as caught:
        managed_channel(target)
    assert SECRET not in str(caught.value)
    assert SECRET[:12] not in str(caught.value)


def test_an_option_value_is_never_echoed() -> None:
    class Token:
        def __repr__(self) -> str:
            return f"Token({SECRET})"

    with pytest.raises(ChannelArgumentError) as caught:
        managed_channel("127.0.0.1:1", options=[("grpc.primary_user_agent", Token())])
    assert SECRET not in str(caught.value)
    assert "grpc.primary_user_agent" in str(caught.value)


def test_token_metadata_reaches_the_server_and_leaked_channel_report_masks_it(
    grpc_server: Any, baseline: Counts
) -> None:
    """A client keeping its token and channel: the leak report names it, without the token."""

    class Client:
        def __init__(self, target: str) -> None:
            self.api_token = f"token={SECRET}"
            self.channel = grpc.insecure_channel(target)

    before = nativeguard.verify.snapshot()
    client = Client(grpc_server.target)
    metadata = (("authorization", f"Bearer {SECRET}"),)
    reply = method(client.channel, "Metadata")(b"", timeout=10, metadata=metadata)
    assert SECRET.encode() in reply  # the server did receive it
    report = check(before, settle_s=0.5)
    assert report is not None
    text = str(report)
    assert "Channel" in text
    assert "Client" in text or "client" in text
    assert SECRET not in text
    client.channel.close()
    del client, report
    assert wait_for(lambda: grpc_counters() == baseline.counters)
    assert_back_to(baseline)
    assert counts().fds == baseline.fds


# -- the connectivity poller, caught between its lines ------------------------------

_POLLER_SOURCE = """
def _poll_connectivity(state, channel, connectivity, slow):
    while True:
        event = channel.watch_connectivity_state(connectivity, slow())
        if event:
            return
"""


class _FakeWatchChannel:
    """Blocks in ``watch_connectivity_state`` until told, like grpc's C watch."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    def watch_connectivity_state(self, connectivity: object, deadline: object) -> bool:
        self.inside.set()
        self.release.wait(10)
        return True


def test_a_poller_evaluating_its_watch_arguments_is_busy_not_parked() -> None:
    """Closing while the poller computes ``time.time() + 0.2`` makes it watch a closed channel.

    On the watch call's line but not yet inside the call is busy; only inside it
    (``f_lasti`` at the call) is parked. The fake poller has grpc's shape: the
    argument evaluation blocks on an event so the check can look at it there.
    """
    from nativeguard.integrations.grpc import _release

    namespace: dict[str, Any] = {}
    exec(compile(_POLLER_SOURCE, "fake_grpc_channel.py", "exec"), namespace)
    poll = namespace["_poll_connectivity"]
    state = object()
    channel = _FakeWatchChannel()
    evaluating = threading.Event()
    go_on = threading.Event()

    def slow() -> float:
        evaluating.set()
        go_on.wait(10)
        return 0.2

    poller = threading.Thread(target=poll, args=(state, channel, "IDLE", slow), daemon=True)
    poller.start()
    try:
        assert evaluating.wait(5)
        assert _release._poller_busy(state) is True  # on the watch line, in its arguments
        go_on.set()
        assert channel.inside.wait(5)
        assert _release._poller_busy(state) is False  # inside the blocking watch
    finally:
        go_on.set()
        channel.release.set()
        poller.join(5)
    assert not poller.is_alive()
    assert _release._poller_busy(state) is False  # no poller at all
