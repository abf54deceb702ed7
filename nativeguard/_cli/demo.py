"""``nativeguard demo``: the field write-ups' service, naive and guarded, measured side by side.

The real Speech SDK talks to the bundled :class:`~nativeguard.testing.SpeechService`
(in a child process, as a remote service would be). The same transcription
service code runs N times as written in the field (naive), then N times inside
``managed_transcriber`` (guarded), in this one process, then N times as
written but in a recycled worker process (isolated: the answer for code one
cannot fix). After each phase the demo reads what it left behind in this
process: the SDK core's native handle table, live SDK wrapper objects, RSS,
glibc's in-use heap, and the time per request. The naive phase never calls
``gc.collect()``; one call after it shows what a collection recovers, and what
it cannot.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TextIO

import azure.cognitiveservices.speech as speechsdk
import psutil

from .._core._errors import NativeGuardError
from .._core._malloc import heap_stats
from .._core._reaper import get_reaper
from ..integrations.azure_speech._calls import _pcm_wav
from ..integrations.azure_speech._handles import native_handles
from ..integrations.azure_speech._managed import managed_transcriber
from ..isolate._pool import PoolStatistics, WorkerPool
from ..testing import DEFAULT_KEY, Phrase, SpeechService, write_wav

__all__ = [
    "CollectReport",
    "DemoError",
    "DemoReport",
    "GcMode",
    "IsolationReport",
    "PhaseReport",
    "live_sdk_instances",
    "measure",
    "render",
    "run_demo",
]

GcMode = Literal["auto", "off"]
"""``auto``: Python's collector runs as in production; ``off``: ``gc.disable()`` in both phases."""

_SCRIPT = (
    Phrase("Thanks for calling, how can I help?", speaker="Guest-1", offset_s=0.1, duration_s=0.5),
    Phrase("I would like to check my order.", speaker="Guest-2", offset_s=0.7, duration_s=0.5),
)
_WAV_SECONDS = 1.5
_SESSION_TIMEOUT_S = 15.0
_SETTLE_S = 2.0
_SERVICE_START_TIMEOUT_S = 30.0
_SERVICE_STOP_TIMEOUT_S = 10.0
_SDK_MODULE = "azure.cognitiveservices.speech"
_MB = 1_000_000
_RECYCLES = 3
"""Worker recycles the isolated phase aims for (max_tasks follows from the request count)."""


class DemoError(NativeGuardError, RuntimeError):
    """The demo could not run (as opposed to: it ran and showed something unexpected)."""


# -- the service under test -----------------------------------------------------


def _transcribe(transcriber: Any, feed: Callable[[], None] = lambda: None) -> list[Any]:
    """The write-ups' callbacks as written: results kept, transcriber captured, no disconnect.

    ``feed`` writes the audio once the session has started (see ``_Audio``).
    """
    results: list[Any] = []
    done = threading.Event()

    def on_transcribed(evt: Any) -> None:
        results.append(evt.result)  # the SDK result itself, kept past the callback

    def on_canceled(evt: Any) -> None:
        if evt.cancellation_details.reason == speechsdk.CancellationReason.Error:
            transcriber.stop_transcribing_async()  # this closure now holds the transcriber
        done.set()

    transcriber.transcribed.connect(on_transcribed)
    transcriber.canceled.connect(on_canceled)
    transcriber.session_stopped.connect(lambda evt: done.set())
    transcriber.start_transcribing_async().get()
    feed()
    if not done.wait(_SESSION_TIMEOUT_S):
        raise DemoError(f"a transcription session did not end within {_SESSION_TIMEOUT_S:g} s")
    transcriber.stop_transcribing_async().get()
    return results


class _TranscriptionService:
    """A service as the field write-ups have it: a transcriber per request, a results log."""

    def __init__(self, speech_config: Callable[[], Any], *, guarded: bool) -> None:
        self.history: list[Any] = []  # every result, kept across requests
        self._speech_config = speech_config
        self._guarded = guarded

    def handle(self, wav: str) -> list[Any]:
        audio = _Audio.of(wav)
        stream = audio.stream()
        audio_config = speechsdk.audio.AudioConfig(stream=stream)

        def feed() -> None:
            stream.write(audio.pcm)
            stream.close()

        if self._guarded:
            with managed_transcriber(self._speech_config(), audio_config) as transcriber:
                results = _transcribe(transcriber, feed)
        else:
            transcriber = speechsdk.transcription.ConversationTranscriber(
                self._speech_config(), audio_config
            )
            results = _transcribe(transcriber, feed)
        self.history.extend(results)
        return results


@dataclass(frozen=True)
class _Audio:
    """The request's audio, written into a push stream after the session started.

    Every phase gets its audio this way. Given ``AudioConfig(filename=...)``
    for a short file, the SDK's audio pump can finish before the start checks
    it runs, and one request in two to three then waits 500 ms (SDK 1.53,
    docs/core.md "The 0.5 s start stall"). That would land on any phase at
    random and hide what the release costs.
    """

    rate: int
    bits: int
    channels: int
    pcm: bytes

    @classmethod
    def of(cls, path: str) -> _Audio:
        found = _AUDIO.get(path)
        if found is None:
            pcm_wav = _pcm_wav(path)  # the helpers' reader: the demo writes such a file
            if pcm_wav is None:
                raise DemoError(f"{path} is not an uncompressed 8/16-bit WAV file")
            (rate, bits, channels), pcm = pcm_wav
            found = _AUDIO[path] = cls(rate, bits, channels, pcm)
        return found

    def stream(self) -> Any:
        return speechsdk.audio.PushAudioInputStream(
            stream_format=speechsdk.audio.AudioStreamFormat(
                samples_per_second=self.rate, bits_per_sample=self.bits, channels=self.channels
            )
        )


_AUDIO: dict[str, _Audio] = {}


# -- the same service, isolated ----------------------------------------------------

_worker_services: dict[str, _TranscriptionService] = {}
"""The naive service of this worker process, by service URL (one per worker, as a real one)."""


def _isolated_request(url: str, wav: str) -> tuple[list[str], dict[str, int]]:
    """Worker entry: one naive request, unchanged; returns its texts and the worker's handles.

    Only plain data crosses the process boundary (the pool refuses SDK
    objects), so the texts go back and the SDK results stay in the worker's
    log, leaking there until the worker retires.
    """
    service = _worker_services.get(url)
    if service is None:
        service = _worker_services[url] = _TranscriptionService(
            _speech_config_factory(url), guarded=False
        )
    results = service.handle(wav)
    return [str(result.text) for result in results], native_handles()


class _IsolatedService:
    """The naive service behind a recycled worker pool; keeps the texts it got back."""

    def __init__(self, pool: WorkerPool, url: str) -> None:
        self.history: list[str] = []
        self.worker_peak_handles: dict[str, int] = {}
        self._pool = pool
        self._url = url

    def handle(self, wav: str) -> list[str]:
        texts, handles = self._pool.submit(_isolated_request, self._url, wav).result()
        if sum(handles.values()) > sum(self.worker_peak_handles.values()):
            self.worker_peak_handles = handles
        self.history.extend(texts)
        return texts


# -- the SpeechService, out of process -------------------------------------------


def _serve() -> None:
    """Child process entry: serve until the parent writes a line or goes away."""
    with SpeechService(script=_SCRIPT, max_connections=int(sys.argv[1])) as service:
        print(service.url, flush=True)
        sys.stdin.readline()


class _ServiceProcess:
    """The bundled SpeechService in a child process, as a remote service would be.

    In-process, a collection that happens to run on the service's own thread
    finalizes leaked recognizers there, and each release waits for a websocket
    close the blocked event loop cannot answer (measured: a naive request
    stalled 10 s). A child process also keeps the service's memory out of ours.
    """

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None

    def __enter__(self) -> str:
        self._stderr = tempfile.TemporaryFile()
        code = "from nativeguard._cli.demo import _serve; _serve()"
        # The child imports this very nativeguard, wherever sys.path found it.
        package_root = str(Path(__file__).resolve().parents[2])  # holds nativeguard/
        inherited = os.environ.get("PYTHONPATH")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [package_root, inherited] if inherited else [package_root]
            ),
        }
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", code, str(self._max_connections)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                env=env,
            )
        except OSError as error:
            raise DemoError(f"could not start the SpeechService child process: {error}") from error
        line = _readline(self._process, _SERVICE_START_TIMEOUT_S)
        if not line.startswith("ws://"):
            self._kill()
            raise DemoError(f"the SpeechService child process did not start{self._stderr_tail()}")
        return line.strip()

    def stop(self) -> str | None:
        """Stop the service; returns what went wrong with it, if anything."""
        process = self._process
        if process is None:
            return "the SpeechService child process never started"
        if process.poll() is not None:
            return f"the SpeechService child process exited early{self._stderr_tail()}"
        try:
            process.communicate("stop\n", timeout=_SERVICE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._kill()
            return f"the SpeechService did not stop within {_SERVICE_STOP_TIMEOUT_S:g} s"
        if process.returncode != 0:
            return f"the SpeechService failed while serving{self._stderr_tail()}"
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._kill()
        if self._stderr is not None:
            self._stderr.close()

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return f":\n{text[-2000:]}" if text else ""


def _readline(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The child's first stdout line, or "" if it exits or stays silent for ``timeout_s``."""
    stdout = process.stdout
    if stdout is None:  # pragma: no cover - always a pipe here
        return ""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return lines[0] if lines else ""


def _speech_config_factory(url: str) -> Callable[[], Any]:
    timeouts = SpeechService()  # never started: applies its client-side SDK timeouts

    def make() -> Any:
        config = speechsdk.SpeechConfig(host=url, subscription=DEFAULT_KEY)
        timeouts.apply_timeouts(config)
        return config

    return make


# -- measuring -------------------------------------------------------------------


def live_sdk_instances() -> Counter[str]:
    """Live instances of Speech SDK classes, by class name (a full heap scan)."""
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        # type.__dict__'s descriptor, not type(obj).__module__: a wrapt proxy's
        # class answers __module__ with a property.
        module = type.__dict__["__module__"].__get__(type(obj))
        if isinstance(module, str) and (
            module == _SDK_MODULE or module.startswith(_SDK_MODULE + ".")
        ):
            counts[type(obj).__qualname__] += 1
    return counts


@dataclass(frozen=True)
class _Reading:
    handles: dict[str, int]
    instances: Counter[str]
    rss: int
    heap_in_use: int | None
    heap_free: int | None


def _read() -> _Reading:
    heap = heap_stats()
    return _Reading(
        handles=native_handles(),
        instances=live_sdk_instances(),
        rss=int(psutil.Process().memory_info().rss),
        heap_in_use=heap.in_use_bytes,
        heap_free=heap.free_bytes,
    )


def _settled_read(baseline: Mapping[str, int]) -> _Reading:
    """A reading once the handle table is back at ``baseline`` or has stopped changing.

    Session-end events reach SDK threads after the calls return, so a release
    may land a moment after the last request.
    """
    deadline = time.monotonic() + _SETTLE_S
    # Releases still running on the reaper (background mode, the default) first.
    get_reaper().wait_idle(_SETTLE_S)
    previous: dict[str, int] | None = None
    unchanged = 0
    while time.monotonic() < deadline:
        handles = native_handles()
        if handles == baseline:
            break
        unchanged = unchanged + 1 if handles == previous else 0
        if unchanged >= 3:
            break
        previous = handles
        time.sleep(0.05)
    return _read()


def _change(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    names = sorted(before.keys() | after.keys())
    changes = {name: after.get(name, 0) - before.get(name, 0) for name in names}
    return {name: change for name, change in changes.items() if change}


def _difference(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


class _GcMonitor:
    """Counts and times the collections that run, on any thread, while installed."""

    def __init__(self) -> None:
        self.passes: Counter[int] = Counter()
        self.seconds = 0.0
        self.off_main_thread = 0
        self._started = 0.0
        self._main = threading.main_thread().ident

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        # Collections never overlap (the collector holds the GIL throughout).
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._started
        self.passes[info["generation"]] += 1
        if threading.get_ident() != self._main:  # get_ident: no _DummyThread objects
            self.off_main_thread += 1

    def __enter__(self) -> _GcMonitor:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


@dataclass(frozen=True)
class PhaseReport:
    """What N requests of one pattern left behind, each figure a change over the phase."""

    name: str
    requests: int
    handles: dict[str, int]
    """Native handles by interface type, non-zero changes only."""
    instances: dict[str, int]
    """Live SDK objects by class, non-zero changes only."""
    rss_growth: int
    heap_growth: int | None
    """glibc's in-use heap; None where mallinfo2 is unavailable."""
    heap_free_growth: int | None
    """Freed heap glibc keeps for reuse (resident or not); None where unavailable."""
    request_seconds: tuple[float, ...]
    gc_passes: dict[int, int]
    """Collections that ran during the phase, by generation (automatic and explicit)."""
    gc_seconds: float
    gc_off_main_thread: int
    results_kept: int

    @property
    def live_instances(self) -> int:
        return sum(self.instances.values())

    @property
    def median_s(self) -> float:
        return statistics.median(self.request_seconds)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.request_seconds)

    @property
    def p95_s(self) -> float:
        ordered = sorted(self.request_seconds)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    @property
    def flat(self) -> bool:
        return not self.handles and not self.instances

    @property
    def leaking(self) -> bool:
        return any(n > 0 for n in self.handles.values()) or self.live_instances > 0

    def to_json(self) -> dict[str, Any]:
        ordered = sorted(self.request_seconds)
        return {
            "requests": self.requests,
            "native_handles": self.handles,
            "live_sdk_instances": self.live_instances,
            "live_sdk_instances_by_type": self.instances,
            "rss_growth_bytes": self.rss_growth,
            "heap_in_use_growth_bytes": self.heap_growth,
            "heap_free_growth_bytes": self.heap_free_growth,
            "request_seconds": {
                "median": self.median_s,
                "mean": self.mean_s,
                "p90": ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)],
                "p95": self.p95_s,
                "max": ordered[-1],
                "total": math.fsum(ordered),
            },
            "gc": {
                "passes_by_generation": {str(g): n for g, n in sorted(self.gc_passes.items())},
                "seconds": self.gc_seconds,
                "passes_off_main_thread": self.gc_off_main_thread,
            },
            "results_kept": self.results_kept,
        }


@dataclass(frozen=True)
class CollectReport:
    """What one ``gc.collect()`` after the naive phase freed (changes are negative)."""

    collected: int
    seconds: float
    handles: dict[str, int]
    instances: dict[str, int]
    rss_change: int
    heap_change: int | None
    heap_free_change: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "objects_collected": self.collected,
            "seconds": self.seconds,
            "native_handles": self.handles,
            "live_sdk_instances": sum(self.instances.values()),
            "live_sdk_instances_by_type": self.instances,
            "rss_change_bytes": self.rss_change,
            "heap_in_use_change_bytes": self.heap_change,
            "heap_free_change_bytes": self.heap_free_change,
        }


@dataclass(frozen=True)
class IsolationReport:
    """The isolated phase's worker pool: what a worker held, and how often one was replaced."""

    workers: int
    max_tasks: int
    tasks: int
    """Tasks the pool ran, the warm-up request included."""
    recycles: int
    """Graceful retirements (all by ``max_tasks`` here)."""
    workers_started: int
    crashes: int
    worker_peak_handles: dict[str, int]
    """Native handles in the worker that held the most, after one of its requests."""
    worker_peak_rss_mb: float | None

    @property
    def expected_recycles(self) -> int:
        # No jitter: every worker retires right after its max_tasks-th task.
        return self.tasks // self.max_tasks

    @classmethod
    def from_pool(
        cls, statistics: PoolStatistics, max_tasks: int, worker_peak_handles: dict[str, int]
    ) -> IsolationReport:
        peaks = [r.peak_rss_mb for r in statistics.retirements if r.peak_rss_mb is not None]
        peaks += [w.peak_rss_mb for w in statistics.workers if w.peak_rss_mb is not None]
        return cls(
            workers=1,
            max_tasks=max_tasks,
            tasks=statistics.tasks_completed + statistics.tasks_failed,
            recycles=sum(statistics.recycles.values()),
            workers_started=statistics.workers_started,
            crashes=statistics.crashes,
            worker_peak_handles=dict(worker_peak_handles),
            worker_peak_rss_mb=max(peaks, default=None),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "max_tasks": self.max_tasks,
            "tasks": self.tasks,
            "recycles": self.recycles,
            "workers_started": self.workers_started,
            "crashes": self.crashes,
            "worker_peak_native_handles": self.worker_peak_handles,
            "worker_peak_rss_mb": self.worker_peak_rss_mb,
        }


@dataclass(frozen=True)
class DemoReport:
    """The three phases, the collection after the naive one, and whether all went as expected."""

    requests: int
    gc_mode: GcMode
    sdk_version: str
    service_url: str
    naive: PhaseReport
    collect: CollectReport
    guarded: PhaseReport
    isolated: PhaseReport
    """Figures of this process; the workers' are in ``isolation``."""
    isolation: IsolationReport
    seconds: float
    service_problem: str | None = None

    @property
    def problems(self) -> list[str]:
        found: list[str] = [] if self.service_problem is None else [self.service_problem]
        if not self.naive.leaking:
            found.append("the naive pattern left nothing behind; it was expected to leak")
        if not self.guarded.flat:
            found.append(f"the guarded pattern left {_left_behind(self.guarded)} behind")
        if not self.isolated.flat:
            found.append(
                f"the isolated pattern left {_left_behind(self.isolated)} behind in this process"
            )
        pool = self.isolation
        if pool.crashes:
            found.append(f"the isolated pattern's worker crashed {pool.crashes} time(s)")
        if pool.recycles != pool.expected_recycles:
            found.append(
                f"the isolated pattern's worker was recycled {pool.recycles} time(s), expected "
                f"{pool.expected_recycles} ({pool.tasks} tasks, max_tasks={pool.max_tasks})"
            )
        expected = self.requests * len(_SCRIPT)
        for phase in (self.naive, self.guarded, self.isolated):
            if phase.results_kept != expected:
                found.append(
                    f"the {phase.name} service kept {phase.results_kept} results, "
                    f"expected {expected} ({len(_SCRIPT)} per request)"
                )
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "gc": self.gc_mode,
            "sdk_version": self.sdk_version,
            "service_url": self.service_url,
            "naive": self.naive.to_json(),
            "gc_collect_after_naive": self.collect.to_json(),
            "guarded": self.guarded.to_json(),
            "isolated": self.isolated.to_json(),
            "isolation": self.isolation.to_json(),
            "verdict": {
                "naive": _naive_word(self.naive),
                "guarded": _guarded_word(self.guarded),
                "isolated": _guarded_word(self.isolated),
            },
            "problems": self.problems,
            "seconds": self.seconds,
        }


def _run_phase(
    service: _TranscriptionService | _IsolatedService, name: str, wav: str, requests: int
) -> PhaseReport:
    before = _read()
    seconds: list[float] = []
    with _GcMonitor() as monitor:
        for _ in range(requests):
            start = time.perf_counter()
            service.handle(wav)
            seconds.append(time.perf_counter() - start)
        after = _settled_read(before.handles)
    return PhaseReport(
        name=name,
        requests=requests,
        handles=_change(before.handles, after.handles),
        instances=_change(before.instances, after.instances),
        rss_growth=after.rss - before.rss,
        heap_growth=_difference(before.heap_in_use, after.heap_in_use),
        heap_free_growth=_difference(before.heap_free, after.heap_free),
        request_seconds=tuple(seconds),
        gc_passes=dict(monitor.passes),
        gc_seconds=monitor.seconds,
        gc_off_main_thread=monitor.off_main_thread,
        results_kept=len(service.history),
    )


def _full_collect(timeout_s: float = _SETTLE_S) -> int | None:
    """``gc.collect()`` that really collects; None if it could not within ``timeout_s``.

    While another thread's collection runs (here: automatic ones on SDK callback
    threads, whose finalizers release the GIL in native calls), ``gc.collect()``
    returns 0 at once without collecting anything.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        full_collections = gc.get_stats()[2]["collections"]
        collected = gc.collect()
        if gc.get_stats()[2]["collections"] > full_collections:
            return collected
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def _measure_collect() -> CollectReport:
    before = _read()
    start = time.perf_counter()
    collected = _full_collect()
    seconds = time.perf_counter() - start
    if collected is None:
        raise DemoError(
            "gc.collect() could not run: another thread's collection did not end "
            f"within {_SETTLE_S:g} s"
        )
    after = _read()
    return CollectReport(
        collected=collected,
        seconds=seconds,
        handles=_change(before.handles, after.handles),
        instances=_change(before.instances, after.instances),
        rss_change=after.rss - before.rss,
        heap_change=_difference(before.heap_in_use, after.heap_in_use),
        heap_free_change=_difference(before.heap_free, after.heap_free),
    )


def _total(phase: PhaseReport) -> str:
    return f"{math.fsum(phase.request_seconds):.1f} s"


@dataclass(frozen=True)
class _Phases:
    naive: PhaseReport
    collect: CollectReport
    guarded: PhaseReport
    isolated: PhaseReport
    isolation: IsolationReport


def _run_isolated(url: str, wav: str, requests: int) -> tuple[PhaseReport, IsolationReport]:
    # About _RECYCLES recycles whatever the request count, so the demo shows some.
    max_tasks = max(1, (requests + 1) // _RECYCLES)
    # jitter=0: the recycle count is then exact, and checked.
    with WorkerPool(1, max_tasks=max_tasks, jitter=0) as pool:
        service = _IsolatedService(pool, url)
        # The worker's (and the fork server's) start belongs to no phase.
        service.handle(wav)
        service.history.clear()
        phase = _run_phase(service, "isolated", wav, requests)
    # After the block: the last retirement is counted once the pool has shut down.
    isolation = IsolationReport.from_pool(pool.statistics(), max_tasks, service.worker_peak_handles)
    return phase, isolation


def _run_all(
    url: str,
    wav: str,
    requests: int,
    gc_mode: GcMode,
    progress: Callable[[str], None],
) -> _Phases:
    config = _speech_config_factory(url)
    # One request of each kind first: one-time SDK setup belongs to neither phase.
    for warm_up_guarded in (False, True):
        _TranscriptionService(config, guarded=warm_up_guarded).handle(wav)
    _full_collect()
    was_enabled = gc.isenabled()
    if gc_mode == "off":
        gc.disable()
    try:
        naive_service = _TranscriptionService(config, guarded=False)
        naive = _run_phase(naive_service, "naive", wav, requests)
        progress(f"naive pattern:    {requests} requests in {_total(naive)}")
        collect = _measure_collect()
        guarded_service = _TranscriptionService(config, guarded=True)
        guarded = _run_phase(guarded_service, "guarded", wav, requests)
        progress(f"guarded pattern:  {requests} requests in {_total(guarded)}")
        isolated, isolation = _run_isolated(url, wav, requests)
        progress(
            f"isolated pattern: {requests} requests in {_total(isolated)}, "
            f"worker recycled {isolation.recycles} times"
        )
    finally:
        if was_enabled:
            gc.enable()
    return _Phases(naive, collect, guarded, isolated, isolation)


def measure(
    requests: int, *, gc_mode: GcMode = "auto", progress: Callable[[str], None] = print
) -> DemoReport:
    """Run the three patterns ``requests`` times each and measure them.

    Raises DemoError (or the SDK's own error) when the demo cannot run at all.
    """
    if requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests}")
    if gc_mode not in ("auto", "off"):
        raise ValueError(f"gc_mode must be 'auto' or 'off', got {gc_mode!r}")
    started = time.perf_counter()
    # Leaked naive recognizers may each keep a connection open (in a worker:
    # until it retires).
    service_process = _ServiceProcess(max_connections=3 * requests + 16)
    with tempfile.TemporaryDirectory(prefix="nativeguard-demo-") as tmp, service_process as url:
        progress(f"SpeechService (bundled, offline) on {url}, in a child process")
        wav = write_wav(Path(tmp) / "call.wav", _WAV_SECONDS)
        try:
            phases = _run_all(url, wav, requests, gc_mode, progress)
        except BaseException as error:
            # The failed request's frames still hold its transcriber: drop their
            # locals (the traceback keeps file and line) so the collect below
            # frees it too.
            traceback.clear_frames(error.__traceback__)
            raise
        finally:
            # Release what the naive service pinned while the service still
            # answers. SDK objects left for interpreter exit get callbacks as
            # their connections drop, and the native core aborts the process.
            _full_collect()
        service_problem = service_process.stop()
    return DemoReport(
        requests=requests,
        gc_mode=gc_mode,
        sdk_version=str(getattr(speechsdk, "__version__", "unknown")),
        service_url=url,
        naive=phases.naive,
        collect=phases.collect,
        guarded=phases.guarded,
        isolated=phases.isolated,
        isolation=phases.isolation,
        seconds=time.perf_counter() - started,
        service_problem=service_problem,
    )


# -- output ----------------------------------------------------------------------


def _signed(n: int) -> str:
    return f"+{n}" if n > 0 else str(n)


def _mb(n: int | None, *, signed: bool = True) -> str:
    if n is None:
        return "n/a"
    value = n / _MB
    if not signed:
        return f"{abs(value):.1f} MB"
    return f"{value:+.1f} MB" if round(value, 1) else "0.0 MB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _counts(counts: Mapping[str, int], *, signed: bool = True) -> str:
    """``+3 ISpxRecognizer, +1 ISpxRecognitionResult``: largest first."""
    ordered = sorted(counts.items(), key=lambda item: (-abs(item[1]), item[0]))
    return ", ".join(f"{_signed(n) if signed else abs(n)} {name}" for name, n in ordered)


def _left_behind(phase: PhaseReport) -> str:
    parts = []
    if phase.handles:
        parts.append(f"{_counts(phase.handles)} handles")
    if phase.instances:
        parts.append(f"{_signed(phase.live_instances)} live SDK objects")
    return ", ".join(parts) or "nothing"


def _naive_word(phase: PhaseReport) -> str:
    return "leaking" if phase.leaking else "not leaking"


def _guarded_word(phase: PhaseReport) -> str:
    return "flat" if phase.flat else "not flat"


def _ordered_union(*counts: Mapping[str, int]) -> list[str]:
    names: set[str] = set().union(*counts)
    return sorted(names, key=lambda n: (*(-abs(c.get(n, 0)) for c in counts), n))


def _table(report: DemoReport) -> list[str]:
    phases = (report.naive, report.guarded, report.isolated)
    rows: list[tuple[str, ...]] = [("", *(phase.name for phase in phases))]
    rows.append(("native handles, change by type", "", "", ""))
    for name in _ordered_union(*(phase.handles for phase in phases)) or ["(none)"]:
        rows.append((f"  {name}", *(_signed(phase.handles.get(name, 0)) for phase in phases)))
    rows.append(("live SDK objects, change", *(_signed(phase.live_instances) for phase in phases)))
    for name in _ordered_union(*(phase.instances for phase in phases)):
        rows.append((f"  {name}", *(_signed(phase.instances.get(name, 0)) for phase in phases)))
    rows += [
        ("RSS growth", *(_mb(phase.rss_growth) for phase in phases)),
        ("glibc heap in use, growth", *(_mb(phase.heap_growth) for phase in phases)),
        ("glibc heap freed but kept, growth", *(_mb(phase.heap_free_growth) for phase in phases)),
        ("time per request, median", *(_ms(phase.median_s) for phase in phases)),
        ("time per request, p95", *(_ms(phase.p95_s) for phase in phases)),
        ("time in gc", *(f"{phase.gc_seconds:.2f} s" for phase in phases)),
    ]
    width = max(len(row[0]) for row in rows) + 2
    return [
        (f"{row[0]:<{width}}" + "".join(f"{cell:>12}" for cell in row[1:])).rstrip() for row in rows
    ]


def _notes(report: DemoReport) -> list[str]:
    naive, collect = report.naive, report.collect
    notes: list[str] = []
    if report.gc_mode == "off":
        notes.append("Automatic garbage collection was off in both phases (--gc off).")
    else:
        alive = naive.instances.get("ConversationTranscriber", 0)
        older = sum(n for generation, n in naive.gc_passes.items() if generation > 0)
        waiting = f"; the other {alive} wait for a full collection" if alive else ""
        notes.append(
            f"Automatic gc in the naive phase: {sum(naive.gc_passes.values())} collections "
            f"({older} of generations 1-2, {naive.gc_off_main_thread} on SDK callback threads) "
            f"freed {naive.requests - alive} of the {naive.requests} transcribers' reference "
            f"cycles and ran their native release there, {naive.gc_seconds:.2f} s in all"
            f"{waiting}."
        )
    freed = {name: n for name, n in collect.handles.items() if n < 0}
    what = f"{_counts(freed, signed=False)} handles" if freed else "no native handles"
    heap = ""
    if collect.heap_change is not None:
        heap = f" and {_mb(-collect.heap_change, signed=False)} of glibc heap in use"
    rss = (
        f"RSS went down by only {_mb(-collect.rss_change, signed=False)}"
        if collect.rss_change < 0
        else f"RSS did not go down ({_mb(collect.rss_change)})"
    )
    notes.append(
        f"One gc.collect() after the naive phase ({collect.seconds:.2f} s) freed {what}, "
        f"{-sum(collect.instances.values())} SDK objects{heap}; {rss}: "
        "glibc keeps freed memory for reuse."
    )
    kept = naive.handles.get("ISpxRecognitionResult", 0) + collect.handles.get(
        "ISpxRecognitionResult", 0
    )
    if kept:
        notes.append(
            f"The {kept} ISpxRecognitionResult handles in the naive service's results log "
            "stay: no collection frees what is still referenced. The guarded log holds "
            "the same results as plain data."
        )
    pool = report.isolation
    held = (
        f"up to {_counts(pool.worker_peak_handles, signed=False)} native handles"
        if pool.worker_peak_handles
        else "no native handles"
    )
    rss = "" if pool.worker_peak_rss_mb is None else f", {pool.worker_peak_rss_mb:.0f} MB RSS"
    notes.append(
        "Isolated: the naive code, unchanged, ran in a worker process "
        f"(WorkerPool({pool.workers}, max_tasks={pool.max_tasks})) and returned its texts as "
        f"plain data. There it leaked as before, a worker holding {held}{rss}; "
        f"each of the {pool.recycles} recycles gave all of it back to the OS, and this "
        "process's columns stay flat."
    )
    notes.append(
        "Time: a guarded request (default release='background') returns as soon as the "
        "session is stopped; the native teardown (~30 ms) runs on nativeguard's reaper "
        "thread, and the columns above were read after it finished. Naive requests leave "
        "the release to the collector (time in gc), or to never. Any mode can wait ~0.5 s "
        "before its session starts: the SDK's audio pump start race on short files "
        "(docs/core.md). An isolated request adds a round trip to the worker."
    )
    return notes


def _wrap(text: str, width: int = 88) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def render(report: DemoReport) -> str:
    """The side-by-side table, what the collector did, and the verdicts, as plain text."""
    naive, guarded, isolated = report.naive, report.guarded, report.isolated
    lines = _table(report)
    for note in _notes(report):
        lines.append("")
        lines += _wrap(note)
    lines.append("")
    lines.append(
        f"naive: {_left_behind(naive)} after {naive.requests} requests — {_naive_word(naive)}"
    )
    if guarded.flat:
        lines.append(
            f"guarded: flat — 0 native handles, 0 live SDK objects after {guarded.requests} "
            "requests"
        )
    else:
        lines.append(
            f"guarded: {_left_behind(guarded)} after {guarded.requests} requests — not flat"
        )
    if isolated.flat:
        lines.append(
            f"isolated: flat — 0 native handles, 0 live SDK objects in this process after "
            f"{isolated.requests} requests; the worker was recycled "
            f"{report.isolation.recycles} times"
        )
    else:
        lines.append(
            f"isolated: {_left_behind(isolated)} in this process after {isolated.requests} "
            "requests — not flat"
        )
    return "\n".join(lines) + "\n"


def run_demo(
    out: TextIO,
    *,
    requests: int,
    as_json: bool = False,
    gc_mode: GcMode = "auto",
    err: TextIO | None = None,
) -> int:
    """Run the demo and print it; 0 when naive leaked and the other two stayed flat, else 1."""
    errors = sys.stderr if err is None else err

    def progress(line: str) -> None:
        if not as_json:
            out.write(line + "\n")
            out.flush()

    for line in _wrap(
        f"nativeguard demo: one transcription service, {requests} requests as written in the "
        "field (naive), then the same code inside managed_transcriber (guarded), then as "
        "written but in a recycled worker process (isolated)."
    ):
        progress(line)
    try:
        report = measure(requests, gc_mode=gc_mode, progress=progress)
    except DemoError as error:
        errors.write(f"nativeguard demo: {error}\n")
        return 1
    except (NativeGuardError, RuntimeError, OSError) as error:
        # The SDK reports failures as RuntimeError; nativeguard's own carry their context.
        errors.write(f"nativeguard demo failed: {type(error).__name__}: {error}\n")
        return 1
    if as_json:
        out.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        out.write("\n" + render(report))
        out.write(f"\n(real Speech SDK {report.sdk_version}; {report.seconds:.1f} s in all)\n")
    out.flush()
    problems = report.problems
    for problem in problems:
        errors.write(f"nativeguard demo: unexpected: {problem}\n")
    return 1 if problems else 0
