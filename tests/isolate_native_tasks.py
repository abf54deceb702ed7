"""Task functions for the isolation tests that run the real SDK and real native memory.

Module level so pool workers can import them by name (tests/ is on the
workers' sys.path). Each returns plain data: what it measured in the worker.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import threading
import time
from typing import Any

import azure.cognitiveservices.speech as speechsdk

import nativeguard
from nativeguard._core._reaper import get_reaper, get_step_runner
from nativeguard.testing import DEFAULT_KEY

MB = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.restype = None
_libc.free.argtypes = [ctypes.c_void_p]
_libc.memset.restype = ctypes.c_void_p
_libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
_libc.mallopt.restype = ctypes.c_int
_libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Deliberately leaked blocks, kept so nothing (not even a finalizer) frees them.
_leaked: list[int] = []


# ----------------------------------------------------------------- measuring


def rss() -> int:
    """Current RSS of this process in bytes (from /proc, as the worker measures it)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def thread_count() -> int:
    """Threads of this process as the kernel counts them (native ones included), less
    nativeguard's reaper workers: they run every release and stay for the process."""
    reapers = len(get_reaper().threads()) + len(get_step_runner().threads())
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1]) - reapers
    raise RuntimeError("no Threads: line in /proc/self/status")


# ------------------------------------------------------------------ real SDK


def speech_config(url: str, timeout_ms: int = 5000) -> speechsdk.SpeechConfig:
    """A SpeechConfig for a SpeechService at ``url``, built where it is used.

    SDK objects cannot cross the process boundary, so each worker builds its
    own, as ``SpeechService.speech_config()`` does (default key, short timeouts).
    """
    config = speechsdk.SpeechConfig(host=url, subscription=DEFAULT_KEY)
    config.set_property_by_name("SPEECH-OneShotRecognition-OperationTimeoutMs", str(timeout_ms))
    config.set_property_by_name("SPEECH-StopRecognitionTimeoutInSeconds", "5")
    return config


def transcribe(url: str, wav: str, index: int) -> dict[str, Any]:
    """One real ConversationTranscriber session through nativeguard.transcribe; plain data back."""
    transcript = nativeguard.transcribe(speech_config(url), wav, timeout=30)
    return {
        "index": index,
        "segments": [(segment.speaker_id, segment.text) for segment in transcript.segments],
        "canceled": transcript.cancellation is not None,
        "pid": os.getpid(),
    }


@dataclasses.dataclass
class Wrapped:
    text: str
    raw: Any


@dataclasses.dataclass
class Outcome:
    index: int
    segments: list[Any]


def _recognize_raw(url: str, wav: str) -> Any:
    """A raw SpeechRecognitionResult from a plain SDK recognizer (left to the worker's exit)."""
    config = speech_config(url)
    audio = speechsdk.audio.AudioConfig(filename=wav)
    recognizer = speechsdk.SpeechRecognizer(speech_config=config, audio_config=audio)
    return recognizer.recognize_once_async().get()


def recognize_raw(url: str, wav: str) -> Outcome:
    """Return a raw SpeechRecognitionResult two levels deep: the worker must refuse it."""
    result = _recognize_raw(url, wav)
    plain = nativeguard.extract(result)
    return Outcome(0, [Wrapped(result.text, plain), Wrapped(result.text, result)])


def recognize_extracted(url: str, wav: str) -> Outcome:
    """The same, converted with nativeguard.extract(): plain data, it must pass."""
    result = _recognize_raw(url, wav)
    plain = nativeguard.extract(result)
    del result
    return Outcome(1, [Wrapped(plain.text, plain), Wrapped(plain.text, None)])


def recognition_threads(url: str, wav: str) -> dict[str, int | str]:
    """Thread counts around a real recognition, measured inside the worker.

    ``before`` before any SDK object exists, ``peak`` while the recognition
    ran (a sampler thread polls /proc; itself subtracted), ``after`` once
    recognize_once released everything (waits up to 5 s for native threads
    to end, so a slow exit is not mistaken for a leak, but a leak is caught).
    """
    before = thread_count()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, thread_count() - 1)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        segment = nativeguard.recognize_once(speech_config(url), wav, timeout=30)
    finally:
        done.set()
        sampler.join()
    deadline = time.monotonic() + 5.0
    while thread_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"before": before, "peak": peak, "after": thread_count(), "text": segment.text}


# ------------------------------------------------------------- native memory


def leak_native(megabytes: int) -> dict[str, int]:
    """malloc ``megabytes`` MB, touch every page (resident), never free it."""
    size = megabytes * MB
    before = rss()
    block = _libc.malloc(size)
    if not block:
        raise MemoryError(f"malloc({size}) failed")
    _libc.memset(block, 1, size)
    _leaked.append(block)
    return {"pid": os.getpid(), "rss_before": before, "rss_after": rss()}


def churn_native(megabytes: int) -> dict[str, int]:
    """Allocate ``megabytes`` 1 MB chunks, touch them, free them all: no leak.

    glibc is told to keep freed memory (no trim on free, no mmap for 1 MB
    chunks), so the freed heap stays resident until ``malloc_trim``: the
    allocator-retained memory a pool must not mistake for a leak.
    """
    _libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    _libc.mallopt(_M_MMAP_THRESHOLD, 32 * MB)
    before = rss()
    blocks = []
    for _ in range(megabytes):
        block = _libc.malloc(MB)
        if not block:
            raise MemoryError("malloc(1 MB) failed")
        _libc.memset(block, 1, MB)
        blocks.append(block)
    allocated = rss()
    for block in blocks:
        _libc.free(block)
    return {
        "pid": os.getpid(),
        "rss_before": before,
        "rss_allocated": allocated,
        "rss_freed": rss(),
    }


def current_rss() -> dict[str, int]:
    """This worker's RSS after touching the same code paths as the leak tasks."""
    return leak_native(0) | {"rss": rss()}
