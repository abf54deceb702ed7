"""Task functions for WorkerPool tests: module level, so worker processes import them by name.

Workers unpickle a task's function by ``module.qualname``; they inherit the
test process's ``sys.path`` (tests/ is on it), so ``import isolate_tasks``
works in both. Nothing here starts a pool at import: a worker imports this
module too, and must not start processes of its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nativeguard.isolate import in_worker, isolated

# ----------------------------------------------------------------- plain tasks


def add(a: int, b: int) -> int:
    """The smallest task: proves arguments go in and the result comes back."""
    return a + b


def getpid() -> int:
    """The pid of the process that ran the task."""
    return os.getpid()


def worker_flag() -> bool:
    """What ``in_worker()`` says inside a task."""
    return in_worker()


def sleep_then(seconds: float, value: object) -> object:
    """Sleep, then return ``value``: a task that is running long enough to be observed."""
    time.sleep(seconds)
    return value


def report_pid_and_sleep(path: str, seconds: float) -> int:
    """Write this worker's pid to ``path`` (atomically), then sleep: a task to kill mid-run."""
    partial = Path(path + ".part")
    partial.write_text(str(os.getpid()))
    partial.rename(path)
    time.sleep(seconds)
    return os.getpid()


async def async_double(x: int) -> tuple[int, int]:
    """An ``async def`` task: the worker runs it under its own event loop."""
    await asyncio.sleep(0)
    return os.getpid(), 2 * x


# --------------------------------------------------------------- failing tasks


def raise_value_error(message: str) -> None:
    """Raise a picklable exception: it must come back as itself."""
    raise ValueError(message)


class UnpicklableError(Exception):
    """An exception holding a lock: pickling it fails, so it cannot cross as itself."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable(message: str) -> None:
    """Raise :class:`UnpicklableError`."""
    raise UnpicklableError(message)


def exit_with(code: int) -> None:
    """End the worker at once with ``code``, as a native ``exit()`` would."""
    os._exit(code)


def segfault() -> None:
    """Dereference NULL from native code (SIGSEGV); no core file."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.string_at(0)


def crash_first_time(marker: str) -> str:
    """Crash (exit 5) on the first attempt, recording its pid in ``marker``; succeed after."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os._exit(5)
    return "second attempt"


def ignore_sigterm_and_sleep(ready: str, seconds: float) -> None:
    """Ignore SIGTERM, tell the test so through the file ``ready``, then hang."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(ready).write_text(str(os.getpid()))
    time.sleep(seconds)


# ------------------------------------------------------------------ plain data


class Opaque:
    """Not plain data (a plain class, not a dataclass): picklable, but refused unless allowed."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.label == self.label

    def __hash__(self) -> int:
        return hash(self.label)


@dataclass(frozen=True)
class Part:
    """A segment-like dataclass whose ``raw`` may hold something that is not plain."""

    text: str
    raw: object


@dataclass(frozen=True)
class Report:
    """A result-like dataclass holding a tuple of parts."""

    title: str
    segments: tuple[Part, ...]


@dataclass
class LockHolder:
    """A dataclass argument with a lock inside."""

    name: str
    lock: object


def report_with_opaque(at: int) -> Report:
    """A Report whose ``segments[at].raw`` is an :class:`Opaque`, the others bytes."""
    segments = tuple(
        Part(f"part {index}", Opaque(f"raw {index}") if index == at else b"raw")
        for index in range(5)
    )
    return Report("five parts", segments)


def return_lock() -> object:
    """A result that is a lock: not plain, and not even picklable."""
    return threading.Lock()


def echo(value: object) -> object:
    """Return the argument as it arrived."""
    return value


# -------------------------------------------------------------------- isolated
# The shared default pools these use are shut down by the tests (see the
# ``default_pools`` fixture), so none outlives the test that started it.

SHARED_OPTIONS = {"workers": 1, "warm_spare": False}


@isolated(**SHARED_OPTIONS)
def iso_square(x: int) -> tuple[int, bool, int]:
    """Where it ran (pid, in_worker) and x squared."""
    return os.getpid(), in_worker(), x * x


@isolated(**SHARED_OPTIONS)
async def iso_async_square(x: int) -> tuple[int, bool, int]:
    """The ``async def`` twin of :func:`iso_square`."""
    await asyncio.sleep(0)
    return os.getpid(), in_worker(), x * x


@isolated(**SHARED_OPTIONS)
def iso_outer(x: int) -> tuple[int, tuple[int, bool, int]]:
    """Call another isolated function from inside a worker: it must run inline."""
    return os.getpid(), iso_square(x)


@isolated(workers=1, warm_spare=False, max_tasks=1)
def iso_fresh_pid() -> int:
    """A different option set, so a different shared pool: one task per worker."""
    return os.getpid()


def pooled_cube(x: int) -> tuple[int, int]:
    """Rebound by a test to ``isolated(pool=its_pool)(pooled_cube)`` (see there)."""
    return os.getpid(), x**3


def pooled_outer(x: int) -> tuple[int, tuple[int, bool, int]]:
    """Rebound like :func:`pooled_cube`; calls the shared-pool :func:`iso_square` inline."""
    return os.getpid(), iso_square(x)
