"""The integrations that ship with nativeguard: one module (or package) per SDK.

Each is written only against nativeguard's public API (:class:`nativeguard.Integration`,
:func:`nativeguard.register_integration`, :func:`nativeguard.register_adapter`,
:func:`nativeguard.run_bounded`), exactly as a third-party package would write one;
docs/architecture.md walks through writing a new one. Importing this package
registers the built-in ones, executors first so that the SDKs' more specific
release steps win.
"""

from __future__ import annotations

from nativeguard import register_integration

from . import azure_identity, azure_speech, executors, grpc, onnxruntime

__all__ = ["azure_identity", "azure_speech", "executors", "grpc", "onnxruntime"]

# Registering imports no SDK: each integration activates when its SDK is imported.
for _module in (executors, azure_identity, azure_speech, onnxruntime, grpc):
    register_integration(_module.INTEGRATION)
del _module
