"""A local, protocol-compatible Azure Speech service on 127.0.0.1.

The real ``azure-cognitiveservices-speech`` SDK connects to it with
``SpeechConfig(host="ws://127.0.0.1:PORT")`` and gets real recognition,
transcription and synthesis events, so leak tests exercise the native core
exactly as production does, offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import ipaddress
import math
import re
import threading
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.cognitiveservices.speech as speechsdk
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .._core._errors import ProtocolError, ServiceError, closed_with, conclude_exit
from .._core._redact import redact_headers, redact_text
from ._audio import (
    AudioFormat,
    SynthesizedSpeech,
    parse_output_format,
    parse_wav_header,
    synthesize_words,
)
from ._faults import FaultPlan, Faults, check_plan, resolve_faults
from ._logs import service_logger
from ._recognition import RecognitionRequest, apply_profanity, detected_language, phrase_body
from ._script import TICKS_PER_SECOND, Phrase, Script, TimedPhrase
from ._ssml import SsmlDocument, SsmlError, parse_ssml
from ._usp import Message, binary_frame, parse_binary, parse_text, text_frame

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_MAX_RECORDS",
    "MAX_RECORD_ITEMS",
    "ConnectionLog",
    "SpeechService",
]

DEFAULT_KEY = "nativeguard-local-key"
"""Subscription key :meth:`SpeechService.speech_config` uses when none is required."""

DEFAULT_MAX_RECORDS = 1000
"""Connection records :class:`SpeechService` keeps by default (the newest)."""

MAX_RECORD_ITEMS = 256
"""Entries kept per list (configs, contexts, SSML, errors) of one connection record."""

_STOP_TIMEOUT_S = 1.0
_CLOSE_TIMEOUT_S = 0.2
_START_TIMEOUT_S = 5.0
_MAX_BOUND = 1 << 31  # connection, record and message-size limits: beyond any test's use
_TTS_CHUNK_S = 0.1
_TOKEN_PREFIX = re.compile(r"^aad#[^#]*#")

# Frames that break the protocol in different places. The SDK drops frames it
# cannot parse, so a request answered only with these ends in ServiceTimeout.
# Deliberately absent: a binary frame whose 2-byte header length exceeds the
# frame. Measured with SDK 1.53, that crashes the native core (SIGSEGV in
# recognize_once) in most runs; a test bed must not take the test run down.
_MALFORMED_FRAMES: tuple[str, ...] = (
    "this frame has no header block",
    "Path:speech.phrase\r\nContent-Type:application/json\r\n\r\n{this is not json",
    "X-RequestId:0\r\n\r\n{}",
    'Path:turn.start\r\nX-RequestId:0\r\n\r\n{"context":',
)

# Client-side timeouts the SDK honours; shortened so a stalled service cancels
# in seconds instead of the SDK's defaults of 60-80 s.
_ONESHOT_TIMEOUT = "SPEECH-OneShotRecognition-OperationTimeoutMs"
_TTS_FIRST_CHUNK_TIMEOUT = "SpeechSynthesis_FirstChunkTimeoutMs"
_TTS_ALL_CHUNKS_TIMEOUT = "SpeechSynthesis_AllChunkTimeoutMs"
_STOP_RECOGNITION_TIMEOUT = "SPEECH-StopRecognitionTimeoutInSeconds"


@dataclass(frozen=True)
class ConnectionLog:
    """What the service received on one connection (secrets redacted)."""

    index: int
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    refused: int | None
    faults: Faults
    speech_configs: tuple[Any, ...]
    contexts: tuple[Any, ...]
    ssml: tuple[str, ...]
    telemetry: int
    audio_bytes: int
    audio_frames: int
    turns: int
    messages_received: int
    messages_sent: int
    errors: tuple[str, ...]
    items_dropped: int = 0
    """Oldest ``speech_configs``/``contexts``/``ssml``/``errors`` entries dropped
    beyond :data:`MAX_RECORD_ITEMS` per list on this connection."""

    @property
    def kind(self) -> str:
        """The endpoint: interactive, conversation, dictation, universal, translation,
        synthesis or other."""
        return _kind_of(self.path)


@dataclass
class _ConnectionState:
    index: int
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    faults: Faults
    refused: int | None = None
    speech_configs: deque[Any] = field(default_factory=lambda: deque(maxlen=MAX_RECORD_ITEMS))
    contexts: deque[Any] = field(default_factory=lambda: deque(maxlen=MAX_RECORD_ITEMS))
    ssml: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_RECORD_ITEMS))
    telemetry: int = 0
    audio_bytes: int = 0
    audio_frames: int = 0
    turns: int = 0
    received: int = 0
    sent: int = 0
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_RECORD_ITEMS))
    items_dropped: int = 0
    synthesis_contexts: dict[str, Any] = field(default_factory=dict)
    recognition: RecognitionRequest | None = None
    outbox: asyncio.Queue[str | bytes] | None = None
    """Frames a ``delay_ms`` connection still has to send (see ``_send_delayed``)."""
    sender: asyncio.Task[None] | None = None

    def log(self) -> ConnectionLog:
        return ConnectionLog(
            index=self.index,
            path=self.path,
            query=dict(self.query),
            headers=dict(self.headers),
            refused=self.refused,
            faults=self.faults,
            speech_configs=tuple(self.speech_configs),
            contexts=tuple(self.contexts),
            ssml=tuple(self.ssml),
            telemetry=self.telemetry,
            audio_bytes=self.audio_bytes,
            audio_frames=self.audio_frames,
            turns=self.turns,
            messages_received=self.received,
            messages_sent=self.sent,
            errors=tuple(self.errors),
            items_dropped=self.items_dropped,
        )

    def keep(self, items: deque[Any], value: Any) -> None:
        """Append to a bounded record list, counting what falls off."""
        if len(items) == items.maxlen:
            self.items_dropped += 1
        items.append(value)


@dataclass
class _Turn:
    request_id: str
    phrases: tuple[TimedPhrase, ...]
    request: RecognitionRequest
    language: dict[str, str] | None = None
    fmt: AudioFormat = field(default_factory=AudioFormat)
    audio_bytes: int = 0
    started: bool = False
    speech_started: bool = False
    next_phrase: int = 0
    ended: bool = False

    @property
    def position(self) -> int:
        """Audio received so far, in ticks."""
        return self.audio_bytes * TICKS_PER_SECOND // max(1, self.fmt.bytes_per_second)


class _Dropped(Exception):
    """The fault plan dropped the connection; the handler ends quietly."""


def _kind_of(path: str) -> str:
    if path.startswith("/speech/recognition/"):
        return path.split("/")[3]
    if path.startswith("/speech/universal/"):
        return "universal"
    if path.startswith("/speech/translation/"):
        return "translation"
    if path.startswith("/cognitiveservices/websocket/"):
        return "synthesis"
    return "other"


def _check_loopback(host: str, service: str = "SpeechService") -> str:
    if not isinstance(host, str):
        raise TypeError(f"{service} host must be a str, got {type(host).__name__}")
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{service} host must be a loopback address, got {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"{service} only binds loopback addresses, got {host!r}")
    return host


_MAX_PENDING = 64
"""Turns and synthesis contexts remembered per connection (the newest)."""


def _remember(items: dict[str, Any], key: str, value: Any) -> None:
    """Insert into a per-connection table, forgetting the oldest beyond ``_MAX_PENDING``."""
    items.pop(key, None)
    items[key] = value
    while len(items) > _MAX_PENDING:
        del items[next(iter(items))]


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _metadata(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"Metadata": [{"Type": kind, "Data": data}]}


def _ticks(seconds: float) -> int:
    return round(seconds * TICKS_PER_SECOND)


def _boundary(offset_s: float, duration_s: float, text: str, boundary: str) -> dict[str, Any]:
    return {
        "Offset": _ticks(offset_s),
        "Duration": _ticks(duration_s),
        "text": {"Text": text, "Length": len(text), "BoundaryType": boundary},
    }


# Azure's viseme IDs (0 silence ... 21 p/b/m), approximated from letters: the
# local service has no phonemes.
_VISEME_OF_LETTER = {
    **dict.fromkeys("a", 2),
    **dict.fromkeys("e", 4),
    **dict.fromkeys("iy", 6),
    **dict.fromkeys("o", 8),
    **dict.fromkeys("uw", 7),
    "h": 12,
    "r": 13,
    "l": 14,
    **dict.fromkeys("szc", 15),
    "j": 16,
    **dict.fromkeys("fv", 18),
    **dict.fromkeys("dtn", 19),
    **dict.fromkeys("kgqx", 20),
    **dict.fromkeys("pbm", 21),
}
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_PUNCTUATION = re.compile(r"[^\w\s'-]")


def _synthesis_events(
    speech: SynthesizedSpeech, document: SsmlDocument, options: Mapping[str, Any]
) -> list[tuple[float, dict[str, Any]]]:
    """The ``audio.metadata`` bodies the client asked for, with their audio offsets (s)."""
    events: list[tuple[float, dict[str, Any]]] = []
    words = speech.words
    if options.get("wordBoundaryEnabled"):
        for word in words:
            events.append(
                (
                    word.offset_s,
                    _metadata(
                        "WordBoundary",
                        _boundary(word.offset_s, word.duration_s, word.text, "WordBoundary"),
                    ),
                )
            )
    if options.get("punctuationBoundaryEnabled"):
        for match in _PUNCTUATION.finditer(document.text):
            before = [w for w in words if w.text_offset < match.start()]
            at = before[-1].offset_s + before[-1].duration_s if before else 0.0
            events.append(
                (
                    at,
                    _metadata(
                        "WordBoundary", _boundary(at, 0.0, match.group(), "PunctuationBoundary")
                    ),
                )
            )
    if options.get("sentenceBoundaryEnabled"):
        start = 0
        for end in [m.end() for m in _SENTENCE_END.finditer(document.text)] + [len(document.text)]:
            inside = [w for w in words if start <= w.text_offset < end]
            sentence = document.text[start:end].strip()
            if inside and sentence:
                first, last = inside[0], inside[-1]
                span = last.offset_s + last.duration_s - first.offset_s
                events.append(
                    (
                        first.offset_s,
                        _metadata(
                            "SentenceBoundary",
                            _boundary(first.offset_s, span, sentence, "SentenceBoundary"),
                        ),
                    )
                )
            start = end
    if options.get("bookmarkEnabled"):
        for position, mark in document.bookmarks:
            after = [w for w in words if w.text_offset >= position]
            at = after[0].offset_s if after else speech.duration_s
            events.append((at, _metadata("Bookmark", {"Offset": _ticks(at), "Bookmark": mark})))
    if options.get("visemeEnabled"):
        events.append((0.0, _metadata("Viseme", {"Offset": 0, "VisemeId": 0})))
        for word in words:
            letters = [c for c in word.text.lower() if c in _VISEME_OF_LETTER] or ["a"]
            for index, letter in enumerate(letters):
                at = word.offset_s + word.duration_s * index / len(letters)
                events.append(
                    (
                        at,
                        _metadata(
                            "Viseme", {"Offset": _ticks(at), "VisemeId": _VISEME_OF_LETTER[letter]}
                        ),
                    )
                )
        end_s = words[-1].offset_s + words[-1].duration_s if words else 0.0
        events.append((end_s, _metadata("Viseme", {"Offset": _ticks(end_s), "VisemeId": 0})))
    events.sort(key=lambda event: event[0])
    return events


class SpeechService:
    """A websocket server that speaks the Speech SDK's protocol on loopback.

    Runs on its own thread and event loop. Use as a context manager::

        with SpeechService(script=["hello world"]) as service:
            recognizer = speechsdk.SpeechRecognizer(service.speech_config(), audio_config)

    ``require_key`` / ``require_token`` make it refuse connections without the
    right ``Ocp-Apim-Subscription-Key`` or ``Authorization: Bearer`` token (HTTP
    401, as the real service does); ``require_token`` takes a token or a
    callable that validates one (e.g. ``TokenService.is_valid``). ``faults``
    injects failures for the whole service or per connection.
    """

    def __init__(
        self,
        script: Script | Iterable[Phrase | str] | None = None,
        *,
        require_key: str | None = None,
        require_token: str | Callable[[str], bool] | None = None,
        faults: FaultPlan = None,
        host: str = "127.0.0.1",
        max_connections: int = 64,
        max_message_bytes: int = 1 << 20,
        response_timeout_s: float = 5.0,
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        if require_key is not None and not (isinstance(require_key, str) and require_key):
            raise TypeError("require_key must be a non-empty str")
        if require_token is not None and not (
            (isinstance(require_token, str) and require_token) or callable(require_token)
        ):
            raise TypeError("require_token must be a non-empty str or a callable(token) -> bool")
        for name, value in (
            ("max_connections", max_connections),
            ("max_message_bytes", max_message_bytes),
            ("max_records", max_records),
            ("response_timeout_s", response_timeout_s),
        ):
            kinds = (int, float) if name == "response_timeout_s" else int
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not 1 <= max_connections <= _MAX_BOUND:
            raise ValueError(f"max_connections must be within [1, 2**31], got {max_connections}")
        if not 1024 <= max_message_bytes <= _MAX_BOUND:
            raise ValueError(
                f"max_message_bytes must be within [1024, 2**31], got {max_message_bytes}"
            )
        if not (math.isfinite(response_timeout_s) and response_timeout_s > 0):
            raise ValueError(f"response_timeout_s must be finite and > 0, got {response_timeout_s}")
        if not 1 <= max_records <= _MAX_BOUND:
            raise ValueError(f"max_records must be within [1, 2**31], got {max_records}")
        if script is not None and not isinstance(script, (Script, Phrase, str, Iterable)):
            raise TypeError(
                f"script must be a Script, or an iterable of Phrase or str, "
                f"got {type(script).__name__}"
            )
        self._script = Script.coerce(script)
        self._require_key = require_key
        self._require_token = require_token
        self._faults = check_plan(faults)
        self._host = _check_loopback(host)
        self._max_connections = max_connections
        self._max_message_bytes = max_message_bytes
        self._response_timeout_s = response_timeout_s

        self._lock = threading.Lock()
        self._states: deque[_ConnectionState] = deque(maxlen=max_records)
        self._connection_count = 0
        self._live: dict[ServerConnection, _ConnectionState] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._internal_errors: list[str] = []
        self._state = "new"
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._startup_error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> SpeechService:
        """Bind an ephemeral loopback port and serve on a background thread."""
        if self._state != "new":
            raise ServiceError(
                f"SpeechService is {self._state}; a service starts once, create a new one"
            )
        self._state = "starting"
        self._register_secrets(add=True)
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="nativeguard-speech-service", daemon=True
        )
        self._thread.start()
        if not ready.wait(_START_TIMEOUT_S):
            self._state = "stopped"
            self._register_secrets(add=False)
            raise ServiceError(f"SpeechService did not start within {_START_TIMEOUT_S} s")
        if self._startup_error is not None:
            self._state = "stopped"
            self._register_secrets(add=False)
            self._thread.join(_STOP_TIMEOUT_S)
            raise ServiceError(f"SpeechService failed to start: {self._startup_error!r}") from (
                self._startup_error
            )
        self._state = "running"
        return self

    def stop(self) -> None:
        """Close every connection and the listener; idempotent, returns within ~1 s.

        Raises ``ServiceError`` (after stopping) if the service itself failed
        while serving: a bug here must not pass as an SDK failure.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopped"
        loop, stop_requested, thread = self._loop, self._stop_requested, self._thread
        if loop is not None and stop_requested is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already finished on its own
                loop.call_soon_threadsafe(stop_requested.set)
        if thread is not None:
            thread.join(_STOP_TIMEOUT_S * 2)
        self._register_secrets(add=False)
        if thread is not None and thread.is_alive():
            raise ServiceError("SpeechService thread did not stop within 2 s")
        if self._internal_errors:
            raise ServiceError(
                "SpeechService failed while serving:\n" + "\n".join(self._internal_errors)
            )

    def _known_secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self._require_key, self._require_token) if isinstance(s, str))

    def _internal_error(self, text: str) -> None:
        """Record a failure of the service itself (raised by stop()), secrets masked."""
        self._internal_errors.append(redact_text(text, self._known_secrets()))

    def _register_secrets(self, *, add: bool) -> None:
        """Tell the log filter the exact secrets this service knows (beyond header shapes)."""
        _, log_filter = service_logger()
        for secret in (self._require_key, self._require_token):
            if isinstance(secret, str):
                if add:
                    log_filter.add_secret(secret)
                else:
                    log_filter.remove_secret(secret)

    def __enter__(self) -> SpeechService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conclude_exit(exc, closed_with(self.stop, ServiceError), str)

    async def __aenter__(self) -> SpeechService:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # stop() joins a thread for up to a second: keep the event loop free.
        await asyncio.get_running_loop().run_in_executor(None, self.__exit__, exc_type, exc, tb)

    # -- public surface --------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServiceError("SpeechService has no port until start()")
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"ws://{host}:{self.port}"

    @property
    def script(self) -> Script:
        return self._script

    @property
    def faults(self) -> FaultPlan:
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        """Change the fault plan; applies to connections opened from now on."""
        self._faults = check_plan(plan)

    @property
    def connections(self) -> tuple[ConnectionLog, ...]:
        """The newest ``max_records`` connection attempts, refused ones included,
        oldest first; ``ConnectionLog.index`` counts every attempt."""
        with self._lock:
            return tuple(state.log() for state in self._states)

    @property
    def connection_count(self) -> int:
        """Connection attempts so far, refused ones included (recorded or not)."""
        with self._lock:
            return self._connection_count

    @property
    def records_dropped(self) -> int:
        """Connection records dropped (oldest first) to stay within ``max_records``."""
        with self._lock:
            return self._connection_count - len(self._states)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._live)

    def speech_config(
        self,
        *,
        subscription: str | None = None,
        auth_token: str | None = None,
        language: str | None = None,
    ) -> speechsdk.SpeechConfig:
        """A real ``speechsdk.SpeechConfig`` pointed at this service.

        Uses the required key (or :data:`DEFAULT_KEY`) unless ``subscription``
        or ``auth_token`` is given, and shortens the SDK's client-side response
        timeouts to ``response_timeout_s`` so a stalled service fails fast.
        """
        config: speechsdk.SpeechConfig = self._config(
            speechsdk.SpeechConfig, subscription, auth_token, language
        )
        return config

    def translation_config(
        self,
        *target_languages: str,
        subscription: str | None = None,
        auth_token: str | None = None,
        language: str = "en-US",
    ) -> speechsdk.translation.SpeechTranslationConfig:
        """A real ``SpeechTranslationConfig`` pointed at this service.

        Translations are scripted (``Phrase.translations``) or ``"[lang] text"``.
        """
        if not target_languages:
            raise ValueError("translation_config needs at least one target language")
        config = self._config(
            speechsdk.translation.SpeechTranslationConfig, subscription, auth_token, language
        )
        for target in target_languages:
            config.add_target_language(target)
        return config

    def _config(
        self,
        config_type: Any,
        subscription: str | None,
        auth_token: str | None,
        language: str | None,
    ) -> Any:
        if auth_token is not None and subscription is not None:
            raise ValueError("give subscription or auth_token, not both")
        if auth_token is not None:
            config = config_type(host=self.url)
            config.authorization_token = auth_token
        else:
            key = subscription if subscription is not None else (self._require_key or DEFAULT_KEY)
            config = config_type(host=self.url, subscription=key)
        if language is not None:
            config.speech_recognition_language = language
        self.apply_timeouts(config)
        return config

    def apply_timeouts(self, config: speechsdk.SpeechConfig) -> None:
        """Set the SDK's client-side response timeouts on ``config``.

        Measured with SDK 1.53: on a silent service ``recognize_once`` gives
        up after about twice the timeout (it waits for a result, then for the
        session to stop), stopping a continuous session after the timeout,
        synthesis after about the timeout. Keep it above ~3 s where refused or
        dropped connections must surface as such: the SDK spends that long
        retrying before it reports them.
        """
        timeout_ms = str(int(self._response_timeout_s * 1000))
        for name in (_ONESHOT_TIMEOUT, _TTS_FIRST_CHUNK_TIMEOUT, _TTS_ALL_CHUNKS_TIMEOUT):
            config.set_property_by_name(name, timeout_ms)
        config.set_property_by_name(
            _STOP_RECOGNITION_TIMEOUT, str(max(1, math.ceil(self._response_timeout_s)))
        )

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "unbound"
        return f"<SpeechService {where} {self._state} connections={self.connection_count}>"

    # -- event loop thread -----------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # recorded and re-raised by start()/stop()
            if not ready.is_set():
                self._startup_error = exc
                ready.set()
            else:
                self._internal_error("".join(traceback.format_exception(exc)))
        finally:
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stop_requested = asyncio.Event()
        opened: set[ServerConnection] = set()

        class TrackedConnection(ServerConnection):
            # Every TCP connection, including ones still in (or stuck before) the
            # websocket handshake, so stop() can end them all on the loop.
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                opened.add(self)
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                opened.discard(self)
                super().connection_lost(exc)

        logger, _ = service_logger()
        server: Server = await serve(
            self._handle,
            self._host,
            0,
            subprotocols=[Subprotocol("USP")],
            process_request=self._process_request,
            max_size=self._max_message_bytes,
            close_timeout=_CLOSE_TIMEOUT_S,
            ping_interval=None,
            compression=None,
            logger=logger,
            create_connection=TrackedConnection,
        )
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            server.close(close_connections=False)
            for task in list(self._tasks):
                task.cancel()
            for connection in list(opened | set(self._live)):
                connection.transport.abort()
            # Let every handler (handshakes included) finish on this loop: one left
            # pending when the loop closes complains "no running event loop".
            pending = [task for task in server.handler_tasks if not task.done()]
            if pending:
                await asyncio.wait(pending, timeout=_STOP_TIMEOUT_S / 2)
            for task in pending:
                if not task.done():
                    task.cancel()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), _STOP_TIMEOUT_S / 2)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        split = urlsplit(request.path)
        with self._lock:
            index = self._connection_count
            self._connection_count += 1
            try:
                faults = resolve_faults(self._faults, index, split.path)
            except Exception:  # the test's fault plan broke: fail stop(), refuse this one
                self._internal_error(
                    f"fault plan for connection {index} ({split.path}):\n{traceback.format_exc()}"
                )
                faults = Faults(refuse=True, refuse_status=http.HTTPStatus.INTERNAL_SERVER_ERROR)
            state = _ConnectionState(
                index=index,
                path=split.path,
                query=dict(parse_qsl(split.query)),
                headers=redact_headers(request.headers.raw_items()),
                faults=faults,
            )
            self._states.append(state)
            live = len(self._live)
        refusal = self._refusal(request.headers, faults, live)
        if refusal is not None:
            status, text = refusal
            state.refused = status
            return connection.respond(status, text)
        with self._lock:
            self._live[connection] = state
        return None

    def _refusal(self, headers: Headers, faults: Faults, live: int) -> tuple[int, str] | None:
        if faults.refuse:
            return faults.refuse_status, "Refused by fault injection.\n"
        if live >= self._max_connections:
            return http.HTTPStatus.TOO_MANY_REQUESTS, "Too many open connections.\n"
        if self._require_key is None and self._require_token is None:
            return None
        key = headers.get("Ocp-Apim-Subscription-Key")
        if self._require_key is not None and key == self._require_key:
            return None
        authorization = headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if self._require_token is not None and scheme.lower() == "bearer" and token:
            token = _TOKEN_PREFIX.sub("", token)
            valid = (
                token == self._require_token
                if isinstance(self._require_token, str)
                else self._require_token(token)
            )
            if valid:
                return None
        return (
            http.HTTPStatus.UNAUTHORIZED,
            "Access denied due to invalid subscription key or wrong API endpoint.\n",
        )

    async def _handle(self, connection: ServerConnection) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            state = self._live[connection]
        turns: dict[str, _Turn] = {}
        try:
            async for raw in connection:
                state.received += 1
                try:
                    message = parse_binary(raw) if isinstance(raw, bytes) else parse_text(raw)
                    await self._dispatch(connection, state, message, turns)
                except ProtocolError as error:
                    # The client broke the protocol (a bad frame, or a JSON body that
                    # is not JSON): that connection ends, the service is fine.
                    masked = redact_text(str(error), self._known_secrets())
                    state.keep(state.errors, f"protocol error: {masked}")
                    await connection.close(1007, "invalid frame")
                    return
        except (ConnectionClosed, _Dropped):
            pass
        except Exception:
            self._internal_error(
                f"connection {state.index} ({state.path}):\n{traceback.format_exc()}"
            )
            connection.transport.abort()
        finally:
            self._tasks.discard(task)
            with self._lock:
                self._live.pop(connection, None)
            if state.sender is not None:
                state.sender.cancel()  # the connection is over: waiting frames go nowhere

    async def _dispatch(
        self,
        connection: ServerConnection,
        state: _ConnectionState,
        message: Message,
        turns: dict[str, _Turn],
    ) -> None:
        faults = state.faults
        if faults.close_after == 0:
            connection.transport.abort()
            raise _Dropped
        path = message.path.lower()
        if path == "audio":
            assert isinstance(message.body, bytes)
            await self._on_audio(connection, state, message, turns)
        elif path == "speech.config":
            state.keep(state.speech_configs, message.json())
        elif path in ("speech.context", "synthesis.context"):
            body = message.json()
            state.keep(state.contexts, body)
            if path == "speech.context" and isinstance(body, dict):
                state.recognition = RecognitionRequest.from_body(
                    body, _kind_of(state.path), state.query
                )
            if path == "synthesis.context" and message.request_id:
                _remember(state.synthesis_contexts, message.request_id, body)
        elif path == "telemetry":
            state.telemetry += 1
        elif path == "ssml":
            assert isinstance(message.body, str)
            state.keep(state.ssml, redact_text(message.body))
            await self._on_ssml(connection, state, message)
        else:
            state.keep(state.errors, f"unknown message path {message.path!r}")

    async def _send(
        self, connection: ServerConnection, state: _ConnectionState, frame: str | bytes
    ) -> None:
        faults = state.faults
        if faults.stall:
            return
        if faults.close_after is not None and state.sent >= faults.close_after:
            connection.transport.abort()
            raise _Dropped
        if faults.delay_ms:
            if state.outbox is None:
                state.outbox = asyncio.Queue()
                state.sender = sender = asyncio.ensure_future(self._send_delayed(connection, state))
                self._tasks.add(sender)
                sender.add_done_callback(self._tasks.discard)
            state.outbox.put_nowait(frame)
            return
        if faults.malformed:
            frame = _MALFORMED_FRAMES[state.sent % len(_MALFORMED_FRAMES)]
        await connection.send(frame)
        state.sent += 1

    async def _send_delayed(self, connection: ServerConnection, state: _ConnectionState) -> None:
        """Send a slow connection's frames, each ``delay_ms`` late, in order.

        A real service that is slow to answer still reads what the client sends:
        its close frame included. Sleeping in the reading task instead stopped
        reading once websockets' queue filled with audio, and the SDK then waited
        1 s for the close handshake of every stop (SDK 1.53 log: ``PerformTeardown:
        start the close handshake``).
        """
        assert state.outbox is not None
        try:
            while True:
                frame = await state.outbox.get()
                await asyncio.sleep(state.faults.delay_ms / 1000)
                if state.faults.malformed:
                    frame = _MALFORMED_FRAMES[state.sent % len(_MALFORMED_FRAMES)]
                await connection.send(frame)
                state.sent += 1
        except ConnectionClosed:
            pass

    # -- recognition -----------------------------------------------------

    async def _on_audio(
        self,
        connection: ServerConnection,
        state: _ConnectionState,
        message: Message,
        turns: dict[str, _Turn],
    ) -> None:
        payload = message.body
        assert isinstance(payload, bytes)
        request_id = message.request_id or ""
        state.audio_frames += 1
        turn = turns.get(request_id)
        if turn is None:
            state.turns += 1
            request = state.recognition or RecognitionRequest.from_body(
                {}, _kind_of(state.path), state.query
            )
            turn = _Turn(
                request_id=request_id,
                phrases=self._script.next_turn(state.index),
                request=request,
            )
            _remember(turns, request_id, turn)
        if turn.ended:
            return
        if not turn.started:
            turn.started = True
            await self._send(
                connection,
                state,
                text_frame("turn.start", request_id, {"context": {"serviceTag": uuid.uuid4().hex}}),
            )
        header = parse_wav_header(payload) if turn.audio_bytes == 0 else None
        if header is not None:
            turn.fmt, header_len = header
            payload = payload[header_len:]
        state.audio_bytes += len(payload)
        turn.audio_bytes += len(payload)
        end_of_stream = len(message.body) == 0
        while turn.next_phrase < len(turn.phrases) and (
            end_of_stream or turn.phrases[turn.next_phrase].end <= turn.position
        ):
            await self._send_phrase(connection, state, turn, turn.phrases[turn.next_phrase])
            turn.next_phrase += 1
            if turn.request.single_phrase:
                end_of_stream = True
                break
        if end_of_stream:
            await self._end_turn(connection, state, turn)

    async def _send_phrase(
        self,
        connection: ServerConnection,
        state: _ConnectionState,
        turn: _Turn,
        timed: TimedPhrase,
    ) -> None:
        rid = turn.request_id
        status = state.faults.status or timed.phrase.status
        if not turn.speech_started and status == "Success":
            turn.speech_started = True
            await self._send(
                connection, state, text_frame("speech.startDetected", rid, {"Offset": timed.offset})
            )
        extra: dict[str, Any] = {}
        if timed.phrase.speaker is not None:
            extra["SpeakerId"] = timed.phrase.speaker
        request = turn.request
        if request.translate_to:
            await self._send_translation(connection, state, turn, timed, status)
            return
        language: dict[str, str] | None = None
        if request.languages:
            # At-start detection decides once per turn; continuous detection per phrase.
            if turn.language is None or request.continuous_language:
                turn.language = detected_language(timed.phrase, request.languages)
            language = turn.language
        if status == "Success" and request.recognize:
            words = max(1, len(timed.phrase.text.split()))
            for hypothesis in timed.hypotheses:
                shown = len(hypothesis.split())
                body: dict[str, Any] = {
                    "Text": apply_profanity(hypothesis, request.profanity),
                    "Offset": timed.offset,
                    "Duration": timed.duration * min(shown, words) // words,
                    **extra,
                }
                if language is not None:
                    body["PrimaryLanguage"] = dict(language)
                await self._send(connection, state, text_frame("speech.hypothesis", rid, body))
        answer = phrase_body(timed, status, request, extra, language)
        await self._send(connection, state, text_frame("speech.phrase", rid, answer))

    async def _send_translation(
        self,
        connection: ServerConnection,
        state: _ConnectionState,
        turn: _Turn,
        timed: TimedPhrase,
        status: str,
    ) -> None:
        rid = turn.request_id

        def translated(text: str) -> dict[str, Any]:
            return {
                "TranslationStatus": "Success",
                "Translations": [
                    {"Language": lang, "Text": timed.phrase.translation(lang, text)}
                    for lang in turn.request.translate_to
                ],
            }

        if status == "Success":
            for hypothesis in timed.hypotheses:
                body = {
                    "Text": hypothesis,
                    "Offset": timed.offset,
                    "Duration": timed.duration,
                    "Translation": translated(hypothesis),
                }
                await self._send(connection, state, text_frame("translation.hypothesis", rid, body))
        phrase: dict[str, Any] = {
            "RecognitionStatus": status,
            "Offset": timed.offset,
            "Duration": timed.duration,
        }
        if status == "Success":
            phrase["Text"] = timed.phrase.text
            phrase["Translation"] = translated(timed.phrase.text)
        await self._send(connection, state, text_frame("translation.phrase", rid, phrase))

    async def _end_turn(
        self, connection: ServerConnection, state: _ConnectionState, turn: _Turn
    ) -> None:
        turn.ended = True
        acknowledged = turn.phrases[turn.next_phrase - 1].end if turn.next_phrase else 0
        if not turn.request.single_phrase and turn.position > acknowledged:
            # Without this the SDK treats the audio after the last phrase as
            # unprocessed and replays it in a new turn, as it does after a
            # service hiccup.
            await self._send(
                connection,
                state,
                text_frame(
                    "speech.phrase",
                    turn.request_id,
                    {
                        "RecognitionStatus": "EndOfDictation",
                        "Offset": acknowledged,
                        "Duration": turn.position - acknowledged,
                    },
                ),
            )
        if turn.speech_started:
            await self._send(
                connection,
                state,
                text_frame("speech.endDetected", turn.request_id, {"Offset": turn.position}),
            )
        await self._send(connection, state, text_frame("turn.end", turn.request_id, {}))

    # -- synthesis -------------------------------------------------------

    async def _on_ssml(
        self, connection: ServerConnection, state: _ConnectionState, message: Message
    ) -> None:
        rid = message.request_id or ""
        context = state.synthesis_contexts.pop(rid, None) or {}
        audio_options = _as_dict(_as_dict(_as_dict(context).get("synthesis")).get("audio"))
        format_name = str(audio_options.get("outputFormat", "riff-16khz-16bit-mono-pcm"))
        fmt = parse_output_format(format_name)
        if fmt is None:
            state.keep(state.errors, f"unsupported output format {format_name!r}")
            await connection.close(
                1007,
                f"nativeguard SpeechService cannot encode {format_name!r}; "
                "use a raw-* or riff-* pcm, mulaw or alaw format",
            )
            raise _Dropped
        options = _as_dict(audio_options.get("metadataOptions"))
        assert isinstance(message.body, str)
        try:
            document = parse_ssml(message.body)
        except SsmlError as error:
            # As the real service does: close 1007 with the reason, which the SDK
            # reports as a canceled result (BadRequest) with the reason in its details.
            state.keep(state.errors, f"rejected SSML: {error}")
            await connection.close(1007, str(error))
            raise _Dropped from None
        speech = synthesize_words(document.text, fmt)
        await self._send(
            connection,
            state,
            text_frame("turn.start", rid, {"context": {"serviceTag": uuid.uuid4().hex}}),
        )
        chunk = max(2, int(fmt.bytes_per_second * _TTS_CHUNK_S))
        events = _synthesis_events(speech, document, options)
        for start in range(0, len(speech.audio), chunk):
            # Like the real service, announce an event before the audio that holds it.
            chunk_end_s = (start + chunk - speech.header_bytes) / fmt.bytes_per_second
            while events and events[0][0] < chunk_end_s:
                await self._send(
                    connection, state, text_frame("audio.metadata", rid, events.pop(0)[1])
                )
            audio = speech.audio[start : start + chunk]
            await self._send(
                connection, state, binary_frame("audio", rid, audio, {"X-StreamId": "1"})
            )
        if options.get("sessionEndEnabled"):
            end = {
                "Metadata": [
                    {
                        "Type": "SessionEnd",
                        "Data": {"Offset": round(speech.duration_s * TICKS_PER_SECOND)},
                    }
                ]
            }
            await self._send(connection, state, text_frame("audio.metadata", rid, end))
        await self._send(connection, state, text_frame("turn.end", rid, {}))
