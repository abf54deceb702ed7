"""Cheap, frozen readings of what a process holds, and what grew between two.

A :class:`Snapshot` records live tracked instances per type (the registry's
counts, O(types); or a full-heap walk when asked), the SDK core's native
handles per interface type, threads, open file descriptors, RSS and Python's
allocated blocks. ``before.diff(after)`` is a :class:`Delta` listing only what
grew; :func:`settle` polls until a delta has no leak left, because the SDK
delivers session-end events and runs native teardown on its own threads
after the call that triggered them returned.

Threads, decided here, by identity (the kernel's thread id), never by a net
count: a thread the code leaked is new even when another thread ended meanwhile
(issue 10: an SDK thread of an earlier test exiting hid a leaked
``_thread.start_new_thread`` thread from a count).

- ``python_threads`` are the names of ``threading.enumerate()`` minus
  ``threading._DummyThread`` entries and minus nativeguard's own reaper
  thread; ``python_thread_ids`` pairs each with its ``native_id``. Dummy
  entries are native threads (the SDK's callback threads) that some code
  registered by calling ``threading.current_thread()`` on them; CPython 3.11
  keeps such an entry after the thread ended, so comparing them would report
  SDK threads long gone. We never call ``current_thread()`` ourselves, for the
  same reason.
- ``os_thread_ids`` are the kernel's thread ids of the process
  (``/proc/self/task``; SDK native threads included) and ``os_threads`` their
  number, both without the reaper. A new id that is no new named Python
  thread is a new native thread.
- The reaper is recognised as the thread running a ``Reaper``'s loop, not by
  its name: a user thread named ``nativeguard-reaper`` is checked like any
  other. It starts on first use and lives for the process, so it is not a
  leak of the code being checked. Measured with SDK 1.53: a recognizer that
  ran adds 2 native threads, gone when its handle is released, so OS thread
  growth is a real leak signal.

Objects an automatic garbage collection freed since the baseline count as
grown too (``collected``, see ``nativeguard.verify._registry``): a reference cycle is
a leak whether or not the collector ran before the check looked.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import psutil

from .._core._frozen import FrozenMapping
from .._core._integration import merged_counters, native_counters_by_integration
from .._core._reaper import REAPER_THREAD_NAME, Reaper
from . import _registry

__all__ = ["Counts", "Delta", "Snapshot", "settle", "snapshot"]


class Counts(FrozenMapping[int]):
    """An immutable, hashable, picklable ``name -> count`` mapping, sorted by name.

    Compares equal to any mapping with the same items (a ``dict`` included).
    """

    __slots__ = ()

    def __init__(self, items: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> None:
        super().__init__(dict(sorted(dict(items).items())))

    def __repr__(self) -> str:
        return repr(self._data)


@dataclass(frozen=True)
class Delta:
    """What grew from one :class:`Snapshot` to a later one.

    ``instances`` and ``native_handles`` list only types whose count rose;
    ``new_threads`` the Python thread names that appeared (as a multiset).
    ``os_threads``, ``fds``, ``rss_bytes`` and ``allocated_blocks`` are the
    plain differences, negative when they shrank.
    """

    instances: Mapping[str, int]
    native_handles: Mapping[str, int]
    new_threads: tuple[str, ...]
    os_threads: int
    fds: int
    rss_bytes: int
    allocated_blocks: int
    native_threads: int | None = None
    """New OS threads (by kernel id) that are not new named Python threads;
    None when built without thread ids (then ``os_threads`` minus the new
    Python threads stands in)."""
    collected: Mapping[str, int] = field(default_factory=Counts)
    """Of ``instances``: objects already freed by an automatic garbage
    collection, i.e. left in a reference cycle (no holder chain to show)."""

    @property
    def new_native_threads(self) -> int:
        """New native threads: by identity when known, else the net count."""
        if self.native_threads is not None:
            return self.native_threads
        return max(0, self.os_threads - len(self.new_threads))

    def leaked(
        self, *, native_handles: bool = True, threads: bool = True, fds: bool = True
    ) -> bool:
        """Whether a count grew: instances, and (unless switched off) handles, threads, fds.

        Never RSS or allocated blocks: allocators keep freed memory and
        Python's caches grow, so those move without anything leaking.
        """
        return bool(
            self.instances
            or (native_handles and self.native_handles)
            or (threads and (self.new_threads or self.new_native_threads > 0))
            or (fds and self.fds > 0)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "instances": dict(self.instances),
            "native_handles": dict(self.native_handles),
            "new_threads": list(self.new_threads),
            "os_threads": self.os_threads,
            "fds": self.fds,
            "rss_bytes": self.rss_bytes,
            "allocated_blocks": self.allocated_blocks,
            "native_threads": self.native_threads,
            "collected": dict(self.collected),
        }

    def __str__(self) -> str:
        parts = [f"{name} +{count}" for name, count in self.instances.items()]
        parts += [f"{name} +{count} freed by gc" for name, count in self.collected.items()]
        parts += [f"native {name} +{count}" for name, count in self.native_handles.items()]
        if self.new_threads:
            parts.append(f"new threads: {', '.join(self.new_threads)}")
        if self.new_native_threads > 0:
            parts.append(f"native threads +{self.new_native_threads}")
        if self.fds > 0:
            parts.append(f"fds +{self.fds}")
        parts.append(f"RSS {self.rss_bytes / 2**20:+.1f} MB")
        parts.append(f"allocated blocks {self.allocated_blocks:+d}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Snapshot:
    """One reading; compare two with :meth:`diff`. Cheap unless ``full_heap``.

    ``instances`` counts tracked objects by type qualname (see
    ``nativeguard.verify._registry``); ``native_handles`` is the SDK core's own
    handle table (empty if this SDK build cannot report it). Threads: see the
    module notes (``python_threads`` is sorted; nativeguard's reaper is left
    out of both thread figures).
    """

    instances: Mapping[str, int]
    native_handles: Mapping[str, int]
    python_threads: tuple[str, ...]
    os_threads: int
    fds: int
    rss_bytes: int
    allocated_blocks: int
    full_heap: bool
    collected: Mapping[str, int] = field(default_factory=Counts)
    """Tracked objects freed by automatic garbage collections so far (cumulative)."""
    python_thread_ids: tuple[tuple[int, str], ...] | None = None
    """``(native_id, name)`` of each thread in ``python_threads``; None if unknown."""
    os_thread_ids: frozenset[int] | None = None
    """The kernel's ids of the process's threads, the reaper's left out; None if unknown."""
    native_by_integration: Mapping[str, Mapping[str, int]] = field(default_factory=FrozenMapping)
    """``native_handles`` by integration name (``{"grpc": {"grpc.channels": 1}}``)."""

    def diff(self, after: Snapshot) -> Delta:
        """What grew from this snapshot to ``after``.

        Instances: live count plus those automatic collections freed, so a
        cycle collected in between still counts. Threads by identity when
        both snapshots carry thread ids, else by name and net count.
        """
        native: int | None = None
        if self.python_thread_ids is not None and after.python_thread_ids is not None:
            known = {tid for tid, _ in self.python_thread_ids}
            new_threads = tuple(
                sorted(name for tid, name in after.python_thread_ids if tid not in known)
            )
            if self.os_thread_ids is not None and after.os_thread_ids is not None:
                named = {tid for tid, _ in after.python_thread_ids}
                native = len(after.os_thread_ids - self.os_thread_ids - named)
        else:
            after_threads = Counter(after.python_threads)
            new_threads = tuple(sorted((after_threads - Counter(self.python_threads)).elements()))
        instances = _grown(
            _plus(self.instances, self.collected), _plus(after.instances, after.collected)
        )
        freed = _grown(self.collected, after.collected)
        return Delta(
            instances=instances,
            native_handles=_grown(self.native_handles, after.native_handles),
            new_threads=new_threads,
            os_threads=after.os_threads - self.os_threads,
            fds=after.fds - self.fds,
            rss_bytes=after.rss_bytes - self.rss_bytes,
            allocated_blocks=after.allocated_blocks - self.allocated_blocks,
            native_threads=native,
            collected=Counts(
                (name, min(count, instances[name]))
                for name, count in freed.items()
                if name in instances
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["instances"] = dict(self.instances)
        data["native_handles"] = dict(self.native_handles)
        data["python_threads"] = list(self.python_threads)
        data["collected"] = dict(self.collected)
        data["python_thread_ids"] = (
            None if self.python_thread_ids is None else [list(t) for t in self.python_thread_ids]
        )
        data["os_thread_ids"] = None if self.os_thread_ids is None else sorted(self.os_thread_ids)
        data["native_by_integration"] = {
            name: dict(counts) for name, counts in self.native_by_integration.items()
        }
        return data


def _plus(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    total = dict(a)
    for name, count in b.items():
        total[name] = total.get(name, 0) + count
    return total


def _grown(before: Mapping[str, int], after: Mapping[str, int]) -> Counts:
    return Counts(
        (name, count - before.get(name, 0))
        for name, count in after.items()
        if count > before.get(name, 0)
    )


def snapshot(*, full_heap: bool = False) -> Snapshot:
    """Read everything a leak check compares; a few hundred microseconds on any heap.

    The first call enables the live-object registry, which walks the heap
    once (~0.1 s per million objects); later calls copy its counts, O(types).
    ``full_heap=True`` instead counts the tracked types by walking
    ``gc.get_objects()`` every time: the independent cross-check.
    """
    if not isinstance(full_heap, bool):
        raise TypeError(
            f"snapshot() argument 'full_heap' must be True or False, got {full_heap!r:.40}"
        )
    if full_heap:
        instances = Counts(_registry.scan_heap())
    else:
        _registry.enable()
        instances = Counts(_registry.counts())
    collected = Counts(_registry.collected())
    by_integration = native_counters_by_integration()
    handles = Counts(merged_counters(by_integration))
    named, own_ids = _python_threads()
    process = _process()
    task_ids = _os_thread_ids()
    with process.oneshot():
        if task_ids is None:
            os_threads = process.num_threads() - len(own_ids)
        fds = _open_fds(process)
        rss = int(process.memory_info().rss)
    if task_ids is not None:
        task_ids -= own_ids
        os_threads = len(task_ids)
    return Snapshot(
        instances=instances,
        native_handles=handles,
        python_threads=tuple(sorted(name for _, name in named)),
        os_threads=os_threads,
        fds=fds,
        rss_bytes=rss,
        allocated_blocks=sys.getallocatedblocks(),
        full_heap=full_heap,
        collected=collected,
        python_thread_ids=tuple(sorted(named)),
        os_thread_ids=None if task_ids is None else frozenset(task_ids),
        native_by_integration=FrozenMapping(
            {name: Counts(counts) for name, counts in by_integration.items()}
        ),
    )


def is_reaper_thread(thread: threading.Thread) -> bool:
    """Whether ``thread`` runs a :class:`~nativeguard._core._reaper.Reaper`'s loop (its name aside).

    Any Reaper counts (one made for a test, the parent's before a fork): they
    all live for the process. ``_target`` is set until the thread's run ends.
    """
    target = getattr(thread, "_target", None)
    return thread.name == REAPER_THREAD_NAME and isinstance(
        getattr(target, "__self__", None), Reaper
    )


def _python_threads() -> tuple[list[tuple[int, str]], set[int]]:
    """((native_id, name) of the application's Python threads, native ids of our reapers)."""
    named: list[tuple[int, str]] = []
    ours: set[int] = set()
    for thread in threading.enumerate():
        if isinstance(thread, threading._DummyThread):
            continue
        native_id = thread.native_id
        if native_id is None:  # started, not yet running: id unknown, keep it apart
            native_id = -1 - len(named)
        if is_reaper_thread(thread):
            if thread.is_alive():
                ours.add(native_id)
        else:
            named.append((native_id, thread.name))
    return named, ours


def _os_thread_ids() -> set[int] | None:
    """The kernel's ids of this process's threads (Linux), or None where unknown."""
    try:
        return {int(entry) for entry in os.listdir("/proc/self/task")}
    except (OSError, ValueError):
        return None


_cached_process: tuple[int, psutil.Process] | None = None


def _process() -> psutil.Process:
    """This process, reused across snapshots (psutil.Process() reads /proc); fork-aware."""
    global _cached_process  # noqa: PLW0603 - a benign race: both values are equivalent
    pid = os.getpid()
    cached = _cached_process
    if cached is None or cached[0] != pid:
        cached = (pid, psutil.Process(pid))
        _cached_process = cached
    return cached[1]


def _open_fds(process: psutil.Process) -> int:
    """Open file descriptors (POSIX), or handles on Windows."""
    if hasattr(process, "num_fds"):
        return int(process.num_fds())
    return int(getattr(process, "num_handles")())  # noqa: B009 - Windows only, not in stubs


def _settle_key(snap: Snapshot) -> tuple[object, ...]:
    return (
        snap.instances,
        snap.collected,
        snap.native_handles,
        snap.python_threads,
        snap.os_threads,
        snap.fds,
    )


def settle(
    before: Snapshot,
    *,
    timeout: float = 1.0,
    interval: float = 0.05,
    full_heap: bool = False,
    **leak_kw: bool,
) -> tuple[Snapshot, Delta]:
    """Poll until nothing leaked against ``before``, or it is clear something did.

    Stops at the first snapshot whose delta has no leak (``leak_kw`` are
    :meth:`Delta.leaked`'s switches), when the counts have not changed for
    half the timeout (at least three polls: a leak that stays put; shorter
    would call a release queued 0.2 s behind others a leak), or at
    ``timeout``. Returns the last snapshot and its delta. Never collects
    garbage: whether the code under test frees without it is the point.
    """
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")
    if not interval > 0:
        raise ValueError(f"interval must be > 0, got {interval!r}")
    start = time.monotonic()
    deadline = start + timeout
    quiet_s = max(3 * interval, timeout / 2)
    now = snapshot(full_heap=full_heap)
    delta = before.diff(now)
    key, changed_at = _settle_key(now), start
    while delta.leaked(**leak_kw):
        current = time.monotonic()
        if current >= deadline or current - changed_at >= quiet_s:
            break
        time.sleep(min(interval, deadline - current))
        now = snapshot(full_heap=full_heap)
        delta = before.diff(now)
        if _settle_key(now) != key:
            key, changed_at = _settle_key(now), time.monotonic()
    return now, delta
