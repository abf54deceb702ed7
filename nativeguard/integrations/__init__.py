"""The integrations that ship with nativeguard: one module (or package) per SDK.

Each is written only against nativeguard's public API (:class:`nativeguard.Integration`,
:func:`nativeguard.register_integration`, :func:`nativeguard.register_adapter`,
:func:`nativeguard.run_bounded`), exactly as a third-party package would write one;
docs/architecture.md walks through writing a new one. Importing this package
registers the built-in ones, executors first so that the SDKs' more specific
release steps win.
"""

from __future__ import annotations

import importlib

from nativeguard import register_integration

from . import azure_identity, azure_speech, executors

__all__ = ["azure_identity", "azure_speech", "executors"]

for _module in (executors, azure_identity, azure_speech):
    register_integration(_module.INTEGRATION)

# onnxruntime and gRPC (issue 13) are being written; each registers once its module lands.
for _name in ("onnxruntime", "grpc"):
    try:
        _module = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _error:
        if _error.name != f"{__name__}.{_name}":
            raise
        continue
    register_integration(_module.INTEGRATION)
del _module, _name
