"""Every exception nativeguard raises, rooted in :class:`NativeGuardError`.

Each one also subclasses the builtin that fits, so callers that already catch
``ValueError`` or ``RuntimeError`` keep working.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "AsyncReleaseRequired",
    "CallbackError",
    "ClosedResourceError",
    "LeakError",
    "NativeDiagnosticsFormatError",
    "NativeDiagnosticsUnavailable",
    "NativeGuardError",
    "NotPlainDataError",
    "ProtocolError",
    "ReleaseError",
    "ReleaseTimeout",
    "RemoteTaskError",
    "RequestTimeout",
    "ServiceError",
    "TaskTimeout",
    "WorkerCrashed",
    "WorkerStartError",
    "aclosed_with",
    "add_note",
    "closed_with",
    "conclude_exit",
    "detach_traceback",
    "release_note",
]


_E = TypeVar("_E", bound=Exception)


def closed_with(close: Callable[[], object], errors: type[_E]) -> _E | None:
    """Call ``close()``; the ``errors`` it raised, returned instead (anything else propagates)."""
    try:
        close()
    except errors as error:
        return error
    return None


async def aclosed_with(aclose: Callable[[], Awaitable[object]], errors: type[_E]) -> _E | None:
    """:func:`closed_with` for an ``async`` close."""
    try:
        await aclose()
    except errors as error:
        return error
    return None


def conclude_exit(
    body_error: BaseException | None, close_error: _E | None, note: Callable[[_E], str]
) -> None:
    """How every nativeguard context manager ends once it closed what it owns.

    A failure to close is raised when the block itself succeeded; when the block
    raised, its exception goes on and the close failure becomes a note on it
    (never the other way round: the block's error is the one the caller needs).
    """
    if close_error is None:
        return
    if body_error is None:
        raise close_error
    add_note(body_error, note(close_error))


def release_note(error: ReleaseError) -> str:
    """The note a release failure leaves on the block's own exception."""
    return f"nativeguard: {error.message}: {error.exceptions!r}"


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``, also on Python 3.10 where it does not exist yet."""
    notes = getattr(exc, "__notes__", None)
    if notes is None:
        notes = []
        exc.__notes__ = notes  # type: ignore[attr-defined]
    notes.append(note)


def detach_traceback(exc: BaseException, secrets: Sequence[str] = ()) -> BaseException:
    """Replace the tracebacks of ``exc`` and its causes/contexts with text notes; returns ``exc``.

    A traceback holds frames, and a frame holds its locals: the release step's
    ``obj``, a callback's ``evt``. An exception nativeguard keeps (in a
    :class:`ReleaseError`, a :class:`CallbackError`, a future) must not pin
    the SDK object it describes, so only the text of the stack is kept
    (credential-shaped text redacted).
    """
    from ._redact import redact_text  # noqa: PLC0415 - _redact imports nothing of ours

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.args:
            # The message too: a kept exception is printed, logged and re-raised far
            # from where it was made. A non-str argument whose repr shows a secret is
            # replaced by its masked repr (the text is what leaks).
            with contextlib.suppress(Exception):
                current.args = tuple(_masked_arg(arg, secrets) for arg in current.args)
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [
                redact_text(note, secrets) if isinstance(note, str) else note for note in notes
            ]
        tb = current.__traceback__
        if tb is not None:
            lines = "".join(traceback.format_tb(tb)).rstrip()
            add_note(current, redact_text("Traceback (most recent call last):\n" + lines, secrets))
            current.__traceback__ = None
            del tb
        current = current.__cause__ or current.__context__
    return exc


def _masked_arg(arg: object, secrets: Sequence[str]) -> object:
    from ._redact import redact_text  # noqa: PLC0415

    if isinstance(arg, str):
        return redact_text(arg, secrets)
    text = repr(arg)
    masked = redact_text(text, secrets)
    return arg if masked == text else masked


class NativeGuardError(Exception):
    """Base class of every nativeguard error."""


class ProtocolError(NativeGuardError, ValueError):
    """A websocket frame that does not follow the Speech SDK's protocol."""


class ServiceError(NativeGuardError, RuntimeError):
    """A local test service could not start, or was used in a state it cannot serve."""


class NativeDiagnosticsUnavailable(NativeGuardError, RuntimeError):
    """The Speech SDK is missing, or its core lacks the handle-table exports (older SDK)."""


class NativeDiagnosticsFormatError(NativeGuardError, ValueError):
    """The SDK's handle table came back in a shape this module does not understand."""


class ReleaseError(ExceptionGroup, NativeGuardError):  # type: ignore[misc]
    """Release steps that failed or timed out; every other step still ran.

    The objects were released as far as possible ("closed"); this error means
    "not clean". An ``ExceptionGroup``, so ``except*`` can pick out one kind.
    """

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> ReleaseError:
        return super().__new__(cls, message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> ReleaseError:
        return ReleaseError(self.message, excs)


class ReleaseTimeout(NativeGuardError, TimeoutError):
    """A release step did not finish within its bounded wait."""


class ClosedResourceError(NativeGuardError, RuntimeError):
    """An object or scope was used after nativeguard released it."""


class LeakError(NativeGuardError, RuntimeError):
    """Objects were still alive after nativeguard released them (strict mode).

    ``report`` holds the structured details (types, holders) for machines.
    """

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class CallbackError(ExceptionGroup, NativeGuardError):  # type: ignore[misc]
    """Callbacks connected through nativeguard raised while the SDK called them.

    The SDK runs callbacks on its own threads and only prints what they raise;
    nativeguard keeps those exceptions and raises them when the managed block
    ends (after releasing everything), so a failing callback fails the caller.
    """

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> CallbackError:
        return super().__new__(cls, message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> CallbackError:
        return CallbackError(self.message, excs)


class RequestTimeout(NativeGuardError, TimeoutError):
    """A one-call helper (transcribe, recognize_once, ...) did not finish in time.

    Everything it created was released before this was raised.
    """


class AsyncReleaseRequired(NativeGuardError, RuntimeError):
    """A release step must be awaited (an async ``close()``), but close() was synchronous.

    Use ``async with`` or ``await scope.aclose()``; the coroutine was closed
    unstarted so nothing is left "never awaited".
    """


class NotPlainDataError(NativeGuardError, TypeError):
    """A value crossing a worker-process boundary is not plain, picklable data.

    ``path`` names the offending part, e.g. ``result.segments[3].raw`` or
    ``args[0]``; ``type_name`` is its type. Raised where the value is (in the
    worker for results, in the caller for arguments), instead of a pickling
    traceback from deep inside ``multiprocessing``.
    """

    def __init__(self, message: str, *, path: str, type_name: str) -> None:
        super().__init__(message)
        self.path = path
        self.type_name = type_name

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields: the default exception pickling would drop them.
        return (_rebuild_not_plain, (str(self), self.path, self.type_name))


def _rebuild_not_plain(message: str, path: str, type_name: str) -> NotPlainDataError:
    return NotPlainDataError(message, path=path, type_name=type_name)


class WorkerCrashed(NativeGuardError, RuntimeError):
    """The worker process running a task died (signal, ``os._exit``, OOM kill).

    Only that task fails; the pool replaces the worker. ``exitcode`` is the
    process exit code (negative for a signal, as in ``multiprocessing``),
    ``signal`` the signal number or ``None``, ``task`` a
    :class:`~nativeguard.isolate.TaskInfo` and ``worker`` the worker's
    :class:`~nativeguard.isolate.WorkerStatistics` as last known.
    """

    def __init__(
        self, message: str, *, exitcode: int | None, task: object = None, worker: object = None
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.signal = -exitcode if exitcode is not None and exitcode < 0 else None
        self.task = task
        self.worker = worker


class TaskTimeout(NativeGuardError, TimeoutError):
    """A task ran past ``task_timeout_s``; its worker was killed (SIGTERM, then SIGKILL)."""

    def __init__(self, message: str, *, task: object = None, worker: object = None) -> None:
        super().__init__(message)
        self.task = task
        self.worker = worker


class WorkerStartError(NativeGuardError, RuntimeError):
    """Fresh worker processes keep dying before they are ready; the pool cannot run tasks."""


class RemoteTaskError(NativeGuardError, RuntimeError):
    """A task raised an exception that could not be sent back as itself (not picklable).

    ``type_name`` is the original exception's qualified type name; the
    worker's traceback is attached as a note.
    """

    def __init__(self, message: str, *, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_remote, (str(self), self.type_name))


def _rebuild_remote(message: str, type_name: str) -> RemoteTaskError:
    return RemoteTaskError(message, type_name=type_name)
