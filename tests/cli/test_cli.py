"""``nativeguard demo`` end to end: the real SDK in a subprocess, exact counts from its JSON."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nativeguard._cli.demo import CollectReport, DemoReport, IsolationReport, PhaseReport, render

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
    for name in ("guarded", "isolated"):
        phase = report[name]
        assert phase["native_handles"] == {}, name
        assert phase["live_sdk_instances"] == 0, name
        assert phase["live_sdk_instances_by_type"] == {}, name
        assert phase["results_kept"] == REQUESTS * PHRASES, name  # as plain data
    assert report["verdict"] == {"naive": "leaking", "guarded": "flat", "isolated": "flat"}
    assert report["problems"] == []
    assert_isolation(report["isolation"])


def assert_isolation(pool: dict) -> None:
    # 5 requests + 1 warm-up through one worker retiring every 2 tasks, no jitter.
    assert pool["max_tasks"] == 2
    assert pool["tasks"] == REQUESTS + 1
    assert pool["recycles"] == 3
    assert pool["crashes"] == 0
    # The first worker, three replacements, and the spare that was waiting at the end.
    assert pool["workers_started"] == 5
    # The naive code leaks in the worker as it does here, but never more than
    # max_tasks requests' results at once: each retirement took them away.
    held = pool["worker_peak_native_handles"]["ISpxRecognitionResult"]
    assert PHRASES <= held <= 2 * PHRASES


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
    assert any(line.split() == ["naive", "guarded", "isolated"] for line in out.splitlines())
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
    # 3 requests + 1 warm-up, max_tasks = 4 // 3 = 1: a recycle after every task.
    assert "ran in a worker process (WorkerPool(1, max_tasks=1))" in " ".join(out.split())
    assert (
        "isolated: flat — 0 native handles, 0 live SDK objects in this process after 3 "
        "requests; the worker was recycled 4 times"
    ) in out


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
        isolated=phase("isolated", {"ISpxNamedProperties": 2}, {}),
        isolation=IsolationReport(
            workers=1,
            max_tasks=1,
            tasks=5,
            recycles=4,
            workers_started=5,
            crashes=1,
            worker_peak_handles={},
            worker_peak_rss_mb=None,
        ),
        seconds=1.0,
    )
    assert report.problems == [
        "the naive pattern left nothing behind; it was expected to leak",
        "the guarded pattern left +1 ISpxRecognizer handles, +1 live SDK objects behind",
        "the isolated pattern left +2 ISpxNamedProperties handles behind in this process",
        "the isolated pattern's worker crashed 1 time(s)",
        "the isolated pattern's worker was recycled 4 time(s), expected 5 (5 tasks, max_tasks=1)",
    ]
    text = render(report)
    assert "naive: nothing after 4 requests — not leaking" in text
    assert (
        "guarded: +1 ISpxRecognizer handles, +1 live SDK objects after 4 requests — not flat"
        in (text)
    )
    assert (
        "isolated: +2 ISpxNamedProperties handles in this process after 4 requests — not flat"
        in text
    )
    assert "a worker holding no native handles;" in " ".join(text.split())
    assert "glibc heap in use, growth" in text  # n/a where mallinfo2 is missing
    assert report.to_json()["verdict"] == {
        "naive": "not leaking",
        "guarded": "not flat",
        "isolated": "not flat",
    }


def start_demo(requests: int) -> subprocess.Popen[str]:
    # A shell starts background jobs (a CI runner's, too) with SIGINT ignored,
    # and Python keeps an ignored SIGINT: the demo restores Ctrl-C first.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from nativeguard.__main__ import main; "
        f"sys.exit(main(['demo', '--requests', '{requests}']))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_interrupt_releases_the_sdk_objects_and_exits_130():
    # Interrupted in the naive phase, leaked transcribers are alive; left to
    # interpreter exit, SDK callbacks make the native core abort (SIGABRT).
    process = start_demo(40)
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


def pool_workers(demo: psutil.Process) -> list[psutil.Process]:
    """Children of the demo's fork server (a child of the demo), if it has one yet."""
    workers = []
    for child in demo.children():
        try:
            if any("forkserver" in part for part in child.cmdline()):
                workers += child.children()
        except psutil.NoSuchProcess:  # a child that just ended (ZombieProcess included)
            continue
    return workers


def test_interrupt_in_the_isolated_phase_leaves_no_process_behind():
    process = start_demo(60)
    demo = psutil.Process(process.pid)
    deadline = time.monotonic() + 90
    while not pool_workers(demo) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool_workers(demo), "the isolated phase never started a worker"
    descendants = demo.children(recursive=True)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "nativeguard demo: interrupted" in stderr
    _, alive = psutil.wait_procs(descendants, timeout=10)
    assert alive == []
