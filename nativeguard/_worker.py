"""The loop a pool's worker process runs: one task at a time, measured, then maybe retire.

Runs in the child. Talks to the parent over one duplex pipe:

* parent -> worker: ``("run", task_id, payload)`` (payload: pickled
  ``(fn, args, kwargs)``) or ``("stop",)``;
* worker -> parent: ``("ready", pid, rss, peak)`` once, then one
  :class:`TaskReport` per task.

The worker ends itself with ``os._exit`` after its last report: a process
retired for leaking is thrown away, so running interpreter finalization
(native destructors, SDK threads joining) would only risk a hang at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import inspect
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

from ._errors import NotPlainDataError, RemoteTaskError, add_note
from ._malloc import malloc_trim, rss_bytes
from ._plain import check_picklable, check_plain, describe_type
from ._recycle import RecyclePolicy, RetirementPolicy

__all__ = ["TaskReport", "WorkerSettings", "in_worker", "peak_rss_bytes", "run_worker"]


class _Role:
    """Whether this process is a pool worker (a class attribute, not a rebound global)."""

    worker = False


_PR_SET_PDEATHSIG = 1


def in_worker() -> bool:
    """True inside a nativeguard pool's worker process."""
    return _Role.worker


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker is told at start."""

    policy: RecyclePolicy
    plain_types: tuple[type, ...] = ()


@dataclass(frozen=True)
class TaskReport:
    """One task's outcome and the worker's accounting, sent to the parent."""

    task_id: int
    ok: bool
    payload: bytes  # the pickled result, or the pickled exception
    traceback: str  # the worker's traceback text when not ok
    rss_before: int
    rss_after: int  # after the remedies, if they ran
    peak_rss: int
    duration_s: float
    retire: str | None
    detail: str
    remedies: int
    released: int
    baseline: int | None  # RSS after the first task and its remedies, when memory is watched


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


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux).

    Under forkserver the parent is the fork server, which exits when the pool's
    process goes away; a worker busy in native code would otherwise outlive
    both. The pipe to the pool covers idle workers on every platform.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def forget_fork_server() -> None:
    """Drop this process's inherited view of a fork server it did not start.

    A process forked from a fork server's client (a worker, forked by the
    server itself; a child of ``os.fork()`` in the pool's process) inherits
    the server's address, pid and its copy of the "alive" pipe's write end.
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
    return f"{describe_type(error)}: {message}"


def _pack_error(error: BaseException) -> tuple[bytes, str]:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if not isinstance(error, Exception):
        # SystemExit, KeyboardInterrupt & co. re-raised as themselves would end the
        # caller (or its event loop): the worker's exit request stays in the worker.
        substitute = RemoteTaskError(_describe_error(error), type_name=describe_type(error))
        return pickle.dumps(substitute, protocol=pickle.HIGHEST_PROTOCOL), text
    try:
        blob = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        substitute = RemoteTaskError(_describe_error(error), type_name=describe_type(error))
        blob = pickle.dumps(substitute, protocol=pickle.HIGHEST_PROTOCOL)
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
    policy = RetirementPolicy(settings.policy, measure=rss_bytes, remedy=_remedy)
    pid = os.getpid()
    conn.send(("ready", pid, rss_bytes(), peak_rss_bytes()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, ConnectionResetError):  # the pool is gone
            return
        if message[0] == "stop":
            return
        _, task_id, payload = message
        before = rss_bytes()
        start = time.perf_counter()
        ok, blob, text = _run_task(payload, settings)
        if os.getpid() != pid:
            # A child the task forked, returning from it: only the worker may report.
            os._exit(0)
        duration = time.perf_counter() - start
        decision = policy.after_task()
        conn.send(
            TaskReport(
                task_id=task_id,
                ok=ok,
                payload=blob,
                traceback=text,
                rss_before=before,
                rss_after=decision.rss,
                peak_rss=peak_rss_bytes(),
                duration_s=duration,
                retire=decision.reason,
                detail=decision.detail,
                remedies=policy.remedies,
                released=policy.released,
                baseline=policy.baseline,
            )
        )
        if decision.reason is not None:
            return


def run_worker(conn: Connection, settings: WorkerSettings) -> None:
    """Entry point of a worker process (the ``multiprocessing.Process`` target)."""
    _Role.worker = True
    # Ctrl-C reaches the whole process group; the pool decides what happens to
    # its workers, so they must not die of it halfway through a task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    # Again, although the pool's at-fork hook already ran: the fork server hands
    # its child the alive pipe only after fork() returned.
    forget_fork_server()
    code = 0
    try:
        _serve(conn, settings)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream must not keep us alive
                stream.flush()
        os._exit(code)
