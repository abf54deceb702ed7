"""``nativeguard demo`` end to end: the real SDK in a subprocess, exact counts from its JSON."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nativeguard._demo import CollectReport, DemoReport, PhaseReport, render

REQUESTS = 5
PHRASES = 2  # per request, in the demo's script


def nativeguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nativeguard", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def demo_json(*args: str) -> dict:
    done = nativeguard("demo", "--requests", str(REQUESTS), "--json", *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return json.loads(done.stdout)


def assert_guarded_flat(report: dict) -> None:
    guarded = report["guarded"]
    assert guarded["native_handles"] == {}
    assert guarded["live_sdk_instances"] == 0
    assert guarded["live_sdk_instances_by_type"] == {}
    assert guarded["results_kept"] == REQUESTS * PHRASES  # as plain data
    assert report["verdict"] == {"naive": "leaking", "guarded": "flat"}
    assert report["problems"] == []


def test_json_with_collector_off_leaks_one_recognizer_per_request():
    report = demo_json("--gc", "off")
    naive = report["naive"]
    # Every request's transcriber stays in its closure cycle; every kept result
    # holds its result handle and property bag.
    assert naive["native_handles"] == {
        "ISpxRecognizer": REQUESTS,
        "ISpxRecognitionResult": REQUESTS * PHRASES,
        "ISpxNamedProperties": REQUESTS * (PHRASES + 1),
    }
    assert naive["live_sdk_instances_by_type"]["ConversationTranscriber"] == REQUESTS
    assert naive["gc"]["passes_by_generation"] == {}
    # One gc.collect() frees the cycles, not the results the service still holds.
    collected = report["gc_collect_after_naive"]
    assert collected["native_handles"] == {
        "ISpxRecognizer": -REQUESTS,
        "ISpxNamedProperties": -REQUESTS,
    }
    assert_guarded_flat(report)


def test_json_with_the_collector_running_as_in_production():
    report = demo_json()
    assert report["gc"] == "auto"
    naive = report["naive"]
    handles = naive["native_handles"]
    # Results the service keeps are pinned whatever the collector does.
    assert handles["ISpxRecognitionResult"] == REQUESTS * PHRASES
    # Transcribers are pinned until the collector reaches their cycle: each one
    # still alive holds exactly one recognizer, which gc.collect() then frees.
    alive = naive["live_sdk_instances_by_type"].get("ConversationTranscriber", 0)
    assert handles.get("ISpxRecognizer", 0) == alive
    assert report["gc_collect_after_naive"]["native_handles"].get("ISpxRecognizer", 0) == -alive
    assert_guarded_flat(report)


def test_text_output_is_a_table_with_both_verdicts():
    done = nativeguard("demo", "--requests", "3")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("nativeguard demo: one transcription service, 3 requests")
    assert "SpeechService (bundled, offline) on ws://127.0.0.1:" in out
    assert any(line.split() == ["naive", "guarded"] for line in out.splitlines())
    for label in (
        "native handles, change by type",
        "  ISpxRecognizer",
        "  ISpxRecognitionResult",
        "live SDK objects, change",
        "RSS growth",
        "glibc heap in use, growth",
        "time per request, median",
        "time in gc",
    ):
        assert f"\n{label}" in out, label
    assert "One gc.collect() after the naive phase" in out
    naive = next(line for line in out.splitlines() if line.startswith("naive: "))
    assert "ISpxRecognizer" in naive
    assert naive.endswith("live SDK objects after 3 requests — leaking")
    assert "guarded: flat — 0 native handles, 0 live SDK objects after 3 requests" in out


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "nativeguard"], id="python-m"),
        pytest.param([str(Path(sys.executable).with_name("nativeguard"))], id="console-script"),
    ],
)
def test_a_command_is_required(command):
    if not Path(command[0]).exists() and shutil.which(command[0]) is None:
        pytest.skip("the nativeguard console script is not installed next to this Python")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "demo" in done.stderr


def test_requests_must_be_positive():
    done = nativeguard("demo", "--requests", "0")
    assert done.returncode == 2
    assert "--requests: must be at least 1, got 0" in done.stderr


def phase(name: str, handles: dict[str, int], instances: dict[str, int]) -> PhaseReport:
    return PhaseReport(
        name=name,
        requests=4,
        handles=handles,
        instances=instances,
        rss_growth=0,
        heap_growth=None,
        heap_free_growth=None,
        request_seconds=(0.1, 0.2, 0.3, 0.4),
        gc_passes={},
        gc_seconds=0.0,
        gc_off_main_thread=0,
        results_kept=4 * PHRASES,
    )


def test_unexpected_outcomes_are_named():
    report = DemoReport(
        requests=4,
        gc_mode="off",
        sdk_version="1.53.0",
        service_url="ws://127.0.0.1:1",
        naive=phase("naive", {}, {}),
        collect=CollectReport(0, 0.0, {}, {}, 0, None, None),
        guarded=phase("guarded", {"ISpxRecognizer": 1}, {"ConversationTranscriber": 1}),
        seconds=1.0,
    )
    assert report.problems == [
        "the naive pattern left nothing behind; it was expected to leak",
        "the guarded pattern left +1 ISpxRecognizer handles, +1 live SDK objects behind",
    ]
    text = render(report)
    assert "naive: nothing after 4 requests — not leaking" in text
    assert (
        "guarded: +1 ISpxRecognizer handles, +1 live SDK objects after 4 requests — not flat"
        in (text)
    )
    assert "glibc heap in use, growth" in text  # n/a where mallinfo2 is missing
    assert report.to_json()["verdict"] == {"naive": "not leaking", "guarded": "not flat"}


def test_interrupt_releases_the_sdk_objects_and_exits_130():
    # Interrupted in the naive phase, leaked transcribers are alive; left to
    # interpreter exit, SDK callbacks make the native core abort (SIGABRT).
    process = subprocess.Popen(
        [sys.executable, "-m", "nativeguard", "demo", "--requests", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("SpeechService"):
            break
    time.sleep(1.0)  # warm-up done, a few naive requests in
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode >= 0, stderr  # not killed by a signal
    assert "exception not rethrown" not in stderr
    if "interrupted" in stderr:
        assert process.returncode == 130
