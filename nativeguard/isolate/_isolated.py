"""``@isolated``: call a function as usual, have it run in a pool's worker process."""

from __future__ import annotations

import atexit
import functools
import inspect
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast, overload

from ._options import check_pool_options
from ._pool import WorkerPool
from ._worker import in_worker

__all__ = ["isolated", "shutdown_isolated_pools"]

F = TypeVar("F", bound=Callable[..., Any])

_default_pools: dict[tuple[tuple[str, Any], ...], WorkerPool] = {}
_default_lock = threading.Lock()


def _shared_pool(options: dict[str, Any]) -> WorkerPool:
    """One pool per distinct set of options, started on first use, shut down at exit."""
    key = tuple(sorted((name, _freeze(value)) for name, value in options.items()))
    with _default_lock:
        pool = _default_pools.get(key)
        if pool is None:
            pool = _default_pools[key] = WorkerPool(**options)
        return pool


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    return value


def _forget_inherited_pools() -> None:
    # In a child forked from a process with shared pools: their threads did
    # not survive fork() (a WorkerPool refuses use from another process), so
    # the child's first isolated call starts pools of its own.
    _default_pools.clear()
    _default_lock.release()


if hasattr(os, "register_at_fork"):
    # Held across fork() so the child never inherits it locked by a thread it lost.
    os.register_at_fork(
        before=_default_lock.acquire,
        after_in_parent=_default_lock.release,
        after_in_child=_forget_inherited_pools,
    )


def _take_shared_pools() -> list[WorkerPool]:
    with _default_lock:
        pools = list(_default_pools.values())
        _default_pools.clear()
    return pools


def shutdown_isolated_pools() -> None:
    """Shut down the pools ``@isolated`` started by itself (not ones passed as ``pool=``).

    Waits for their running tasks; the next call of an isolated function starts
    a fresh pool. At interpreter exit they are shut down without waiting for
    queued tasks.
    """
    for pool in _take_shared_pools():
        pool.shutdown(wait=True)


@atexit.register
def _shutdown_at_exit() -> None:
    for pool in _take_shared_pools():
        pool.shutdown(wait=True, cancel_futures=True, terminate=True)


@overload
def isolated(fn: F, /) -> F: ...
@overload
def isolated(*, pool: WorkerPool | None = None, **pool_options: Any) -> Callable[[F], F]: ...


def isolated(
    fn: F | None = None, /, *, pool: WorkerPool | None = None, **pool_options: Any
) -> F | Callable[[F], F]:
    """Run the decorated function in a worker process of ``pool``.

    Without ``pool``, a pool shared by every function decorated with the same
    ``pool_options`` (the :class:`WorkerPool` keywords) is started on first
    call and shut down at interpreter exit. Calls block and return the result
    (an ``async def`` function returns an awaitable that does not block the
    loop). The function must live at module level so the worker can import
    it; inside a worker the call runs inline, so an isolated function may
    call another one.
    """
    if pool is not None and pool_options:
        raise TypeError(f"pass either pool= or pool options, not both (got {sorted(pool_options)})")
    if pool is not None and not isinstance(pool, WorkerPool):
        raise TypeError(f"pool must be a WorkerPool, got {type(pool).__name__}")
    if pool is None:
        # Validate the options now, at decoration, not at the first call.
        _validate(pool_options)

    def decorate(function: F) -> F:
        if not callable(function):
            raise TypeError(f"@isolated decorates functions, got {function!r}")
        if function.__qualname__ != function.__name__ or "<lambda>" in function.__qualname__:
            raise TypeError(
                f"@isolated needs a module-level function (the worker imports it by name); "
                f"{function.__qualname__} is nested or a lambda"
            )

        def target() -> WorkerPool:
            return pool if pool is not None else _shared_pool(pool_options)

        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                if in_worker():
                    return await function(*args, **kwargs)
                # The worker unpickles this very wrapper by name and, being in a
                # worker, runs the function inline under its own event loop.
                return await target().asubmit(run_async, *args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            if in_worker():
                return function(*args, **kwargs)
            return target().submit(run, *args, **kwargs).result()

        return cast(F, run)

    if fn is not None:
        return decorate(fn)
    return decorate


def _validate(options: dict[str, Any]) -> None:
    """Refuse unknown or bad options now; turn one-shot iterables into tuples in place."""
    signature = inspect.signature(WorkerPool)
    unknown = sorted(set(options) - set(signature.parameters))
    if unknown:
        raise TypeError(f"unknown WorkerPool options for @isolated: {', '.join(unknown)}")
    bound = signature.bind(**options)
    bound.apply_defaults()
    preload, plain = check_pool_options(bound.arguments)
    if "preload" in options:
        options["preload"] = preload
    if "plain_types" in options:
        options["plain_types"] = plain
