"""WorkerPool against the real Azure Speech SDK: the isolation issue's headline claims.

Every worker builds its own SpeechConfig from the service URL (SDK objects
are not plain data) and talks to a SpeechService in this process over loopback.
"""

from __future__ import annotations

import collections
import multiprocessing.forkserver
import os
import time
from collections.abc import Iterator

import azure.cognitiveservices.speech as speechsdk
import isolate_native_tasks as tasks
import psutil
import pytest

from nativeguard.integrations.azure_speech._extract import Segment
from nativeguard.isolate import DEFAULT_PRELOAD, NotPlainDataError, WorkerPool
from nativeguard.testing import Phrase, SpeechService

pytestmark = pytest.mark.usefixtures("fork_server")

PHRASE = "recycled workers hear this"
TASKS = 200
MAX_TASKS = 25


@pytest.fixture
def service() -> Iterator[SpeechService]:
    """One phrase for every connection; room for all of them (the default cap is 64)."""
    script = [Phrase(PHRASE, offset_s=0.1, duration_s=0.5, speaker="Guest-1")]
    with SpeechService(script=script, max_connections=1000) as svc:
        yield svc


@pytest.fixture
def wav(tmp_wav) -> str:
    return tmp_wav(1.0)


def _alive(pids: set[int]) -> set[int]:
    """The pids among ``pids`` that are still alive as processes (zombies count as gone)."""
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_200_real_transcriptions_with_recycling(service: SpeechService, wav: str) -> None:
    """200 SDK transcriptions (a ConversationTranscriber each) on 2 workers recycled every 25
    tasks: all correct, none lost or run twice, no worker process left after the pool.

    With jitter=0 every worker retires after exactly 25 tasks. A worker that
    has not retired ran at most 24, and at most 2 such (active) workers exist
    at the end, so 200 = 25 * recycles + rest with rest in [0, 48]: 7 or 8 recycles.
    """
    started = time.monotonic()
    with WorkerPool(2, max_tasks=MAX_TASKS, jitter=0) as pool:
        futures = [pool.submit(tasks.transcribe, service.url, wav, i) for i in range(TASKS)]
        results = [future.result(timeout=120) for future in futures]
    elapsed = time.monotonic() - started
    stats = pool.statistics()
    print(f"\n{TASKS} transcriptions through WorkerPool(2, max_tasks={MAX_TASKS}): {elapsed:.1f} s")
    print(stats)

    assert [r["index"] for r in results] == list(range(TASKS))
    assert [r["segments"] for r in results] == [[("Guest-1", PHRASE)]] * TASKS
    assert [r["canceled"] for r in results] == [False] * TASKS
    # Each task ran once: one connection per task, all transcriptions, none refused.
    connections = service.connections
    assert len(connections) == TASKS
    assert collections.Counter(c.kind for c in connections) == {"universal": TASKS}
    assert [c.refused for c in connections] == [None] * TASKS
    assert [c.turns for c in connections] == [1] * TASKS

    recycles = stats.recycles["max_tasks"]
    assert recycles in {7, 8}
    assert dict(stats.recycles) == {"max_tasks": recycles}
    assert (stats.tasks_submitted, stats.tasks_completed, stats.tasks_failed) == (TASKS, TASKS, 0)
    assert (stats.crashes, stats.timeouts, stats.retries, stats.tasks_cancelled) == (0, 0, 0, 0)

    per_pid = collections.Counter(r["pid"] for r in results)
    assert all(f.pid == r["pid"] for f, r in zip(futures, results, strict=True))
    retired_after = {f.pid: f.task.id for f in futures if f.worker_retired is not None}
    assert {f.worker_retired for f in futures} == {None, "max_tasks"}
    assert len(retired_after) == recycles
    # A recycled worker ran exactly 25 tasks and the one that retired it was its last.
    for pid, task_id in retired_after.items():
        assert per_pid[pid] == MAX_TASKS
        assert max(f.task.id for f in futures if f.pid == pid) == task_id
    kept = {pid: n for pid, n in per_pid.items() if pid not in retired_after}
    assert len(kept) <= 2
    assert all(n < MAX_TASKS for n in kept.values())
    assert sum(kept.values()) == TASKS - MAX_TASKS * recycles
    by_count = [r for r in stats.retirements if r.reason == "max_tasks"]
    assert {r.pid for r in by_count} == set(retired_after)
    assert {(r.tasks_run, r.detail) for r in by_count} == {
        (MAX_TASKS, f"ran {MAX_TASKS} tasks (its limit {MAX_TASKS})")
    }
    # The rest (active workers and the warm spare) were stopped at shutdown:
    # every process the pool started ended once, by one of the two reasons.
    stopped = {r.pid for r in stats.retirements if r.reason == "stopped"}
    assert len(stopped) == 3
    assert sorted(r.reason for r in stats.retirements) == ["max_tasks"] * recycles + ["stopped"] * 3
    assert len(stats.retirements) == stats.workers_started
    assert stats.workers == ()

    # No process outlived the pool: not the workers that ran tasks, not the spare.
    all_pids = set(per_pid) | {r.pid for r in stats.retirements if r.pid}
    assert len(all_pids) == stats.workers_started
    assert _alive(all_pids) == set()
    assert elapsed < 120  # did not hang; the measured time is printed above


def test_sdk_object_in_a_result_is_refused_with_its_path(service: SpeechService, wav: str) -> None:
    """A SpeechRecognitionResult two levels down a dataclass result fails the task with
    NotPlainDataError naming exactly where it is; the extract()ed twin crosses fine."""
    with WorkerPool(1) as pool:
        refused = pool.submit(tasks.recognize_raw, service.url, wav)
        with pytest.raises(NotPlainDataError) as caught:
            refused.result(timeout=60)
        passed = pool.submit(tasks.recognize_extracted, service.url, wav).result(timeout=60)
        stats = pool.statistics()
    error = caught.value
    kind = speechsdk.SpeechRecognitionResult
    assert error.path == "result.segments[1].raw"
    assert error.type_name == f"{kind.__module__}.{kind.__qualname__}"
    assert str(error).startswith(f"result.segments[1].raw is a {error.type_name}, not plain data")
    assert "nativeguard.extract()" in str(error)
    # A refused result is the task's failure, not the worker's: no crash, same worker.
    assert (stats.tasks_completed, stats.tasks_failed, stats.crashes) == (1, 1, 0)
    assert stats.workers_started == 2  # the active worker and its warm spare, nothing replaced

    assert isinstance(passed, tasks.Outcome)
    assert passed.index == 1
    assert [w.text for w in passed.segments] == [PHRASE, PHRASE]
    assert isinstance(passed.segments[0].raw, Segment)
    assert passed.segments[0].raw.text == PHRASE
    assert passed.segments[0].raw.reason == "RecognizedSpeech"


def _threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no Threads: line for pid {pid}")


def _thread_names(pid: int) -> list[str]:
    """The names of ``pid``'s threads (``comm``), to say which thread is there."""
    names = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task")):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", encoding="ascii", errors="replace") as comm:
                names.append(f"{tid}:{comm.read().strip()}")
        except OSError:
            continue
    return names


def _maps_of(pid: int) -> str:
    with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as maps:
        return maps.read()


def _restart_forkserver() -> None:
    """Stop the process-wide fork server, so the next pool starts one with its own preload.

    Only safe while no pool is alive (workers are the fork server's children);
    between tests none is.
    """
    multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]


def test_preloading_the_sdk_keeps_the_fork_server_single_threaded(
    service: SpeechService, wav: str
) -> None:
    """DEFAULT_PRELOAD imports the Azure SDK (its native core is mapped in the fork server),
    yet the fork server has exactly 1 thread; a worker that ran a real recognition and released
    it is back to the thread count it had before."""
    assert "azure.cognitiveservices.speech" in DEFAULT_PRELOAD
    _restart_forkserver()
    with WorkerPool(1, preload=DEFAULT_PRELOAD) as pool:
        counts = pool.submit(tasks.recognition_threads, service.url, wav).result(timeout=60)
        again = pool.submit(tasks.recognition_threads, service.url, wav).result(timeout=60)
        server_pid = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
        assert server_pid is not None
        assert server_pid != os.getpid()
        server_threads = _threads_of(server_pid)
        server_thread_names = _thread_names(server_pid)
        server_maps = _maps_of(server_pid)
    print(f"\nfork server pid {server_pid}: {server_threads} thread(s); worker threads {counts}")
    assert "libMicrosoft.CognitiveServices.Speech.core.so" in server_maps
    assert server_threads == 1, server_thread_names
    assert counts["text"] == again["text"] == PHRASE
    # The SDK really ran native threads in the worker, and every one of them ended.
    assert counts["peak"] > counts["before"]
    assert counts["after"] == counts["before"]
    assert again["after"] == again["before"] == counts["before"]
