"""Hostile use of the onnxruntime integration: bad input, failures, interrupts, threads, secrets."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from nativeguard import NativeGuardError, Scope, verify
from nativeguard.integrations import onnxruntime as ngo

pytestmark = pytest.mark.usefixtures("no_sessions")

Feeds = Callable[..., dict[str, Any]]


@pytest.mark.parametrize(
    ("model", "error", "message"),
    [
        (b"not a model", ngo.ModelLoadError, "InvalidProtobuf"),
        (b"", ngo.ModelLoadError, "model is empty"),
        ("/nonexistent/dir/model.onnx", ngo.ModelNotFoundError, "model file not found"),
        (12, TypeError, "model must be a path .* got int"),
        (None, TypeError, "got NoneType"),
        (Path("/nonexistent.onnx").as_posix().encode(), ngo.ModelLoadError, "InvalidProtobuf"),
    ],
)
def test_bad_models_raise_our_errors_and_leave_nothing(
    model: object, error: type[Exception], message: str, feeds: Feeds
) -> None:
    with pytest.raises(error, match=message) as caught:
        ngo.infer(model, feeds())  # type: ignore[arg-type]
    if issubclass(error, NativeGuardError):
        assert isinstance(caught.value, (ValueError, FileNotFoundError))
        assert caught.value.__context__ is None
        assert caught.value.__cause__ is None
    with pytest.raises(error), ngo.managed_session(model):  # type: ignore[arg-type]
        pytest.fail("the block must not run")  # checked at the call or on entering


def test_a_directory_is_not_a_model(tmp_path: Path, feeds: Feeds) -> None:
    with pytest.raises(ngo.ModelNotFoundError, match="model file not found"):
        ngo.infer(tmp_path, feeds())


@pytest.mark.parametrize(
    ("feeds", "error", "message"),
    [
        ({"x": np.ones((2, 5), np.float32)}, ngo.InvalidFeedError, "invalid dimensions"),
        ({"x": np.ones((2, 16), np.int64)}, ngo.InvalidFeedError, "Unexpected input data type"),
        ({"z": np.ones((2, 16), np.float32)}, ngo.InvalidFeedError, r"unknown input\(s\) \['z'\]"),
        ({}, ngo.InvalidFeedError, r"missing input\(s\) \['x'\]"),
        ({"x": [[1.0], [1.0, 2.0]]}, ngo.InvalidFeedError, r"feeds\['x'\] is not an array"),
        ({"x": object()}, ngo.InvalidFeedError, "not a numeric array"),
        ([("x", 1)], TypeError, "feeds must be a mapping"),
        ({1: np.ones((2, 16))}, TypeError, "feeds keys must be input names"),
    ],
)
def test_bad_feeds_raise_our_errors_and_release_the_session(
    small_model: bytes, feeds: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        ngo.infer(small_model, feeds)  # type: ignore[arg-type]
    assert caught.value.__context__ is None
    assert ngo.live_sessions() == 0


def test_wrong_argument_types_are_named(small_model: bytes, feeds: Feeds) -> None:
    with pytest.raises(TypeError, match="sess_options must be None or an onnxruntime"):
        ngo.infer(small_model, feeds(), sess_options={"intra_op_num_threads": 1})
    with pytest.raises(TypeError, match="output_names must be None or a sequence"):
        ngo.infer(small_model, feeds(), output_names="y")
    with pytest.raises(ngo.InvalidFeedError, match="Invalid output name"):
        ngo.infer(small_model, feeds(), output_names=["nope"])


def test_an_exception_in_the_body_propagates_and_the_session_is_freed(small_model: bytes) -> None:
    with (
        pytest.raises(LookupError, match="body failed"),
        ngo.managed_session(small_model, release="inline"),
    ):
        assert ngo.live_sessions() == 1
        raise LookupError("body failed")


def test_keyboard_interrupt_in_the_body_and_inside_a_feed(small_model: bytes) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        ngo.managed_session(small_model, release="inline"),
    ):
        raise KeyboardInterrupt

    class Interrupting:
        def __array__(self, *args: object, **kwargs: object) -> Any:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ngo.infer(small_model, {"x": Interrupting()})
    assert ngo.live_sessions() == 0


def test_cancellation_of_an_async_block_frees_the_session(small_model: bytes) -> None:
    started = asyncio.Event

    async def body(ready: asyncio.Event) -> None:
        async with ngo.managed_session(small_model, release="inline"):
            ready.set()
            await asyncio.sleep(30)

    async def main() -> None:
        ready = started()
        task = asyncio.create_task(body(ready))
        await ready.wait()
        assert ngo.live_sessions() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert ngo.live_sessions() == 0


def test_concurrent_infer_on_threads_leaves_no_session_and_no_thread(
    small_model: bytes, feeds: Feeds
) -> None:
    ngo.infer(small_model, feeds())  # warm: the reaper threads start once
    before = verify.snapshot()
    results: list[np.ndarray[Any, Any]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(ngo.infer(small_model, feeds())["y"])
        except BaseException as error:  # handed to the test below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 20
    assert ngo.live_sessions() == 0
    after = verify.snapshot()
    assert after.python_thread_ids == before.python_thread_ids
    assert verify.check(before, settle_s=2.0) is None


def test_release_while_another_thread_runs_the_session(small_model: bytes, feeds: Feeds) -> None:
    sessions = [ort.InferenceSession(small_model, providers=["CPUExecutionProvider"])]
    stop = threading.Event()
    outcomes: list[str] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                sessions[0].run(None, feeds())
        except ngo.SessionReleasedError:
            outcomes.append("released")
        except BaseException as error:  # anything else is the bug
            outcomes.append(repr(error))

    runner = threading.Thread(target=loop)
    runner.start()
    with Scope(release="inline") as scope:
        scope.register(sessions[0])
    runner.join(30)
    stop.set()
    sessions.clear()
    assert outcomes == ["released"]
    assert ngo.live_sessions() == 0


def test_a_secret_in_a_pinned_sessions_release_error_is_redacted(
    tmp_path: Path, small_model: bytes
) -> None:
    secret = "s3cr3t-value-1234"
    directory = tmp_path / f"token={secret}"
    directory.mkdir()
    path = directory / "model.onnx"
    path.write_bytes(small_model)
    verify.snapshot()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pin = session._sess
    scope = Scope(release="inline", step_timeout_s=0.4)
    scope.register(session)

    def fail_with_the_path(obj: Any, timeout_s: float) -> None:
        raise RuntimeError(f"could not release {path}")

    from nativeguard import register_adapter

    # Adapters are process-wide and stay registered: the predicate holds the
    # session weakly, or it would keep it alive for every later test.
    target = weakref.ref(session)
    register_adapter(lambda obj: obj is target(), [fail_with_the_path], name="hostile")
    with pytest.raises(NativeGuardError) as caught:
        scope.close()
    failures = caught.value.exceptions  # type: ignore[attr-defined]
    text = repr(failures) + "".join(
        note for error in failures for note in getattr(error, "__notes__", [])
    )
    assert secret not in text
    assert "token=<redacted>" in text
    del pin, caught
    ngo.release_session(session, 1.0)
    assert ngo.live_sessions() == 0
