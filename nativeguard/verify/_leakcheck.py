"""``leak_check(fn)``: run ``fn`` again and again, as CPython's ``-R`` does, and judge each run.

One before/after comparison cannot tell a leak from lazy initialisation (a
cache filled on first use, a pool grown once). Here ``fn`` runs ``warmup``
times unmeasured, then ``runs`` times; after each run every metric is read,
so each metric gets one delta per run.

Reading after a run waits only while something is still moving (issue 11:
settling ~0.5 s after every run made a leaking function's check 10x slower
than pytest-memray's): releases queued on nativeguard's reaper are waited
for exactly, then snapshots are taken 10 ms apart until two agree (bounded
by ``settle_s``). A leak is growth in *every* run, so a release that lags
one run behind shows once and is forgiven. File descriptors, judged on net
growth, get one full settle (as :func:`~nativeguard.verify._check.check` does)
before a growth is called a leak. The verdict, per metric:

- counts (live instances per type, native handles per type, Python threads,
  native threads): a leak only if *every* run's delta is >= 1, CPython's
  rule for reference counts (a one-off growth, or growth with a give-back in
  between, is not);
- file descriptors: a leak on any net growth over the runs;
- RSS (when ``rss_growth_mb`` is set): measured after ``malloc_trim``, a leak
  only if it keeps growing: the median of the pairwise slopes over all runs
  (Theil-Sen, robust to one noisy jump) times ``runs`` exceeds the limit,
  and the same slope over the second half of the runs is still positive (a
  plateau is not a leak);
- allocated blocks are reported, never judged: without a garbage collection
  between runs (there is none on purpose) they follow the collector's
  schedule, not the code's leaks.
"""

from __future__ import annotations

import inspect
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ._check import (
    DEFAULT_SETTLE_S,
    FDS,
    NATIVE_THREADS,
    Allow,
    Findings,
    check_switches,
    coerce_allow,
    report_for,
    type_names,
    wait_for_releases,
)
from ._memory import trim
from ._report import LeakReport
from ._snapshot import Snapshot, _plus, _settle_key, settle, snapshot

__all__ = [
    "DEFAULT_RSS_GROWTH_MB",
    "DEFAULT_RUNS",
    "DEFAULT_WARMUP",
    "LeakCheck",
    "judge",
    "leak_check",
    "series",
    "theil_sen_slope",
]

DEFAULT_WARMUP = 3
DEFAULT_RUNS = 5
STEADY_INTERVAL_S = 0.01
"""Two snapshots this far apart that agree end the wait after a run."""
DEFAULT_RSS_GROWTH_MB = 4.0
"""RSS growth over the measured runs that counts as a leak, when it keeps growing.

Measured: clean recognitions, transcriptions and syntheses against the local
service move RSS by -0.5..+0.2 MB per run after ``malloc_trim``."""

_MB = 1 << 20
INSTANCES = "instances:"
HANDLES = "native_handles:"
PYTHON_THREADS = "python_threads"
RSS = "rss_bytes"
BLOCKS = "allocated_blocks"


@dataclass(frozen=True)
class LeakCheck:
    """The outcome of :func:`leak_check`: per-metric deltas and the verdict."""

    warmup: int
    runs: int
    deltas: Mapping[str, tuple[int, ...]]
    """One delta per measured run, per metric: ``"instances:<type>"``,
    ``"native_handles:<type>"`` (those that moved at all), ``"python_threads"``,
    ``"native_threads"``, ``"fds"``, ``"rss_bytes"``, ``"allocated_blocks"``."""
    leaks: tuple[str, ...]
    """The metrics judged to leak."""
    rss_slope_bytes: float
    """Theil-Sen slope of RSS per run, over the measured runs."""
    rss_growth_limit_bytes: int | None
    allowed: tuple[Allow, ...]
    """Allowlist entries that excused a metric that would have leaked."""
    report: LeakReport | None
    """What leaked after the last run, holders included; None if nothing did."""
    elapsed_s: float

    @property
    def leaked(self) -> bool:
        return bool(self.leaks)

    def __str__(self) -> str:
        verdict = f"leak in {', '.join(self.leaks)}" if self.leaks else "no leak"
        lines = [
            f"leak_check: {verdict} (warmup {self.warmup}, {self.runs} measured runs, "
            f"{self.elapsed_s:.1f} s)"
        ]
        for name, values in self.deltas.items():
            if name == RSS:
                shown = " ".join(f"{v / _MB:+.1f}" for v in values)
                limit = (
                    "not judged"
                    if self.rss_growth_limit_bytes is None
                    else f"limit {self.rss_growth_limit_bytes / _MB:g} MB over the runs"
                )
                lines.append(
                    f"  {name}: {shown} MB (slope {self.rss_slope_bytes / _MB:+.2f} MB/run, "
                    f"{limit})"
                )
                continue
            mark = "  <- leak" if name in self.leaks else ""
            lines.append(f"  {name}: {' '.join(f'{v:+d}' for v in values)}{mark}")
        for entry in self.allowed:
            lines.append(f"  allowed: {entry}")
        if self.report is not None:
            lines.append(str(self.report))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "warmup": self.warmup,
            "runs": self.runs,
            "leaked": self.leaked,
            "leaks": list(self.leaks),
            "deltas": {name: list(values) for name, values in self.deltas.items()},
            "rss_slope_bytes": self.rss_slope_bytes,
            "rss_growth_limit_bytes": self.rss_growth_limit_bytes,
            "allowed": [{"what": a.what, "reason": a.reason} for a in self.allowed],
            "report": None if self.report is None else self.report.to_dict(),
            "elapsed_s": self.elapsed_s,
        }


def _thread_count(snap: Snapshot, prefixes: Sequence[str]) -> int:
    return sum(1 for name in snap.python_threads if not name.startswith(tuple(prefixes)))


def series(
    snapshots: Sequence[Snapshot], *, thread_prefixes: Sequence[str] = ()
) -> dict[str, tuple[int, ...]]:
    """Per-metric deltas between consecutive snapshots; pure.

    Instance and handle types appear only if they moved in some run; the
    other metrics always. Python threads whose name starts with one of
    ``thread_prefixes`` are not counted in ``"python_threads"``.
    """
    if len(snapshots) < 2:
        raise ValueError("series() needs at least two snapshots")
    pairs = list(itertools.pairwise(snapshots))
    out: dict[str, tuple[int, ...]] = {}
    # Instances: live plus those automatic collections freed, so a reference
    # cycle made in a run counts whether or not the collector ran meanwhile.
    readings = {
        INSTANCES: [_plus(snap.instances, snap.collected) for snap in snapshots],
        HANDLES: [dict(snap.native_handles) for snap in snapshots],
    }
    for prefix, counted in readings.items():
        names = sorted({name for reading in counted for name in reading})
        for name in names:
            values = tuple(b.get(name, 0) - a.get(name, 0) for a, b in itertools.pairwise(counted))
            if any(values):
                out[prefix + name] = values
    out[PYTHON_THREADS] = tuple(
        _thread_count(b, thread_prefixes) - _thread_count(a, thread_prefixes) for a, b in pairs
    )
    out[NATIVE_THREADS] = tuple(
        (b.os_threads - len(b.python_threads)) - (a.os_threads - len(a.python_threads))
        for a, b in pairs
    )
    out[FDS] = tuple(b.fds - a.fds for a, b in pairs)
    out[RSS] = tuple(b.rss_bytes - a.rss_bytes for a, b in pairs)
    out[BLOCKS] = tuple(b.allocated_blocks - a.allocated_blocks for a, b in pairs)
    return out


def theil_sen_slope(values: Sequence[float]) -> float:
    """Median of the pairwise slopes of ``values`` (equally spaced); 0.0 for fewer than 2."""
    slopes = [
        (values[j] - values[i]) / (j - i)
        for i in range(len(values))
        for j in range(i + 1, len(values))
    ]
    return float(statistics.median(slopes)) if slopes else 0.0


def _cumulative(deltas: Sequence[int]) -> list[int]:
    total, points = 0, [0]
    for delta in deltas:
        total += delta
        points.append(total)
    return points


def judge(
    deltas: Mapping[str, tuple[int, ...]],
    *,
    allow: Iterable[Allow] = (),
    types: frozenset[str] | None = None,
    native_handles: bool = True,
    threads: bool = True,
    fds: bool = True,
    rss_growth_limit_bytes: int | None = None,
) -> tuple[tuple[str, ...], tuple[Allow, ...], float]:
    """(leaking metrics, allowlist entries used, RSS slope per run) for ``deltas``; pure."""
    entries = coerce_allow(allow)
    allowed_names = {entry.what: entry for entry in entries}
    leaks: list[str] = []
    used: dict[str, Allow] = {}
    for name, values in deltas.items():
        if name.startswith(INSTANCES):
            target = name[len(INSTANCES) :]
            if types is not None and target not in types:
                continue
        elif name.startswith(HANDLES):
            if not native_handles:
                continue
            target = name[len(HANDLES) :]
        elif name in (PYTHON_THREADS, NATIVE_THREADS):
            if not threads:
                continue
            target = name
        elif name == FDS:
            if fds and sum(values) >= 1:
                if FDS in allowed_names:
                    used[FDS] = allowed_names[FDS]
                else:
                    leaks.append(name)
            continue
        else:
            continue  # RSS below; allocated blocks are never judged
        if values and all(value >= 1 for value in values):
            if target in allowed_names:
                used[target] = allowed_names[target]
            else:
                leaks.append(name)
    points = _cumulative(deltas.get(RSS, ()))
    slope = theil_sen_slope(points)
    if rss_growth_limit_bytes is not None and len(points) >= 3:
        runs = len(points) - 1
        still_growing = theil_sen_slope(points[runs // 2 :]) > 0
        if slope * runs > rss_growth_limit_bytes and still_growing:
            leaks.append(RSS)
    return tuple(leaks), tuple(used.values()), slope


def leak_check(
    fn: Callable[[], object],
    *,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    allow: Iterable[Allow] = (),
    types: Iterable[str | type] | None = None,
    native_handles: bool = True,
    threads: bool = True,
    fds: bool = True,
    rss_growth_mb: float | None = DEFAULT_RSS_GROWTH_MB,
    settle_s: float = DEFAULT_SETTLE_S,
) -> LeakCheck:
    """Run ``fn`` ``warmup`` + ``runs`` times, measuring after each measured run.

    Returns a :class:`LeakCheck`; never raises for a leak (``fn``'s own
    exceptions propagate). ``rss_growth_mb=None`` leaves RSS unjudged.
    ``allow``, ``types`` and the switches mean what they mean for
    :func:`~nativeguard.verify._check.check`; an ``allow`` list is read again after
    the runs, so ``fn`` may add entries to it. ``settle_s`` bounds the wait
    after each run for counts that are still moving (and the final settle
    when file descriptors grew); counts that stand still cost one 10 ms
    look, leaking or not.
    """
    if inspect.iscoroutinefunction(fn):
        raise TypeError(
            "leak_check() runs plain callables; for a coroutine function pass "
            "lambda: asyncio.run(fn())"
        )
    if not callable(fn):
        raise TypeError(f"leak_check() needs a callable, got {type(fn).__name__}")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 2:
        raise ValueError(
            f"runs must be an int >= 2 (a leak is growth in every run; one run cannot "
            f"tell it from noise), got {runs!r}"
        )
    if rss_growth_mb is not None:
        if isinstance(rss_growth_mb, bool) or not isinstance(rss_growth_mb, (int, float)):
            raise TypeError(
                f"rss_growth_mb must be a number of MB or None, got {type(rss_growth_mb).__name__}"
            )
        if not (rss_growth_mb > 0 and math.isfinite(rss_growth_mb)):
            raise ValueError(
                f"rss_growth_mb must be finite and > 0, or None, got {rss_growth_mb!r}"
            )
    entries = coerce_allow(allow)
    names = type_names(types)
    switches = {"native_handles": native_handles, "threads": threads, "fds": fds}
    check_switches("leak_check", **switches)
    prefixes = [e.thread_prefix for e in entries if e.thread_prefix is not None]
    limit = None if rss_growth_mb is None else int(rss_growth_mb * _MB)

    if isinstance(settle_s, bool) or not isinstance(settle_s, (int, float)) or not settle_s >= 0:
        raise ValueError(f"settle_s must be a number of seconds >= 0, got {settle_s!r}")

    started = time.monotonic()
    snapshot()  # enables the registry before the first run, if nothing did
    for _ in range(warmup):
        fn()
    taken = [_steady_snapshot(settle_s)]
    for _ in range(runs):
        fn()
        taken.append(_steady_snapshot(settle_s))
        # Read again: fn may have added entries while it ran (the pytest fixture's allow()).
        entries = coerce_allow(allow)
        prefixes = [e.thread_prefix for e in entries if e.thread_prefix is not None]
    deltas = series(taken, thread_prefixes=prefixes)
    leaks, used, slope = judge(
        deltas,
        allow=entries,
        types=names,
        rss_growth_limit_bytes=limit,
        **switches,
    )
    if FDS in leaks:
        # Net growth is not growth in every run: a descriptor closed late by
        # the SDK would read as one. Settle the last reading, then judge again.
        taken[-1], _ = settle(taken[0], timeout=settle_s, **switches)
        deltas = series(taken, thread_prefixes=prefixes)
        leaks, used, slope = judge(
            deltas,
            allow=entries,
            types=names,
            rss_growth_limit_bytes=limit,
            **switches,
        )
    report = report_for(_findings(deltas, leaks, taken, prefixes, used))
    return LeakCheck(
        warmup=warmup,
        runs=runs,
        deltas=MappingProxyType(deltas),
        leaks=leaks,
        rss_slope_bytes=slope,
        rss_growth_limit_bytes=limit,
        allowed=used,
        report=report,
        elapsed_s=time.monotonic() - started,
    )


def _steady_snapshot(timeout: float) -> Snapshot:
    """A reading once nothing moves: queued releases done, two snapshots 10 ms apart equal.

    Freed heap is returned first (``malloc_trim``) so RSS reads what is in use.
    """
    deadline = time.monotonic() + timeout
    wait_for_releases()
    trim()
    now = snapshot()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return now
        time.sleep(min(STEADY_INTERVAL_S, remaining))
        later = snapshot()
        if _settle_key(later) == _settle_key(now):
            return later
        now = later


def _findings(
    deltas: Mapping[str, tuple[int, ...]],
    leaks: Sequence[str],
    taken: Sequence[Snapshot],
    prefixes: Sequence[str],
    used: tuple[Allow, ...],
) -> Findings:
    """The leaking count metrics as :class:`Findings`, summed over the measured runs."""
    grown = {name: sum(deltas[name]) for name in leaks}
    new_threads: tuple[str, ...] = ()
    if PYTHON_THREADS in grown:
        new_threads = tuple(
            name
            for name in taken[0].diff(taken[-1]).new_threads
            if not name.startswith(tuple(prefixes))
        )
    instances = {n[len(INSTANCES) :]: c for n, c in grown.items() if n.startswith(INSTANCES)}
    freed = taken[0].diff(taken[-1]).collected
    return Findings(
        instances=instances,
        native_handles={n[len(HANDLES) :]: c for n, c in grown.items() if n.startswith(HANDLES)},
        new_threads=new_threads,
        native_threads=grown.get(NATIVE_THREADS, 0),
        fds=grown.get(FDS, 0),
        allowed=used,
        collected={
            name: min(count, instances[name]) for name, count in freed.items() if name in instances
        },
    )
