"""Fixtures of the gRPC integration tests (helpers: grpc_support.py)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from concurrent import futures

import pytest

pytest.importorskip("grpc", reason="the gRPC tests need grpcio: pip install 'nativeguard[grpc]'")

from grpc_support import (
    Counts,
    Server,
    collect,
    counts,
    fd_links,
    method,
    start_server,
    thread_names,
    wait_for,
)

from nativeguard.integrations.grpc import managed_channel


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[Server]:
    """One server per test module, warmed up: its pool threads and grpc core's threads exist.

    Per module, not per session: a server alive for the session would be counted
    by every later test of other subsystems (its threads, sockets, channelz entries).

    Warm-up also starts nativeguard's reaper and step runner, which live for
    the process, and grows the server pool to its size (each worker thread
    starts on first use), so no test's baseline misses a thread that
    appears later for reasons of its own.
    """
    server = start_server()
    workers = server.pool._max_workers
    with managed_channel(server.target) as channel, futures.ThreadPoolExecutor(workers) as clients:
        for _ in range(2):
            calls = [
                clients.submit(method(channel, "Sleep"), b"0.05", timeout=10)
                for _ in range(workers)
            ]
            assert [call.result() for call in calls] == [b"slept"] * workers
        # Channels made and released from many threads at once, as the
        # concurrency tests do: nativeguard's step runner grows to its size.
        target = server.target

        def churn(_: int) -> None:
            for _ in range(5):
                with managed_channel(target) as channel:
                    method(channel, "Echo")(b"warm", timeout=10)

        list(clients.map(churn, range(workers)))
    yield server
    server.stop()


@pytest.fixture
def baseline(grpc_server: Server) -> Counts:
    """Counts with the session server running and nothing else of grpc's alive."""
    collect()
    previous = counts()

    def stable() -> bool:
        nonlocal previous
        time.sleep(0.05)
        now, previous = previous, counts()
        return now == previous

    assert wait_for(stable, 10), "grpc's counts did not settle before the test"
    return Counts(
        previous.counters,
        previous.threads,
        previous.fds,
        thread_names(previous.threads),
        fd_links(previous.fds),
    )


@pytest.fixture
def no_gc() -> Iterator[None]:
    """No automatic collection during the test: cycles stay until the test collects."""
    collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        collect()


@pytest.fixture(scope="module", autouse=True)
def _collect_what_the_module_left_in_cycles() -> Iterator[None]:
    """Some tests leave objects in reference cycles on purpose (the naive pattern);
    collected at the end of the module, so other subsystems' tests do not count them."""
    yield
    gc.collect()
