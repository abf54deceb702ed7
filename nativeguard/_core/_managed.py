"""``managed`` and ``Managed``: context managers that own one native-backed object each.

The SDK-specific factories (``managed_transcriber`` and friends for Azure
Speech) live with their integration and build on :class:`Managed`.

Each yields a :class:`~nativeguard._core._proxy.ManagedProxy` of the real object and,
on exit (success or failure), stops it, disconnects its signals, detaches kept
events, cuts the proxy's reference and checks that the native object is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._adapters import _has_async_close, quick_step
from ._errors import CallbackError, ReleaseError, add_note, conclude_exit, release_note
from ._guarded import bind
from ._proxy import ManagedProxy, _events_of, callback_errors
from ._scope import ReleaseMode, Scope

__all__ = [
    "Managed",
    "managed",
    "managed_credential",
    "managed_executor",
]

T = TypeVar("T")


class Managed(Generic[T]):
    """A one-shot context manager (sync or async) owning one object.

    ``scope=`` joins an existing Scope (the object is then released when that
    scope closes, not at this block's exit); otherwise the block owns a fresh
    one, created with ``release`` (default ``"background"``, see
    ``nativeguard.configure``: the session is stopped and callbacks dropped
    before the block ends, the native teardown runs on nativeguard's reaper,
    see :meth:`Scope.wait_released`; ``"inline"``: native handles are freed
    when the block ends). ``plain=True`` makes every
    callback connected through the proxy receive ``extract(evt)``.
    """

    def __init__(
        self,
        factory: Callable[[], T],
        *,
        scope: Scope | None = None,
        release: ReleaseMode | None = None,
        plain: bool = False,
        description: str = "object",
    ) -> None:
        if scope is not None and not isinstance(scope, Scope):
            raise TypeError(f"scope must be a nativeguard Scope, got {type(scope).__name__}")
        if release is not None and release not in ("inline", "background"):
            raise ValueError(f"release must be 'inline' or 'background', got {release!r}")
        if scope is not None and release is not None:
            raise ValueError(
                "release= applies to the block's own scope; set it on the shared scope"
            )
        if not isinstance(plain, bool):
            raise TypeError(f"plain must be True or False, got {type(plain).__name__}")
        self._factory = factory
        self._shared_scope = scope
        self._release: ReleaseMode | None = release
        self._plain = plain
        self._description = description
        self._scope: Scope | None = None
        self._async_target = False
        self._state = "new"
        self._secrets: tuple[str, ...] = ()
        self._proxy: ManagedProxy | None = None

    @property
    def scope(self) -> Scope:
        if self._scope is None:
            raise RuntimeError(f"managed {self._description} has no scope until it is entered")
        return self._scope

    def __enter__(self) -> T:
        return self._enter()

    def _enter(self) -> T:
        """Make the object, register it, hand out its proxy (``__enter__`` and ``__aenter__``)."""
        if self._state != "new":
            raise RuntimeError(
                f"this managed {self._description} was already entered; "
                "call the managed_*() function again for a new one"
            )
        self._state = "entered"
        scope = self._shared_scope or Scope(release=self._release)
        self._scope = scope
        target = self._factory()
        self._factory = _spent  # drop the factory's closure: it may reference the object
        scope.register(target)
        if self._secrets:
            scope._add_secrets(self._secrets)
            _events_of(scope).secrets.extend(self._secrets)
        proxy = ManagedProxy(target, scope, plain=self._plain)
        del target  # from here on, the proxy holds the only reference we own
        self._proxy = proxy
        try:
            scope.add_finalizer(self._cut)
        except BaseException:
            self._proxy = None  # a scope closed meanwhile: this block must not keep the target
            raise
        result: T = proxy  # type: ignore[assignment]
        return result

    @quick_step
    def _cut(self) -> None:
        """The scope's finalizer: cut the proxy's reference and hand the target to the scope.

        Cutting here (not when the proxy dies) is what frees the native object
        while the caller still holds the proxy. The scope drops the reference:
        inline on this thread, or on its reaper thread. A method, not a closure
        per block: its quick mark is set once, on the class's function.
        """
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            scope = self.scope
            scope.adopt(proxy._self_release(scope.closed_at or "<unknown>"))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._exit_starts():
            self._conclude(exc, _close(self.scope))

    async def __aenter__(self) -> T:
        proxy = self._enter()
        # Only an async block asks how its target closes (a sync one always closes here).
        self._async_target = _has_async_close(_unwrap(proxy))
        return proxy

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._exit_starts():
            return
        if self._async_target:
            # An async close (azure.identity.aio) belongs to this event loop.
            error = await _aclose(self.scope)
        else:
            # Stopping a session and the native teardown block for tens of
            # ms: keep them off the event loop.
            error = await asyncio.to_thread(_close, self.scope)
        self._conclude(exc, error)

    def _exit_starts(self) -> bool:
        """Mark the block exited; False when a shared scope's owner releases it."""
        self._state = "exited"
        return self._shared_scope is None

    def _conclude(self, exc: BaseException | None, release_error: ReleaseError | None) -> None:
        failures = callback_errors(self.scope)
        if exc is not None:
            conclude_exit(exc, release_error, release_note)
            for failure in failures:
                add_note(exc, f"nativeguard: a callback raised {failure!r}")
            return
        if failures:
            group = CallbackError(
                f"{len(failures)} callback(s) connected through nativeguard raised", failures
            )
            if release_error is not None:
                add_note(group, f"nativeguard: {release_error.message}")
            raise group
        conclude_exit(exc, release_error, release_note)


def _close(scope: Scope) -> ReleaseError | None:
    try:
        scope.close()
    except ReleaseError as error:
        return error
    return None


async def _aclose(scope: Scope) -> ReleaseError | None:
    try:
        await scope.aclose()
    except ReleaseError as error:
        return error
    return None


def _spent() -> Any:
    raise RuntimeError("a managed factory runs once")


def _unwrap(obj: Any) -> Any:
    return obj.__wrapped__ if isinstance(obj, ManagedProxy) else obj


def managed_credential(credential: Any, *, scope: Scope | None = None) -> Managed[Any]:
    """An azure-identity credential (sync or ``aio``), closed at exit."""
    if not callable(getattr(credential, "close", None)):
        raise TypeError(f"{type(credential).__name__} has no close(); it is not a credential")
    return Managed(lambda: credential, scope=scope, description=type(credential).__name__)


class _ContextExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each task in the submitter's context, so ``@guarded`` tracks across threads."""

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        return super().submit(bind(fn), *args, **kwargs)


def managed_executor(
    max_workers: int | None = None,
    *,
    scope: Scope | None = None,
    release: ReleaseMode | None = None,
    **kwargs: Any,
) -> Managed[concurrent.futures.ThreadPoolExecutor]:
    """A ``ThreadPoolExecutor`` shut down (``wait=True, cancel_futures=True``) at exit.

    Tasks run in the submitting context: SDK objects they create inside a
    ``@guarded`` call belong to that call.
    """
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise (ValueError if isinstance(max_workers, int) else TypeError)(
            f"managed_executor's max_workers must be None or an int >= 1, got {max_workers!r}"
        )
    return Managed(
        lambda: _ContextExecutor(max_workers=max_workers, **kwargs),
        scope=scope,
        release=release,
        description="ThreadPoolExecutor",
    )


def managed(
    obj: T, *, scope: Scope | None = None, release: ReleaseMode | None = None, plain: bool = False
) -> Managed[T]:
    """Any object nativeguard has an adapter for (or with a plain ``close()``)."""
    if isinstance(obj, ManagedProxy):
        raise TypeError("this object is already managed; use it as it is")
    return Managed(
        lambda: obj, scope=scope, release=release, plain=plain, description=type(obj).__name__
    )
