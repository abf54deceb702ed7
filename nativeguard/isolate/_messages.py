"""The messages a pool and its workers exchange over each worker's duplex pipe.

Named types instead of tuples such as ``("run", id, payload)``, shared by both
ends so neither guesses at the other's fields. :func:`send` and :func:`receive`
carry them (plain ``pickle`` of the fields in order, one ``write`` per message:
about half the CPU of ``Connection.send``'s pickling of a dataclass, paid twice per
task on each side):

* pool -> worker: :class:`RunTask` (the pool may send one ahead while the
  previous task runs), :class:`StopWorker`;
* worker -> pool: :class:`WorkerReady` once, then one :class:`TaskReport`
  per task, in order, or :class:`TaskSkipped` for a task sent ahead that was
  cancelled before the worker could claim it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

__all__ = [
    "Message",
    "RunTask",
    "StopWorker",
    "TaskReport",
    "TaskSkipped",
    "WorkerReady",
    "receive",
    "send",
]


class _Compact:
    """Pickles as its class and its field values in order, not as a ``__dict__``."""

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), tuple(self.__dict__.values())


@dataclass(frozen=True)
class RunTask(_Compact):
    """Run one task: ``payload`` is the pickled ``(fn, args, kwargs)``.

    ``ahead``: sent while the worker still runs its previous task. The worker
    runs it only if it can take the task's claim token (one byte on the
    worker's claim pipe); a caller's ``cancel()`` takes it first otherwise.
    """

    task_id: int
    payload: bytes
    ahead: bool = False


@dataclass(frozen=True)
class TaskSkipped(_Compact):
    """A task sent ahead whose claim token was gone: cancelled, it did not run."""

    task_id: int


@dataclass(frozen=True)
class StopWorker(_Compact):
    """Exit after the current task (sent to an idle worker only)."""


@dataclass(frozen=True)
class WorkerReady(_Compact):
    """The worker started and waits for tasks; its memory at that point."""

    pid: int
    rss: int
    peak_rss: int


@dataclass(frozen=True)
class TaskReport(_Compact):
    """One task's outcome and the worker's accounting, sent to the parent."""

    task_id: int
    ok: bool
    payload: bytes  # the pickled result, or the pickled exception
    traceback: str  # the worker's traceback text when not ok (secrets masked)
    rss_before: int
    rss_after: int  # after the remedies, if they ran
    peak_rss: int
    duration_s: float
    retire: str | None
    detail: str
    remedies: int
    released: int
    baseline: int | None  # RSS after the first task and its remedies, when memory is watched
    next_task: int | None = None  # the task sent ahead, if the worker read it before reporting
    next_claimed: bool = False  # ... and took its claim token: it runs now (else it is skipped)


Message = RunTask | TaskSkipped | StopWorker | WorkerReady | TaskReport


def send(conn: Connection, message: Message) -> None:
    """Write one message (``OSError`` if the other end is gone)."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection) -> object:
    """Read one message (``EOFError``/``OSError`` if the other end is gone).

    Returns ``object``: the peer may be broken (a task writing to the pipe),
    so the caller checks the type before it trusts the fields.
    """
    return pickle.loads(conn.recv_bytes())
