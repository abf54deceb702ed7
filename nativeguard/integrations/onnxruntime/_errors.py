"""The errors the onnxruntime integration raises: each a NativeGuardError and the fitting builtin.

Why our own: onnxruntime reports a bad model, a bad feed and a failed run as
pybind exceptions (``InvalidProtobuf``, ``InvalidArgument``, ``NoSuchFile``...)
that derive from ``Exception`` only, so ``except ValueError`` catches none of
them. These carry onnxruntime's text, drop its traceback (its frames hold the
half-built session) and say which argument was wrong.
"""

from __future__ import annotations

from nativeguard import ClosedResourceError, NativeGuardError

__all__ = [
    "InferenceError",
    "InvalidFeedError",
    "ModelLoadError",
    "ModelNotFoundError",
    "SessionPinnedError",
    "SessionReleasedError",
]


class ModelLoadError(NativeGuardError, ValueError):
    """onnxruntime could not load the model (not an ONNX/ORT model, invalid graph, bad options)."""


class ModelNotFoundError(NativeGuardError, FileNotFoundError):
    """The model path does not name a readable file."""


class InvalidFeedError(NativeGuardError, ValueError):
    """The feeds do not fit the model: unknown or missing input, wrong shape or element type."""


class InferenceError(NativeGuardError, RuntimeError):
    """A run failed inside onnxruntime for another reason than its feeds."""


class SessionReleasedError(ClosedResourceError):
    """An onnxruntime session (or an IOBinding/OrtValue pinning it) was used after its release."""


class SessionPinnedError(NativeGuardError, RuntimeError):
    """A released session's native object stayed alive: something nativeguard cannot reach holds it.

    ``references`` is how many references other than the release step's own
    were left when the step gave up waiting for them.
    """

    def __init__(self, message: str, *, references: int) -> None:
        super().__init__(message)
        self.references = references

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_pinned, (str(self), self.references))


def _rebuild_pinned(message: str, references: int) -> SessionPinnedError:
    return SessionPinnedError(message, references=references)
