"""memory_breakdown() and trim() on this process's real heap (glibc 2.36 here)."""

from __future__ import annotations

import ctypes
import json
import tracemalloc
from collections.abc import Iterator

import azure.cognitiveservices.speech as speechsdk
import pytest

from nativeguard._core import _malloc
from nativeguard._core._integration import native_counters
from nativeguard.verify import _registry
from nativeguard.verify._memory import MemoryBreakdown, memory_breakdown, trim

MiB = 1 << 20

glibc_only = pytest.mark.skipif(
    not _malloc._load().mallinfo2, reason="needs glibc >= 2.33 (mallinfo2)"
)

_libc = ctypes.CDLL(None)
c_malloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)(("malloc", _libc))
c_free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(("free", _libc))
c_memset = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)(
    ("memset", _libc)
)


@glibc_only
def test_fields_are_present_and_consistent():
    reading = memory_breakdown()
    assert reading.rss_bytes > 10 * MiB
    assert reading.python_allocated_blocks > 1000
    assert reading.native_in_use_bytes is not None
    assert reading.native_free_bytes is not None
    assert reading.unaccounted_bytes is not None
    assert reading.native_in_use_bytes > 0
    assert reading.native_free_bytes >= 0
    assert 0 <= reading.unaccounted_bytes <= reading.rss_bytes
    # Library code alone is tens of MB of RSS outside the heap.
    assert reading.unaccounted_bytes > 10 * MiB
    assert reading.sdk_native_handles == _counted_handles()


def _counted_handles() -> int:
    """Every integration's live native resources, sizes (``*_bytes``) left out.

    Not only Speech: a gRPC server or onnxruntime session of another test
    module in this process counts too.
    """
    return sum(n for name, n in native_counters().items() if not name.endswith("_bytes"))


def test_traced_bytes_only_while_tracemalloc_traces():
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc already on in this process")
    assert memory_breakdown().python_traced_bytes is None
    tracemalloc.start()
    try:
        kept = [bytes(1000) for _ in range(1000)]
        traced = memory_breakdown().python_traced_bytes
        assert traced is not None
        assert traced >= 1000 * 1000
        del kept
    finally:
        tracemalloc.stop()
    assert memory_breakdown().python_traced_bytes is None


def test_sdk_handles_are_counted(speech_service, wav_path):
    before = memory_breakdown().sdk_native_handles
    config = speech_service.speech_config()  # ISpxSpeechConfig and its ISpxNamedProperties
    assert memory_breakdown().sdk_native_handles == before + 2
    audio = speechsdk.audio.AudioConfig(filename=wav_path)  # ISpxAudioConfig and properties
    assert memory_breakdown().sdk_native_handles == before + 4
    recognizer = speechsdk.SpeechRecognizer(config, audio)  # ISpxRecognizer and properties
    assert memory_breakdown().sdk_native_handles == before + 6
    assert memory_breakdown().sdk_native_handles == _counted_handles()
    # Independently of the handle table: the Python objects holding those handles.
    held = _registry.scan_heap()
    assert held.get("SpeechRecognizer", 0) >= 1
    assert held.get("SpeechConfig", 0) >= 1
    recognizers = held["SpeechRecognizer"]
    del recognizer, audio, config
    assert memory_breakdown().sdk_native_handles == before
    assert _registry.scan_heap().get("SpeechRecognizer", 0) == recognizers - 1


@glibc_only
def test_a_native_allocation_is_in_use_not_unaccounted():
    # 64 MiB: above glibc's largest mmap threshold (32 MiB on 64-bit), so the block
    # is always a fresh mapping. A 32 MiB block could come from free heap after a
    # long run: resident (RSS would not move) or trimmed (RSS and in-use grow while
    # the free bytes shrink, which moves "unaccounted").
    before = memory_breakdown()
    block = c_malloc(64 * MiB)
    assert block
    try:
        c_memset(block, 0xAB, 64 * MiB)  # resident, as a real leak's memory is
        during = memory_breakdown()
    finally:
        c_free(block)
    assert before.native_in_use_bytes is not None
    assert during.native_in_use_bytes is not None
    assert during.native_in_use_bytes - before.native_in_use_bytes >= 64 * MiB
    assert during.rss_bytes - before.rss_bytes >= 62 * MiB
    assert before.unaccounted_bytes is not None
    assert during.unaccounted_bytes is not None
    assert abs(during.unaccounted_bytes - before.unaccounted_bytes) < 4 * MiB


@pytest.fixture
def fragmented_heap() -> Iterator[int]:
    """~60 MB of Python objects freed under one that stays: heap glibc keeps.

    Objects over 512 bytes bypass pymalloc and come from malloc; the last one
    stays alive so the freed run cannot merge into the top chunk (where free()
    would hand it back by itself). Yields the growth of native_free_bytes.
    """
    blocks = [bytes(1000) for _ in range(60_000)]
    last = blocks[-1]
    free_before = memory_breakdown().native_free_bytes
    del blocks
    free_after = memory_breakdown().native_free_bytes
    assert free_before is not None
    assert free_after is not None
    yield free_after - free_before
    del last


@glibc_only
def test_trim_reports_the_rss_a_fragmented_heap_gave_back(fragmented_heap: int):
    assert fragmented_heap >= 40 * MiB
    result = trim()
    assert result.attempted is True
    assert result.rss_released_bytes == max(0, result.rss_before - result.rss_after)
    assert result.rss_released_bytes >= 40 * MiB
    # A second trim has nothing left to give.
    assert trim().rss_released_bytes < 8 * MiB


def test_without_glibc_the_heap_figures_are_none(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_malloc, "_load", lambda: _malloc._Libc(None, None, "simulated musl"))
    reading = memory_breakdown()
    assert reading.native_in_use_bytes is None
    assert reading.native_free_bytes is None
    assert reading.unaccounted_bytes is None
    assert reading.rss_bytes > 0
    assert reading.sdk_native_handles == _counted_handles()
    assert "n/a" in str(reading)
    assert json.loads(json.dumps(reading.to_dict()))["unaccounted_bytes"] is None
    result = trim()
    assert (result.attempted, result.available, result.rss_released_bytes) == (False, False, 0)


def test_unaccounted_is_rss_minus_the_native_heap_floored_at_zero(
    monkeypatch: pytest.MonkeyPatch,
):
    def libc(in_use: int, free: int) -> _malloc._Libc:
        info = _malloc._Mallinfo2(uordblks=in_use, fordblks=free)
        return _malloc._Libc(lambda: info, None)

    monkeypatch.setattr(_malloc, "rss_bytes", lambda: 100 * MiB)
    monkeypatch.setattr(_malloc, "_load", lambda: libc(30 * MiB, 20 * MiB))
    assert memory_breakdown().unaccounted_bytes == 50 * MiB
    # After a trim glibc still books madvised pages as free: never negative.
    monkeypatch.setattr(_malloc, "_load", lambda: libc(30 * MiB, 90 * MiB))
    assert memory_breakdown().unaccounted_bytes == 0


def test_str_is_a_table_in_megabytes():
    reading = MemoryBreakdown(
        rss_bytes=300 * MiB,
        python_allocated_blocks=1_234_567,
        python_traced_bytes=None,
        native_in_use_bytes=120 * MiB,
        native_free_bytes=80 * MiB,
        sdk_native_handles=3,
        unaccounted_bytes=100 * MiB,
    )
    lines = str(reading).splitlines()
    assert lines[0].split() == ["RSS", "300.0", "MB"]
    assert lines[1].split()[-2:] == ["120.0", "MB"]
    assert lines[2].split()[-2:] == ["80.0", "MB"]
    assert lines[3].split()[-2:] == ["100.0", "MB"]
    assert lines[4].endswith("1,234,567")
    assert lines[5].endswith("off")
    assert lines[6].endswith("3")
    assert reading.to_dict()["native_free_bytes"] == 80 * MiB


def test_native_resources_are_listed_by_integration() -> None:
    """memory_breakdown() shows each integration's counters under its own name."""
    config = speechsdk.SpeechConfig(subscription="k" * 32, region="westus")
    reading = memory_breakdown()
    speech = reading.native_resources["azure_speech"]
    assert speech["ISpxSpeechConfig"] >= 1
    assert reading.sdk_native_handles == sum(
        count
        for counts in reading.native_resources.values()
        for name, count in counts.items()
        if not name.endswith("_bytes")
    )
    assert "azure_speech: ISpxSpeechConfig" in str(reading)
    assert json.loads(json.dumps(reading.to_dict()))["native_resources"]["azure_speech"]
    del config
