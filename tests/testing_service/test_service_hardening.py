"""The bundled services under hostile use: no secret in any log, bounded records and threads.

Each test here failed before its fix (issue 10): the ``websockets`` logger
printed keys and tokens at DEBUG, bad JSON in ``speech.config`` was recorded as
a service bug, records and TokenService threads grew without a bound, stop()
with half-open sockets printed "no running event loop", and recorded SSML kept
``password=...``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import azure.cognitiveservices.speech as speechsdk
import pytest
from azure.identity import ManagedIdentityCredential
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from nativeguard.testing import MAX_RECORD_ITEMS, SpeechService, TokenService

# Real-looking secrets: a 32-hex subscription key, another one the service refuses.
KEY = "9c4e1f0a7b2d4e6f8a1c3e5b7d9f0a2c"
WRONG_KEY = "1b3d5f7a9c0e2a4c6e8a0c2e4a6c8e0f"
PASSWORD = "Tr0ub4dor-and-3-horses"
SCOPE = "https://cognitiveservices.azure.com/.default"


class Capture(logging.Handler):
    """Every record that reaches the root logger, formatted as a handler would print it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.texts.append(self.format(record) + repr(record.args) + repr(record.__dict__))


@pytest.fixture
def debug_logs() -> Iterator[Capture]:
    root = logging.getLogger()
    capture = Capture()
    saved = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(saved)


def recognize(config: speechsdk.SpeechConfig, wav: str) -> speechsdk.ResultReason:
    recognizer = speechsdk.SpeechRecognizer(config, speechsdk.audio.AudioConfig(filename=wav))
    reason = recognizer.recognize_once_async().get().reason
    del recognizer
    return reason


def test_no_secret_reaches_any_log_record_at_debug(debug_logs, wav_path):
    with SpeechService(require_key=KEY) as service:
        ok = recognize(service.speech_config(), wav_path)
        assert ok == speechsdk.ResultReason.RecognizedSpeech
        assert recognize(service.speech_config(subscription=WRONG_KEY), wav_path) == (
            speechsdk.ResultReason.Canceled
        )
        synthesizer = speechsdk.SpeechSynthesizer(service.speech_config(), audio_config=None)
        ssml = (
            "<speak version='1.0' xml:lang='en-US'><voice name='en-US-JennyNeural'>"
            f"my password={PASSWORD} is safe</voice></speak>"
        )
        assert synthesizer.speak_ssml_async(ssml).get().reason == (
            speechsdk.ResultReason.SynthesizingAudioCompleted
        )
        del synthesizer
    with TokenService() as tokens, tokens.patch_environ():
        credential = ManagedIdentityCredential()
        try:
            token = credential.get_token(SCOPE).token
        finally:
            credential.close()
        with SpeechService(require_token=tokens.is_valid) as service:
            config = service.speech_config(auth_token=token)
            assert recognize(config, wav_path) == speechsdk.ResultReason.RecognizedSpeech
        identity_header = tokens.identity_header
    # The capture is not vacuous: the handshake headers were logged, masked.
    service_lines = [
        r.getMessage() for r in debug_logs.records if r.name.startswith("websockets.server")
    ]
    assert any(line.lower().startswith("< ocp-apim-subscription-key:") for line in service_lines)
    assert any(line.lower().startswith("< authorization:") for line in service_lines)
    for secret in (KEY, WRONG_KEY, token, PASSWORD, identity_header):
        leaked = [text for text in debug_logs.texts if secret in text]
        assert leaked == [], f"a secret reached {len(leaked)} log records: {leaked[:2]}"


def test_a_logged_exception_is_masked_too(debug_logs):
    from nativeguard.testing._logs import service_logger

    logger, _ = service_logger()
    try:
        raise RuntimeError(f"Ocp-Apim-Subscription-Key: {KEY}")
    except RuntimeError:
        logger.debug("handshake failed for %s", f"Authorization: Bearer {KEY}", exc_info=True)
    (record,) = [r for r in debug_logs.records if r.name == logger.name]
    assert KEY not in logging.Formatter().format(record)
    assert record.exc_info is None
    assert "RuntimeError" in (record.exc_text or "")


def usp(service: SpeechService, path: str = "/speech/universal/v2"):
    return connect(service.url + path, subprotocols=["USP"], open_timeout=5, close_timeout=1)


def test_invalid_json_in_speech_config_is_a_protocol_error_not_a_service_bug():
    service = SpeechService().start()
    try:
        with usp(service) as client, pytest.raises(ConnectionClosed) as closed:
            client.send("Path:speech.config\r\nX-RequestId:1\r\n\r\n{not json")
            client.recv(timeout=2)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1007
        (log,) = service.connections
        assert len(log.errors) == 1
        assert log.errors[0].startswith("protocol error: message 'speech.config' body is not JSON")
    finally:
        service.stop()  # raised ServiceError before the fix


def test_connection_records_are_bounded_oldest_dropped():
    with SpeechService(max_records=5) as service:
        for _ in range(12):
            with usp(service) as client:
                client.send("Path:speech.config\r\n\r\n{}")
        assert service.connection_count == 12
        assert service.records_dropped == 7
        assert [log.index for log in service.connections] == [7, 8, 9, 10, 11]
        assert "connections=12" in repr(service)


def test_one_connections_record_lists_are_bounded():
    with SpeechService() as service:
        with usp(service) as client:
            for n in range(MAX_RECORD_ITEMS + 3):
                client.send(f'Path:speech.config\r\n\r\n{{"n": {n}}}')
            client.send("Path:telemetry\r\n\r\n{}")  # ordered after every config
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and service.connections[0].telemetry == 0:
                time.sleep(0.01)
        (log,) = service.connections
    assert len(log.speech_configs) == MAX_RECORD_ITEMS
    assert log.items_dropped == 3
    assert log.speech_configs[0] == {"n": 3}


@pytest.mark.parametrize("value", [0, -1])
def test_max_records_must_be_positive(value):
    with pytest.raises(ValueError, match="max_records"):
        SpeechService(max_records=value)


@pytest.mark.parametrize("value", ["5", 2.5, True, None])
def test_max_records_must_be_an_int(value):
    with pytest.raises(TypeError, match="max_records"):
        SpeechService(max_records=value)


def test_token_service_threads_are_bounded_and_all_end_at_stop():
    before = set(threading.enumerate())
    tokens = TokenService(max_connections=4).start()
    sockets = []
    try:
        # 40 slow clients: each sends half a request line and stalls.
        host, port = tokens.endpoint.split("/")[2].split(":")
        for _ in range(40):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"GET /msi/tok")
            sockets.append(sock)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and tokens.connections_rejected < 36:
            time.sleep(0.01)
        assert tokens.connections_rejected == 36
        serving = set(tokens.threads)
        assert len(serving) == 4
        new = set(threading.enumerate()) - before
        assert new == serving | {t for t in new if t.name == "nativeguard-token-service"}
        assert len(new) == 5
        # Rejected clients got an answer, not silence.
        answers = [s.recv(64) for s in sockets[4:6]]
        assert all(a.startswith(b"HTTP/1.1 503") for a in answers)
    finally:
        tokens.stop()
        for sock in sockets:
            sock.close()
    assert set(threading.enumerate()) - before == set()


def test_a_stalled_token_client_is_cut_off_after_the_request_timeout():
    with TokenService(request_timeout_s=0.3) as tokens:
        host, port = tokens.endpoint.split("/")[2].split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /msi/token?resource=r HTTP/1.1\r\n")
            start = time.monotonic()
            assert sock.recv(64) == b""  # closed by the service, nothing sent
            assert time.monotonic() - start < 2
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and tokens.threads:
            time.sleep(0.01)
        assert tokens.threads == ()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"max_connections": "4"}, TypeError, "max_connections"),
        ({"request_timeout_s": 0}, ValueError, "request_timeout_s"),
        ({"request_timeout_s": float("nan")}, ValueError, "request_timeout_s"),
        ({"lifetime_s": float("nan")}, ValueError, "lifetime_s"),
    ],
)
def test_token_service_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        TokenService(**kwargs)


def test_token_service_loopback_error_names_the_token_service():
    with pytest.raises(ValueError, match=r"^TokenService only binds loopback"):
        TokenService(host="10.0.0.1")
    with pytest.raises(ValueError, match=r"^TokenService host must be a loopback"):
        TokenService(host="example.com")


def test_stop_with_half_open_sockets_is_silent():
    # In a subprocess: the complaints came from coroutines finalised after the
    # service's loop had closed, printed on stderr by the unraisable hook.
    script = textwrap.dedent(
        """
        import socket
        from nativeguard.testing import SpeechService
        service = SpeechService().start()
        socks = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(100)]
        for sock in socks[::2]:
            sock.sendall(b"GET /speech/universal/v2 HTTP/1.1\\r\\nHost: x\\r\\n")
        import time; time.sleep(0.3)
        service.stop()
        import gc; gc.collect()
        for sock in socks:
            sock.close()
        print("stopped")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "stopped", done.stderr
    assert done.stderr == ""


def test_recorded_ssml_has_credentials_masked(speech_service):
    ssml = (
        "<speak version='1.0' xml:lang='en-US'><voice name='en-US-JennyNeural'>"
        f"the password={PASSWORD} and subscription_key: {KEY}</voice></speak>"
    )
    synthesizer = speechsdk.SpeechSynthesizer(speech_service.speech_config(), audio_config=None)
    result = synthesizer.speak_ssml_async(ssml).get()
    assert result.reason == speechsdk.ResultReason.SynthesizingAudioCompleted
    del synthesizer, result
    (recorded,) = speech_service.connections[-1].ssml
    assert PASSWORD not in recorded
    assert KEY not in recorded
    assert "password=<redacted>" in recorded


def audio_frame(request_id: str, payload: bytes) -> bytes:
    head = f"Path:audio\r\nX-RequestId:{request_id}\r\n".encode("ascii")
    return len(head).to_bytes(2, "big") + head + payload


@pytest.mark.parametrize(
    "context",
    [
        '{"phraseDetection": 5, "languageId": {"languages": [1, null]}, "phraseOutput": []}',
        '{"phraseDetection": {"enrichment": {"pronunciationAssessment": {"referenceText": 7,'
        ' "granularity": null, "enableMiscue": "no"}}}, "phraseOutput": {"format": 1}}',
        "[1, 2, 3]",
        '"just a string"',
    ],
)
def test_hostile_speech_context_is_answered_not_a_service_bug(context):
    service = SpeechService(script=["hello there"]).start()
    try:
        with usp(service, "/speech/recognition/interactive/cognitiveservices/v1") as client:
            client.send(f"Path:speech.context\r\nX-RequestId:r1\r\n\r\n{context}")
            client.send(audio_frame("r1", b"\x00" * 3200))
            client.send(audio_frame("r1", b""))
            paths = []
            while "turn.end" not in paths:
                frame = client.recv(timeout=5)
                assert isinstance(frame, str)
                paths.append(frame.split("\r\n", 1)[0].removeprefix("Path:"))
        assert "speech.phrase" in paths
    finally:
        service.stop()  # raises ServiceError if the service itself failed


@pytest.mark.parametrize(
    "context",
    [
        '{"synthesis": 5}',
        '{"synthesis": {"audio": {"metadataOptions": "all", "outputFormat": 16}}}',
        '{"synthesis": {"audio": {"metadataOptions": {"visemeEnabled": true,'
        ' "bookmarkEnabled": true, "sentenceBoundaryEnabled": true,'
        ' "punctuationBoundaryEnabled": true}}}}',
    ],
)
def test_hostile_synthesis_context_is_answered_not_a_service_bug(context):
    ssml = (
        "<speak version='1.0' xml:lang='en-US'>"
        "<voice name='v'>Hi <bookmark mark='b'/>.</voice></speak>"
    )
    service = SpeechService().start()
    try:
        with usp(service, "/cognitiveservices/websocket/v1") as client:
            client.send(f"Path:synthesis.context\r\nX-RequestId:s1\r\n\r\n{context}")
            client.send(f"Path:ssml\r\nX-RequestId:s1\r\n\r\n{ssml}")
            ended = False
            with contextlib.suppress(ConnectionClosed):
                while not ended:
                    frame = client.recv(timeout=5)
                    ended = isinstance(frame, str) and frame.startswith("Path:turn.end")
    finally:
        service.stop()


def test_per_connection_tables_are_bounded():
    # A client that sends synthesis contexts and never the SSML they announce:
    # each is ~2 KB; before the bound all 3000 were kept (+6 MB).
    import tracemalloc

    padding = "x" * 2000
    with SpeechService() as service:
        with usp(service, "/cognitiveservices/websocket/v1") as client:
            client.send("Path:synthesis.context\r\nX-RequestId:warm\r\n\r\n{}")
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for n in range(3000):
                    client.send(
                        f"Path:synthesis.context\r\nX-RequestId:r{n}\r\n\r\n"
                        f'{{"synthesis": {{"pad": "{padding}"}}}}'
                    )
                client.send("Path:telemetry\r\n\r\n{}")
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and service.connections[0].telemetry == 0:
                    time.sleep(0.01)
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
        (log,) = service.connections
    assert log.telemetry == 1
    assert len(log.contexts) == MAX_RECORD_ITEMS
    # 256 recorded contexts + 64 pending ones of ~2 KB each, plus slack.
    assert grown < 1.5 * 1024 * 1024, grown
