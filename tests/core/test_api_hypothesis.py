"""Property-based test of the public API under arbitrary arguments (issue 10, "What to build").

For every public constructor and function (``nativeguard.__all__``, the Scope
methods, ``nativeguard.verify``, ``WorkerPool`` and its submit/map, and the
``nativeguard.testing`` constructors), one parameter at a time receives
arbitrary values of arbitrary types, the others valid ones. The call must then
either work, or raise a ``TypeError``/``ValueError`` (nativeguard's own errors
subclass those) whose message names the parameter; never an
``AttributeError`` or another error from inside, never a hang (each call runs
under a SIGALRM bound), and never anything left alive afterwards: Python
threads by identity, file descriptors, and the Speech SDK's native handles are
back at their baseline after every single example.

A fixed list of hostile values runs first for every parameter (so each
outcome is deterministic), then hypothesis draws ``MAX_EXAMPLES`` more with a
derandomized seed. Values a parameter legitimately accepts and that would make
the call do real work (a valid timeout for a real transcription, a valid pool
size) are skipped: they are covered by the functional tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import fractions
import gc
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.cognitiveservices.speech as speechsdk
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nativeguard as ng
from nativeguard import verify
from nativeguard._core._adapters import _registry
from nativeguard._core._reaper import get_reaper, get_step_runner
from nativeguard.isolate import WorkerPool
from nativeguard.testing import Faults, Phrase, Script, SpeechService, write_wav

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("fork_server")]

MAX_EXAMPLES = 50
CALL_BOUND_S = 20.0
"""No single call may take longer (SIGALRM); a hang fails the example, not the suite."""


class Hang(BaseException):
    """Raised from SIGALRM when a call overran CALL_BOUND_S."""


# -- arbitrary values ---------------------------------------------------------


class Opaque:
    """An ordinary object of a type nativeguard knows nothing about."""


class NotCallableClose:
    close = 5
    connect = "no"


class StrSub(str):
    pass


class IntSub(int):
    pass


def _a_function() -> None:
    return None


def _generator() -> Iterator[int]:
    yield 1


def oddities() -> list[object]:
    return [
        Opaque(),
        Opaque,
        NotCallableClose(),
        _a_function,
        len,
        os,
        Ellipsis,
        NotImplemented,
        complex(1, 2),
        decimal.Decimal("NaN"),
        fractions.Fraction(1, 3),
        StrSub("inline"),
        IntSub(3),
        bytearray(b"x"),
        frozenset({1}),
        range(3),
        threading.Lock(),
        Path("/nonexistent/nativeguard.wav"),
        type,
        object(),
    ]


FIXED: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    2**70,
    1.5,
    -0.5,
    0.0,
    math.nan,
    math.inf,
    -math.inf,
    1e300,
    "",
    "5",
    "inline",
    "x" * 300,
    b"\x00",
    [],
    [None],
    {},
    {"a": 1},
    (),
    *oddities(),
]

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.lists(st.one_of(st.integers(), st.text(max_size=4), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    st.tuples(st.text(max_size=4)),
    st.sampled_from(oddities()),
)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_seconds(value: object) -> bool:
    return is_number(value) and math.isfinite(float(value)) and float(value) > 0  # type: ignore[arg-type]


def number_or_none(value: object) -> bool:
    return value is None or is_number(value)


# -- module resources -----------------------------------------------------------


@dataclass
class World:
    service: SpeechService
    wav: str
    speech_config: Any
    translation_config: Any
    audio_config: Any
    output_config: Any
    pool: WorkerPool
    snapshot: Any
    result: Any
    keep: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    wav = write_wav(tmp_path_factory.mktemp("hyp") / "one-second.wav", 1.0)
    with SpeechService() as service, WorkerPool(1, warm_spare=False) as pool:
        # Submit once so the worker is up before any baseline.
        assert pool.submit(abs, -1).result(60) == 1
        config = service.speech_config()
        recognizer = speechsdk.SpeechRecognizer(
            speech_config=config, audio_config=speechsdk.audio.AudioConfig(filename=wav)
        )
        result = recognizer.recognize_once()  # a real SDK result for extract(secrets=...)
        del recognizer
        world = World(
            result=result,
            service=service,
            wav=wav,
            speech_config=service.speech_config(),
            translation_config=service.translation_config("de"),
            audio_config=speechsdk.audio.AudioConfig(filename=wav),
            output_config=speechsdk.audio.AudioOutputConfig(filename=os.devnull),
            pool=pool,
            snapshot=verify.snapshot(),
        )
        del result, config
        yield world
        # Drop the SDK objects here, not in some later module's test.
        world.result = world.speech_config = world.translation_config = None
        world.audio_config = world.output_config = None
        del world
        gc.collect()


# -- the property -----------------------------------------------------------------


def reaper_threads() -> set[threading.Thread]:
    return set(get_reaper().threads()) | set(get_step_runner().threads())


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def handle_total() -> int:
    return sum(verify.snapshot().native_handles.values())


@dataclass(frozen=True)
class State:
    threads: frozenset[threading.Thread]
    fds: int
    handles: int


def state() -> State:
    threads = frozenset(t for t in threading.enumerate() if t not in reaper_threads())
    return State(threads, fd_count(), handle_total())


def settle_to(before: State, what: str) -> None:
    """Wait (bounded) for released objects to finish dying, then compare exactly."""
    get_reaper().wait_idle(15)
    get_step_runner().wait_idle(15)
    deadline = time.monotonic() + 5
    now = state()
    while now != before and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
        now = state()
    extra = [t.name for t in now.threads - before.threads]
    assert not extra, f"{what}: threads left alive: {extra}"
    # Fewer fds is no leak of this call: the world's pool may finish retiring a worker an
    # earlier case ended (its task, claim and status pipes close when the template reports).
    assert now.fds <= before.fds, f"{what}: fds {before.fds} -> {now.fds}"
    assert now.handles == before.handles, f"{what}: SDK handles {before.handles} -> {now.handles}"


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"call did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass(frozen=True)
class Case:
    """One parameter of one public callable."""

    name: str
    param: str
    call: Callable[[World, object], object]
    skip: Callable[[object], bool] = lambda value: False
    path_param: bool = False  # a str/PathLike naming no file may raise FileNotFoundError
    user_code: bool = False  # a callable value is run: what it raises is the caller's own
    alias: str | None = None  # the sole argument may be named by its function instead

    def __str__(self) -> str:
        return f"{self.name}[{self.param}]"


def check_call(case: Case, world: World, value: object) -> None:
    if case.skip(value):
        return
    what = f"{case}({value!r:.60})"
    before = state()
    error: BaseException | None = None
    try:
        with bounded(CALL_BOUND_S):
            case.call(world, value)
    except BaseException as exc:  # judged below, outside the handler
        error = exc
    if error is not None:
        judge(case, value, what, error)
    del error
    settle_to(before, what)


def judge(case: Case, value: object, what: str, error: BaseException) -> None:
    """Fail unless ``error`` is a refusal naming the parameter (or the caller's own)."""
    runs_value = case.user_code and callable(value)
    if isinstance(error, Hang):
        pytest.fail(f"{what} hung")
    elif isinstance(error, ng.ReleaseError):
        # An object with a close() is released by calling it; one that fails there
        # (os.close() without its fd) is reported by the release. Legitimate.
        closes = callable(getattr(value, "close", None))
        assert runs_value or closes, f"{what}: {error!r}"
    elif isinstance(error, (TypeError, ValueError)):
        message = str(error)
        named = case.param in message or (case.alias is not None and case.alias in message)
        assert runs_value or named, (
            f"{what}: {type(error).__name__} does not name {case.param!r}: {message}"
        )
    elif isinstance(error, FileNotFoundError):
        assert case.path_param, f"{what}: {error!r}"
        assert isinstance(value, (str, os.PathLike)), f"{what}: {error!r}"
        assert case.param in str(error), f"{what}: does not name {case.param!r}: {error}"
    elif not runs_value or isinstance(error, KeyboardInterrupt):
        # anything else is the bug this test exists for
        pytest.fail(f"{what} raised {type(error).__name__} from inside: {error!r:.300}")


# -- how each parameter is called ------------------------------------------------------


def _close_scope(scope: ng.Scope) -> None:
    scope.close()
    scope.wait_released(10)


def _scope_kw(key: str) -> Callable[[World, object], object]:
    def call(world: World, value: object) -> None:
        _close_scope(ng.Scope(**{key: value}))

    return call


def _scope_method(method: str, extra: tuple[object, ...] = ()):
    def call(world: World, value: object) -> None:
        scope = ng.Scope()
        try:
            getattr(scope, method)(value, *extra)
        finally:
            try:
                _close_scope(scope)
            except ng.ReleaseError:
                # Any object with a close() is released by calling it: os.close()
                # without its fd fails, and the release says so. Legitimate.
                if not hasattr(value, "close"):
                    raise

    return call


def _connect_callback(world: World, value: object) -> None:
    class Signal:
        def __init__(self) -> None:
            self.callbacks: list[object] = []

        def connect(self, cb: object) -> None:
            self.callbacks.append(cb)

        def disconnect_all(self) -> None:
            self.callbacks.clear()

        def is_connected(self) -> bool:
            return bool(self.callbacks)

    scope = ng.Scope()
    try:
        scope.connect(Signal(), value)  # type: ignore[arg-type]
    finally:
        _close_scope(scope)


def _wait_released(world: World, value: object) -> None:
    scope = ng.Scope()
    scope.close()
    scope.wait_released(value)  # type: ignore[arg-type]


def _configure(key: str):
    def call(world: World, value: object) -> None:
        old = ng.configure(**{key: value})
        ng.configure(**old)  # type: ignore[arg-type]

    return call


def _managed(
    factory: Callable[..., Any], args: Callable[[World, object], tuple[Any, ...]], **kw: Any
):
    def call(world: World, value: object) -> None:
        with factory(*args(world, value), **kw):
            pass

    return call


def _managed_kw(key: str):
    def call(world: World, value: object) -> None:
        with ng.managed(Opaque(), **{key: value}):
            pass

    return call


def _guarded_fn(world: World, value: object) -> None:
    wrapped = ng.guarded(value)  # type: ignore[call-overload]
    if callable(wrapped) and value is _a_function:
        wrapped()


def _guarded_kw(key: str):
    def call(world: World, value: object) -> None:
        ng.guarded(**{key: value})(_a_function)()

    return call


def _run(call: Callable[[], Any]) -> Any:
    result = call()
    if asyncio.iscoroutine(result):
        return asyncio.run(result)
    return result


def _one_call(fn: Callable[..., Any], position: int, kind: str):
    """fn(config, audio_or_text, timeout=...) with ``value`` at ``position``."""

    def call(world: World, value: object) -> None:
        config = world.speech_config
        second: object = world.wav if kind == "audio" else "Hello."
        args: list[object] = [config, second]
        if position < 2:
            args[position] = value
            _run(lambda: fn(*args, timeout=30))
        else:
            _run(lambda: fn(*args, timeout=value))

    return call


def _extract_secrets(world: World, value: object) -> None:
    ng.extract(world.result, secrets=value)  # type: ignore[arg-type]


def _plain_secrets(world: World, value: object) -> None:
    ng.plain(_a_function, secrets=value)  # type: ignore[arg-type]


@contextlib.contextmanager
def scratch_registry() -> Iterator[None]:
    before = list(_registry)
    try:
        yield
    finally:
        _registry[:] = before


def _register_adapter(position: int):
    class Unrelated:
        pass

    def call(world: World, value: object) -> None:
        args: list[object] = [Unrelated, [lambda o, t: None]]
        kwargs: dict[str, object] = {}
        if position < 2:
            args[position] = value
        else:
            kwargs["name"] = value
        with scratch_registry():
            ng.register_adapter(*args, **kwargs)  # type: ignore[arg-type]
            ng.Scope().close()  # the registry still works for everyone else

    return call


def _check(fn: Callable[..., Any], key: str | None):
    def call(world: World, value: object) -> None:
        if key is None:
            fn(value)
        else:
            fn(
                verify.snapshot(),
                **{key: value, "settle_s": 0.0} if key != "settle_s" else {key: value},
            )

    return call


def _leak_check(key: str | None):
    def call(world: World, value: object) -> None:
        if key is None:
            ng.leak_check(value, warmup=0, runs=2, settle_s=0)  # type: ignore[arg-type]
        else:
            kwargs: dict[str, object] = {"warmup": 0, "runs": 2, "settle_s": 0}
            kwargs[key] = value
            ng.leak_check(_a_function, **kwargs)  # type: ignore[arg-type]

    return call


def _pool_kw(key: str):
    def call(world: World, value: object) -> None:
        kwargs: dict[str, object] = {"warm_spare": False}
        kwargs[key] = value
        with WorkerPool(**kwargs):  # type: ignore[arg-type]
            pass

    return call


def _pool_workers(world: World, value: object) -> None:
    with WorkerPool(value, warm_spare=False):  # type: ignore[arg-type]
        pass


def _submit(world: World, value: object) -> None:
    world.pool.submit(value).result(30)  # type: ignore[arg-type]


def _map(position: int):
    def call(world: World, value: object) -> None:
        if position == 0:
            list(world.pool.map(value, [1]))  # type: ignore[arg-type]
        elif position == 1:
            list(world.pool.map(str, value))  # type: ignore[arg-type]
        else:
            list(world.pool.map(abs, [1], timeout=value))  # type: ignore[arg-type]

    return call


def _ctor(cls: type, key: str | None, **base: Any):
    def call(world: World, value: object) -> None:
        kwargs = dict(base)
        if key is None:
            cls(value, **kwargs)
        else:
            kwargs[key] = value
            cls(**kwargs)

    return call


def _service_kw(key: str):
    def call(world: World, value: object) -> None:
        # Constructed only: starting binds a socket, and the host must stay loopback.
        SpeechService(**{key: value})

    return call


BOOL = lambda value: isinstance(value, bool)  # noqa: E731
NON_EMPTY_STR = lambda value: isinstance(value, str) and value.strip() != ""  # noqa: E731
NOTHING = lambda value: False  # noqa: E731
SECONDS_OR_NONE = lambda value: value is None or positive_seconds(value)  # noqa: E731

CASES: list[Case] = [
    # Scope and its methods
    Case("Scope", "step_timeout_s", _scope_kw("step_timeout_s")),
    Case("Scope", "release", _scope_kw("release")),
    Case("Scope", "trim_threshold_bytes", _scope_kw("trim_threshold_bytes")),
    Case("Scope", "exit_budget_s", _scope_kw("exit_budget_s")),
    Case("Scope.register", "obj", _scope_method("register")),
    Case("Scope.connect", "signal", _scope_method("connect", (_a_function,))),
    Case("Scope.connect", "callback", _connect_callback),
    Case("Scope.adopt", "obj", _scope_method("adopt")),
    Case("Scope.add_finalizer", "finalizer", _scope_method("add_finalizer"), user_code=True),
    Case("Scope.wait_released", "timeout", _wait_released, skip=positive_seconds),
    Case("configure", "release", _configure("release")),
    Case("configure", "exit_budget_s", _configure("exit_budget_s")),
    Case("configure", "step_timeout_s", _configure("step_timeout_s")),
    # managed_*
    Case(
        "managed_recognizer",
        "speech_config",
        _managed(ng.managed_recognizer, lambda w, v: (v, w.audio_config)),
    ),
    Case(
        "managed_recognizer",
        "audio_config",
        _managed(ng.managed_recognizer, lambda w, v: (w.speech_config, v)),
        skip=lambda v: v is None,  # None is the default microphone (none on a server)
        path_param=True,
    ),
    Case(
        "managed_transcriber",
        "speech_config",
        _managed(ng.managed_transcriber, lambda w, v: (v, w.audio_config)),
    ),
    Case(
        "managed_transcriber",
        "audio_config",
        _managed(ng.managed_transcriber, lambda w, v: (w.speech_config, v)),
        skip=lambda v: v is None,
        path_param=True,
    ),
    Case(
        "managed_translation_recognizer",
        "translation_config",
        _managed(ng.managed_translation_recognizer, lambda w, v: (v, w.audio_config)),
    ),
    Case(
        "managed_synthesizer",
        "speech_config",
        _managed(ng.managed_synthesizer, lambda w, v: (v, w.output_config)),
    ),
    Case(
        "managed_synthesizer",
        "audio_config",
        _managed(ng.managed_synthesizer, lambda w, v: (w.speech_config, v)),
        skip=lambda v: v is None,  # None is the default speaker
    ),
    Case(
        "managed_connection",
        "recognizer_or_synthesizer",
        _managed(ng.managed_connection, lambda w, v: (v,)),
        alias="managed_connection takes",
    ),
    Case(
        "managed_credential",
        "credential",
        _managed(ng.managed_credential, lambda w, v: (v,)),
        alias="not a credential",
    ),
    Case(
        "managed_executor",
        "max_workers",
        _managed(ng.managed_executor, lambda w, v: (v,)),
    ),
    Case("managed", "scope", _managed_kw("scope")),
    Case("managed", "release", _managed_kw("release")),
    Case("managed", "plain", _managed_kw("plain")),
    # guarded
    Case("guarded", "wrapped", _guarded_fn, alias="@guarded"),
    Case("guarded", "strict", _guarded_kw("strict")),
    Case("guarded", "on_release", _guarded_kw("on_release"), user_code=True),
    Case("guarded", "step_timeout_s", _guarded_kw("step_timeout_s")),
]

for _fn, _kind in (
    (ng.transcribe, "audio"),
    (ng.atranscribe, "audio"),
    (ng.recognize_once, "audio"),
    (ng.arecognize_once, "audio"),
    (ng.synthesize, "text"),
    (ng.asynthesize, "text"),
):
    _second = "audio" if _kind == "audio" else "text_or_ssml"
    CASES += [
        Case(_fn.__name__, "speech_config", _one_call(_fn, 0, _kind)),
        Case(
            _fn.__name__,
            _second,
            _one_call(_fn, 1, _kind),
            # a real call: the functional tests cover valid text
            skip=(lambda v: isinstance(v, str) and v.strip() != "")
            if _kind == "text"
            else (lambda v: False),
            path_param=_kind == "audio",
            alias="text or SSML" if _kind == "text" else None,
        ),
        Case(_fn.__name__, "timeout", _one_call(_fn, 2, _kind), skip=positive_seconds),
    ]

CASES += [
    Case("extract", "obj", lambda w, v: ng.extract(v), alias="extract()"),
    Case("extract", "secrets", _extract_secrets),
    Case("plain", "callback", lambda w, v: ng.plain(v)),
    Case("plain", "secrets", _plain_secrets),
    Case(
        "register_adapter",
        "type_or_predicate",
        _register_adapter(0),
        alias="register_adapter takes",
    ),
    Case("register_adapter", "release_steps", _register_adapter(1)),
    Case("register_adapter", "name", _register_adapter(2)),
]

for _module in ("nativeguard", "nativeguard.verify"):
    _ns: Any = ng if _module == "nativeguard" else verify
    CASES += [
        Case(f"{_module}.check", "before", _check(_ns.check, None)),
        Case(f"{_module}.check", "allow", _check(_ns.check, "allow")),
        Case(f"{_module}.check", "types", _check(_ns.check, "types")),
        Case(
            f"{_module}.check",
            "settle_s",
            _check(_ns.check, "settle_s"),
            skip=lambda v: is_number(v) and math.isfinite(v) and v > 0.05,  # type: ignore[operator]
        ),
        Case(f"{_module}.assert_no_leaks", "before", _check(_ns.assert_no_leaks, None)),
        Case(f"{_module}.assert_no_leaks", "allow", _check(_ns.assert_no_leaks, "allow")),
        Case(
            f"{_module}.leak_check", "fn", _leak_check(None), alias="leak_check()", user_code=True
        ),
        Case(
            f"{_module}.leak_check",
            "warmup",
            _leak_check("warmup"),
            skip=lambda v: is_number(v) and v > 2,  # type: ignore[operator]
        ),
        Case(
            f"{_module}.leak_check",
            "runs",
            _leak_check("runs"),
            skip=lambda v: is_number(v) and v > 3,  # type: ignore[operator]
        ),
        Case(f"{_module}.leak_check", "rss_growth_mb", _leak_check("rss_growth_mb")),
        Case(
            f"{_module}.leak_check",
            "settle_s",
            _leak_check("settle_s"),
            skip=lambda v: is_number(v) and math.isfinite(v) and v > 0.05,  # type: ignore[operator]
        ),
    ]

CASES += [
    Case("verify.snapshot", "full_heap", lambda w, v: verify.snapshot(full_heap=v)),  # type: ignore[arg-type]
    # WorkerPool: a valid value starts real worker processes; the isolate tests cover those.
    Case("WorkerPool", "workers", _pool_workers, skip=lambda v: is_number(v) and v >= 1),
    Case("WorkerPool", "max_tasks", _pool_kw("max_tasks"), skip=number_or_none),
    Case(
        "WorkerPool",
        "max_rss_mb",
        _pool_kw("max_rss_mb"),
        skip=lambda v: v is None or positive_seconds(v),
    ),
    Case("WorkerPool", "task_timeout_s", _pool_kw("task_timeout_s"), skip=SECONDS_OR_NONE),
    Case("WorkerPool", "kill_grace_s", _pool_kw("kill_grace_s"), skip=positive_seconds),
    Case("WorkerPool", "retries", _pool_kw("retries"), skip=lambda v: is_number(v) and v >= 0),  # type: ignore[operator]
    Case(
        "WorkerPool",
        "start_method",
        _pool_kw("start_method"),
        skip=lambda v: v in ("fork", "spawn", "forkserver"),
    ),
    Case("WorkerPool", "preload", _pool_kw("preload"), skip=lambda v: v in ((), [])),
    Case("WorkerPool", "warm_spare", _pool_kw("warm_spare"), skip=BOOL),
    Case("WorkerPool", "jitter", _pool_kw("jitter"), skip=lambda v: is_number(v) and 0 <= v < 1),  # type: ignore[operator]
    Case("WorkerPool", "plain_types", _pool_kw("plain_types"), skip=lambda v: v in ((), [])),
    Case("WorkerPool.submit", "fn", _submit, user_code=True),
    Case("WorkerPool.map", "fn", _map(0), user_code=True),
    Case("WorkerPool.map", "iterables", _map(1)),
    # 0 is a timeout like any other (the first result is not ready yet: TimeoutError)
    Case("WorkerPool.map", "timeout", _map(2), skip=lambda v: v is None or is_number(v) or BOOL(v)),
    # nativeguard.testing constructors
    Case("SpeechService", "script", _service_kw("script")),
    Case("SpeechService", "require_key", _service_kw("require_key")),
    Case("SpeechService", "require_token", _service_kw("require_token")),
    Case("SpeechService", "faults", _service_kw("faults")),
    Case("SpeechService", "host", _service_kw("host")),
    Case("SpeechService", "max_connections", _service_kw("max_connections")),
    Case("SpeechService", "max_message_bytes", _service_kw("max_message_bytes")),
    Case("SpeechService", "response_timeout_s", _service_kw("response_timeout_s")),
    Case("SpeechService", "max_records", _service_kw("max_records")),
    *[
        Case("Faults", key, _ctor(Faults, key))
        for key in (
            "refuse",
            "refuse_status",
            "close_after",
            "stall",
            "malformed",
            "delay_ms",
            "status",
        )
    ],
    *[
        Case("Phrase", key, _ctor(Phrase, key, text="Hello."))
        for key in (
            "speaker",
            "offset_s",
            "duration_s",
            "hypotheses",
            "status",
            "translations",
            "lexical",
            "itn",
            "confidence",
            "alternatives",
            "language",
            "pronunciation",
        )
    ],
    Case("Phrase", "text", _ctor(Phrase, "text")),
    Case("Script", "phrases", _ctor(Script, "phrases")),
]

XFAIL: dict[str, str] = {}


def _param(case: Case) -> Any:
    marks = []
    reason = XFAIL.get(str(case))
    if reason is not None:
        marks.append(pytest.mark.xfail(strict=True, reason=reason))
    return pytest.param(case, id=str(case), marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_arbitrary_arguments_are_refused_by_name_and_leave_nothing(
    case: Case, world: World
) -> None:
    for value in FIXED:
        check_call(case, world, value)

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(value=VALUES)
    def property_holds(value: object) -> None:
        check_call(case, world, value)

    property_holds()


def test_nothing_of_the_module_is_left_alive(world: World) -> None:
    """Across every case above: the live-object registry, handles and threads at baseline."""
    report = verify.check(world.snapshot, fds=False, settle_s=2.0)
    assert report is None, str(report)


# -- parameters typed bool: anything else is refused, not read as truthy -----------------

BOOL_CASES = [
    Case("guarded", "strict", _guarded_kw("strict")),
    Case("managed", "plain", _managed_kw("plain")),
    Case("verify.snapshot", "full_heap", lambda w, v: verify.snapshot(full_heap=v)),  # type: ignore[arg-type]
    Case("WorkerPool", "warm_spare", _pool_kw("warm_spare")),
    *[Case("Faults", key, _ctor(Faults, key)) for key in ("refuse", "stall", "malformed")],
    *[
        Case(
            "check", key, lambda w, v, key=key: ng.check(verify.snapshot(), settle_s=0, **{key: v})
        )
        for key in ("native_handles", "threads", "fds")
    ],
]
BOOL_XFAIL: dict[str, str] = {}


def check_rejected(case: Case, world: World, value: object) -> None:
    if isinstance(value, bool):
        return
    what = f"{case}({value!r:.60})"
    before = state()
    with pytest.raises(TypeError) as caught, bounded(CALL_BOUND_S):
        case.call(world, value)
    assert case.param in str(caught.value), f"{what}: does not name {case.param!r}: {caught.value}"
    settle_to(before, what)


def _bool_param(case: Case) -> Any:
    reason = BOOL_XFAIL.get(str(case))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(case, id=str(case), marks=marks)


@pytest.mark.parametrize("case", [_bool_param(case) for case in BOOL_CASES])
def test_bool_parameters_refuse_everything_but_bool(case: Case, world: World) -> None:
    for value in FIXED:
        check_rejected(case, world, value)


def test_scope_connect_refuses_a_signal_it_cannot_release(world: World) -> None:
    class Half:
        def connect(self, callback: object) -> None:
            pass

    case = Case("Scope.connect", "signal", _scope_method("connect", (_a_function,)))
    check_call(case, world, Half())


# -- the property itself can fail -----------------------------------------------------------


def _leave_a_thread(world: World, value: object) -> None:
    gate = threading.Event()
    world.keep.append(gate)
    threading.Thread(target=gate.wait, name="left-behind", daemon=True).start()


def _leave_an_fd(world: World, value: object) -> None:
    world.keep.append(os.open(os.devnull, os.O_RDONLY))


def _raise_attribute_error(world: World, value: object) -> None:
    value.no_such_attribute  # type: ignore[attr-defined]  # noqa: B018


def _hang(world: World, value: object) -> None:
    time.sleep(5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (_leave_a_thread, "threads left alive: ['left-behind']"),
        (_leave_an_fd, "fds "),
        (_raise_attribute_error, "raised AttributeError from inside"),
        (_hang, "hung"),
        (lambda w, v: (_ for _ in ()).throw(TypeError("no name here")), "does not name 'x'"),
    ],
)
def test_the_property_fails_on_what_it_forbids(call: Any, message: str, world: World) -> None:
    global CALL_BOUND_S  # noqa: PLW0603
    bound, CALL_BOUND_S = CALL_BOUND_S, 0.3
    try:
        with pytest.raises(BaseException, match=re.escape(message)):
            check_call(Case("probe", "x", call), world, 1)
    finally:
        CALL_BOUND_S = bound
        for item in world.keep:
            if isinstance(item, threading.Event):
                item.set()
            else:
                os.close(item)
        world.keep.clear()
