"""gRPC channels and servers released by nativeguard, against a real server on 127.0.0.1.

Every test ends with exact counts: grpc's counters (channelz channels,
servers, sockets; grpc's Python threads), the process's thread ids and fd
numbers, all back to the baseline taken with the session server running.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import pytest
from grpc_support import Counts, assert_back_to, collect, counts, method, start_server, wait_for

import nativeguard
from nativeguard import AsyncReleaseRequired, ReleaseError, Scope
from nativeguard.integrations.grpc import (
    INTEGRATION,
    ChannelUsageError,
    grpc_counters,
    kind_of,
    managed_aio_channel,
    managed_channel,
    subscriptions,
)

grpc = pytest.importorskip("grpc")


def test_importing_the_integration_does_not_import_grpc() -> None:
    code = (
        "import sys, nativeguard, nativeguard.integrations.grpc as g; "
        "assert 'grpc' not in sys.modules, 'grpc imported'; "
        "assert g.INTEGRATION.name == 'grpc' and g.grpc_counters() == {}; "
        "assert g.kind_of(object()) is None"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_integration_is_registered_and_declares_grpc() -> None:
    from nativeguard._core._integration import integrations

    assert INTEGRATION in integrations()
    assert INTEGRATION.modules == ("grpc",)


def test_success_path_counts_back_exactly(grpc_server: Any, baseline: Counts) -> None:
    seen: list[Any] = []
    with managed_channel(grpc_server.target) as channel:
        assert method(channel, "Echo")(b"ping", timeout=10) == b"ping"
        assert list(method(channel, "Many")(b"x", timeout=10)) == [b"x"] * 3
        channel.subscribe(seen.append, try_to_connect=True)
        # The poller calls back on its own thread: wait for it before the block
        # ends (the release may now run on this thread at once).
        assert wait_for(lambda: bool(seen))
        inside = grpc_counters()
        assert inside["grpc.channels"] == baseline.counters["grpc.channels"] + 1
        assert inside["grpc.threads"] == baseline.counters["grpc.threads"] + 1  # the poller
        assert kind_of(channel.__wrapped__) == "channel"
    assert seen  # the connectivity callback ran while subscribed
    with pytest.raises(nativeguard.ClosedResourceError):
        channel.unary_unary  # noqa: B018 - the proxy's reference was cut
    assert_back_to(baseline)


def test_twenty_cycled_channels_hold_threads_until_gc_guarded_loop_ends_flat(
    grpc_server: Any, baseline: Counts, no_gc: None
) -> None:
    """The issue's measurement: 20 subscribed channels in cycles = +20 threads until gc."""

    class Holder:
        def __init__(self, channel: Any) -> None:
            self.channel = channel
            self.me = self

    for _ in range(20):
        channel = grpc.insecure_channel(grpc_server.target)
        channel.subscribe(lambda state: None, try_to_connect=True)
        assert method(channel, "Echo")(b"x", timeout=10) == b"x"
        Holder(channel)
        del channel
    readings: list[Counts] = []

    def twenty_more() -> bool:  # a transient delivery thread may come and go meanwhile
        readings.append(counts())
        return (
            readings[-1].counters["grpc.threads"] == baseline.counters["grpc.threads"] + 20
            and len(readings[-1].threads - baseline.threads) == 20
        )

    assert wait_for(twenty_more)
    naive = readings[-1]
    assert naive.counters["grpc.channels"] == baseline.counters["grpc.channels"] + 20
    collect()
    assert_back_to(baseline)

    for _ in range(20):
        with managed_channel(grpc_server.target) as channel:
            channel.subscribe(lambda state: None, try_to_connect=True)
            assert method(channel, "Echo")(b"x", timeout=10) == b"x"
            Holder(channel)
    # No collection: the cycles still exist, but hold only cut proxies.
    assert_back_to(baseline)


def test_subscribed_callback_that_references_its_channel_is_dropped(
    grpc_server: Any, baseline: Counts
) -> None:
    """Naively such a channel is never freed, even by gc: its poller thread is a GC root."""
    import weakref

    naive = grpc.insecure_channel(grpc_server.target)
    naive.subscribe(lambda state, held=[naive]: held, try_to_connect=True)
    ref = weakref.ref(naive)
    del naive
    collect()
    assert ref() is not None
    assert grpc_counters()["grpc.channels"] == baseline.counters["grpc.channels"] + 1
    cleanup = Scope(release="inline")  # unsubscribes first: a bare close() races the poller
    cleanup.register(ref())
    cleanup.close()
    assert_back_to(baseline)

    with managed_channel(grpc_server.target) as channel:
        raw = channel.__wrapped__
        raw.subscribe(lambda state, held=[raw]: held, try_to_connect=True)
        (slot,) = subscriptions(raw)
        assert slot.is_connected()
        ref = weakref.ref(raw)
        del raw, slot
    assert wait_for(lambda: ref() is None)
    assert_back_to(baseline)


def test_guarded_releases_the_channels_and_server_a_call_leaves(
    grpc_server: Any, baseline: Counts
) -> None:
    kept: list[Any] = []

    @nativeguard.guarded
    def work() -> bytes:
        server = start_server(workers=2)
        channel = grpc.insecure_channel(server.target)
        kept.append((server.pool, channel))  # even the caller's reference is cut off
        return bytes(method(channel, "Echo")(b"guarded", timeout=10))

    assert work() == b"guarded"
    pool, channel = kept.pop()
    with pytest.raises(ValueError, match="closed channel"):
        method(channel, "Echo")(b"x", timeout=10)
    pool.shutdown(wait=True)
    del channel, pool
    assert_back_to(baseline)


def test_scope_stops_a_sync_server(baseline: Counts) -> None:
    server = start_server(workers=2)
    with managed_channel(server.target) as channel:
        assert method(channel, "Echo")(b"x", timeout=10) == b"x"
    scope = Scope(release="inline")
    scope.register(server.server)
    scope.close()
    assert scope.statistics().release_errors == 0
    server.pool.shutdown(wait=True)
    del server
    assert_back_to(baseline)


def test_aio_channel_async_with_closes_on_its_loop(grpc_server: Any, baseline: Counts) -> None:
    async def main() -> bytes:
        async with managed_aio_channel(grpc_server.target) as channel:
            assert kind_of(channel.__wrapped__) == "aio channel"
            return bytes(await method(channel, "Echo")(b"aio", timeout=10))

    assert asyncio.run(main()) == b"aio"
    assert_back_to(baseline)


def test_aio_channel_refuses_a_plain_with(grpc_server: Any, baseline: Counts) -> None:
    block = managed_aio_channel(grpc_server.target)
    with pytest.raises(ChannelUsageError, match="async with"), block:
        pass
    assert isinstance(ChannelUsageError("x"), RuntimeError)
    assert_back_to(baseline)


def test_aio_server_and_channel_released_by_scope_aclose(baseline: Counts) -> None:
    from grpc_support import handlers

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        async with Scope() as scope:
            scope.register(server)
            scope.register(channel)
            assert await method(channel, "Echo")(b"a", timeout=10) == b"a"
        assert scope.wait_released(10)
        assert scope.statistics().release_errors == 0
        assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN

    asyncio.run(main())
    collect()
    assert_back_to(baseline)


def test_sync_close_refuses_an_aio_channel_whose_loop_runs(
    grpc_server: Any, baseline: Counts
) -> None:
    async def main() -> None:
        channel = grpc.aio.insecure_channel(grpc_server.target)
        scope = Scope()
        scope.register(channel)
        with pytest.raises(ReleaseError) as caught:
            scope.close()  # on the loop's own thread: nothing can await the close
        assert caught.group_contains(AsyncReleaseRequired)
        del caught  # its traceback holds this frame, and so the channel
        await channel.close()

    asyncio.run(main())
    collect()
    assert_back_to(baseline)


def test_aio_channel_whose_loop_is_gone_is_destroyed_synchronously(
    grpc_server: Any, baseline: Counts
) -> None:
    async def make() -> Any:
        channel = grpc.aio.insecure_channel(grpc_server.target)
        assert await method(channel, "Echo")(b"x", timeout=10) == b"x"
        return channel

    channel = asyncio.run(make())  # the loop is closed now
    scope = Scope(release="inline")
    scope.register(channel)
    scope.close()
    assert scope.statistics().release_errors == 0
    assert channel._channel.closed()
    del channel
    collect()
    assert_back_to(baseline)


def test_aclose_on_another_loop_hops_to_the_channel_loop(
    grpc_server: Any, baseline: Counts
) -> None:
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-test-loop")
    thread.start()
    try:

        async def make() -> Any:
            channel = grpc.aio.insecure_channel(grpc_server.target)
            assert await method(channel, "Echo")(b"x", timeout=10) == b"x"
            return channel

        channel = asyncio.run_coroutine_threadsafe(make(), loop).result(10)

        async def release(target: Any) -> None:
            async with Scope() as scope:
                scope.register(target)

        asyncio.run(release(channel))
        assert channel._channel.closed()
        del channel
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    collect()
    assert_back_to(baseline)


def test_counters_reach_the_snapshot(grpc_server: Any, baseline: Counts) -> None:
    from nativeguard.verify import snapshot

    before = snapshot()
    with managed_channel(grpc_server.target) as channel:
        method(channel, "Echo")(b"x", timeout=10)
        inside = snapshot()
        assert (
            inside.native_handles["grpc.channels"]
            == before.native_handles.get("grpc.channels", 0) + 1
        )
    assert_back_to(baseline)
    time.sleep(0)
