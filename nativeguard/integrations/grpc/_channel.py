"""``managed_channel`` / ``managed_aio_channel``: one gRPC channel owned by a with-block.

Built on :class:`nativeguard.Managed`: the block yields a proxy of the
channel; at exit (success, exception, cancellation, ``KeyboardInterrupt``)
the channel is closed (``aio``: awaited on its loop), its connectivity
callbacks are dropped, the proxy's reference is cut and the scope checks the
channel is gone. Arguments are checked before anything is created, so a bad
one is a :class:`ChannelArgumentError` (a ``TypeError``) or
:class:`ChannelTargetError` (a ``ValueError``) naming it, never a channel that
fails later with ``UNAVAILABLE``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from nativeguard import Managed, ReleaseMode, Scope

from ._errors import ChannelArgumentError, ChannelTargetError, ChannelUsageError, shown_target

__all__ = ["managed_aio_channel", "managed_channel"]

T = TypeVar("T")

_URL_SCHEMES = frozenset({"http", "https", "grpc", "grpcs"})
_PLAIN_SCHEMES = ("unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:/\[\]]*))(?::(?P<port>[^:/]*))?$")


def _check_endpoint(endpoint: str, target: str, function: str) -> None:
    """``host``, ``host:port`` or ``[v6]:port``: a port, when given, is 1..65535."""
    match = _ENDPOINT.match(endpoint)
    if match is None:
        return  # something a resolver plugin may understand: grpc decides
    port = match.group("port")
    if port is None:
        return
    if not port.isdigit():
        # Not shown: "host:password" pasted as a target must not reach a log.
        masked = target[: len(target) - len(endpoint)] + endpoint[: -len(port)] + "<redacted>"
        raise ChannelTargetError(
            f"{function}: target {shown_target(masked)!r} has a port that is not a number "
            f"({len(port)} characters, shown redacted); a port is a number from 1 to 65535"
        )
    if not 1 <= int(port) <= 65535:
        raise ChannelTargetError(
            f"{function}: target {shown_target(target)!r} has port {port[:12]}; a port is "
            "a number from 1 to 65535"
        )
    if match.group("v6") is None and not match.group("host"):
        raise ChannelTargetError(
            f"{function}: target {shown_target(target)!r} has no host before ':{port}'"
        )


_VALID_TARGETS: dict[str, None] = {}
"""Targets that passed :func:`checked_target` (a program dials a handful, again and again).
Bounded: a program that dials ever new targets must not grow it."""
_VALID_TARGETS_LIMIT = 256


def checked_target(target: object, function: str) -> str:
    """``target`` if gRPC can use it as written; else a ChannelTargetError saying why."""
    if type(target) is str and target in _VALID_TARGETS:
        return target
    checked = _checked_target(target, function)
    if type(target) is str:  # not a str subclass: its __eq__/__hash__ could lie
        if len(_VALID_TARGETS) >= _VALID_TARGETS_LIMIT:
            _VALID_TARGETS.clear()
        _VALID_TARGETS[checked] = None
    return checked


def _checked_target(target: object, function: str) -> str:
    if not isinstance(target, str):
        raise ChannelArgumentError(
            f"{function}: target must be a str such as '127.0.0.1:50051' or 'dns:///host:443', "
            f"got {type(target).__name__}"
        )
    # isprintable() is False for every whitespace character but the ASCII space.
    if not target or not target.isprintable() or " " in target:
        raise ChannelTargetError(
            f"{function}: target must be non-empty, without spaces or control characters, "
            f"got {shown_target(target)!r}"
        )
    scheme, sep, rest = target.partition("://")
    if sep:
        if scheme.lower() in _URL_SCHEMES:
            raise ChannelTargetError(
                f"{function}: target {shown_target(target)!r} is a URL; gRPC targets take no "
                f"{scheme}:// scheme: write 'host:port' (for TLS pass "
                "credentials=grpc.ssl_channel_credentials())"
            )
        if scheme.lower() == "dns":
            _check_endpoint(rest.rpartition("/")[2], target, function)
        return target
    lowered = target.lower()
    if lowered.startswith(_PLAIN_SCHEMES):
        return target
    if lowered.startswith("dns:"):
        _check_endpoint(target[4:], target, function)
        return target
    _check_endpoint(target, target, function)
    return target


def _checked_options(options: object, function: str) -> tuple[tuple[str, Any], ...]:
    if isinstance(options, (str, bytes, Mapping)) or not isinstance(options, Sequence):
        raise ChannelArgumentError(
            f"{function}: options must be a sequence of (name, value) pairs such as "
            f"[('grpc.max_receive_message_length', 1 << 20)], got {type(options).__name__}"
        )
    checked: list[tuple[str, Any]] = []
    for index, pair in enumerate(options):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ChannelArgumentError(
                f"{function}: options[{index}] must be a (name, value) pair, "
                f"got {type(pair).__name__}"
            )
        name, value = pair
        if not isinstance(name, str) or not name:
            raise ChannelArgumentError(
                f"{function}: options[{index}]'s name must be a non-empty str, "
                f"got {type(name).__name__}"
            )
        # The value is never shown: an option may carry a credential.
        if not isinstance(value, (str, bytes, int)) or isinstance(value, bool):
            raise ChannelArgumentError(
                f"{function}: options[{index}] ({name!r:.60}) must have a str, bytes or int "
                f"value, got {type(value).__name__}"
            )
        checked.append((name, value))
    return tuple(checked)


def _checked_credentials(credentials: object, function: str) -> Any:
    import grpc  # noqa: PLC0415 - grpc is imported when a channel is made, not before

    if credentials is None or isinstance(credentials, grpc.ChannelCredentials):
        return credentials
    hint = (
        "; call credentials go through grpc.composite_channel_credentials(channel_credentials, "
        "call_credentials)"
        if isinstance(credentials, grpc.CallCredentials)
        else ""
    )
    raise ChannelArgumentError(
        f"{function}: credentials must be None or a grpc.ChannelCredentials, "
        f"got {type(credentials).__name__}{hint}"
    )


def _checked_compression(compression: object, function: str) -> Any:
    import grpc  # noqa: PLC0415

    if compression is None or isinstance(compression, grpc.Compression):
        return compression
    raise ChannelArgumentError(
        f"{function}: compression must be None or a grpc.Compression, "
        f"got {type(compression).__name__}"
    )


def managed_channel(
    target: str,
    *,
    credentials: Any = None,
    options: Sequence[tuple[str, Any]] = (),
    compression: Any = None,
    scope: Scope | None = None,
    release: ReleaseMode | None = None,
) -> Managed[Any]:
    """A sync ``grpc.Channel`` to ``target``, closed at the end of the ``with`` block.

    ``credentials=None`` makes an insecure channel (``grpc.insecure_channel``),
    otherwise ``grpc.secure_channel(target, credentials, ...)``. ``scope`` and
    ``release`` are :class:`nativeguard.Managed`'s: join a shared Scope, or
    pick ``"inline"`` / ``"background"`` for the block's own.
    """
    function = "managed_channel"
    checked = checked_target(target, function)
    opts = _checked_options(options, function)
    creds = _checked_credentials(credentials, function)
    comp = _checked_compression(compression, function)

    def make() -> Any:
        import grpc  # noqa: PLC0415

        if creds is None:
            return grpc.insecure_channel(checked, options=opts, compression=comp)
        return grpc.secure_channel(checked, creds, options=opts, compression=comp)

    return Managed(make, scope=scope, release=release, description="grpc Channel")


class _AsyncOnly(Managed[T]):
    """A managed ``grpc.aio`` object: its close runs on its event loop, so only ``async with``."""

    def __enter__(self) -> T:
        raise ChannelUsageError(
            "managed_aio_channel() is entered with `async with` (a grpc.aio channel is closed "
            "by awaiting it on its event loop); for a plain `with` use managed_channel()"
        )


def managed_aio_channel(
    target: str,
    *,
    credentials: Any = None,
    options: Sequence[tuple[str, Any]] = (),
    compression: Any = None,
    scope: Scope | None = None,
    release: ReleaseMode | None = None,
) -> Managed[Any]:
    """A ``grpc.aio.Channel`` to ``target`` for ``async with``, closed on its loop at exit."""
    function = "managed_aio_channel"
    checked = checked_target(target, function)
    opts = _checked_options(options, function)
    creds = _checked_credentials(credentials, function)
    comp = _checked_compression(compression, function)

    def make() -> Any:
        from grpc import aio  # noqa: PLC0415

        if creds is None:
            return aio.insecure_channel(checked, options=opts, compression=comp)
        return aio.secure_channel(checked, creds, options=opts, compression=comp)

    return _AsyncOnly(make, scope=scope, release=release, description="grpc.aio Channel")
