"""The examples and the public API surface stay runnable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nativeguard

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("transcribe_offline.py", "Guest-2: Glad to be here."),
        ("managed_transcription.py", "['Guest-1: Hello there.', 'Guest-2: Hi!']"),
    ],
)
def test_example_runs(script, expected):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout.splitlines()


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
