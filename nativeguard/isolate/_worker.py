"""The loop a pool's worker process runs: one task at a time, measured, then maybe retire.

Runs in the child. Talks to the parent over one duplex pipe with the
message types of :mod:`nativeguard._messages`: ``WorkerReady`` once, then a
``TaskReport`` per ``RunTask``, until ``StopWorker``, a retirement or EOF.

The worker ends itself with ``os._exit`` after its last report: a process
retired for leaking is thrown away, so running interpreter finalization
(native destructors, SDK threads joining) would only risk a hang at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

if sys.platform != "win32":
    import resource

from .._core._errors import NotPlainDataError, RemoteTaskError, add_note
from .._core._malloc import malloc_trim, rss_bytes
from .._core._redact import redact_text
from ._guardian import die_with_parent, kill_descendants
from ._messages import RunTask, TaskReport, TaskSkipped, WorkerReady, receive, send
from ._plain import check_picklable, check_plain, describe_type
from ._recycle import RecyclePolicy, RetirementPolicy

__all__ = [
    "MemoryMeter",
    "WorkerSettings",
    "in_worker",
    "peak_rss_bytes",
    "run_worker",
    "take_claim",
]


class _Role:
    """Whether this process is a pool worker (a class attribute, not a rebound global)."""

    worker = False


def in_worker() -> bool:
    """True inside a nativeguard pool's worker process."""
    return _Role.worker


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker is told at start."""

    policy: RecyclePolicy
    plain_types: tuple[type, ...] = ()
    initializer: Callable[..., object] | None = None  # run once, before the worker is ready
    initargs: tuple[Any, ...] = ()
    claims: Connection | None = None  # the claim pipe's read end (see RunTask.ahead)


def take_claim(claims: int | None) -> bool:
    """Take one claim token from a (non-blocking) claim pipe's fd; False if there was none."""
    if claims is None:
        return False
    try:
        return len(os.read(claims, 1)) == 1
    except (BlockingIOError, OSError):
        return False


class MemoryMeter:
    """This process's current and peak RSS, cheap enough to read around every task.

    ``/proc/self/statm`` is opened once and re-read with ``pread`` (~1.5 us;
    opening it each time cost ~17 us, and ``/proc/self/status`` for the peak
    another ~17 us: ~50 us of a worker's ~100 us per-task overhead), the peak
    comes from ``getrusage`` (the same ``VmHWM`` counter, ~1 us). Measured
    with nativeguard 0.1.0, Linux 6.18, glibc 2.36, Python 3.11.7. A task that
    closes the fd (or reuses its number) gets the slow path, never a wrong
    reading: the fd is checked against the file it was opened on.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._linux = sys.platform.startswith("linux")
        try:
            fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return
        info = os.fstat(fd)
        self._fd, self._identity = fd, (info.st_dev, info.st_ino)

    def rss(self) -> int:
        fd = self._fd
        if fd is not None:
            try:
                info = os.fstat(fd)
                if (info.st_dev, info.st_ino) == self._identity:
                    return int(os.pread(fd, 256, 0).split()[1]) * _PAGE
            except (OSError, ValueError, IndexError):
                pass
            self._fd = None  # closed or replaced by a task: not ours to close
        return rss_bytes()

    def peak(self) -> int:
        if self._linux:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak_rss_bytes()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def peak_rss_bytes() -> int:
    """The highest RSS this process has had (``VmHWM``), in bytes; 0 where unknown."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _remedy() -> None:
    gc.collect()
    malloc_trim(0)


def forget_fork_server() -> None:
    """Drop this process's inherited view of a fork server it did not start.

    A process forked from a fork server's client (a pool's template, forked by
    the server, and its workers; a child of ``os.fork()`` in the pool's
    process) inherits the server's address, pid and its copy of the "alive"
    pipe's write end.
    It cannot use that server (``ensure_running`` waits on a pid that is not
    its child), and the copy keeps the server alive after its real client
    died: PR_SET_PDEATHSIG (which waits for the fork server) would then never
    fire for busy workers. Forgotten, a pool started here gets a fork server
    of its own. Its lock, and the resource tracker's (which starting one
    takes), are new too: fork() copies a lock held by another thread (a
    pool's launcher, starting a worker) as held for good.
    """
    tracker = getattr(multiprocessing.resource_tracker, "_resource_tracker", None)
    if tracker is not None and hasattr(tracker, "_lock"):
        tracker._lock = _new_lock_like(tracker._lock)
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    if server is None:
        return
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    server._forkserver_alive_fd = None
    server._forkserver_address = None
    server._forkserver_pid = None
    server._lock = _new_lock_like(getattr(server, "_lock", None))


def _new_lock_like(lock: object) -> object:
    reentrant = type(lock) is type(threading.RLock())
    return threading.RLock() if reentrant else threading.Lock()


def _describe_error(error: BaseException) -> str:
    try:
        message = str(error)
    except Exception:
        message = "<str() of the exception failed>"
    return redact_text(f"{describe_type(error)}: {message}")


def _redacted(value: object) -> object:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [redact_text(item) for item in value]  # __notes__
    return value


def _redact_exception(error: BaseException) -> None:
    """Mask credential-shaped text in ``error``'s args, str attributes and notes, in place."""
    with contextlib.suppress(Exception):
        error.args = tuple(_redacted(arg) for arg in error.args)
    state = getattr(error, "__dict__", None)
    if isinstance(state, dict):
        for name, value in list(state.items()):
            masked = _redacted(value)
            if masked != value:
                state[name] = masked


def _shows_secret(error: BaseException) -> bool:
    """True if ``str()``, ``repr()`` or a note of ``error`` still has credential-shaped text."""
    try:
        texts = [str(error), repr(error)]
    except Exception:  # unprintable: nothing of it can be shown either
        return False
    notes = getattr(error, "__notes__", None)
    if isinstance(notes, list):
        texts.extend(note for note in notes if isinstance(note, str))
    return any(redact_text(text) != text for text in texts)


def _substitute(error: BaseException) -> bytes:
    substitute = RemoteTaskError(_describe_error(error), type_name=describe_type(error))
    return pickle.dumps(substitute, protocol=pickle.HIGHEST_PROTOCOL)


def _pack_error(error: BaseException) -> tuple[bytes, str]:
    """The task's exception, pickled, and its traceback text, both with secrets masked.

    Masked in the worker, before anything crosses: the parent logs and
    re-raises what it gets. An exception whose text still shows a secret after
    its args and attributes were masked (its ``__str__`` reads something else)
    crosses as a :class:`RemoteTaskError` with the masked description.
    """
    text = redact_text("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    if not isinstance(error, Exception):
        # SystemExit, KeyboardInterrupt & co. re-raised as themselves would end the
        # caller (or its event loop): the worker's exit request stays in the worker.
        return _substitute(error), text
    _redact_exception(error)
    try:
        blob = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
        rebuilt = pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        return _substitute(error), text
    if _shows_secret(rebuilt):
        return _substitute(error), text
    return blob, text


def _run_task(payload: bytes, settings: WorkerSettings) -> tuple[bool, bytes, str]:
    try:
        fn, args, kwargs = pickle.loads(payload)
    except Exception as error:
        add_note(
            error,
            "the worker could not unpickle the task: its function must be importable by "
            "module and name in the worker (not defined in an interactive __main__ or a notebook)",
        )
        blob, text = _pack_error(error)
        del error
        return False, blob, text
    try:
        value = fn(*args, **kwargs)
        del fn, args, kwargs
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
    except BaseException as error:  # SystemExit from a task fails the task, not the worker
        blob, text = _pack_error(error)
        del error  # its traceback pins the task's frames (and what they hold)
        return False, blob, text
    try:
        check_plain(value, "result", settings.plain_types)
        return True, check_picklable(value, "result"), ""
    except NotPlainDataError as error:
        # The message names the offending path; our checker's frames add nothing.
        return False, pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL), ""


def _serve(conn: Connection, settings: WorkerSettings) -> None:
    meter = MemoryMeter()
    # One poll object for the worker's life: Connection.poll() builds a selector
    # per call (~10 us of Python per task).
    incoming = select.poll()
    incoming.register(conn.fileno(), select.POLLIN)
    policy = RetirementPolicy(settings.policy, measure=meter.rss, remedy=_remedy)
    claims: int | None = None
    if settings.claims is not None:
        # A bare fd: the worker's one Connection stays the pipe to the pool.
        claims = os.dup(settings.claims.fileno())
        settings.claims.close()
    pid = os.getpid()
    if settings.initializer is not None:
        # Raising here ends the worker before it is ready (exit code 1, the
        # traceback on stderr): the pool counts a failed start.
        settings.initializer(*settings.initargs)
    send(conn, WorkerReady(pid, meter.rss(), meter.peak()))
    early: object = None  # the next message, read before the last report
    while True:
        if early is not None:
            message, early = early, None
        else:
            try:
                message = receive(conn)
            except (EOFError, ConnectionResetError):  # the pool is gone
                return
            if isinstance(message, RunTask) and message.ahead and not take_claim(claims):
                send(conn, TaskSkipped(message.task_id))  # cancelled (or taken back) meanwhile
                continue
        if not isinstance(message, RunTask):
            return  # StopWorker
        task_id, payload = message.task_id, message.payload
        before = meter.rss()
        start = time.perf_counter()
        ok, blob, text = _run_task(payload, settings)
        if os.getpid() != pid:
            # A child the task forked, returning from it: only the worker may report.
            os._exit(0)
        duration = time.perf_counter() - start
        decision = policy.after_task()
        # A task sent ahead is claimed (or found cancelled) before this report, so
        # the report tells the pool at once whether it runs next: the pool marks it
        # running, and may send the one after it ahead, without another message.
        next_task: int | None = None
        next_claimed = False
        if decision.reason is None and incoming.poll(0):
            following = receive(conn)
            if isinstance(following, RunTask) and following.ahead:
                next_task = following.task_id
                next_claimed = take_claim(claims)
                early = following if next_claimed else None
            else:
                early = following
        send(
            conn,
            TaskReport(
                task_id=task_id,
                ok=ok,
                payload=blob,
                traceback=text,
                rss_before=before,
                rss_after=decision.rss,
                peak_rss=meter.peak(),
                duration_s=duration,
                retire=decision.reason,
                detail=decision.detail,
                remedies=policy.remedies,
                released=policy.released,
                baseline=policy.baseline,
                next_task=next_task,
                next_claimed=next_claimed,
            ),
        )
        if decision.reason is not None:
            return


def run_worker(conn: Connection, settings: WorkerSettings, *, guarded: bool = False) -> None:
    """A worker process's whole life; ends it with ``os._exit``.

    ``guarded``: forked by the pool's template (:mod:`._template`), which
    already made it a group leader and subreaper that dies with the template.
    Otherwise (a ``multiprocessing.Process`` target, where no template runs)
    it dies with its parent (``PR_SET_PDEATHSIG``).
    """
    _Role.worker = True
    # Ctrl-C reaches the whole process group; the pool decides what happens to
    # its workers, so they must not die of it halfway through a task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()
    if not guarded:
        die_with_parent()
    # A fork server's client's view of it is useless here (see forget_fork_server).
    forget_fork_server()
    code = 0
    try:
        _serve(conn, settings)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        if os.getpid() == me:  # not a child a task forked, leaving through here
            # Ending normally: what the tasks started ends with this worker.
            kill_descendants(me)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream must not keep us alive
                stream.flush()
        os._exit(code)
