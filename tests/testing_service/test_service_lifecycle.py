"""SpeechService is bounded and clean: it stops fast and leaves nothing behind."""

from __future__ import annotations

import asyncio
import threading
import time

import azure.cognitiveservices.speech as speechsdk
import psutil
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from nativeguard import ServiceError
from nativeguard.testing import Faults, SpeechService


def open_fds() -> int:
    return psutil.Process().num_fds()


def listening_ports() -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def usp(service: SpeechService, path: str = "/speech/universal/v2"):
    return connect(service.url + path, subprotocols=["USP"], open_timeout=5, close_timeout=1)


def test_stop_leaves_no_thread_socket_or_fd():
    threads, fds = set(threading.enumerate()), open_fds()
    service = SpeechService().start()
    port = service.port
    assert port in listening_ports()
    with usp(service) as client:
        client.send("Path:speech.config\r\n\r\n{}")
        service.stop()
    assert port not in listening_ports()
    # Only new threads count: one started by an earlier test may end meanwhile.
    assert set(threading.enumerate()) - threads == set()
    assert open_fds() == fds


def test_stop_within_a_second_while_the_sdk_is_connected(wav_path):
    # A stalled continuous session keeps the SDK's websocket open and idle.
    service = SpeechService(faults=Faults(stall=True)).start()
    transcriber = speechsdk.transcription.ConversationTranscriber(
        service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
    )
    transcriber.start_transcribing_async().get()
    deadline = time.monotonic() + 5
    while service.open_connections == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service.open_connections == 1
    start = time.monotonic()
    service.stop()
    assert time.monotonic() - start < 1.0
    assert service.open_connections == 0
    transcriber.stop_transcribing_async().get()
    del transcriber


def test_stop_is_idempotent_and_a_service_starts_once():
    service = SpeechService()
    with pytest.raises(ServiceError, match="no port until start"):
        _ = service.port
    service.start()
    service.stop()
    service.stop()
    assert not service.running
    with pytest.raises(ServiceError, match="starts once"):
        service.start()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])
def test_only_loopback_is_bound(host):
    with pytest.raises(ValueError, match="loopback"):
        SpeechService(host=host)


def test_connection_limit_answers_429():
    with SpeechService(max_connections=1) as service:
        with usp(service), pytest.raises(InvalidStatus) as refused:
            usp(service)
        assert refused.value.response.status_code == 429
        assert [log.refused for log in service.connections] == [None, 429]


def test_oversized_message_closes_the_connection():
    with SpeechService(max_message_bytes=4096) as service:
        with usp(service) as client, pytest.raises(ConnectionClosed) as closed:
            client.send("Path:speech.config\r\n\r\n" + "x" * 10_000)
            client.recv(timeout=2)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009  # message too big


def test_protocol_errors_are_recorded_and_close_the_connection():
    with SpeechService() as service:
        with usp(service) as client, pytest.raises(ConnectionClosed) as closed:
            client.send("no header block at all")
            client.recv(timeout=2)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1007
        (log,) = service.connections
    assert log.errors == ("protocol error: text frame has no blank line between headers and body",)


def test_a_bug_in_the_service_is_raised_at_stop(monkeypatch):
    service = SpeechService().start()

    async def broken(*args, **kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(service, "_dispatch", broken)
    with usp(service) as client, pytest.raises(ConnectionClosed):
        client.send("Path:speech.config\r\n\r\n{}")
        client.recv(timeout=2)
    with pytest.raises(ServiceError, match="ZeroDivisionError: simulated bug"):
        service.stop()
    assert not service.running


def test_async_context_manager(wav_path):
    async def main() -> str:
        async with SpeechService(script=["async works"]) as service:
            recognizer = speechsdk.SpeechRecognizer(
                service.speech_config(), speechsdk.audio.AudioConfig(filename=wav_path)
            )
            future = recognizer.recognize_once_async()
            result = await asyncio.get_running_loop().run_in_executor(None, future.get)
            text = result.text
            del recognizer, result, future
            return text

    assert asyncio.run(main()) == "async works"


def test_bad_arguments():
    with pytest.raises(TypeError, match="require_key"):
        SpeechService(require_key=123)
    with pytest.raises(ValueError, match="max_connections"):
        SpeechService(max_connections=0)
    with pytest.raises(ValueError, match="response_timeout_s"):
        SpeechService(response_timeout_s=0)
    with SpeechService() as service, pytest.raises(ValueError, match="not both"):
        service.speech_config(subscription="a", auth_token="b")


def test_url_and_repr():
    with SpeechService() as service:
        assert service.url == f"ws://127.0.0.1:{service.port}"
        assert f"127.0.0.1:{service.port} running" in repr(service)
