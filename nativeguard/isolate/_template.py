"""The pool's template process (a zygote): it forks every worker, reaps it and guards them all.

Why: a worker started through multiprocessing pays, on every recycle, the
fork server's ``fork()`` of a ~40 MB interpreter, multiprocessing's bootstrap
in the child (unpickling the preparation data and the process object, ~3-4
ms of CPU, most of it copy-on-write faults) and the re-run of the main script
as ``__mp_main__`` (2.5-5.5 ms for ``benchmarks/pool.py``). So each pool
starts one template process through multiprocessing, once (the bootstrap and
the main script's import happen there, once), and asks it for each worker;
it ``os.fork()``s itself and the child becomes the worker, with none of that
paid again. Measured as the CPU of the pool's whole process tree, 2 workers,
1 ms tasks, ``max_tasks=10``, old and new code in alternating runs: ~21-28 ms
of CPU per recycle before (e56b793), ~7-9 ms with the template (nativeguard
0.1.0, Linux 6.18, glibc 2.36, Python 3.11.7; docs/isolation.md has where
the rest goes).

The template (named ``ng-template``) is warm (under ``forkserver`` it comes
from the fork server, the SDK preloaded) and single-threaded (it runs only
this module's loop, so forking it is sound; the thread count is sent back
with every fork and the pool warns if it is ever above 1). It blocks in
``poll`` on:

* its control socket (``AF_UNIX``, ``SOCK_SEQPACKET``) from the pool's
  launcher: a fork request carries three fds (the worker's end of its task
  pipe, the read end of its claim pipe, the write end of its *status pipe*);
  the reply carries the worker's pid, the template's thread count and a
  pidfd of the worker (so the pool signals that very process, never a reused
  pid). Everything else a worker needs (its settings, initializer) comes as
  the first message on its task pipe and is unpickled in the worker: a
  setting that cannot be unpickled fails that worker's start, not the
  template. ``stop`` (the pool is done with its last worker) or EOF ends
  the template.
* a pidfd of each worker: when one exits, the template SIGKILLs what is left
  in its process group, reaps it, writes its exit code (multiprocessing's
  convention: ``-N`` for signal N) to its status pipe and closes the pipe.
  The pool waits on that pipe as the worker's sentinel: readable exactly when
  the exit code is known. EOF without a code means the template died.
* a pidfd of the pool's process: when it dies (SIGKILL included) the template
  stops every worker, kills all their descendants, the workers and their
  groups (:func:`._guardian.kill_worker_trees`), and exits. It is the pool's
  guardian: one process per pool does both jobs.

Each worker, right after the fork, leads a process group of its own, becomes
a child subreaper, and asks the kernel to SIGKILL it when the template dies
(``PR_SET_PDEATHSIG``; the template is single-threaded, so the forking thread
is the whole process). A template that is killed takes its workers with it;
the pool sees their status pipes close, kills what is left in their groups,
and starts a new template with the next worker.

Linux only (``pidfd_open``, ``SCM_RIGHTS``); elsewhere workers start as
``multiprocessing.Process`` (see :mod:`._launcher`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.process
import multiprocessing.resource_tracker
import multiprocessing.util
import os
import pickle
import select
import signal
import socket
import struct
import sys
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from ._guardian import become_guarded_worker, kill_worker_trees, set_process_name
from ._worker import forget_fork_server, run_worker

__all__ = ["ForkedProcess", "Template", "run_template"]

_CODE = struct.Struct("=i")  # a worker's exit code, on its status pipe
_REPLY = struct.Struct("=ii")  # a fork's reply: the worker's pid, the template's thread count
_REQUEST = b"fork"
_STOP = b"stop"
_NAME = b"ng-template"
_CLOSE_WAIT_S = 5.0
# The template ignores these (a Ctrl-C reaches the whole process group); a worker gets back
# what the template had before.
_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


# ----------------------------------------------------------- the pool's side


class ForkedProcess:
    """The pool's handle on one worker the template forked: what the manager uses of a Process.

    ``sentinel`` is the status pipe's read end; ``join`` reads the exit code
    from it. ``kill``/``terminate`` signal the worker's pidfd.
    """

    def __init__(self, pid: int, pidfd: int, status: int) -> None:
        self.pid = pid
        self._pidfd: int | None = pidfd
        self.sentinel = status
        self.exitcode: int | None = None
        self._read = False  # the status pipe said what it will say (a code or EOF)

    def _signal(self, number: int) -> None:
        if self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, number)  # OSError once it is gone

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the template's report of the exit code."""
        if self._read or self.sentinel < 0:
            return
        if not _readable(self.sentinel, timeout):
            return
        try:
            data = os.read(self.sentinel, _CODE.size)
        except OSError:
            data = b""
        self._read = True
        if len(data) == _CODE.size:
            (self.exitcode,) = _CODE.unpack(data)
            return
        # No code: the template died (its workers die with it, PR_SET_PDEATHSIG).
        # Make sure of it, and of what is left in the worker's group.
        with contextlib.suppress(OSError):
            self.kill()
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._pidfd is not None:
            _readable(self._pidfd, _CLOSE_WAIT_S)  # SIGKILLed: gone in moments

    def close(self) -> None:
        """Release the pidfd and the status pipe (after ``join``). Idempotent."""
        for fd in (self._pidfd, self.sentinel):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._pidfd, self.sentinel = None, -1


class Template:
    """The pool's handle on its template process: start it, ask it for workers, end it."""

    def __init__(self, process: Any, control: socket.socket, pidfd: int) -> None:
        self.process = process
        self._control = control
        self._pidfd = pidfd
        self.threads = 1  # the template's thread count at its last fork
        self.warned = False  # about more threads than 1 (once per template)

    @classmethod
    def start(cls, context: Any, pool_pid: int) -> Template:
        """Start a template through ``context`` (its bootstrap and ``__mp_main__`` run there)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = context.Process(
                target=run_template, args=(theirs, pool_pid), name="nativeguard-template"
            )
            process.start()
            # Only the launcher may poll it (see Launcher.launch).
            multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the template has its own copy (or there is no template)
        try:
            pidfd = os.pidfd_open(process.pid)
        except OSError:
            ours.close()
            with contextlib.suppress(OSError, ValueError):
                process.kill()
            process.join()
            raise
        return cls(process, ours, pidfd)

    def alive(self) -> bool:
        return self._pidfd >= 0 and not _readable(self._pidfd, 0)

    def fork(self, task_pipe: int, claims: int) -> ForkedProcess:
        """Have the template fork one worker on these fds; ``OSError``/``EOFError`` if it cannot."""
        status_r, status_w = os.pipe()
        try:
            try:
                socket.send_fds(self._control, [_REQUEST], [task_pipe, claims, status_w])
            finally:
                os.close(status_w)  # only the template may hold it: EOF means it died
            reply, fds = _read_reply(self._control)
        except BaseException:
            os.close(status_r)
            raise
        if len(reply) != _REPLY.size or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            os.close(status_r)
            raise EOFError(reply.decode("utf-8", "replace") or "the template process is gone")
        pid, self.threads = _REPLY.unpack(reply)
        return ForkedProcess(pid, fds[0], status_r)

    def close(self) -> None:
        """End the template (after the last worker) and reap it. Idempotent."""
        if self._pidfd < 0:
            return
        # "stop" rather than EOF alone: a child os.fork()ed from the pool's process
        # (a pre-forking server) holds a copy of this socket, so EOF may never come.
        with contextlib.suppress(OSError):
            self._control.send(_STOP)
        self._control.close()  # it exits (killing any worker it still has)
        if not _readable(self._pidfd, _CLOSE_WAIT_S):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        self.process.join()
        os.close(self._pidfd)
        self._pidfd = -1


def _read_reply(control: socket.socket) -> tuple[bytes, list[int]]:
    """The template's reply to one fork request (named: a test waits for the launcher here)."""
    reply, fds, _flags, _address = socket.recv_fds(control, 1024, 1)
    return reply, fds


def _readable(fd: int, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))


# ------------------------------------------------------- the template's side


def run_template(control: socket.socket, pool_pid: int) -> None:
    """The template process's whole life (a ``multiprocessing.Process`` target)."""
    try:
        _Zygote(control, pool_pid).serve()
    finally:
        os._exit(0)


class _Zygote:
    """The template's loop: fork on request, reap and report, kill everything with the pool."""

    def __init__(self, control: socket.socket, pool_pid: int) -> None:
        self.control = control
        self.pool_pid = pool_pid
        self.workers: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status pipe's write end)
        self.poller = select.poll()
        self.pool = -1
        self.signals: dict[int, Any] = {}
        self.name = b""

    def serve(self) -> None:
        with contextlib.suppress(OSError), open("/proc/self/comm", "rb") as comm:
            self.name = comm.read().strip()  # what a worker is called again
        set_process_name(_NAME)
        for number in _IGNORED:
            with contextlib.suppress(OSError, ValueError):
                self.signals[number] = signal.signal(number, signal.SIG_IGN)
        try:
            self.pool = os.pidfd_open(self.pool_pid)
        except OSError:
            return  # the pool is gone already
        # The fork server's "alive" fd goes (closed by number: before any fd number is reused).
        forget_fork_server()
        tracker = getattr(multiprocessing.resource_tracker._resource_tracker, "_fd", None)
        parent = multiprocessing.parent_process()
        sentinel = getattr(parent, "_sentinel", None)
        _close_all_but({0, 1, 2, self.control.fileno(), self.pool, tracker, sentinel})
        self.poller.register(self.control, select.POLLIN)
        self.poller.register(self.pool, select.POLLIN)
        while True:
            try:
                events = self.poller.poll()
            except InterruptedError:  # pragma: no cover - retried by Python itself
                continue
            ready = {fd for fd, _ in events}
            if self.pool in ready:
                break  # the pool's process died
            for fd in ready & self.workers.keys():
                self._reap(fd)
            if self.control.fileno() in ready and not self._serve_request():
                break  # the pool closed the socket
        kill_worker_trees([pid for pid, _ in self.workers.values()])
        for fd in list(self.workers):
            self._reap(fd)

    def _serve_request(self) -> bool:
        try:
            data, fds, _flags, _address = socket.recv_fds(self.control, 1024, 3)
        except OSError:
            return False
        if not data or data == _STOP:
            _close(fds)
            return False
        if data != _REQUEST or len(fds) != 3:
            _close(fds)
            self._refuse(f"not a fork request: {data!r} with {len(fds)} fds")
            return True
        task_pipe, claims, status = fds
        try:
            pid, pidfd = self._fork(task_pipe, claims, status)
        except OSError as error:
            _close([status])
            self._refuse(f"the template could not fork a worker: {error!r}")
            return True
        finally:
            _close([task_pipe, claims])  # the worker has them now
        with contextlib.suppress(OSError):  # the pool is gone: its pidfd (or EOF) ends the loop
            socket.send_fds(self.control, [_REPLY.pack(pid, _thread_count())], [pidfd])
        return True

    def _refuse(self, why: str) -> None:
        with contextlib.suppress(OSError):
            self.control.send(why.encode())

    def _fork(self, task_pipe: int, claims: int, status: int) -> tuple[int, int]:
        """Fork one worker; the template keeps a pidfd of it and its status pipe's write end."""
        for stream in (sys.stdout, sys.stderr):  # a buffer copied into the child prints twice
            with contextlib.suppress(Exception):
                stream.flush()
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                self._become_worker(me, task_pipe, claims, status)
            finally:
                os._exit(1)  # the worker leaves with os._exit; only a bug gets here
        try:
            pidfd = os.pidfd_open(pid)  # our child, not reaped yet: the pid is its own
        except OSError:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        self.workers[pidfd] = (pid, status)
        self.poller.register(pidfd, select.POLLIN)
        return pid, pidfd

    def _reap(self, pidfd: int) -> None:
        pid, status = self.workers.pop(pidfd)
        self.poller.unregister(pidfd)
        # What stayed in its group goes with it; before the reap, while the
        # zombie still holds the pid, so the group id cannot be anyone else's.
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        try:
            _, wait_status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(wait_status)
        except (ChildProcessError, ValueError):  # pragma: no cover - only we reap our children
            code = 255
        with contextlib.suppress(OSError):
            os.write(status, _CODE.pack(code))
        os.close(status)
        os.close(pidfd)

    def _become_worker(self, template: int, task_pipe: int, claims: int, status: int) -> None:
        """In the child: drop the template's state, then run the worker loop (never returns)."""
        for fd in (self.pool, *self.workers, *(s for _, s in self.workers.values()), status):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.control.close()
        for number, handler in self.signals.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(number, handler)
        if self.name:
            set_process_name(self.name)
        become_guarded_worker(template)
        # What multiprocessing's bootstrap does for a child, and no more.
        multiprocessing.process._children = set()  # type: ignore[attr-defined]
        multiprocessing.util._finalizer_registry.clear()  # type: ignore[attr-defined]
        multiprocessing.util._run_after_forkers()  # type: ignore[attr-defined]
        multiprocessing.current_process().name = "nativeguard-worker"

        conn = Connection(task_pipe)
        try:
            settings = pickle.loads(conn.recv_bytes())
            settings = replace(settings, claims=Connection(claims))
        except BaseException:
            traceback.print_exc()
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(1)  # a failed start, as when an initializer raises
        run_worker(conn, settings, guarded=True)


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _close_all_but(keep: set[int | None]) -> None:
    """Close every fd not in ``keep`` (under fork the pool's fds came along: a copy of another
    pipe's end here would hide its closing from the pool)."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - no /proc
        return 1
