"""Exact before/after accounting of SDK objects for the core's tests."""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter
from dataclasses import dataclass

import psutil

from nativeguard._core._reaper import get_reaper
from nativeguard.integrations.azure_speech import native_handles
from nativeguard.verify._snapshot import is_reaper_thread

SDK_MODULE = "azure.cognitiveservices.speech"


def live_sdk_instances() -> Counter[str]:
    """Live instances of SDK classes, by class name (full heap scan: tests only)."""
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        module = type.__dict__["__module__"].__get__(type(obj))  # not a proxy's property
        if isinstance(module, str) and module.startswith(SDK_MODULE):
            counts[type(obj).__qualname__] += 1
    return counts


@dataclass(frozen=True)
class Snapshot:
    handles: dict[str, int]
    instances: Counter[str]
    threads: frozenset[threading.Thread]
    fds: int


def _fds(server_port: int | None) -> int:
    """Open fds; with ``server_port``, less the sockets a service in this process accepted
    on that port (a stalled or delayed service notices a closed client only when it
    next writes, seconds later: those are the service's, not the client's)."""
    process = psutil.Process()
    count = process.num_fds()
    if server_port is not None:
        count -= sum(
            1
            for c in process.net_connections("tcp")
            if c.laddr and c.laddr.port == server_port and c.status != psutil.CONN_LISTEN
        )
    return count


def snapshot(*, server_port: int | None = None) -> Snapshot:
    # Releases still finishing on the reaper (background mode, the default)
    # belong to the code that handed them over: count after them.
    reaper = get_reaper()
    if reaper.pending() and not reaper.is_current():
        reaper.wait_idle(10)
    return Snapshot(
        handles=native_handles(),
        instances=live_sdk_instances(),
        # nativeguard's reaper workers come and go with the load; they are ours.
        threads=frozenset(t for t in threading.enumerate() if not is_reaper_thread(t)),
        fds=_fds(server_port),
    )


def assert_back_to(
    before: Snapshot,
    *,
    settle_s: float = 3.0,
    collect: bool = False,
    server_port: int | None = None,
) -> None:
    """Assert handles, instances, threads and fds equal ``before`` exactly.

    Session-end events arrive on SDK threads after the call returns, so poll
    (bounded) before declaring a difference. ``collect`` is off by default: the
    point is that nativeguard frees things without a full collection.
    """
    deadline = time.monotonic() + settle_s
    while True:
        if collect:
            gc.collect()
        now = snapshot(server_port=server_port)
        same = (
            now.handles == before.handles
            and now.instances == before.instances
            # Only new threads count: one started earlier may end meanwhile.
            and not now.threads - before.threads
            and now.fds == before.fds
        )
        if same or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    names = set(now.handles) | set(before.handles)
    changed = {k: now.handles.get(k, 0) - before.handles.get(k, 0) for k in names}
    assert now.handles == before.handles, {k: d for k, d in changed.items() if d}
    assert now.instances - before.instances == Counter(), now.instances - before.instances
    assert now.instances == before.instances
    assert sorted(t.name for t in now.threads - before.threads) == []
    assert now.fds == before.fds
