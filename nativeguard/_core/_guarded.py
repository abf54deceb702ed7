"""``@guarded``: every SDK object a call creates is released when the call exits.

While a guarded call runs, every native-backed Speech SDK object constructed
(seen through the shared constructor hook in ``_construction``) is recorded
weakly for the active call, found through a
:class:`contextvars.ContextVar`, so concurrent calls, threads and asyncio tasks
never mix. At exit, on success and on every failure path, the objects still
alive go to the call's :class:`~nativeguard._core._scope.Scope`, which releases them:
recognition stopped, every event signal disconnected, callbacks dropped. That
breaks the closure -> cell -> recognizer cycles that otherwise keep native
handles alive until a full ``gc.collect()``, even when the function stored the
object in a closure or in the list it returned (the caller then holds a
stopped, disconnected object; ``strict=True`` reports it).

What is tracked: objects constructed in the call's context, i.e. on the calling
thread (or task), in asyncio tasks it creates and ``asyncio.to_thread`` workers
(both copy the context), and in functions wrapped with :func:`bind`. Not
tracked: objects the SDK constructs on its own callback threads (event args and
the results they carry), which start with an empty context; objects created by
a bound function after the guarded call already returned.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast, overload

import wrapt

from . import _construction
from ._errors import ClosedResourceError, LeakError, ReleaseError, add_note
from ._holders import holder_chains
from ._scope import Scope, ScopeStatistics, _seconds

__all__ = [
    "GuardStatistics",
    "OnRelease",
    "Survivor",
    "SurvivorReport",
    "bind",
    "current_scope",
    "guarded",
]

_F = TypeVar("_F", bound="Callable[..., Any] | classmethod[Any, Any, Any] | staticmethod[Any, Any]")
_R = TypeVar("_R")
_P = ParamSpec("_P")

_PRUNE_AT_LEAST = 64
_MAX_SURVIVORS_DESCRIBED = 10


# -- the active call -----------------------------------------------------------


class _Call:
    """One guarded call in progress: its scope and weak refs to what it constructed.

    Constructed objects are handed to the scope only at exit, and only those
    still alive then. Registering each at construction would give the scope
    one entry per temporary (configs passed inline, property bags, results
    dropped mid-call): its list would grow for as long as the call runs, with
    a linear duplicate check per registration (measured: 5,000 configs in one
    call took 2.6 s, 20,000 took 37 s), for objects that need no release.
    """

    __slots__ = ("_created", "_lock", "_prune_at", "_refs", "_sealed", "scope")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self._lock = threading.Lock()
        self._refs: list[weakref.ReferenceType[Any]] = []
        self._prune_at = _PRUNE_AT_LEAST
        self._created = 0
        self._sealed = False

    @property
    def created(self) -> int:
        return self._created

    def track(self, obj: object) -> None:
        try:
            ref = weakref.ref(obj)
        except TypeError:
            # Not weak-referenceable (no SDK class in 1.53 is): leave it alone
            # rather than break the caller's constructor.
            return
        with self._lock:
            if self._sealed:
                # Made by a bound thread after the call exited: nothing owns it.
                return
            self._created += 1
            self._refs.append(ref)
            if len(self._refs) >= self._prune_at:
                # Drop dead refs: amortised O(1) per object, bounded by the live ones.
                self._refs = [r for r in self._refs if r() is not None]
                self._prune_at = max(_PRUNE_AT_LEAST, 2 * len(self._refs))

    def hand_over(self) -> None:
        """At exit: register what is still alive, in creation order; ignore later ones."""
        with self._lock:
            self._sealed = True
            refs = list(self._refs)
        for ref in refs:
            obj = ref()
            if obj is None:
                continue
            try:
                self.scope.register(obj)
            except ClosedResourceError:
                return  # the body closed its own scope; nothing more can be released
        # `obj` is a local of this frame, gone on return: the scope must be the
        # only one holding nothing but weak references when it judges survivors.

    def alive(self) -> list[object]:
        with self._lock:
            refs = list(self._refs)
        found = (ref() for ref in refs)
        return [obj for obj in found if obj is not None]


_active: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "nativeguard_guarded_call", default=None
)


def current_scope() -> Scope | None:
    """The Scope of the innermost guarded call in this context, or None.

    In a function run through :func:`bind` after the guarded call returned,
    this is that call's scope, already closed (``scope.closed``).
    """
    call = _active.get()
    return None if call is None else call.scope


def bind(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn`` running in a copy of the current context, for another thread.

    A thread or executor started "through nativeguard" runs ``bind(fn)`` so
    SDK objects it creates are tracked by the caller's guarded call. Each
    invocation runs in its own copy of the context captured here, so one bound
    function can run on several threads at once (a Context can be entered by
    one thread only).
    """
    if inspect.iscoroutinefunction(fn):
        raise TypeError(
            "bind() takes a plain callable; coroutines run in their task's context, "
            "and asyncio.create_task() already copies the current one"
        )
    context = contextvars.copy_context()

    @functools.wraps(fn)
    def bound(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return context.copy().run(fn, *args, **kwargs)

    return bound


# -- the decorator -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardStatistics:
    """What one guarded call tracked, and what its release did."""

    function: str
    objects_created: int
    """Native-backed SDK objects constructed in the call's context."""
    scope: ScopeStatistics | None
    """The release. Its ``objects_tracked`` counts the created objects still
    alive at exit (the others needed no release), plus any registered by hand
    through :func:`current_scope`. None when the release was deferred: a call
    on an SDK callback thread, where the Scope hands the release to its reaper
    (and warns); ``strict`` cannot judge survivors then."""


OnRelease = Callable[[GuardStatistics], object]
"""``on_release(statistics)``: called after every guarded call's release."""


@dataclass(frozen=True, slots=True)
class Survivor:
    """A tracked object still alive after release, and who holds it."""

    type_name: str
    chain: tuple[str, ...]
    """What keeps it alive, as :mod:`nativeguard.verify` reports it: leaf first
    (``"SpeechConfig Holder.config"``), then each holder, ending at a root
    (``"return value"``, a global, a frame's local) or a verdict (an
    unreachable cycle, a reference gc cannot see)."""
    held_by_survivor: bool
    """The chain runs through another survivor: it lives only through that one."""


@dataclass(frozen=True, slots=True)
class SurvivorReport:
    """What a strict guarded call left alive: ``LeakError.report``."""

    function: str
    survivors: tuple[Survivor, ...]
    """Roots first; at most 10 (finding holders walks the whole heap)."""
    omitted: int
    """Survivors beyond the described ones."""
    statistics: GuardStatistics

    def summary(self) -> str:
        total = len(self.survivors) + self.omitted
        roots = [s for s in self.survivors if not s.held_by_survivor]
        inner = [s for s in self.survivors if s.held_by_survivor]
        parts = [" <- ".join(s.chain) for s in roots]
        if inner:
            parts.append(f"held only through those: {', '.join(s.type_name for s in inner)}")
        if self.omitted:
            parts.append(f"{self.omitted} more not described")
        return (
            f"guarded call {self.function} left {total} tracked object(s) alive after "
            f"release: {'; '.join(parts)}"
        )


@overload
def guarded(wrapped: _F, /) -> _F: ...


@overload
def guarded(
    wrapped: None = None,
    /,
    *,
    strict: bool = False,
    on_release: OnRelease | None = None,
    step_timeout_s: float | None = None,
) -> Callable[[_F], _F]: ...


def guarded(  # *args: guarded(None) must be told from guarded()
    *wrapped_args: Any,
    strict: bool = False,
    on_release: OnRelease | None = None,
    step_timeout_s: float | None = None,
) -> _F | Callable[[_F], _F]:
    """Release every SDK object the decorated call creates, when it exits.

    Works on functions, ``async def`` functions, methods, classmethods and
    staticmethods; signature, name and coroutine-ness are kept (wrapt). Each
    call gets a fresh :class:`Scope`; nested guarded calls own what they create.
    Returning an SDK object (a result, say) is allowed, but the scope then sees
    a survivor and runs a full collection to confirm it: return plain data.

    ``strict=True``: after release, raise :class:`LeakError` (``.report`` is a
    :class:`SurvivorReport`) if a tracked object is still alive, including
    objects in the return value. Not checked when the body raised: its
    traceback holds the body's frames and so their locals, which would all
    look like leaks; the body's exception propagates unchanged.

    ``on_release`` is called with the call's :class:`GuardStatistics` after
    every release, success or failure, on the calling thread or task: per call,
    unlike a ``last_statistics`` attribute that concurrent calls would
    overwrite. Its own exception propagates (a note, when the body raised).
    ``step_timeout_s`` bounds each release step (the Scope default otherwise).
    """
    if len(wrapped_args) > 1:
        raise TypeError(f"guarded() takes one function to decorate, got {len(wrapped_args)}")
    wrapped: _F | None = wrapped_args[0] if wrapped_args else None
    if wrapped_args and wrapped is None:
        raise TypeError("guarded(None): pass the function to decorate, or use @guarded()")
    if step_timeout_s is not None:
        step_timeout_s = _seconds("step_timeout_s", step_timeout_s, zero_ok=False)
    if not isinstance(strict, bool):
        raise TypeError(f"guarded's strict must be True or False, got {type(strict).__name__}")
    if on_release is not None and not callable(on_release):
        raise TypeError(f"on_release must be callable, got {type(on_release).__name__}")
    options = _Options(strict, on_release, step_timeout_s)
    if wrapped is None:
        return functools.partial(_decorate, options=options)
    return _decorate(wrapped, options=options)


@dataclass(frozen=True, slots=True)
class _Options:
    strict: bool
    on_release: OnRelease | None
    step_timeout_s: float | None

    def new_call(self) -> _Call:
        if self.step_timeout_s is None:
            return _Call(Scope(release="inline"))
        return _Call(Scope(release="inline", step_timeout_s=self.step_timeout_s))


def _decorate(wrapped: _F, *, options: _Options) -> _F:
    function = getattr(wrapped, "__func__", wrapped)  # classmethod / staticmethod
    if not callable(function):
        raise TypeError(f"@guarded decorates callables, got {type(wrapped).__name__}")
    if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
        raise TypeError(
            "@guarded does not support generator functions: the scope would close when "
            "the generator is created, before its body runs"
        )
    is_async = inspect.iscoroutinefunction(function) or (
        # An object whose __call__ is ``async def`` (an ASGI app, say): guarding it
        # as sync would release before its coroutine even ran.
        not inspect.isroutine(function) and inspect.iscoroutinefunction(type(function).__call__)
    )
    name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"

    def wrapper(
        target: Callable[..., Any], instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            if is_async:
                return _call_async(options, name, target, args, kwargs)
            return _call_sync(options, name, target, args, kwargs)
        finally:
            # A LeakError (or the body's error) keeps this frame in its traceback:
            # it must not keep the guarded function's closure or arguments alive.
            del target, instance, args, kwargs

    return cast(_F, wrapt.decorator(wrapper)(wrapped))


def _call_sync(
    options: _Options,
    name: str,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    _ensure_installed()
    call = options.new_call()
    token = _active.set(call)
    try:
        try:
            result = target(*args, **kwargs)
        finally:
            _active.reset(token)
    except BaseException as exc:  # KeyboardInterrupt too: release, then re-raise
        del target, args, kwargs  # the traceback keeps this frame: not what it called
        call.hand_over()
        _after_failure(call, options, exc, name, _closed(call))
        raise
    # Pass the result in a box so that, if strict raises, no frame of ours
    # keeps the value (and the leaked objects in it) alive in the traceback.
    box = [result]
    del result, target, args, kwargs
    call.hand_over()
    return _after_success(call, options, box, name, _closed(call))


async def _call_async(
    options: _Options,
    name: str,
    target: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    # Runs inside the awaiting task, so the ContextVar is per task. aclose()
    # awaits steps that return awaitables; synchronous steps and the native
    # teardown still run on the loop's thread (bounded by step_timeout_s per
    # step), so the objects are gone when the await returns.
    _ensure_installed()
    call = options.new_call()
    token = _active.set(call)
    try:
        try:
            result = await target(*args, **kwargs)
        finally:
            _active.reset(token)
    except BaseException as exc:  # CancelledError too
        del target, args, kwargs  # the traceback keeps this frame: not what it called
        call.hand_over()
        _after_failure(call, options, exc, name, await _aclosed(call))
        raise
    box = [result]
    del result, target, args, kwargs
    call.hand_over()
    return _after_success(call, options, box, name, await _aclosed(call))


def _closed(call: _Call) -> ReleaseError | None:
    """Close the scope: the ReleaseError it raised, if any."""
    error: ReleaseError | None = None
    try:
        call.scope.close()
    except ReleaseError as exc:
        error = exc
    return error


async def _aclosed(call: _Call) -> ReleaseError | None:
    error: ReleaseError | None = None
    try:
        await call.scope.aclose()
    except ReleaseError as exc:
        error = exc
    return error


def _statistics(call: _Call, name: str) -> GuardStatistics:
    # Not released yet means deferred: the call ran on an SDK callback thread,
    # where releasing deadlocks the core, so the Scope warned and handed the
    # release to its reaper, which waits for the callback to return.
    scope = call.scope.statistics() if call.scope.released else None
    return GuardStatistics(name, call.created, scope)


def _after_failure(
    call: _Call, options: _Options, exc: BaseException, name: str, error: ReleaseError | None
) -> None:
    """The body's exception wins; release problems become notes on it.

    The statistics are built only for an ``on_release`` callback (most calls
    have none): right after the close, as in :func:`_after_success`.
    """
    if error is not None:
        add_note(exc, f"nativeguard: {error.message}: {error.exceptions!r}")
    if options.on_release is not None:
        try:
            options.on_release(_statistics(call, name))
        except Exception as callback_error:
            add_note(exc, f"nativeguard: on_release raised {callback_error!r}")


def _after_success(
    call: _Call,
    options: _Options,
    box: list[Any],
    name: str,
    error: ReleaseError | None,
) -> Any:
    leak: LeakError | None = None
    # Statistics only for whoever reads them (most calls: nobody).
    if options.on_release is not None or options.strict:
        statistics = _statistics(call, name)
        if options.on_release is not None:
            try:
                options.on_release(statistics)  # its failure is the caller's to see
            except BaseException:
                box.clear()
                raise
        if options.strict and statistics.scope is not None and statistics.scope.survivors:
            report = _survivor_report(call, statistics, returned=box)
            leak = LeakError(report.summary(), report)
    if error is not None:
        if leak is not None:
            add_note(error, f"nativeguard: {leak}")
        box.clear()
        raise error
    if leak is not None:
        box.clear()
        raise leak
    return box.pop()


# -- the leak report -----------------------------------------------------------


def _survivor_report(
    call: _Call, statistics: GuardStatistics, *, returned: list[Any]
) -> SurvivorReport:
    """Describe the survivors this call's constructors tracked, roots first.

    The scope's count is the authority (objects registered by hand through
    ``current_scope()`` count too, but only constructor-tracked ones are
    described). ``returned`` is the box holding the call's return value.
    """
    alive = call.alive()
    total = max(statistics.scope.survivors if statistics.scope else 0, len(alive))
    described = alive[:_MAX_SURVIVORS_DESCRIBED]
    del alive  # the only strong references left are in `described`, ignored below
    chains = holder_chains(described, roots=[(returned, "return value")]) if described else []
    survivors = [
        Survivor(
            type_name=type(obj).__qualname__,
            chain=chain.links,
            held_by_survivor=chain.through is not None,
        )
        for obj, chain in zip(described, chains, strict=True)
    ]
    survivors.sort(key=lambda survivor: survivor.held_by_survivor)  # stable: roots first
    return SurvivorReport(
        function=statistics.function,
        survivors=tuple(survivors),
        omitted=total - len(survivors),
        statistics=statistics,
    )


# -- constructor instrumentation -----------------------------------------------

# The hook itself lives in _construction (shared with the live-object
# registry); these aliases keep the names tests and tools already use.
_installed = _construction._installed
_uninstall = _construction.uninstall
_listener_lock = threading.Lock()
_listening = False


def _ensure_installed() -> None:
    """Listen to SDK constructions from the first guarded call on; cheap afterwards."""
    global _listening  # noqa: PLW0603 - set under the lock
    if not _listening:
        with _listener_lock:
            if not _listening:
                _construction.add_listener(_on_constructed)
                _listening = True
    # Installed again after a test's _uninstall(); a flag check otherwise.
    _construction.ensure_installed()


_emitters: weakref.WeakKeyDictionary[Any, _Call] = weakref.WeakKeyDictionary()
"""SDK objects that fire events (recognizers, synthesizers, ...) -> the guarded call that made
them: what their callbacks construct on SDK threads belongs to that call."""


def _on_constructed(obj: object) -> None:
    # Outside guarded calls this is one ContextVar lookup and one truth test.
    call = _active.get()
    if call is not None:
        call.track(obj)
        if _construction.is_event_source(obj):
            _emitters[obj] = call
        return
    if _emitters:
        # An SDK callback thread has an empty context. The results and events
        # it builds (``evt.result`` kept by a callback connected on the raw
        # object) belong to the call that made the object firing the event.
        source = _construction.dispatching_source()
        if source is not None:
            owner = _emitters.get(source)
            if owner is not None:
                owner.track(obj)
