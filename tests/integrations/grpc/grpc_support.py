"""Helpers of the gRPC integration tests: a real server on 127.0.0.1 and exact counts.

The server is grpcio's own (``grpc.server``) with a hand-written generic
service (bytes in, bytes out; no protobuf): ``Echo`` returns the request,
``Sleep`` waits the request's seconds (or until the call is cancelled),
``Fail`` aborts with the request as its details, ``Many`` streams the
request three times, ``Metadata`` returns the caller's metadata as text.

``Counts`` is what "back to baseline" means here, exactly: grpc's own
counters (channelz channels, servers, sockets; grpc's Python threads), the
kernel ids of the process's threads and its open fd numbers. A module of its
own, uniquely named (``tests/`` has more than one conftest.py), so test
modules import it by name.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import pytest

from nativeguard.integrations.grpc import grpc_counters

# Skips the importing test module (not an import error) where grpcio is not installed.
grpc = pytest.importorskip(
    "grpc", reason="the gRPC tests need grpcio: pip install 'nativeguard[grpc]'"
)

SERVICE = "nativeguard.test.Service"


def _sleep(request: bytes, context: Any) -> bytes:
    deadline = time.monotonic() + float(request.decode() or "0")
    while time.monotonic() < deadline and context.is_active():
        time.sleep(0.01)
    return b"slept"


def _fail(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, request.decode(errors="replace"))
    raise AssertionError("abort() returns only by raising")


def _many(request: bytes, context: Any) -> Iterator[bytes]:
    for _ in range(3):
        yield request


def _metadata(request: bytes, context: Any) -> bytes:
    return repr(sorted(context.invocation_metadata())).encode()


def handlers() -> Any:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
            "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "Many": grpc.unary_stream_rpc_method_handler(_many),
            "Metadata": grpc.unary_unary_rpc_method_handler(_metadata),
        },
    )


@dataclass
class Server:
    """A running grpc server: ``target`` is ``127.0.0.1:<port>``."""

    server: Any
    pool: futures.ThreadPoolExecutor
    target: str

    def stop(self) -> None:
        self.server.stop(None).wait(10)
        self.pool.shutdown(wait=True)


def start_server(workers: int = 8) -> Server:
    pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc-test-server")
    server = grpc.server(pool)
    server.add_generic_rpc_handlers((handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return Server(server, pool, f"127.0.0.1:{port}")


def method(channel: Any, name: str) -> Any:
    """The unary-unary callable for ``name`` (``Many`` is unary-stream)."""
    path = f"/{SERVICE}/{name}"
    return channel.unary_stream(path) if name == "Many" else channel.unary_unary(path)


@dataclass(frozen=True)
class Counts:
    counters: dict[str, int]
    threads: frozenset[int]
    fds: frozenset[int]
    names: dict[int, str] = field(default_factory=dict, compare=False)
    fd_links: dict[int, str] = field(default_factory=dict, compare=False)


def _fds() -> frozenset[int]:
    return frozenset(int(name) for name in os.listdir("/proc/self/fd"))


_POOL = "event_engine"
"""grpc core's worker pool (grpcio 1.85.4): process-wide, no channel's or server's. It sizes
itself to load (grows while many channels connect at once, shrinks after idling), so its
threads are left out of the identity comparison; every other thread is compared by id."""


def _threads() -> frozenset[int]:
    """Kernel ids of this process's threads, minus grpc's pool and nativeguard's reaper pool.

    The reaper pool (``nativeguard-reaper``) lives for the process, grows while
    releases run concurrently and retires idle workers after 10 s; the
    snapshot leaves it out too.
    """
    reapers = {
        thread.native_id
        for thread in threading.enumerate()
        if thread.name.startswith("nativeguard-reaper")
    }
    ids = set()
    for name in os.listdir("/proc/self/task"):
        if int(name) in reapers:
            continue
        try:
            with open(f"/proc/self/task/{name}/comm") as comm:
                if comm.read().strip() == _POOL:
                    continue
        except OSError:
            continue  # ended meanwhile
        ids.add(int(name))
    return frozenset(ids)


def counts() -> Counts:
    return Counts(grpc_counters(), _threads(), _fds())


def fd_links(fds: frozenset[int]) -> dict[int, str]:
    """What each fd is (``socket:[...]``, ``anon_inode:[eventfd]``, a path)."""
    links = {}
    for fd in fds:
        try:
            links[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            links[fd] = "<gone>"
    return links


def thread_names(ids: frozenset[int]) -> dict[int, str]:
    """The kernel's name of each thread, with the Python thread's name when it has one."""
    python = {thread.native_id: thread.name for thread in threading.enumerate()}
    names = {}
    for tid in ids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                names[tid] = comm.read().strip()
        except OSError:
            names[tid] = "<gone>"
        if tid in python:
            names[tid] += f" ({python[tid]})"
    return names


def baseline_names(before: Counts) -> list[str]:
    """The names of the baseline's threads (recorded when the baseline was taken)."""
    return sorted(before.names.values())


def collect() -> None:
    """A full ``gc.collect()`` that really ran.

    While another thread is collecting (grpc's pollers and nativeguard's
    reaper allocate, so automatic collections run there), ``gc.collect()``
    returns at once without collecting; the generation-2 counter tells.
    """
    for _ in range(200):
        before = gc.get_stats()[2]["collections"]
        gc.collect()
        if gc.get_stats()[2]["collections"] != before:
            return
        time.sleep(0.005)
    raise AssertionError("gc.collect() was skipped 200 times: another thread keeps collecting")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until true or ``timeout``: grpc tears down on its own threads."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def assert_back_to(before: Counts, timeout: float = 10.0) -> None:
    """Counters, thread ids and fd numbers exactly as in ``before`` (after grpc's teardown)."""
    wait_for(lambda: counts() == before, timeout)
    after = counts()
    assert after.counters == before.counters
    assert after.threads == before.threads, (
        f"new threads {thread_names(after.threads - before.threads)}, "
        f"gone {sorted(before.threads - after.threads)}"
    )
    assert after.fds == before.fds, (
        f"new fds {sorted(after.fds - before.fds)}, gone {sorted(before.fds - after.fds)}"
    )
