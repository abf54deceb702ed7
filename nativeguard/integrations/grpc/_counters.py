"""What gRPC holds natively right now: channels, servers, sockets, per-object threads.

Why channelz: grpc core keeps a registry of every live core channel, server
and socket (channelz, on by default; grpcio exposes it as
``grpc._cython.cygrpc.channelz_*``, the calls ``grpcio-channelz`` serves).
Reading it tells what the core still holds, independent of Python's view of
its wrapper objects, as the Speech SDK's handle table does for Azure.

Measured with grpcio 1.85.4 (glibc 2.36, Python 3.11.7), against a server on
127.0.0.1:

- ``grpc.channels``: top-level core channels (sync and ``aio``). A channel
  leaves the registry when its core channel is destroyed: a sync ``close()``
  does it (the entry goes a few ms later, asynchronously), an ``aio``
  channel when it is closed and collected. A channel in a reference cycle
  stays until ``gc.collect()``.
- ``grpc.servers``: core servers; a stopped server leaves once stopped.
- ``grpc.sockets``: connected and listening sockets the core owns, by
  channelz id, deduplicated: the sockets of every channel's subchannels (grpc
  shares subchannels between channels with the same target and arguments, so
  20 channels to one server hold one client socket unless
  ``grpc.use_local_subchannel_pool`` is set), each server's listening sockets
  and the connections it accepted. Every one is an fd of this process.
- ``grpc.threads``: Python threads running grpc code (a sync server's
  ``_serve`` thread, the connectivity poller ``subscribe()`` starts per
  channel, the spin thread of a channel's streaming calls): the first frame
  below ``threading``'s bootstrap is in grpc's package.

Limits: a channel made with ``("grpc.enable_channelz", 0)`` is invisible to
the first three counters. grpc core's own threads (``grpc_global_tim``,
``event_engine`` x4, ``lifeguard`` here) and its epoll/eventfd fds are
process-wide, start with the first channel or server and go at the last
``grpc_shutdown``; they are no object's, so they are not counted (the
snapshot's thread and fd figures see them). Reading costs one JSON call per
channel and server (about 0.1 ms each).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from nativeguard import NativeDiagnosticsFormatError, NativeDiagnosticsUnavailable

__all__ = ["COUNTER_NAMES", "grpc_counters", "grpc_threads"]

COUNTER_NAMES = ("grpc.channels", "grpc.servers", "grpc.sockets", "grpc.threads")
_PAGE = 100
_THREADING_FILE = os.path.abspath(threading.__file__)


def _cygrpc() -> Any:
    try:
        from grpc._cython import cygrpc  # noqa: PLC0415 - grpc is imported lazily
    except ImportError as error:  # pragma: no cover - grpcio without its extension
        raise NativeDiagnosticsUnavailable(
            f"grpc's cygrpc could not be imported: {error}"
        ) from None
    missing = [
        name
        for name in (
            "channelz_get_top_channels",
            "channelz_get_servers",
            "channelz_get_subchannel",
            "channelz_get_server_sockets",
        )
        if not callable(getattr(cygrpc, name, None))
    ]
    if missing:
        raise NativeDiagnosticsUnavailable(
            f"this grpcio has no {', '.join(missing)}; the gRPC counters need channelz "
            "(grpcio 1.85 has it)"
        )
    return cygrpc


def _parse(raw: object, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise NativeDiagnosticsFormatError(f"channelz {what} is not JSON: {raw!r:.200}") from error
    if not isinstance(value, dict):
        raise NativeDiagnosticsFormatError(f"channelz {what} is not a JSON object: {raw!r:.200}")
    return value


def _id(entry: object, key: str, what: str) -> int:
    try:
        return int(entry[key])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise NativeDiagnosticsFormatError(
            f"channelz {what} without {key!r}: {entry!r:.200}"
        ) from None


def _pages(
    fetch: Callable[[int], object], field: str, id_of: Callable[[Any], int], what: str
) -> Iterator[Any]:
    """Every entry of a paginated channelz listing (``start`` is the smallest id wanted)."""
    start = 0
    while True:
        page = _parse(fetch(start), what)
        entries = page.get(field, [])
        if not isinstance(entries, list):
            raise NativeDiagnosticsFormatError(f"channelz {what}: {field!r} is not a list")
        yield from entries
        if page.get("end", True) or not entries:
            return
        start = max(id_of(entry) for entry in entries) + 1


def _socket_ids(refs: object, what: str) -> set[int]:
    if not isinstance(refs, list):
        return set()
    return {_id(ref, "socketId", what) for ref in refs}


def grpc_threads() -> int:
    """Python threads whose code below ``threading``'s bootstrap is grpc's."""
    module = sys.modules.get("grpc")
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        return 0
    prefix = os.path.dirname(os.path.abspath(path)) + os.sep
    count = 0
    for frame in list(sys._current_frames().values()):
        chain: list[str] = []
        current: FrameType | None = frame
        while current is not None:
            chain.append(current.f_code.co_filename)
            current = current.f_back
        del frame, current
        for filename in reversed(chain):
            if filename == _THREADING_FILE:
                continue
            if filename.startswith(prefix):
                count += 1
            break
    return count


def _server_sockets(cygrpc: Any, server_id: int, start: int) -> object:
    return cygrpc.channelz_get_server_sockets(server_id, start, _PAGE)


def grpc_counters() -> dict[str, int]:
    """Live gRPC channels, servers, sockets and per-object threads; {} before grpc is imported.

    Raises :class:`~nativeguard.NativeDiagnosticsUnavailable` if this grpcio
    has no channelz calls, :class:`~nativeguard.NativeDiagnosticsFormatError`
    if their answer is not what grpcio 1.85 gives.
    """
    if "grpc" not in sys.modules:
        return {}
    cygrpc = _cygrpc()
    sockets: set[int] = set()
    channels = 0
    for channel in _pages(
        cygrpc.channelz_get_top_channels,
        "channel",
        lambda entry: _id(entry.get("ref"), "channelId", "channel"),
        "channel",
    ):
        channels += 1
        sockets |= _socket_ids(channel.get("socketRef"), "channel socket")
        for sub in channel.get("subchannelRef") or ():
            subchannel_id = _id(sub, "subchannelId", "subchannel reference")
            try:
                raw = cygrpc.channelz_get_subchannel(subchannel_id)
            except ValueError:
                continue  # destroyed between the two reads
            detail = _parse(raw, "subchannel").get("subchannel", {})
            sockets |= _socket_ids(detail.get("socketRef"), "subchannel socket")
    servers = 0
    for server in _pages(
        cygrpc.channelz_get_servers,
        "server",
        lambda entry: _id(entry.get("ref"), "serverId", "server"),
        "server",
    ):
        servers += 1
        server_id = _id(server.get("ref"), "serverId", "server")
        sockets |= _socket_ids(server.get("listenSocket"), "listen socket")
        try:
            accepted = _pages(
                functools.partial(_server_sockets, cygrpc, server_id),
                "socketRef",
                lambda ref: _id(ref, "socketId", "server socket"),
                "server socket",
            )
            sockets |= {_id(ref, "socketId", "server socket") for ref in accepted}
        except ValueError:
            continue  # the server went between the two reads
    return {
        "grpc.channels": channels,
        "grpc.servers": servers,
        "grpc.sockets": len(sockets),
        "grpc.threads": grpc_threads(),
    }
