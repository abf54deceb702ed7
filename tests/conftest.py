from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.forkserver
from collections.abc import Iterator
from pathlib import Path

import pytest

from nativeguard.isolate import DEFAULT_PRELOAD
from nativeguard.testing import SpeechService, write_wav

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def wav_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three seconds of 16 kHz mono audio: long enough for the default script."""
    return write_wav(tmp_path_factory.mktemp("audio") / "three-seconds.wav", 3.0)


@pytest.fixture
def speech_service() -> Iterator[SpeechService]:
    """A SpeechService with the default script, stopped (and checked) after the test."""
    with SpeechService() as service:
        yield service


@pytest.fixture
def tmp_wav(tmp_path: Path):
    """Factory for WAV files of a given length."""

    def make(seconds: float) -> str:
        return write_wav(tmp_path / f"{seconds:g}s.wav", seconds)

    return make


@pytest.fixture(scope="session")
def fork_server() -> None:
    """Start the process-wide fork server (and resource tracker) before any test's baseline.

    They live for the process, like the SDK's own first-use state: started
    inside a test, ``pytest --nativeguard`` would count their pipes as that
    test's leaked fds. Worker-pool test modules use it with
    ``pytestmark = pytest.mark.usefixtures("fork_server")``.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(DEFAULT_PRELOAD))
    multiprocessing.forkserver.ensure_running()


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Keep the cyclic collector from running behind the test's back."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()
