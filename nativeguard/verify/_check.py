"""``check(before)`` and ``assert_no_leaks(before)``: what a block left behind, as a report.

A check compares a :class:`~nativeguard.verify._snapshot.Snapshot` taken before the
code under test with the process now. It first waits for releases queued on
nativeguard's reaper, then settles (polls, bounded by ``settle_s``, never
collecting garbage): the SDK ends sessions and tears down native objects on
its own threads after the call that triggered it returned. What still grew is
a leak unless an :class:`Allow` entry, which always says why, excuses it.
Objects an automatic garbage collection freed since the baseline count as
grown (they were left in reference cycles), so the verdict does not depend on
when the collector happened to run; threads are compared by identity.

Leaked objects are found in the live-object registry: for a type whose count
grew by ``n``, the ``n`` youngest live instances. Objects alive before the
snapshot can only have died since, so at least ``n`` of the live ones were
created after it, and the registry lists them in the order it tracked them.
The report then names what holds each one.

:func:`check` returns data; only :func:`assert_no_leaks` (and the pytest
plugin) turn a report into an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .._core._errors import LeakError
from . import _registry
from ._report import LeakReport, build_report
from ._snapshot import Delta, Snapshot, settle

__all__ = [
    "DEFAULT_SETTLE_S",
    "RELEASE_WAIT_S",
    "Allow",
    "Findings",
    "assert_no_leaks",
    "check",
    "coerce_allow",
    "findings",
    "report_for",
    "type_names",
    "wait_for_releases",
    "youngest",
]

DEFAULT_SETTLE_S = 1.0
"""How long a check waits for counts to come back before it declares a leak."""

_THREAD_PREFIX = "thread:"
NATIVE_THREADS = "native_threads"
FDS = "fds"


@dataclass(frozen=True)
class Allow:
    """Growth that is not a leak, and why: an allowlist entry always carries a reason.

    ``what`` is one of: a tracked type's qualname (``"SpeechRecognizer"``), a
    native handle type (``"ISpxRecognizer"``), ``"thread:<name prefix>"``
    (Python threads whose name starts with it), ``"native_threads"`` (OS
    threads without a Python name, e.g. the SDK's) or ``"fds"``.
    """

    what: str
    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.what, str) or not self.what.strip():
            raise ValueError(
                f"Allow(what=...) must name a type, a native handle type, "
                f"'thread:<prefix>', 'native_threads' or 'fds'; got {self.what!r}"
            )
        if self.what.startswith(_THREAD_PREFIX) and not self.what[len(_THREAD_PREFIX) :]:
            raise ValueError("Allow('thread:...') needs a thread name prefix after 'thread:'")
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise ValueError(
                f"Allow({self.what!r}) needs a reason: say why this growth is not a leak"
            )

    @property
    def thread_prefix(self) -> str | None:
        """The name prefix of a ``"thread:..."`` entry, else None."""
        if self.what.startswith(_THREAD_PREFIX):
            return self.what[len(_THREAD_PREFIX) :]
        return None

    def __str__(self) -> str:
        return f"{self.what} ({self.reason})"


def coerce_allow(allow: Iterable[Allow]) -> tuple[Allow, ...]:
    """``allow`` as a tuple, each entry checked to be an :class:`Allow`."""
    if isinstance(allow, Allow):
        return (allow,)
    if isinstance(allow, (str, bytes)) or not isinstance(allow, Iterable):
        raise TypeError(
            f"allow= takes Allow(what, reason) entries (an iterable), got {type(allow).__name__}"
        )
    entries = tuple(allow)
    for entry in entries:
        if not isinstance(entry, Allow):
            raise TypeError(
                f"allow= takes Allow(what, reason) entries, got {type(entry).__name__} "
                f"{entry!r}; write Allow({entry!r}, reason='why this is not a leak')"
            )
    return entries


def type_names(types: Iterable[str | type] | None) -> frozenset[str] | None:
    """Qualnames for ``types=`` (names or classes); None means every tracked type.

    A class must already be tracked when the baseline snapshot is taken,
    otherwise its instances alive then would count as new.
    """
    if types is None:
        return None
    if isinstance(types, (str, type)):
        types = (types,)
    if not isinstance(types, Iterable):
        raise TypeError(
            f"types= takes type names or classes (an iterable), got {type(types).__name__}"
        )
    names: set[str] = set()
    tracked: tuple[type, ...] | None = None
    for entry in types:
        if isinstance(entry, str):
            if not entry:
                raise ValueError("types= names must not be empty")
            names.add(entry)
        elif isinstance(entry, type):
            if tracked is None:
                tracked = _registry.tracked_types()
            if not issubclass(entry, tracked):
                raise ValueError(
                    f"{entry.__qualname__} is not a tracked type; track it before taking "
                    "the baseline snapshot (nativeguard.verify._registry.track_types), or use "
                    "the no_leaks(types=...) marker, which does"
                )
            names.add(entry.__qualname__)
        else:
            raise TypeError(f"types= takes type names or classes, got {type(entry).__name__}")
    return frozenset(names)


@dataclass(frozen=True)
class Findings:
    """What a delta leaked once switches, ``types`` and allowlist are applied."""

    instances: Mapping[str, int]
    native_handles: Mapping[str, int]
    new_threads: tuple[str, ...]
    native_threads: int
    """OS threads that grew beyond the named Python threads that did."""
    fds: int
    allowed: tuple[Allow, ...]
    """The entries that excused something."""
    collected: Mapping[str, int] = field(default_factory=dict)
    """Of ``instances``: those an automatic garbage collection already freed."""

    def __bool__(self) -> bool:
        return bool(
            self.instances
            or self.native_handles
            or self.new_threads
            or self.native_threads > 0
            or self.fds > 0
        )


def findings(
    delta: Delta,
    *,
    allow: Iterable[Allow] = (),
    types: frozenset[str] | None = None,
    native_handles: bool = True,
    threads: bool = True,
    fds: bool = True,
) -> Findings:
    """Apply the switches, the ``types`` filter and the allowlist to ``delta``; pure."""
    entries = coerce_allow(allow)
    names = {entry.what for entry in entries if entry.thread_prefix is None}
    prefixes = [entry.thread_prefix for entry in entries if entry.thread_prefix is not None]
    used: set[str] = set()

    def keep(grown: Mapping[str, int], selected: frozenset[str] | None) -> dict[str, int]:
        kept: dict[str, int] = {}
        for name, count in grown.items():
            if selected is not None and name not in selected:
                continue
            if name in names:
                used.add(name)
            else:
                kept[name] = count
        return kept

    instances = keep(delta.instances, types)
    handles = keep(delta.native_handles, None) if native_handles else {}
    new_threads: list[str] = []
    native = 0
    if threads:
        for thread in delta.new_threads:
            prefix = next((p for p in prefixes if thread.startswith(p)), None)
            if prefix is None:
                new_threads.append(thread)
            else:
                used.add(_THREAD_PREFIX + prefix)
        native = delta.new_native_threads
        if native and NATIVE_THREADS in names:
            used.add(NATIVE_THREADS)
            native = 0
    grown_fds = max(0, delta.fds) if fds else 0
    if grown_fds and FDS in names:
        used.add(FDS)
        grown_fds = 0
    return Findings(
        instances=instances,
        native_handles=handles,
        new_threads=tuple(new_threads),
        native_threads=native,
        fds=grown_fds,
        allowed=tuple(entry for entry in entries if entry.what in used),
        collected={name: count for name, count in delta.collected.items() if name in instances},
    )


def youngest(grown: Mapping[str, int], collected: Mapping[str, int] | None = None) -> list[object]:
    """The ``n`` youngest live tracked objects of each type that grew by ``n``.

    ``collected``: of the growth, how many a garbage collection already freed
    (they are not among the live ones). The caller owns the only new strong
    references: clear the list when done.
    """
    found: list[object] = []
    for name, grew in grown.items():
        count = grew - (collected or {}).get(name, 0)
        if count > 0:
            found.extend(_registry.live(name)[-count:])
    return found


def report_for(found: Findings) -> LeakReport | None:
    """The report for ``found`` (None if it is empty), holders of leaked objects included."""
    if not found:
        return None
    leaked = youngest(found.instances, found.collected)
    threads = found.new_threads
    if found.native_threads:
        threads = (*threads, f"{found.native_threads} native thread(s) without a Python name")
    try:
        return build_report(
            leaked,
            native_handles=found.native_handles,
            instances=found.instances,
            new_threads=threads,
            fds=found.fds,
            allowed=found.allowed,
            collected=found.collected,
            ignore=(leaked,),
        )
    finally:
        leaked.clear()


RELEASE_WAIT_S = 10.0
"""Longest wait for releases queued on nativeguard's reaper thread before a check."""


def wait_for_releases(timeout: float = RELEASE_WAIT_S) -> bool:
    """Wait until nativeguard's reaper has no release queued or running; False on timeout.

    Returns at once when it is idle, or when called on the reaper itself.
    """
    from .._core._reaper import get_reaper  # noqa: PLC0415 - _reaper imports little, but late is safer

    reaper = get_reaper()
    if reaper.is_current() or not reaper.pending():
        return True
    return reaper.wait_idle(timeout)


def _check_snapshot(value: object, function: str, name: str) -> None:
    if not isinstance(value, Snapshot):
        raise TypeError(
            f"{function}() argument {name!r} must be a Snapshot from "
            f"nativeguard.verify.snapshot(), got {type(value).__name__} {value!r:.80}"
        )


def check_switches(function: str, **switches: object) -> None:
    """Each switch (``native_handles=``, ``threads=``, ``fds=``) must be a bool, not truthy."""
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise TypeError(
                f"{function}() argument {name!r} must be True or False, got {type(value).__name__}"
            )


def _check_settle(value: object, function: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{function}() argument 'settle_s' must be a number of seconds, "
            f"got {type(value).__name__} {value!r:.80}"
        )
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{function}() argument 'settle_s' must be finite and >= 0, got {value!r}")


def check(
    before: Snapshot,
    *,
    allow: Iterable[Allow] = (),
    types: Iterable[str | type] | None = None,
    native_handles: bool = True,
    threads: bool = True,
    fds: bool = True,
    settle_s: float = DEFAULT_SETTLE_S,
) -> LeakReport | None:
    """What leaked since ``before``, settled for up to ``settle_s``; None if nothing did.

    ``types`` limits the instance comparison to those types (qualnames or
    tracked classes); ``native_handles``, ``threads`` and ``fds`` switch those
    comparisons off. Never collects garbage and never raises for a leak.

    Releases still queued on nativeguard's reaper thread are waited for first
    (up to :data:`RELEASE_WAIT_S`): "released later" is not a leak. Objects
    an automatic collection freed since ``before`` are reported: the code left
    them in reference cycles, whenever the collector happened to run.
    """
    _check_snapshot(before, "check", "before")
    _check_settle(settle_s, "check")
    check_switches("check", native_handles=native_handles, threads=threads, fds=fds)
    entries = coerce_allow(allow)
    names = type_names(types)
    wait_for_releases()
    _, delta = settle(
        before,
        timeout=settle_s,
        full_heap=before.full_heap,
        native_handles=native_handles,
        threads=threads,
        fds=fds,
    )
    found = findings(
        delta,
        allow=entries,
        types=names,
        native_handles=native_handles,
        threads=threads,
        fds=fds,
    )
    return report_for(found)


def assert_no_leaks(
    before: Snapshot,
    after: Snapshot | None = None,
    *,
    allow: Iterable[Allow] = (),
    types: Iterable[str | type] | None = None,
    native_handles: bool = True,
    threads: bool = True,
    fds: bool = True,
    settle_s: float = DEFAULT_SETTLE_S,
) -> None:
    """Raise :class:`LeakError` (``.report`` is the :class:`LeakReport`) if anything leaked.

    With ``after``, compare exactly those two snapshots (no settling);
    otherwise settle and compare with now, as :func:`check` does.
    """
    _check_snapshot(before, "assert_no_leaks", "before")
    if after is not None:
        _check_snapshot(after, "assert_no_leaks", "after")
    if after is None:
        report = check(
            before,
            allow=allow,
            types=types,
            native_handles=native_handles,
            threads=threads,
            fds=fds,
            settle_s=settle_s,
        )
    else:
        found = findings(
            before.diff(after),
            allow=allow,
            types=type_names(types),
            native_handles=native_handles,
            threads=threads,
            fds=fds,
        )
        report = report_for(found)
    if report is not None:
        raise LeakError(str(report), report)
