"""gRPC (grpcio) channels and servers as a nativeguard integration.

Written only against nativeguard's public API, and importing grpc only once
the program has: ``import nativeguard`` registers this integration without
loading grpcio. It declares:

- release steps: sync channels ``close()``, sync servers ``stop(None)`` with
  a bounded wait for shutdown, ``grpc.aio`` channels and servers closed by
  awaiting ``close()`` / ``stop()`` on their own event loop;
- the tracked classes (the sync and ``aio`` channel and server
  implementations): ``@guarded`` releases those a call leaves behind, the
  registry, snapshots and ``pytest --nativeguard`` count them;
- counters read from grpc core's channelz registry: live channels, servers,
  sockets, plus the Python threads running grpc code (connectivity pollers,
  a server's ``_serve`` loop);
- a sync channel's ``subscribe()`` callbacks as a slot a Scope disconnects;
- ``managed_channel`` / ``managed_aio_channel`` context managers.

Numbers and limits: docs/integrations/grpc.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from nativeguard import Integration

from ._channel import checked_target, managed_aio_channel, managed_channel
from ._counters import COUNTER_NAMES, grpc_counters, grpc_threads
from ._errors import ChannelArgumentError, ChannelTargetError, ChannelUsageError
from ._kinds import channel_classes, is_channel, is_server, kind_of, server_classes
from ._release import RELEASE, ConnectivitySubscriptions, subscriptions

__all__ = [
    "COUNTER_NAMES",
    "INTEGRATION",
    "ChannelArgumentError",
    "ChannelTargetError",
    "ChannelUsageError",
    "ConnectivitySubscriptions",
    "channel_classes",
    "checked_target",
    "grpc_counters",
    "grpc_threads",
    "is_channel",
    "is_server",
    "kind_of",
    "managed_aio_channel",
    "managed_channel",
    "server_classes",
    "subscriptions",
]


def _tracked_classes() -> Iterable[type]:
    return [*channel_classes(), *server_classes()]


INTEGRATION = Integration(
    name="grpc",
    modules=("grpc",),
    release=RELEASE,
    classes=_tracked_classes,
    counters=grpc_counters,
    callbacks=subscriptions,
)
