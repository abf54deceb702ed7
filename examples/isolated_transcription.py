"""Transcriptions in recycled worker processes: native leaks die with the worker.

Each transcription runs in one of two worker processes. A worker retires
(between tasks, a warm spare taking over) after 10 tasks or once it grew more
than 200 MB since its first task, so memory the SDK's native core never gives
back cannot pile up in a long-running service. Runs offline against the local
SpeechService.

Run: python examples/isolated_transcription.py
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import azure.cognitiveservices.speech as speechsdk

import nativeguard
from nativeguard.isolate import WorkerPool
from nativeguard.testing import DEFAULT_KEY, Phrase, SpeechService, write_wav

TRANSCRIPTIONS = 40


def transcribe_file(service_url: str, wav: str) -> list[str]:
    """Runs in a worker: only plain data crosses the process boundary.

    The SpeechConfig is built here, in the worker, from a URL and a key (SDK
    objects cannot be sent to another process); what comes back is a list of
    strings, and the recognizer and its native memory stay in the worker.
    """
    config = speechsdk.SpeechConfig(host=service_url, subscription=DEFAULT_KEY)
    transcript = nativeguard.transcribe(config, wav, timeout=30)
    return [f"{segment.speaker_id}: {segment.text}" for segment in transcript.segments]


def main() -> None:
    script = [Phrase("Hello there.", speaker="Guest-1"), Phrase("Hi!", speaker="Guest-2")]
    expected = ["Guest-1: Hello there.", "Guest-2: Hi!"]
    with tempfile.TemporaryDirectory() as tmp, SpeechService(script=script) as service:
        wav = write_wav(Path(tmp) / "call.wav", seconds=1.0)
        # The pool's block waits for every task, then ends every worker process.
        with WorkerPool(2, max_tasks=10, max_growth_mb=200) as pool:
            futures = [
                pool.submit(transcribe_file, service.url, str(wav)) for _ in range(TRANSCRIPTIONS)
            ]
            results = [future.result() for future in futures]
        # After the block every worker has ended, and each end is counted.
        stats = pool.statistics()
        correct = sum(result == expected for result in results)
        print(f"{len(results)} transcriptions, {correct} correct")
        # Each future tells where the task ran and what it cost in memory.
        pids = {future.pid for future in futures}
        deltas = [future.rss_delta_mb or 0.0 for future in futures]
        print(
            f"ran in {len(pids)} worker processes; "
            f"median RSS change per task {statistics.median(deltas):+.1f} MB"
        )
        print(stats)


if __name__ == "__main__":
    main()
