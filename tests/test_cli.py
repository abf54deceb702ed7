from __future__ import annotations

import subprocess
import sys


def test_demo_prints_the_transcript():
    done = subprocess.run(
        [sys.executable, "-m", "nativeguard", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("SpeechService listening on ws://127.0.0.1:")
    assert lines[1:] == [
        "[  0.10s] Guest-1: Welcome to the nativeguard demo.",
        "[  1.80s] Guest-2: This transcript came from the real Speech SDK.",
        "[  4.40s] Guest-1: It talked to a local service on loopback.",
    ]


def test_cli_requires_a_command():
    done = subprocess.run(
        [sys.executable, "-m", "nativeguard"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "demo" in done.stderr
