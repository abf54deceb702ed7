"""The examples and the public API surface stay runnable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import nativeguard

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(script: str) -> list[str]:
    """Run an example in a fresh interpreter; its stdout lines (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("transcribe_offline.py", "Guest-2: Glad to be here."),
        ("managed_transcription.py", "['Guest-1: Hello there.', 'Guest-2: Hi!']"),
    ],
)
def test_example_runs(script, expected):
    assert expected in run_example(script)


def test_example_test_file_passes():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(EXAMPLES / "test_with_local_service.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_public_names_resolve():
    for name in nativeguard.__all__:
        assert getattr(nativeguard, name) is not None, name


def test_isolated_transcription_example():
    """40 transcriptions in a recycling 2-worker pool: all correct, none lost, workers recycled.

    Each worker retires after exactly 10 tasks (a jitter of 0.1 cannot lower a
    limit of 10), so the 40 tasks end in 3 or 4 recycles, the two live workers
    holding the other 10 or 0 between them (each below 10, so with 10 both ran
    some), and every recycle starts one replacement on top of the 2 workers
    and the spare started first.
    """
    lines = run_example("isolated_transcription.py")
    assert lines[0] == "40 transcriptions, 40 correct"
    assert lines[2] == "tasks: 40 submitted, 40 completed, 0 failed, 0 cancelled, 0 retried"
    workers = re.fullmatch(
        r"workers: (\d+) started; crashes 0, timeouts 0; recycles max_tasks (\d+)", lines[3]
    )
    assert workers is not None, lines[3]
    started, recycles = int(workers[1]), int(workers[2])
    assert recycles in (3, 4)
    assert started == 3 + recycles
    # Taken after the block: every worker has ended, each counted once.
    assert lines[5] == f"workers that ended (newest last, {started} of {started}):"
    ended = [
        re.fullmatch(r"  pid \d+ (max_tasks|stopped) after (\d+) tasks, RSS .*", line)
        for line in lines[6:]
    ]
    assert len(ended) == started, lines[6:]
    assert all(ended), lines[6:]
    recycled = [int(m[2]) for m in ended if m is not None and m[1] == "max_tasks"]
    stopped = [int(m[2]) for m in ended if m is not None and m[1] == "stopped"]
    assert recycled == [10] * recycles
    assert len(stopped) == 3  # the two active workers and the spare, at shutdown
    assert sum(stopped) == 40 - 10 * recycles
    assert all(tasks < 10 for tasks in stopped)
    processes = recycles + sum(1 for tasks in stopped if tasks)
    assert lines[1].startswith(f"ran in {processes} worker processes; "), lines[1]


def test_native_leak_recycling_example():
    """A 5 MB/task native leak: +150 MB in-process; in a pool, 3 max_growth recycles of 10 tasks.

    The control task, which only keeps freed heap, never retires its worker:
    the remedies (one per task, each crossing the limit) give the memory back.
    """
    lines = run_example("native_leak_recycling.py")
    assert len(lines) == 3, lines
    grown = re.fullmatch(r"in-process: 30 leaky tasks, RSS \+(\d+) MB, kept for good", lines[0])
    assert grown is not None, lines[0]
    assert 145 <= int(grown[1]) <= 155
    assert re.fullmatch(
        r"pool, leaky: 30 tasks, recycles \{'max_growth': 3\}, 3 worker process\(es\), "
        r"worker RSS at most \d+ MB, 6 remedies released \d+ MB",
        lines[1],
    ), lines[1]
    churn = re.fullmatch(
        r"pool, churning: 30 tasks, recycles none, 1 worker process\(es\), "
        r"worker RSS at most \d+ MB, 30 remedies released (\d+) MB",
        lines[2],
    )
    assert churn is not None, lines[2]
    assert int(churn[1]) >= 29 * 55  # ~60 MB given back by each of 29 trims after the first
