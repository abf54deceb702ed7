"""``nativeguard soak``: call one function many times, sample memory after each call, judge it.

The field write-ups found their leaks by printing RSS in a loop and asking
"does it keep growing, or does it plateau?". A soak does that loop with every
figure nativeguard can read, after every call, and answers the question with
the same rules as :func:`~nativeguard.verify.leak_check`:

- counts (native handles per integration and type, live tracked instances per
  type, Python threads, native threads, file descriptors) go through
  :func:`~nativeguard.verify._leakcheck.judge`: CPython's ``-R`` rule, a leak only if
  *every* measured call grew it (fds: any net growth);
- bytes (RSS, glibc's heap in use) get a Theil-Sen slope per call with a 95 %
  confidence band (Sen's rank interval). A leak is a fitted growth over the
  measured calls above ``growth_limit_bytes`` whose band excludes zero and
  that still grows in the second half at half that rate or more; growth that
  stopped is a ``plateau``. glibc's retained heap, Python's allocated blocks
  and the time per call are reported with their slopes, never judged:
  allocators keep freed memory and the collector's schedule moves blocks.

Each call is followed (by default) by ``malloc_trim`` and a settle of the
counts (the SDK tears down on its own threads after the call returned), as in
``leak_check``. With ``isolated=True`` the calls and the sampling happen in a
:class:`~nativeguard.isolate.WorkerPool` worker; the caller only collects the
samples. All of it is plain data (:class:`SoakRun`), written as JSON by the
command and read back by ``--compare``.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import inspect
import itertools
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .._core._errors import NativeGuardError
from .._core._malloc import heap_stats
from ..verify import Snapshot, snapshot
from ..verify._leakcheck import DEFAULT_RSS_GROWTH_MB, judge, theil_sen_slope
from ..verify._memory import trim
from ..verify._snapshot import settle  # private helper: poll until counts stop moving

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_SETTLE_S",
    "DEFAULT_WARMUP",
    "FORMAT",
    "Sample",
    "SoakError",
    "SoakRun",
    "SoakUsageError",
    "Verdict",
    "judge_samples",
    "load_run",
    "resolve",
    "run_soak",
    "slope_band",
]

FORMAT = "nativeguard-soak/1"
"""The ``format`` field of a soak's JSON; ``--compare`` refuses anything else."""
DEFAULT_WARMUP = 3
DEFAULT_ITERATIONS = 100
DEFAULT_SETTLE_S = 0.5
"""Up to this long after each call for counts to come back; a call that leaks costs half."""
_MB = 1 << 20
_Z95 = 1.959963984540054
_MAX_SLOPE_POINTS = 400
"""Longer series are thinned evenly before the O(n²) pairwise slopes."""

LEAK = "leak"
PLATEAU = "plateau"
NO_LEAK = "no leak"
NOT_JUDGED = "not judged"

# The metric names of LeakCheck.deltas, which judge() reads.
_INSTANCES = "instances:"
_HANDLES = "native_handles:"


class SoakError(NativeGuardError, RuntimeError):
    """The soak could not run: the target or its setup failed (exit status 2)."""


class SoakUsageError(NativeGuardError, ValueError):
    """A bad argument to the soak: a target that does not resolve, a bad count (exit status 2)."""


@dataclass(frozen=True)
class Sample:
    """One reading, after a call (or before the first: ``phase == "baseline"``)."""

    index: int
    """0 for the baseline, then 1, 2, ... over the warm-up and measured calls."""
    phase: str
    """``"baseline"``, ``"warmup"`` or ``"measured"``."""
    call_s: float | None
    """How long the call took (None for the baseline)."""
    elapsed_s: float
    rss_bytes: int
    heap_in_use_bytes: int | None
    """glibc's heap in use (``mallinfo2``), None without glibc."""
    heap_retained_bytes: int | None
    """Freed heap glibc keeps, None without glibc."""
    python_allocated_blocks: int
    native: Mapping[str, Mapping[str, int]]
    """Native resources by integration, then type: ``{"azure_speech": {"ISpxRecognizer": 1}}``."""
    instances: Mapping[str, int]
    """Live tracked instances by type qualname."""
    python_threads: int
    native_threads: int
    """OS threads beyond the named Python threads (the SDK's among them)."""
    fds: int

    @property
    def other_bytes(self) -> int | None:
        """RSS not in glibc's heap: code, stacks, pymalloc arenas, mmaps; floored at 0."""
        if self.heap_in_use_bytes is None or self.heap_retained_bytes is None:
            return None
        return max(0, self.rss_bytes - self.heap_in_use_bytes - self.heap_retained_bytes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["native"] = {k: dict(v) for k, v in self.native.items()}
        data["instances"] = dict(self.instances)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        return cls(
            index=int(data["index"]),
            phase=str(data["phase"]),
            call_s=None if data["call_s"] is None else float(data["call_s"]),
            elapsed_s=float(data["elapsed_s"]),
            rss_bytes=int(data["rss_bytes"]),
            heap_in_use_bytes=_opt_int(data["heap_in_use_bytes"]),
            heap_retained_bytes=_opt_int(data["heap_retained_bytes"]),
            python_allocated_blocks=int(data["python_allocated_blocks"]),
            native={
                str(k): {str(t): int(c) for t, c in v.items()} for k, v in data["native"].items()
            },
            instances={str(k): int(v) for k, v in data["instances"].items()},
            python_threads=int(data["python_threads"]),
            native_threads=int(data["native_threads"]),
            fds=int(data["fds"]),
        )


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


@dataclass(frozen=True)
class Verdict:
    """The judgement of one metric over the measured calls."""

    metric: str
    """``"rss_bytes"``, ``"heap_in_use_bytes"``, ``"native_handles:<integration>:<type>"``,
    ``"instances:<type>"``, ``"python_threads"``, ``"native_threads"``, ``"fds"``, ..."""
    kind: str
    """``"count"``, ``"bytes"``, ``"blocks"`` or ``"seconds"``."""
    verdict: str
    """``"leak"``, ``"plateau"``, ``"no leak"`` or ``"not judged"``."""
    growth: float
    """Last measured value minus the value before the first measured call."""
    slope: float
    """Theil-Sen slope per call."""
    slope_low: float
    slope_high: float
    """The slope's 95 % confidence band."""
    limit: float | None
    """For bytes: the growth over the measured calls that counts as a leak."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        limit = data.get("limit")
        return cls(
            metric=str(data["metric"]),
            kind=str(data["kind"]),
            verdict=str(data["verdict"]),
            growth=float(data["growth"]),
            slope=float(data["slope"]),
            slope_low=float(data["slope_low"]),
            slope_high=float(data["slope_high"]),
            limit=None if limit is None else float(limit),
        )


@dataclass(frozen=True)
class SoakRun:
    """A whole soak: its settings, every sample, the verdicts and the last call's leak report."""

    target: str
    setup: str | None
    isolated: bool
    warmup: int
    iterations: int
    settle_s: float
    trim: bool
    growth_limit_bytes: int
    samples: tuple[Sample, ...]
    verdicts: tuple[Verdict, ...]
    report: Mapping[str, Any] | None = None
    """The leak report of the last call (holder chains), as ``LeakReport.to_dict()``."""
    report_text: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    started_at: str = ""
    elapsed_s: float = 0.0
    completed: bool = True
    """False when interrupted: the verdicts cover the calls made."""
    teardown_error: str | None = None
    """What a generator ``setup`` raised when resumed after the soak (the samples stand)."""
    label: str = ""

    @property
    def leaks(self) -> tuple[str, ...]:
        return tuple(v.metric for v in self.verdicts if v.verdict == LEAK)

    @property
    def leaked(self) -> bool:
        return bool(self.leaks)

    @property
    def measured(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if s.phase == "measured")

    @property
    def name(self) -> str:
        return self.label or self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "target": self.target,
            "setup": self.setup,
            "label": self.label,
            "isolated": self.isolated,
            "warmup": self.warmup,
            "iterations": self.iterations,
            "settle_s": self.settle_s,
            "trim": self.trim,
            "growth_limit_bytes": self.growth_limit_bytes,
            "completed": self.completed,
            "teardown_error": self.teardown_error,
            "leaked": self.leaked,
            "leaks": list(self.leaks),
            "verdicts": [v.to_dict() for v in self.verdicts],
            "samples": [s.to_dict() for s in self.samples],
            "report": None if self.report is None else dict(self.report),
            "report_text": self.report_text,
            "versions": dict(self.versions),
            "started_at": self.started_at,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SoakRun:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise SoakUsageError(f"not a nativeguard soak JSON file (format {found!r})")
        try:
            return cls(
                target=str(data["target"]),
                setup=data.get("setup"),
                label=str(data.get("label") or ""),
                isolated=bool(data["isolated"]),
                warmup=int(data["warmup"]),
                iterations=int(data["iterations"]),
                settle_s=float(data["settle_s"]),
                trim=bool(data["trim"]),
                growth_limit_bytes=int(data["growth_limit_bytes"]),
                samples=tuple(Sample.from_dict(s) for s in data["samples"]),
                verdicts=tuple(Verdict.from_dict(v) for v in data["verdicts"]),
                report=data.get("report"),
                report_text=data.get("report_text"),
                versions=dict(data.get("versions") or {}),
                started_at=str(data.get("started_at") or ""),
                elapsed_s=float(data.get("elapsed_s") or 0.0),
                completed=bool(data.get("completed", True)),
                teardown_error=data.get("teardown_error"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise SoakUsageError(f"a malformed nativeguard soak JSON file: {error!r}") from None


def load_run(path: str | os.PathLike[str]) -> SoakRun:
    """Read a soak's JSON file; :class:`SoakUsageError` naming the file if it is not one."""
    import json  # noqa: PLC0415

    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as error:
        raise SoakUsageError(f"cannot read {os.fspath(path)!r}: {error.strerror}") from None
    except ValueError as error:
        raise SoakUsageError(f"{os.fspath(path)!r} is not JSON: {error}") from None
    try:
        return SoakRun.from_dict(data)
    except SoakUsageError as error:
        raise SoakUsageError(f"{os.fspath(path)!r}: {error}") from None


# ------------------------------------------------------------------ target


def resolve(spec: str, what: str = "TARGET") -> Callable[..., Any]:
    """``"package.module:function"`` (or ``:Class.method``) to the callable it names."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise SoakUsageError(f"{what} must be module:function, got {spec!r}")
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SoakUsageError(f"{what} must be module:function, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise SoakUsageError(f"{what} {spec!r}: cannot import {module_name!r}: {error}") from None
    except Exception as error:
        raise SoakError(f"{what} {spec!r}: importing {module_name!r} raised {error!r}") from error
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SoakUsageError(f"{what} {spec!r}: {module_name!r} has no {attribute!r}") from None
    if not callable(obj):
        raise SoakUsageError(f"{what} {spec!r} is a {type(obj).__name__}, not callable")
    if inspect.iscoroutinefunction(obj):
        raise SoakUsageError(
            f"{what} {spec!r} is a coroutine function; soak calls plain functions "
            "(wrap it: def call(): asyncio.run(fn()))"
        )
    return obj  # type: ignore[no-any-return]


class _Call:
    """The target bound to what ``setup`` returned; ``close()`` finishes a generator setup."""

    def __init__(self, target: str, setup: str | None) -> None:
        self.fn = resolve(target, "TARGET")
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self._generator: Generator[Any, Any, Any] | None = None
        if setup is None:
            return
        make = resolve(setup, "--setup")
        try:
            value: Any = make()
            if inspect.isgenerator(value):
                self._generator = value
                value = next(value)
        except StopIteration:
            raise SoakError(f"--setup {setup!r} is a generator that yielded nothing") from None
        except Exception as error:
            raise SoakError(f"--setup {setup!r} raised {error!r}") from error
        if value is None:
            pass
        elif isinstance(value, tuple):
            self.args = value
        elif isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise SoakUsageError(f"--setup {setup!r} returned a dict with non-string keys")
            self.kwargs = value
        else:
            self.args = (value,)

    def __call__(self) -> float:
        start = time.perf_counter()
        self.fn(*self.args, **self.kwargs)
        return time.perf_counter() - start

    def close(self) -> str | None:
        """Resume a generator setup to its end; what its teardown raised, as text, or None."""
        generator, self._generator = self._generator, None
        self.args, self.kwargs = (), {}
        if generator is None:
            return None
        try:
            next(generator)
        except StopIteration:
            return None
        except Exception as error:
            return f"--setup teardown raised {error!r}"
        finally:
            generator.close()
        return "--setup teardown yielded a second time (it should yield once)"


# ----------------------------------------------------------------- samples


class _Sampler:
    """Reads a :class:`Sample` after each call, settling counts against the previous one."""

    def __init__(self, *, settle_s: float, trim_heap: bool) -> None:
        self.settle_s = settle_s
        self.trim_heap = trim_heap
        self.started = time.monotonic()
        self.previous: Snapshot | None = None
        self.before_last: Snapshot | None = None

    def take(self, index: int, phase: str, call_s: float | None) -> Sample:
        if self.trim_heap and call_s is not None:
            trim()
        if self.previous is None or self.settle_s <= 0:
            snap = snapshot()
        else:
            snap, _ = settle(self.previous, timeout=self.settle_s)
        heap = heap_stats()
        self.before_last, self.previous = self.previous, snap
        return _sample(
            snap,
            heap.in_use_bytes,
            heap.free_bytes,
            index=index,
            phase=phase,
            call_s=call_s,
            started=self.started,
        )

    def last_report(self) -> tuple[dict[str, Any] | None, str | None]:
        """The leak report of the last call: what it left that is still alive, and its holders."""
        if self.before_last is None:
            return None, None
        from ..verify import check  # noqa: PLC0415

        report = check(self.before_last, settle_s=max(self.settle_s, 0.05))
        if report is None:
            return None, None
        return report.to_dict(), str(report)


def _sample(
    snap: Snapshot,
    in_use: int | None,
    retained: int | None,
    *,
    index: int,
    phase: str,
    call_s: float | None,
    started: float,
) -> Sample:
    python_threads = len(snap.python_threads)
    return Sample(
        index=index,
        phase=phase,
        call_s=call_s,
        elapsed_s=time.monotonic() - started,
        rss_bytes=snap.rss_bytes,
        heap_in_use_bytes=in_use,
        heap_retained_bytes=retained,
        python_allocated_blocks=snap.allocated_blocks,
        native={name: dict(counts) for name, counts in snap.native_by_integration.items()},
        instances=dict(snap.instances),
        python_threads=python_threads,
        native_threads=snap.os_threads - python_threads,
        fds=snap.fds,
    )


# ----------------------------------------------------------------- verdicts


def slope_band(values: Sequence[float]) -> tuple[float, float, float]:
    """(Theil-Sen slope, 95 % low, 95 % high) of equally spaced ``values``; pure.

    The band is Sen's (1968) rank interval: the pairwise slopes ranked, cut
    ``z * sqrt(n(n-1)(2n+5)/18) / 2`` ranks either side of their median.
    Series longer than 400 points are thinned evenly first (the pairwise
    slopes are O(n²)). Fewer than 3 points: the band is the slope itself.
    """
    points = list(values)
    step = 1.0
    if len(points) > _MAX_SLOPE_POINTS:
        stride = math.ceil(len(points) / _MAX_SLOPE_POINTS)
        points = points[::stride]
        step = float(stride)
    n = len(points)
    if n < 2:
        return 0.0, 0.0, 0.0
    slopes = sorted(
        (points[j] - points[i]) / ((j - i) * step) for i in range(n) for j in range(i + 1, n)
    )
    slope = theil_sen_slope(points) / step
    if n < 3:
        return slope, slope, slope
    count = len(slopes)
    spread = _Z95 * math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    low_rank = max(0, math.floor((count - spread) / 2))
    high_rank = min(count - 1, math.ceil((count + spread) / 2))
    return slope, slopes[low_rank], slopes[high_rank]


def _series(samples: Sequence[Sample]) -> dict[str, tuple[str, list[float | None]]]:
    """metric -> (kind, one value per sample), for every metric a soak reads."""
    out: dict[str, tuple[str, list[float | None]]] = {
        "rss_bytes": ("bytes", [s.rss_bytes for s in samples]),
        "heap_in_use_bytes": ("bytes", [_f(s.heap_in_use_bytes) for s in samples]),
        "heap_retained_bytes": ("bytes", [_f(s.heap_retained_bytes) for s in samples]),
        "python_allocated_blocks": ("blocks", [s.python_allocated_blocks for s in samples]),
    }
    integrations = sorted({name for s in samples for name in s.native})
    for integration in integrations:
        types = sorted({t for s in samples for t in s.native.get(integration, {})})
        for type_name in types:
            out[f"{_HANDLES}{integration}:{type_name}"] = (
                "count",
                [s.native.get(integration, {}).get(type_name, 0) for s in samples],
            )
    for type_name in sorted({t for s in samples for t in s.instances}):
        out[_INSTANCES + type_name] = ("count", [s.instances.get(type_name, 0) for s in samples])
    out["python_threads"] = ("count", [s.python_threads for s in samples])
    out["native_threads"] = ("count", [s.native_threads for s in samples])
    out["fds"] = ("count", [s.fds for s in samples])
    return out


def _f(value: int | None) -> float | None:
    return None if value is None else float(value)


def judge_samples(samples: Sequence[Sample], *, growth_limit_bytes: int) -> tuple[Verdict, ...]:
    """A verdict per metric over the measured samples (and the one reading before them); pure.

    Counts: :func:`~nativeguard.verify._leakcheck.judge`'s ``-R`` rule, and
    ``"plateau"`` for a count that grew over the run but not in its second
    half. Bytes: see the module notes. Everything else is ``"not judged"``.
    """
    start = next((i for i, s in enumerate(samples) if s.phase == "measured"), None)
    if start is None:
        return ()
    window = list(samples[max(0, start - 1) :])
    calls = len(window) - 1
    verdicts: list[Verdict] = []
    count_deltas: dict[str, tuple[int, ...]] = {}
    series = _series(window)
    for metric, (kind, column) in series.items():
        if kind == "count":
            ints = [int(v or 0) for v in column]
            count_deltas[_judge_name(metric)] = tuple(b - a for a, b in itertools.pairwise(ints))
    count_leaks = set(judge(count_deltas, rss_growth_limit_bytes=None)[0]) if calls else set()
    for metric, (kind, raw) in series.items():
        values = [float(v) for v in raw if v is not None]
        if not values:
            verdicts.append(Verdict(metric, kind, NOT_JUDGED, 0.0, 0.0, 0.0, 0.0, None))
            continue
        growth = values[-1] - values[0] if values else 0.0
        slope, low, high = slope_band(values)
        limit: float | None = None
        if kind == "count":
            if _judge_name(metric) in count_leaks:
                verdict = LEAK
            elif growth > 0 and calls >= 4 and _second_half_growth(values) <= 0:
                verdict = PLATEAU
            else:
                verdict = NO_LEAK
        elif metric in ("rss_bytes", "heap_in_use_bytes") and calls >= 3:
            limit = float(growth_limit_bytes)
            verdict = _bytes_verdict(values, slope, low, calls, limit)
        else:
            verdict = NOT_JUDGED
        verdicts.append(Verdict(metric, kind, verdict, growth, slope, low, high, limit))
    call_times = [s.call_s for s in window[1:] if s.call_s is not None]
    if call_times:
        slope, low, high = slope_band(call_times)
        verdicts.append(
            Verdict(
                "call_s",
                "seconds",
                NOT_JUDGED,
                statistics.median(call_times),
                slope,
                low,
                high,
                None,
            )
        )
    return tuple(verdicts)


def _judge_name(metric: str) -> str:
    """Our metric name as judge() reads it: native handles without the integration."""
    if metric.startswith(_HANDLES):
        return _HANDLES + metric[len(_HANDLES) :].partition(":")[2]
    return metric


def _second_half_growth(values: Sequence[float]) -> float:
    half = values[len(values) // 2 :]
    return half[-1] - half[0]


def _bytes_verdict(
    values: Sequence[float], slope: float, low: float, calls: int, limit: float
) -> str:
    if slope * calls <= limit or low <= 0:
        return NO_LEAK
    second, _, _ = slope_band(values[len(values) // 2 :])
    if second * calls >= limit / 2:
        return LEAK
    return PLATEAU


# --------------------------------------------------------------------- runs


ProgressFn = Callable[[Sample, int, "tuple[Verdict, ...] | None"], None]
"""Called after each sample with (sample, total samples to come, the current verdicts)."""


def _versions() -> dict[str, str]:
    from importlib import metadata  # noqa: PLC0415

    out = {"python": platform.python_version()}
    for dist in ("nativeguard", "azure-cognitiveservices-speech"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    libc, version = platform.libc_ver()
    if libc:
        out[libc] = version
    return out


@dataclass
class _Progress:
    """Current verdicts, recomputed every ``every`` samples (the slopes are O(n²))."""

    callback: ProgressFn | None
    total: int
    limit: int
    every: int
    samples: list[Sample] = field(default_factory=list)
    verdicts: tuple[Verdict, ...] | None = None

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        if self.callback is None:
            return
        measured = sample.phase == "measured"
        last = len(self.samples) == self.total
        if measured and (sample.index % self.every == 0 or last):
            self.verdicts = judge_samples(self.samples, growth_limit_bytes=self.limit)
        self.callback(sample, self.total, self.verdicts)


_Outcome = tuple["dict[str, Any] | None", "str | None", "str | None"]
"""(the last call's report as data, as text, what the setup's teardown raised)."""


@dataclass(frozen=True)
class _Settings:
    """What to soak and how; plain data, so it crosses to an isolated worker as is."""

    target: str
    setup: str | None
    warmup: int
    iterations: int
    settle_s: float
    trim_heap: bool
    isolated: bool
    limit: int
    label: str
    task_timeout_s: float | None


def run_soak(
    target: str,
    *,
    setup: str | None = None,
    warmup: int = DEFAULT_WARMUP,
    iterations: int = DEFAULT_ITERATIONS,
    settle_s: float = DEFAULT_SETTLE_S,
    trim_heap: bool = True,
    growth_limit_mb: float = DEFAULT_RSS_GROWTH_MB,
    isolated: bool = False,
    progress: ProgressFn | None = None,
    label: str = "",
    task_timeout_s: float | None = None,
) -> SoakRun:
    """Soak ``target`` (``"module:function"``): a baseline, ``warmup`` calls, ``iterations`` calls.

    Raises :class:`SoakUsageError` for bad arguments or a target that does not
    resolve, :class:`SoakError` when the setup or a call raises (the
    original exception chained, and the samples so far in ``.partial``).
    ``KeyboardInterrupt`` returns the calls made so far, ``completed=False``.
    ``task_timeout_s`` (isolated only) kills a call that hangs.
    """
    _check_counts(warmup, iterations, settle_s, growth_limit_mb)
    if setup is not None and not isinstance(setup, str):
        raise SoakUsageError(f"setup must be a module:function string, got {setup!r}")
    if task_timeout_s is not None and (
        not isinstance(task_timeout_s, (int, float)) or not task_timeout_s > 0
    ):
        raise SoakUsageError(f"task_timeout_s must be > 0 or None, got {task_timeout_s!r}")
    settings = _Settings(
        target=target,
        setup=setup,
        warmup=warmup,
        iterations=iterations,
        settle_s=float(settle_s),
        trim_heap=bool(trim_heap),
        isolated=bool(isolated),
        limit=int(growth_limit_mb * _MB),
        label=str(label),
        task_timeout_s=task_timeout_s,
    )
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    total = 1 + warmup + iterations
    tracker = _Progress(progress, total, settings.limit, every=max(1, iterations // 20))
    completed = True
    report: _Outcome = (None, None, None)
    runner = _isolated_runner if isolated else _local_runner
    try:
        report = runner(settings, tracker.add)
    except KeyboardInterrupt:
        completed = False
    except SoakError as error:
        error.partial = _build(  # type: ignore[attr-defined]
            settings, tracker.samples, (None, None, None), started_at, started, completed=False
        )
        raise
    return _build(settings, tracker.samples, report, started_at, started, completed=completed)


def _check_counts(warmup: int, iterations: int, settle_s: float, growth_limit_mb: float) -> None:
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise SoakUsageError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 3:
        raise SoakUsageError(
            f"iterations must be an int >= 3 (a slope needs three points), got {iterations!r}"
        )
    if not isinstance(settle_s, (int, float)) or not 0 <= settle_s <= 60:
        raise SoakUsageError(f"settle_s must be between 0 and 60 seconds, got {settle_s!r}")
    if not isinstance(growth_limit_mb, (int, float)) or not growth_limit_mb > 0:
        raise SoakUsageError(f"growth_limit_mb must be > 0, got {growth_limit_mb!r}")


def _build(
    settings: _Settings,
    samples: Sequence[Sample],
    report: _Outcome,
    started_at: str,
    started: float,
    *,
    completed: bool,
) -> SoakRun:
    return SoakRun(
        target=settings.target,
        setup=settings.setup,
        label=settings.label,
        isolated=settings.isolated,
        warmup=settings.warmup,
        iterations=settings.iterations,
        settle_s=settings.settle_s,
        trim=settings.trim_heap,
        growth_limit_bytes=settings.limit,
        samples=tuple(samples),
        verdicts=judge_samples(samples, growth_limit_bytes=settings.limit),
        report=report[0],
        report_text=report[1],
        teardown_error=report[2],
        versions=_versions(),
        started_at=started_at,
        elapsed_s=time.monotonic() - started,
        completed=completed,
    )


def _phase(index: int, warmup: int) -> str:
    return "baseline" if index == 0 else ("warmup" if index <= warmup else "measured")


def _local_runner(settings: _Settings, add: Callable[[Sample], None]) -> _Outcome:
    _cwd_importable()
    call = _Call(settings.target, settings.setup)
    teardown: str | None = None
    try:
        sampler = _Sampler(settle_s=settings.settle_s, trim_heap=settings.trim_heap)
        add(sampler.take(0, "baseline", None))
        for index in range(1, 1 + settings.warmup + settings.iterations):
            try:
                seconds = call()
            except Exception as error:
                raise SoakError(
                    f"TARGET {settings.target!r} raised {error!r} in call {index}"
                ) from error
            add(sampler.take(index, _phase(index, settings.warmup), seconds))
        report = sampler.last_report()
    finally:
        teardown = call.close()
    return (*report, teardown)


def _cwd_importable() -> None:
    """Targets are named relative to the current directory, as ``python -m`` finds them."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


# ------------------------------------------------------------- isolated runs

_worker_state: dict[str, Any] = {}
"""In a worker: the bound call and the sampler, kept between the soak's tasks."""


def _worker_step(
    settings: _Settings, index: int, path: list[str], want_report: bool
) -> dict[str, Any]:
    """One task in the worker: (on the first) bind the target; call it; return the sample."""
    for entry in reversed(path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    phase = _phase(index, settings.warmup)
    if index == 0:
        _worker_close()
        _worker_state["call"] = _Call(settings.target, settings.setup)
        sampler = _Sampler(settle_s=settings.settle_s, trim_heap=settings.trim_heap)
        _worker_state["sampler"] = sampler
        return {"sample": sampler.take(0, phase, None).to_dict()}
    call: _Call = _worker_state["call"]
    sampler = _worker_state["sampler"]
    try:
        seconds = call()
    except Exception as error:
        # Text only: the exception may hold frames reaching SDK objects.
        return {"error": f"{error!r}", "traceback": traceback.format_exc()}
    out: dict[str, Any] = {"sample": sampler.take(index, phase, seconds).to_dict()}
    if want_report:
        out["report"], out["report_text"] = sampler.last_report()
    return out


def _worker_close() -> str | None:
    call = _worker_state.pop("call", None)
    _worker_state.clear()
    return None if call is None else call.close()


def _isolated_runner(settings: _Settings, add: Callable[[Sample], None]) -> _Outcome:
    from .. import isolate  # noqa: PLC0415 - the pool's machinery only when asked for

    _cwd_importable()
    # Resolve here too: a usage error before any process starts, named the same way.
    resolve(settings.target, "TARGET")
    if settings.setup is not None:
        resolve(settings.setup, "--setup")
    path = [entry for entry in sys.path if entry]
    total = settings.warmup + settings.iterations
    report: tuple[dict[str, Any] | None, str | None] = (None, None)
    teardown: str | None = None
    with isolate.WorkerPool(
        1,
        max_tasks=None,
        warm_spare=False,
        task_timeout_s=settings.task_timeout_s,
        plain_types=(_Settings,),
    ) as pool:
        for index in range(total + 1):
            last = index == total
            future = pool.submit(_worker_step, settings, index, path, last)
            try:
                out = future.result()
            except isolate.RemoteTaskError as error:
                raise SoakError(f"in the worker: {error}") from error
            except (isolate.WorkerCrashed, isolate.TaskTimeout) as error:
                raise SoakError(f"call {index} in the worker: {error}") from error
            if "error" in out:
                raise SoakError(
                    f"TARGET {settings.target!r} raised {out['error']} in call {index} "
                    f"(in the worker)\n{out['traceback']}"
                )
            add(Sample.from_dict(out["sample"]))
            if last:
                report = (out.get("report"), out.get("report_text"))
        teardown = pool.submit(_worker_close).result()
    return (*report, teardown)
