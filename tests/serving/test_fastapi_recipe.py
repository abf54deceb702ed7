"""The FastAPI recipe (examples/fastapi_service.py) on a real uvicorn server on 127.0.0.1.

An httpx client sends a bounded number of WAV requests; each runs the field's
leaky handler (a recognizer captured by its own callback) against the bundled
SpeechService. With the recipe's middleware, native handles and live SDK
objects are back at their baseline after every request and ``/metrics``
counts one release per request; without it (collector off, as between two
automatic collections) every request leaves its recognizer behind.
"""

from __future__ import annotations

import gc
import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from nativeguard.testing import Phrase, SpeechService, write_wav
from nativeguard.verify import Allow, check, snapshot

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_service.py"
REQUESTS = 6
POOL_THREADS = [
    Allow("thread:asyncio_", "asyncio.to_thread's executor grows to its bound, then reuses")
]
PHRASE = "guarded by the middleware"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_service_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _load_example()


@pytest.fixture
def service() -> Iterator[SpeechService]:
    with SpeechService(script=[Phrase(PHRASE, offset_s=0.1, duration_s=0.5)]) as svc:
        yield svc


@pytest.fixture
def wav_bytes(tmp_path: Path) -> bytes:
    return Path(write_wav(tmp_path / "one.wav", 1.0)).read_bytes()


class _Server:
    """uvicorn in a thread, on a socket bound to 127.0.0.1:0; stopped and joined on exit."""

    def __init__(self, app: Any) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="test-uvicorn"
        )

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start within 20 s"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.socket.close()
        assert not self.thread.is_alive(), "uvicorn did not stop within 20 s"


def _metrics(client: httpx.Client) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _native(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
    return {
        labels["type"]: value
        for labels, value in metrics.get("nativeguard_native_resources", [])
        if labels["integration"] == "azure_speech"
    }


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached within the timeout"
        time.sleep(0.01)


def _monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nativeguard-monitor"]


@pytest.mark.usefixtures("no_automatic_gc")
def test_guarded_requests_release_everything_and_metrics_say_so(
    example: ModuleType, service: SpeechService, wav_bytes: bytes
) -> None:
    kept: list[Any] = []
    app = example.create_app(service.speech_config, sample_interval_s=2.0, kept=kept)
    with _Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert len(_monitor_threads()) == 1  # the lifespan started the sampler
        # One warm-up request: the SDK's first-use state and the thread pool's worker.
        assert client.post("/transcribe", content=wav_bytes).json() == {"text": PHRASE}
        monitor = app.state.monitor
        _wait_for(lambda: monitor.releases == 1)
        metrics = _metrics(client)  # also starts the thread pool's worker for def endpoints
        assert metrics["nativeguard_releases_total"] == [({}, 1.0)]
        _wait_for(lambda: monitor.releases == 2)
        before = snapshot()
        for number in range(REQUESTS):
            response = client.post("/transcribe", content=wav_bytes)
            assert response.status_code == 200, response.text
            assert response.json() == {"text": PHRASE}, number
            # The middleware releases once the response is sent; check() settles for it.
            report = check(before, allow=POOL_THREADS)
            assert report is None, f"request {number}: {report}"
        _wait_for(lambda: monitor.releases == REQUESTS + 2)
        metrics = _metrics(client)
        # Every request before this scrape was released: the warm-up, the first
        # scrape, the REQUESTS transcriptions.
        assert metrics["nativeguard_releases_total"] == [({}, float(REQUESTS + 2))]
        assert "ISpxRecognizer" not in _native(metrics)
        live = {labels["type"] for labels, _ in metrics["nativeguard_live_objects"]}
        assert "SpeechRecognizer" not in live
        rss = metrics["nativeguard_rss_bytes"][0][1]
        assert rss > 10 * 2**20
        # Results were kept as plain data, one per request.
        assert [segment.text for segment in kept] == [PHRASE] * (REQUESTS + 1)
    assert _monitor_threads() == []  # the lifespan stopped it


@pytest.mark.usefixtures("no_automatic_gc")
def test_without_the_middleware_each_request_leaves_its_recognizer(
    example: ModuleType, service: SpeechService, wav_bytes: bytes
) -> None:
    app = example.create_app(service.speech_config, sample_interval_s=2.0, guard=False)
    try:
        with _Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post("/transcribe", content=wav_bytes).json() == {"text": PHRASE}
            before = snapshot()
            for _ in range(3):
                assert client.post("/transcribe", content=wav_bytes).status_code == 200
            deadline = time.monotonic() + 5
            while True:  # the SDK's teardown of what was released runs on its threads
                grown = before.diff(snapshot())
                if grown.native_handles.get("ISpxRecognizer") == 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert grown.native_handles.get("ISpxRecognizer") == 3
            assert grown.instances.get("SpeechRecognizer") == 3
            metrics = _metrics(client)
            assert _native(metrics)["ISpxRecognizer"] >= 3
            assert metrics["nativeguard_releases_total"] == [({}, 0.0)]
    finally:
        gc.collect()  # the leaked recognizers' cycles: gone before the next test
