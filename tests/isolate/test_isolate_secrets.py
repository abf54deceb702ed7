"""Secrets never leave a worker in an error: str(), repr(), notes and tracebacks are masked.

A task's exception carrying credentials (a subscription key, a password, a
bearer token) comes back with them replaced by ``<redacted>``, as itself when
masking its args suffices, else as a RemoteTaskError naming its type; a result
that is not plain data under a secret dict key names its path without the key.
"""

from __future__ import annotations

import threading
import traceback

import isolate_secret_tasks as tasks
import pytest
from isolate_support import HANG_S

from nativeguard.isolate import NotPlainDataError, RemoteTaskError, WorkerPool

pytestmark = [pytest.mark.usefixtures("fork_server"), pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(1, warm_spare=False) as pool:
        yield pool


def every_text(error: BaseException) -> str:
    """Everything a caller could print or log of ``error``."""
    parts = [str(error), repr(error), *getattr(error, "__notes__", ())]
    parts += traceback.format_exception(type(error), error, error.__traceback__)
    parts += [str(value) for value in vars(error).values()]
    return "\n".join(parts)


def assert_no_secret(text: str) -> None:
    for secret in tasks.SECRETS:
        assert secret not in text, f"{secret!r} leaked into:\n{text}"
    assert "<redacted>" in text


def failure(pool: WorkerPool, fn: object, *args: object) -> BaseException:
    with pytest.raises(BaseException) as caught:  # noqa: PT011 - each test checks the type
        pool.submit(fn, *args).result(HANG_S)  # type: ignore[arg-type]
    return caught.value


def test_reraised_task_exception_is_masked_and_keeps_its_type(pool: WorkerPool) -> None:
    error = failure(pool, tasks.raise_with_secrets)
    assert type(error) is ValueError
    assert "upstream refused: Ocp-Apim-Subscription-Key: <redacted>" in str(error)
    assert "password=<redacted>" in str(error)
    assert "token=<redacted>" in str(error)
    assert any("Authorization: Bearer <redacted>" in note for note in error.__notes__)
    assert_no_secret(every_text(error))


def test_exception_showing_a_secret_from_an_attribute_becomes_remote_task_error(
    pool: WorkerPool,
) -> None:
    error = failure(pool, tasks.raise_secret_in_str)
    assert isinstance(error, RemoteTaskError)
    assert error.type_name == "isolate_secret_tasks.ConnectionFailed"
    assert "wss://127.0.0.1/speech refused Ocp-Apim-Subscription-Key=<redacted>" in str(error)
    assert_no_secret(every_text(error))


@pytest.mark.parametrize(
    ("fn", "type_name"),
    [
        (tasks.raise_unpicklable_with_secrets, "isolate_secret_tasks.Unpicklable"),
        (tasks.raise_system_exit_with_secrets, "SystemExit"),
    ],
)
def test_remote_task_error_is_masked(pool: WorkerPool, fn: object, type_name: str) -> None:
    error = failure(pool, fn)
    assert isinstance(error, RemoteTaskError)
    assert error.type_name == type_name
    assert_no_secret(every_text(error))


@pytest.mark.parametrize("kind", ["dict", "header", "set"])
def test_not_plain_result_path_hides_a_secret_key(pool: WorkerPool, kind: str) -> None:
    error = failure(pool, tasks.return_secret_keyed, kind)
    assert isinstance(error, NotPlainDataError)
    assert "not shown" in error.path
    for secret in tasks.SECRETS:
        assert secret not in every_text(error)
        assert secret not in error.path


def test_not_plain_argument_path_hides_a_secret_key(pool: WorkerPool) -> None:
    with pytest.raises(NotPlainDataError) as caught:
        pool.submit(tasks.return_secret_keyed, {tasks.KEY: threading.Lock()})
    assert caught.value.path == "args[0][<str of 32 chars, not shown>]"
    assert tasks.KEY not in every_text(caught.value)


def test_a_plain_name_key_is_still_shown(pool: WorkerPool) -> None:
    with pytest.raises(NotPlainDataError) as caught:
        pool.submit(tasks.return_secret_keyed, {"segments": threading.Lock()})
    assert caught.value.path == "args[0]['segments']"
