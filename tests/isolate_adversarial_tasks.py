"""Misbehaving tasks for tests/isolate/test_isolate_adversarial.py, importable by workers.

Module level, so a worker unpickles them by ``module.qualname`` (tests/ is on the
workers' ``sys.path``). Nothing here starts a pool or a process at import.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from nativeguard.isolate import WorkerPool, isolated


def add(a: int, b: int) -> int:
    return a + b


def getpid() -> int:
    return os.getpid()


def sleep_then(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def wait_for_file(path: str, value: object, within_s: float = 30.0) -> object:
    """Block until ``path`` exists (the test's go signal), then return ``value``."""
    deadline = time.monotonic() + within_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return value


# ------------------------------------------------------- leaving the interpreter


def call_sys_exit(code: int) -> None:
    sys.exit(code)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


class CustomBaseError(BaseException):
    """A BaseException that is not an Exception (like SystemExit, KeyboardInterrupt)."""


def raise_custom_base_error(message: str) -> None:
    raise CustomBaseError(message)


# ----------------------------------------------------------- awkward exceptions


class UnpicklableUnprintableError(Exception):
    """Cannot be pickled (holds a lock) and str() of it raises."""

    def __init__(self) -> None:
        super().__init__("never shown")
        self.lock = threading.Lock()

    def __str__(self) -> str:
        raise RuntimeError("__str__ of this exception is broken")


def raise_unpicklable_unprintable() -> None:
    raise UnpicklableUnprintableError


class ReduceRaisesError(Exception):
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("this exception refuses to be pickled")


def raise_reduce_raises(message: str) -> None:
    raise ReduceRaisesError(message)


# --------------------------------------------------------------- odd processes


def fork_and_return_in_both(marker: str) -> str:
    """os.fork() and let the child return from the task too (as an unguarded fork would).

    The child waits a moment so the parent's report goes first, and writes its
    pid to ``marker`` so the test can clean it up.
    """
    pid = os.fork()
    if pid == 0:
        Path(marker + ".part").write_text(str(os.getpid()))
        os.rename(marker + ".part", marker)
        time.sleep(0.3)
        return "from the child"
    return "from the worker"


def start_daemon_grandchild(marker: str, seconds: float) -> int:
    """Fork a child that lives ``seconds`` (keeping every inherited fd), return at once."""
    pid = os.fork()
    if pid == 0:
        try:
            Path(marker + ".part").write_text(str(os.getpid()))
            os.rename(marker + ".part", marker)
            time.sleep(seconds)
        finally:
            os._exit(0)
    return pid


def leave_non_daemon_thread(seconds: float) -> int:
    """Start a non-daemon thread that outlives the task; return the worker's pid."""
    threading.Thread(target=time.sleep, args=(seconds,), daemon=False).start()
    return os.getpid()


def close_std_fds() -> int:
    """Close fds 0, 1 and 2 (stdin, stdout, stderr) and return normally."""
    for fd in (0, 1, 2):
        os.close(fd)
    return os.getpid()


def close_worker_pipe() -> None:
    """Close every fd above 2 of the worker, its pipe to the pool included, and return."""
    os.closerange(3, 4096)


def speak_on_worker_pipe() -> str:
    """Send a message of its own on the worker's pipe to the pool, then return."""
    (pipe,) = [obj for obj in gc.get_objects() if type(obj) is Connection and not obj.closed]
    pipe.send("not a report")
    time.sleep(5)  # the pool kills the worker long before
    return "unreachable"


# ------------------------------------------------------------------ plain data


class Tagged(str):
    """A str subclass: instances have a ``__dict__`` that pickle carries along."""


class Opaque:
    """Not plain data: a plain class, picklable."""

    def __init__(self, label: str) -> None:
        self.label = label


def tagged_with_opaque() -> Tagged:
    value = Tagged("text")
    value.raw = Opaque("hidden")  # type: ignore[attr-defined]
    return value


def huge_bytes(megabytes: int) -> bytes:
    return b"x" * (megabytes << 20)


def length(value: bytes) -> int:
    return len(value)


def nested_lists(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


# ---------------------------------------------------------------- nested pools


def run_in_nested_pool(a: int, b: int) -> dict[str, object]:
    """Run ``add(a, b)`` in a pool started inside this worker; say which processes took part."""
    with WorkerPool(1, warm_spare=False, preload=()) as inner:
        future = inner.submit(add, a, b)
        total = future.result(60)
    stats = inner.statistics()
    return {
        "outer": os.getpid(),
        "inner": future.pid,
        "inner_fork_server": forkserver_pid(),
        "total": total,
        "inner_completed": stats.tasks_completed,
        "inner_workers_left": len(stats.workers),
    }


def touch_after(seconds: float, path: str) -> int:
    """Sleep, then create ``path``: proof the task ran to its end."""
    time.sleep(seconds)
    Path(path).touch()
    return os.getpid()


def fail_with(message: str) -> None:
    raise ValueError(message)


def crash_with(code: int) -> None:
    os._exit(code)


def type_name(value: object) -> str:
    """The qualified type name of the argument, as the worker received it."""
    return f"{type(value).__module__}.{type(value).__qualname__}"


def forkserver_pid() -> int | None:
    """This process's fork server pid (None if it has not started one)."""
    import multiprocessing.forkserver

    return multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]


def sleep_or_fail(seconds: float) -> float:
    """Sleep ``seconds`` and return them; a negative value raises ValueError instead."""
    if seconds < 0:
        raise ValueError(f"negative: {seconds}")
    time.sleep(seconds)
    return seconds


@isolated(max_tasks=1)
def isolated_getpid() -> int:
    """The pid of the worker it runs in (a shared @isolated pool)."""
    return os.getpid()


def hold_once(flag: str, release: str) -> None:
    """Initializer: the one worker that removes ``flag`` waits for ``release`` (30 s at most)."""
    try:
        os.unlink(flag)
    except FileNotFoundError:
        return
    wait_for_file(release, None)
