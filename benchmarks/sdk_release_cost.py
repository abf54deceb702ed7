"""What releasing an SDK recognizer costs, measured side by side in one run.

Prints, for the real SDK against the local SpeechService:
- the time ``del`` of a recognizer takes when it never ran vs after it ran;
- recognize_once latency when the previous recognizer was kept vs released.

Run: python benchmarks/sdk_release_cost.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import azure.cognitiveservices.speech as speechsdk

from nativeguard.testing import SpeechService, write_wav


def ms(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples) * 1000:7.2f} ms  "
        f"mean {statistics.fmean(samples) * 1000:7.2f} ms  max {max(samples) * 1000:7.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp, SpeechService(script=["one"]) as service:
        wav = write_wav(Path(tmp) / "a.wav", 2.0)
        config = service.speech_config()

        def recognizer() -> speechsdk.SpeechRecognizer:
            return speechsdk.SpeechRecognizer(config, speechsdk.audio.AudioConfig(filename=wav))

        del_idle, del_ran, keep_latency, release_latency = [], [], [], []
        for _ in range(runs):
            r = recognizer()
            start = time.perf_counter()
            del r
            del_idle.append(time.perf_counter() - start)

        kept = []
        for _ in range(runs):
            r = recognizer()
            start = time.perf_counter()
            r.recognize_once_async().get()
            keep_latency.append(time.perf_counter() - start)
            kept.append(r)
        kept.clear()

        for _ in range(runs):
            r = recognizer()
            start = time.perf_counter()
            r.recognize_once_async().get()
            release_latency.append(time.perf_counter() - start)
            start = time.perf_counter()
            del r
            del_ran.append(time.perf_counter() - start)

    print(f"del, never ran:             {ms(del_idle)}")
    print(f"del, after recognize_once:  {ms(del_ran)}")
    ratio = statistics.median(del_ran) / statistics.median(del_idle)
    print(f"  ratio ran/idle:           {ratio:.0f}x")
    print(f"recognize_once, previous kept:     {ms(keep_latency)}")
    print(f"recognize_once, previous released: {ms(release_latency)}")
    print(
        "  ratio released/kept:     "
        f"{statistics.fmean(release_latency) / statistics.fmean(keep_latency):.1f}x (means)"
    )


if __name__ == "__main__":
    main()
