"""Which objects are gRPC channels and servers, decided without importing grpc.

Why: ``nativeguard.integrations`` is imported by ``import nativeguard``, so
this integration must not import grpcio (0.16 s and a native library) until
the program does. Release matchers are predicates that look at the defining
module and name of each class in the object's MRO; a value of a grpc type can
only exist once ``grpc`` is in ``sys.modules``, which is the cheap first test.

The four implementation classes (grpcio 1.85.4, Python 3.11.7):

- ``grpc._channel.Channel``: what ``grpc.insecure_channel`` / ``secure_channel`` return;
- ``grpc.aio._channel.Channel``: what ``grpc.aio.insecure_channel`` / ``secure_channel`` return;
- ``grpc._server._Server``: what ``grpc.server()`` returns;
- ``grpc.aio._server.Server``: what ``grpc.aio.server()`` returns.
"""

from __future__ import annotations

import importlib
import sys
from typing import Literal

__all__ = [
    "Kind",
    "channel_classes",
    "is_aio_channel",
    "is_aio_server",
    "is_channel",
    "is_server",
    "is_sync_channel",
    "is_sync_server",
    "kind_of",
    "server_classes",
]

Kind = Literal["channel", "aio channel", "server", "aio server"]

_KINDS: dict[tuple[str, str], Kind] = {
    ("grpc._channel", "Channel"): "channel",
    ("grpc.aio._channel", "Channel"): "aio channel",
    ("grpc._server", "_Server"): "server",
    ("grpc.aio._server", "Server"): "aio server",
}


_by_type: dict[type, Kind | None] = {}
"""kind_of's answers by type: every release asks each predicate, so each object ~6 times.
Bounded (:data:`_CACHE_LIMIT`): a program that makes classes at run time must not grow it."""
_CACHE_LIMIT = 4096


def kind_of(obj: object) -> Kind | None:
    """Which of the four gRPC kinds ``obj`` is (subclasses included), or None; never imports."""
    if "grpc" not in sys.modules:
        return None  # not cached: no grpc type exists yet, and a type may be made later
    cls = type(obj)
    try:
        return _by_type[cls]
    except KeyError:
        pass
    found: Kind | None = None
    for klass in cls.__mro__:
        module = klass.__dict__.get("__module__")
        if isinstance(module, str) and module.startswith("grpc"):
            found = _KINDS.get((module, klass.__qualname__))
            if found is not None:
                break
    if len(_by_type) >= _CACHE_LIMIT:
        _by_type.clear()
    _by_type[cls] = found
    return found


def is_sync_channel(obj: object) -> bool:
    return kind_of(obj) == "channel"


def is_aio_channel(obj: object) -> bool:
    return kind_of(obj) == "aio channel"


def is_sync_server(obj: object) -> bool:
    return kind_of(obj) == "server"


def is_aio_server(obj: object) -> bool:
    return kind_of(obj) == "aio server"


def is_channel(obj: object) -> bool:
    return kind_of(obj) in ("channel", "aio channel")


def is_server(obj: object) -> bool:
    return kind_of(obj) in ("server", "aio server")


def _classes(wanted: tuple[Kind, ...]) -> list[type]:
    """The implementation classes of the wanted kinds; imports grpc's modules (call lazily)."""
    found: list[type] = []
    for (module_name, qualname), kind in _KINDS.items():
        if kind not in wanted:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, qualname, None)
        if isinstance(cls, type):
            found.append(cls)
    return found


def channel_classes() -> list[type]:
    """``grpc._channel.Channel`` and ``grpc.aio._channel.Channel`` (imports grpc)."""
    return _classes(("channel", "aio channel"))


def server_classes() -> list[type]:
    """``grpc._server._Server`` and ``grpc.aio._server.Server`` (imports grpc)."""
    return _classes(("server", "aio server"))
