"""The errors ``nativeguard.integrations.grpc`` raises for bad input, before anything is made.

Each is a :class:`nativeguard.NativeGuardError` and the builtin that fits, so
``except ValueError`` / ``except TypeError`` keep working. Messages name the
argument; a target is shown with its user-info and query masked (a token in
``dns://user:token@host/...`` or ``?token=`` stays out of logs).
"""

from __future__ import annotations

import re

from nativeguard import NativeGuardError

__all__ = ["ChannelArgumentError", "ChannelTargetError", "ChannelUsageError", "shown_target"]


class ChannelArgumentError(NativeGuardError, TypeError):
    """An argument of ``managed_channel`` / ``managed_aio_channel`` has the wrong type."""


class ChannelTargetError(NativeGuardError, ValueError):
    """A channel target gRPC cannot connect to as written (URL scheme, bad port, blank)."""


class ChannelUsageError(NativeGuardError, RuntimeError):
    """A managed channel used the wrong way (an ``aio`` channel entered with a plain ``with``)."""


_USERINFO = re.compile(r"(?<=//)[^/@]*@")
_QUERY = re.compile(r"\?.*$", re.DOTALL)
_MAX_SHOWN = 80


def shown_target(target: str) -> str:
    """``target`` as error messages show it: user-info and query masked, at most 80 characters."""
    masked = _QUERY.sub("?<redacted>", _USERINFO.sub("<redacted>@", target))
    masked = "".join(ch if ch.isprintable() else "?" for ch in masked)
    if len(masked) > _MAX_SHOWN:
        masked = masked[: _MAX_SHOWN - 3] + "..."
    return masked
