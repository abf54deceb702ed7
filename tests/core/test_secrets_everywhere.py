"""No secret leaves nativeguard: every exception type it raises, and every service log record.

Issue 10 ("What to build"): each exception type in ``nativeguard/_errors.py`` is
driven here with real-looking credentials in its inputs (a subscription key,
bearer tokens, ``password=...``, ``token=...``, a key used as a dict key and
inside attribute names on a holder chain), and everything a caller could print
or log of it is searched: ``str()``, ``repr()``, ``traceback.format_exception``
(which includes the notes and an exception group's members), the notes, and the
text of its public attributes (a ``LeakError``'s report). Every log record
emitted while this module runs, at DEBUG on the root logger (so the bundled
services' ``websockets`` records included), is searched the same way.

Two exception types take no caller input at all and are not driven:
``NativeDiagnosticsUnavailable`` and ``NativeDiagnosticsFormatError`` are built
only from the Speech SDK's own library path and handle-table shape.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.cognitiveservices.speech as speechsdk
import pytest
import secrets_everywhere_tasks as tasks
from websockets.sync.client import connect

import nativeguard as ng
from nativeguard import verify
from nativeguard._core._adapters import _registry
from nativeguard._core._errors import add_note
from nativeguard.isolate import (
    NotPlainDataError,
    RemoteTaskError,
    TaskTimeout,
    WorkerCrashed,
    WorkerPool,
    WorkerStartError,
)
from nativeguard.testing import Faults, SpeechService, write_wav

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("fork_server")]

KEY = "4f9e2b7c1d8a4e3f9b6c2d1e7a8f5b3c"
BEARER = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZXNlcnZpY2VzIn0"
    ".Zm9vYmFyYmF6cXV4c2lnbmF0dXJl"
)
PASSWORD = "S3cr3t!Passw0rd-2026"
TOKEN = "ghp_a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuVwX"
SECRETS = (KEY, BEARER, PASSWORD, TOKEN)
SECRET_TEXT = (
    f"upstream refused: Ocp-Apim-Subscription-Key: {KEY}; Authorization: Bearer {BEARER}; "
    f"retry with password={PASSWORD} and token={TOKEN}"
)


def every_text(error: BaseException) -> str:
    """Everything a caller could print or log of ``error`` and what it carries."""
    parts = [str(error), repr(error)]
    parts += traceback.format_exception(type(error), error, error.__traceback__)
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        parts += [str(current), repr(current), *map(str, getattr(current, "__notes__", ()))]
        for value in vars(current).values():
            if not isinstance(value, BaseException):
                parts.append(str(value))
                to_dict = getattr(value, "to_dict", None)
                if callable(to_dict):
                    parts.append(repr(to_dict()))
        stack += list(getattr(current, "exceptions", ()))
        stack += [e for e in (current.__cause__, current.__context__) if e is not None]
    return "\n".join(parts)


def assert_no_secret(text: str, secrets: tuple[str, ...] = SECRETS) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked into:\n{text}"


def assert_masked(error: BaseException) -> None:
    text = every_text(error)
    assert_no_secret(text)
    assert "<redacted>" in text, f"nothing was masked: the secret never reached it?\n{text}"


# -- logs -----------------------------------------------------------------------------


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.loggers: set[str] = set()
        self._formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("websockets.client"):
            return  # this module's own test client, not a service
        self.loggers.add(record.name)
        text = self._formatter.format(record)
        if record.stack_info:
            text += "\n" + record.stack_info
        self.texts.append(text)


@pytest.fixture(scope="module")
def logs() -> Iterator[Capture]:
    root = logging.getLogger()
    capture = Capture()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)


@pytest.fixture(scope="module")
def service(logs: Capture) -> Iterator[SpeechService]:
    with SpeechService(require_key=KEY) as service:
        yield service


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_wav(tmp_path_factory.mktemp("secrets") / "one-second.wav", 1.0)


@pytest.fixture
def scratch_adapters() -> Iterator[None]:
    before = list(_registry)
    yield
    _registry[:] = before


class Client:
    """An application object whose repr and attributes carry credentials."""

    def __init__(self) -> None:
        self.subscription_key = KEY
        self.password = PASSWORD
        self.closed = False

    def __repr__(self) -> str:
        return f"Client(password={self.password}, token={TOKEN})"

    def close(self) -> None:
        self.closed = True
        raise RuntimeError(SECRET_TEXT)


# -- Scope: ReleaseError, ReleaseTimeout, AsyncReleaseRequired, ClosedResourceError --------


def test_release_error_from_a_close_that_raises_with_credentials() -> None:
    scope = ng.Scope()
    client = scope.register(Client())
    with pytest.raises(ng.ReleaseError) as caught:
        scope.close()
    assert client.closed
    assert_masked(caught.value)


def test_release_error_from_a_custom_step_with_credentials_in_args_and_notes(
    scratch_adapters: None,
) -> None:
    class Session:
        pass

    def step(obj: object, timeout_s: float) -> None:
        error = ConnectionError(
            {"password": PASSWORD, "headers": f"Authorization: Bearer {BEARER}"}
        )
        add_note(error, f"while closing with token={TOKEN}")
        raise error

    ng.register_adapter(Session, [step], name=f"session token={TOKEN}")
    scope = ng.Scope()
    session = scope.register(Session())
    with pytest.raises(ng.ReleaseError) as caught:
        scope.close()
    del session
    assert_masked(caught.value)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("slow", id="plain-name"),
        pytest.param(f"slow password={PASSWORD}", id="secret-in-adapter-name"),
    ],
)
def test_release_timeout_of_a_step_on_an_object_with_credentials(
    scratch_adapters: None, name: str
) -> None:
    class Slow:
        token = TOKEN

        def __repr__(self) -> str:
            return f"Slow(Ocp-Apim-Subscription-Key={KEY})"

    gate = threading.Event()
    ng.register_adapter(Slow, [lambda o, t: gate.wait(10)], name=name)
    scope = ng.Scope(step_timeout_s=0.2, exit_budget_s=0.3)
    scope.adopt(scope.register(Slow()))  # the scope holds it: released, not just dropped
    errors: list[ng.ReleaseError] = []
    try:  # within the exit budget, close() raises it; past it, wait_released() does
        scope.close()
    except ng.ReleaseError as error:
        errors.append(error)
    time.sleep(0.5)  # past the step's bound, so the release judges it timed out
    gate.set()
    try:
        scope.wait_released(10)
    except ng.ReleaseError as error:
        errors.append(error)
    (error,) = errors
    assert any(isinstance(e, ng.ReleaseTimeout) for e in error.exceptions)
    assert_no_secret(every_text(error))


def test_async_release_required_for_an_object_with_credentials() -> None:
    class AsyncClient:
        def __repr__(self) -> str:
            return f"AsyncClient(token={TOKEN}, Authorization: Bearer {BEARER})"

        async def close(self) -> None:
            return None

    scope = ng.Scope()
    client = scope.register(AsyncClient())
    with pytest.raises(ng.ReleaseError) as caught:
        scope.close()
    assert any(isinstance(e, ng.AsyncReleaseRequired) for e in caught.value.exceptions)
    assert_no_secret(every_text(caught.value))
    asyncio.run(client.close())


def test_closed_resource_error_for_an_object_with_credentials() -> None:
    class Holder:
        def __init__(self) -> None:
            self.api_key = KEY

        def __repr__(self) -> str:
            return f"Holder(password={PASSWORD})"

        def close(self) -> None:
            pass

        def send(self) -> None:
            pass

    with ng.managed(Holder()) as holder:
        pass
    with pytest.raises(ng.ClosedResourceError) as caught:
        holder.send()
    assert_no_secret(every_text(caught.value))
    scope = ng.Scope()
    scope.close()
    with pytest.raises(ng.ClosedResourceError) as closed:
        scope.register(Holder())
    assert_no_secret(every_text(closed.value))


# -- the SDK: CallbackError, RequestTimeout --------------------------------------------------


def test_callback_error_with_credentials_from_sdk_threads(service: SpeechService, wav: str) -> None:
    def on_recognized(evt: object) -> None:
        raise RuntimeError(SECRET_TEXT)

    with (
        pytest.raises(ng.CallbackError) as caught,
        ng.managed_recognizer(
            service.speech_config(subscription=KEY), speechsdk.audio.AudioConfig(filename=wav)
        ) as recognizer,
    ):
        recognizer.recognized.connect(on_recognized)
        recognizer.recognize_once_async().get()
    assert_masked(caught.value)


def test_callback_error_with_the_configs_own_key_as_a_dict_key(
    service: SpeechService, wav: str
) -> None:
    sessions: dict[str, object] = {}

    def on_recognized(evt: object) -> None:
        sessions[KEY]

    with (
        pytest.raises(ng.CallbackError) as caught,
        ng.managed_recognizer(
            service.speech_config(subscription=KEY), speechsdk.audio.AudioConfig(filename=wav)
        ) as recognizer,
    ):
        recognizer.recognized.connect(on_recognized)
        recognizer.recognize_once_async().get()
    assert_no_secret(every_text(caught.value))


def test_request_timeout_with_a_keyed_config(wav: str) -> None:
    with SpeechService(require_key=KEY, faults=Faults(stall=True)) as stalled:
        config = stalled.speech_config(subscription=KEY)
        with pytest.raises(ng.RequestTimeout) as caught:
            ng.transcribe(config, wav, timeout=0.5)
        with pytest.raises(ng.RequestTimeout) as caught_async:
            asyncio.run(ng.asynthesize(config, f"password={PASSWORD}", timeout=0.5))
    assert_no_secret(every_text(caught.value))
    assert_no_secret(every_text(caught_async.value))


# -- LeakError: secrets as dict keys and attribute names on the holder chain ---------------


class Registry:
    """Keeps configs under the subscription key, as a per-tenant cache does."""

    def __init__(self) -> None:
        self.subscription_key = KEY
        self.password = PASSWORD
        self.by_key: dict[str, object] = {}


REGISTRY = Registry()


def test_leak_error_from_guarded_strict_names_no_secret_on_the_chain(no_automatic_gc: None) -> None:
    @ng.guarded(strict=True)
    def make() -> None:
        config = speechsdk.SpeechConfig(subscription=KEY, region="westus")
        REGISTRY.by_key[KEY] = config
        setattr(REGISTRY, f"config_{KEY}", config)

    try:
        with pytest.raises(ng.LeakError) as caught:
            make()
        text = every_text(caught.value)
        assert "SpeechConfig" in text
    finally:
        REGISTRY.by_key.clear()
        delattr(REGISTRY, f"config_{KEY}")
    assert_masked(caught.value)


def test_leak_error_from_assert_no_leaks_names_no_secret_on_the_chain() -> None:
    before = verify.snapshot()
    config = speechsdk.SpeechConfig(subscription=KEY, region="westus")
    REGISTRY.by_key[KEY] = config
    setattr(REGISTRY, f"password_{PASSWORD}", config)
    del config
    try:
        with pytest.raises(ng.LeakError) as caught:
            verify.assert_no_leaks(before, settle_s=0.2, threads=False, fds=False)
        assert "SpeechConfig" in str(caught.value)
    finally:
        REGISTRY.by_key.clear()
        delattr(REGISTRY, f"password_{PASSWORD}")
    assert_masked(caught.value)


# -- the bundled service: ProtocolError, ServiceError, its log records -------------------------


def test_protocol_error_from_a_frame_carrying_credentials(service: SpeechService) -> None:
    before = service.connection_count
    with connect(
        f"{service.url}/speech/recognition/conversation/cognitiveservices/v1",
        additional_headers={"Ocp-Apim-Subscription-Key": KEY},
        subprotocols=["USP"],  # type: ignore[list-item]
        open_timeout=5,
    ) as ws:
        # A header line without a colon: the bare key first, where only the service's
        # knowledge of its own key can mask it.
        ws.send(f"Path: speech.config\r\nX-Tenant {KEY} Bearer {BEARER}\r\n\r\n{{}}")
        with pytest.raises(Exception):  # noqa: B017, PT011 - closed with 1007 by the service
            ws.recv(timeout=5)
    deadline = time.monotonic() + 5
    while service.connection_count == before and time.monotonic() < deadline:
        time.sleep(0.02)
    (log,) = service.connections[before:]
    errors = "\n".join(log.errors)
    assert "protocol error: malformed header line" in errors
    assert "<redacted>" in errors
    assert_no_secret(errors + repr(log))


def test_service_error_from_a_fault_plan_raising_credentials(logs: Capture, wav: str) -> None:
    def plan(index: int, path: str) -> Faults:
        raise RuntimeError(SECRET_TEXT)

    service = SpeechService(require_key=KEY, faults=plan).start()
    try:
        outcome = ng.recognize_once(service.speech_config(subscription=KEY), wav, timeout=10)
        assert isinstance(outcome, ng.Cancellation)  # the service failed that connection
    finally:
        with pytest.raises(ng.ServiceError) as caught:
            service.stop()
    assert_no_secret(every_text(caught.value))


def test_service_logs_at_debug_carry_no_credentials(
    logs: Capture, service: SpeechService, wav: str
) -> None:
    """The SDK connecting with a key, with a bearer token, and with a wrong key."""
    start = len(logs.texts)
    ng.recognize_once(service.speech_config(subscription=KEY), wav, timeout=20)
    with SpeechService(require_token=BEARER) as token_service:
        ng.recognize_once(token_service.speech_config(auth_token=BEARER), wav, timeout=20)
        wrong = token_service.speech_config(auth_token=f"{BEARER}x")
        assert isinstance(ng.recognize_once(wrong, wav, timeout=20), ng.Cancellation)
    texts = logs.texts[start:]
    assert any("websockets" in name for name in logs.loggers), sorted(logs.loggers)
    assert any("Ocp-Apim-Subscription-Key" in text or "ocp-apim" in text.lower() for text in texts)
    assert_no_secret("\n".join(texts))


# -- the worker pool: NotPlainDataError, WorkerCrashed, TaskTimeout, RemoteTaskError ----------


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(1, warm_spare=False, task_timeout_s=1.0, kill_grace_s=0.5) as pool:
        yield pool


@pytest.mark.parametrize(
    "argument",
    [
        {KEY: threading.Lock()},
        {"password": {PASSWORD: threading.Lock()}},
        [f"token={TOKEN}", {f"Authorization: Bearer {BEARER}": threading.Lock()}],
    ],
    ids=["key-as-dict-key", "password-dict", "shaped-keys"],
)
def test_not_plain_data_error_path_names_no_secret(pool: WorkerPool, argument: object) -> None:
    with pytest.raises(NotPlainDataError) as caught:
        pool.submit(tasks.echo, argument)
    assert_no_secret(every_text(caught.value))
    assert_no_secret(caught.value.path)


@pytest.mark.parametrize(
    ("fn", "error_type"),
    [
        (tasks.crash, WorkerCrashed),
        (tasks.overrun, TaskTimeout),
        (tasks.raise_unpicklable, RemoteTaskError),
    ],
)
def test_worker_failures_with_credentials_in_arguments(
    pool: WorkerPool, fn: Any, error_type: type[BaseException]
) -> None:
    future = pool.submit(fn, SECRET_TEXT)
    with pytest.raises(error_type) as caught:
        future.result(30)
    assert_no_secret(every_text(caught.value))
    del future
    gc.collect()


def test_worker_start_error_with_credentials_in_the_queued_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every fresh worker dies at start-up (tests/isolate_broken_type.py)."""
    monkeypatch.setenv("ISOLATE_BROKEN_TYPE_PARENT", str(os.getpid()))
    import isolate_broken_type

    with WorkerPool(1, warm_spare=False, plain_types=[isolate_broken_type.Payload]) as broken:
        queued = broken.submit(tasks.echo, SECRET_TEXT)
        with pytest.raises(WorkerStartError) as caught:
            queued.result(60)
    assert_no_secret(every_text(caught.value))


# -- the whole module's log ----------------------------------------------------------------


def test_no_log_record_of_this_module_carries_a_secret(logs: Capture) -> None:
    assert logs.texts, "no record was captured: the capture itself is broken"
    assert_no_secret("\n".join(logs.texts))


def test_the_search_finds_what_it_looks_for() -> None:
    """every_text/assert_no_secret can fail: a secret in a note or a group member is found."""
    inner = ValueError("fine")
    add_note(inner, f"token={TOKEN}")
    group = ng.ReleaseError("outer", [inner])
    with pytest.raises(AssertionError, match="leaked"):
        assert_no_secret(every_text(group))
    with pytest.raises(AssertionError, match="leaked"):
        assert_no_secret(every_text(ng.LeakError("x", report=Path(KEY))))
