"""azure-identity credentials as a nativeguard integration.

A credential holds an HTTP transport (a connection pool; ``aio`` ones an
aiohttp session) until closed. The core's generic ``close()`` and
``async def close()`` release steps already release them; what this adds is
that leak checks count live credentials (every ``*Credential`` class the sync
and ``aio`` modules export), found lazily so nothing is imported until a
check asks.
"""

from __future__ import annotations

import importlib
import inspect

from nativeguard import Integration

__all__ = ["INTEGRATION", "credential_classes"]

_MODULES = ("azure.identity", "azure.identity.aio")


def credential_classes() -> list[type]:
    """The credential classes of azure-identity (sync and aio); empty if it is not installed."""
    found: list[type] = []
    for module_name in _MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in getattr(module, "__all__", ()):
            cls = getattr(module, name, None)
            if inspect.isclass(cls) and name.endswith("Credential") and cls not in found:
                found.append(cls)
    return found


INTEGRATION = Integration(
    name="azure_identity", modules=("azure.identity",), counted=credential_classes
)
