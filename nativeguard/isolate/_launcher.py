"""The launcher: a thread that starts worker processes when the manager asks for them.

Starting one takes milliseconds (the fork server round trip); done by the
manager, a task submitted meanwhile would wait for it, which is the latency
the warm spare exists to avoid. Under ``fork`` this thread is the workers'
parent, so it lives until the manager is done with them (a child's
parent-death signal fires when the forking *thread* exits).

It also keeps the pool's one guardian process (:mod:`._guardian`) running:
started before the first worker, and again before the next worker if the
fork server was replaced (the old guardian, a child of the dead server, has
killed that server's workers and exited); the manager ends it after the last
worker (:meth:`Launcher.close`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.process
import os
import sys
import threading
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from .._core._errors import WorkerStartError
from ._guardian import run_guardian
from ._recycle import RecyclePolicy
from ._worker import WorkerSettings, run_worker

if TYPE_CHECKING:
    from ._manager import PoolManager, Worker

__all__ = ["Launcher"]


class Launcher:
    """Starts workers for one pool's manager, one at a time, off the manager's thread."""

    def __init__(
        self,
        manager: PoolManager,
        *,
        start_method: str,
        plain_types: tuple[type, ...],
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        name: str,
    ) -> None:
        self._manager = manager
        self._start_method = start_method
        self._context = multiprocessing.get_context(start_method)
        self._plain_types = plain_types
        self._initializer = initializer
        self._initargs = initargs
        self._pool_pid = os.getpid()
        self._guardian: _Guardian | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def close(self) -> None:
        """End the guardian (after the last worker: it has nothing left to guard). Idempotent."""
        guardian, self._guardian = self._guardian, None
        if guardian is not None:
            guardian.close()

    def _guardian_writer(self) -> Connection | None:
        """Where the next worker registers: the guardian of the current fork server.

        None where no guardian can run (no ``pidfd_open``): workers then fall
        back to ``PR_SET_PDEATHSIG``. Raises ``OSError``/``ValueError`` when
        it cannot be started (counted as a failed worker start).
        """
        if not _GUARDED:
            return None
        server = None
        if self._start_method == "forkserver":
            multiprocessing.forkserver.ensure_running()
            server = _fork_server_pid()
        guardian = self._guardian
        if guardian is not None and (guardian.server != server or not guardian.alive()):
            # Its fork server is gone: it is killing that server's workers, and
            # exits by itself; killed now, it could leave some of them alive.
            self._guardian = None
            guardian.close(kill=False)
        if self._guardian is None:
            self._guardian = _Guardian.start(self._context, self._pool_pid, server)
        return self._guardian.writer

    def _loop(self) -> None:
        manager = self._manager
        while True:
            policy = manager.next_launch()
            if policy is None:
                return
            try:
                worker, error = self.launch(policy)
            except Exception as unexpected:  # the launcher must never die of one start
                worker, error = None, WorkerStartError(f"starting a worker failed: {unexpected!r}")
                error.__cause__ = unexpected
            manager.launched(worker, error)
            if worker is not None and self._start_method == "forkserver":
                _check_forkserver_threads()

    def launch(self, policy: RecyclePolicy) -> tuple[Worker | None, WorkerStartError | None]:
        """Start one worker process (a spare until the manager promotes it)."""
        from ._manager import ClaimPipe, Worker  # noqa: PLC0415 - the manager imports this

        try:
            guardian = self._guardian_writer()
        except (OSError, ValueError) as error:  # EMFILE, a fork server that cannot start
            failure = WorkerStartError(f"starting the pool's guardian failed: {error!r}")
            failure.__cause__ = error
            return None, failure
        try:
            parent_end, child_end = self._context.Pipe(duplex=True)
        except OSError as error:  # EMFILE, ENFILE: no fds for the worker's pipe
            failure = WorkerStartError(f"creating a worker's pipe failed: {error!r}")
            failure.__cause__ = error
            return None, failure
        try:
            claims, claim_writer = self._context.Pipe(duplex=False)
        except OSError as error:
            parent_end.close()
            child_end.close()
            failure = WorkerStartError(f"creating a worker's claim pipe failed: {error!r}")
            failure.__cause__ = error
            return None, failure
        os.set_blocking(claims.fileno(), False)  # shared with the worker: both take, neither waits
        settings = WorkerSettings(
            policy,
            self._plain_types,
            self._pool_pid,
            self._initializer,
            self._initargs,
            claims,
            guardian,
        )
        process = self._context.Process(  # type: ignore[attr-defined]
            target=run_worker, args=(child_end, settings), name="nativeguard-worker"
        )
        try:
            process.start()
        except Exception as error:
            parent_end.close()
            claims.close()
            claim_writer.close()
            failure = WorkerStartError(f"starting a worker process failed: {error!r}")
            failure.__cause__ = error
            return None, failure
        finally:
            child_end.close()  # the child has its own copy (or there is no child)
        # Only the manager may poll a worker: multiprocessing's active_children() (run by
        # every Process.start(), from any thread) would race it for the exit status
        # (forkserver: one read of a pipe; the loser gets "255").
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        worker = Worker(process, parent_end, "spare", policy, ClaimPipe(claims, claim_writer))
        if self._start_method != "forkserver" and hasattr(os, "pidfd_open"):
            # Under fork/spawn the sentinel is a pipe the worker's own children
            # inherit: a task's long-lived child would hide the worker's exit.
            with contextlib.suppress(OSError):
                worker.pidfd = os.pidfd_open(process.pid)
        return worker, None


_GUARDED = sys.platform.startswith("linux") and hasattr(os, "pidfd_open")


def _fork_server_pid() -> int | None:
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


class _Guardian:
    """The pool's guardian process, and the write end of its registration pipe."""

    def __init__(self, process: Any, writer: Connection, server: int | None) -> None:
        self.process = process
        self.writer = writer
        self.server = server  # the fork server it is a child of (None: the pool's own child)

    @classmethod
    def start(cls, context: Any, pool_pid: int, server: int | None) -> _Guardian:
        reader, writer = context.Pipe(duplex=False)
        try:
            process = context.Process(
                target=run_guardian, args=(reader, pool_pid), name="nativeguard-guardian"
            )
            process.start()
        except BaseException:
            writer.close()
            raise
        finally:
            reader.close()  # the guardian has its own copy (or there is no guardian)
        # As for workers: nobody but this launcher may poll it (see launch()).
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        return cls(process, writer, server)

    def alive(self) -> bool:
        return self.process.exitcode is None

    def close(self, *, kill: bool = True) -> None:
        self.writer.close()
        if kill:
            with contextlib.suppress(OSError, ValueError):
                self.process.kill()
            self.process.join()
        else:  # reaped now if it is done; else by whoever its parent is now
            self.process.join(0)


_checked_fork_servers: set[int] = set()


def _check_forkserver_threads() -> None:
    """Warn if the fork server has more than one thread: forking it would then be unsound.

    Threads could only have come from its preload, so each fork server is read once.
    """
    pid = getattr(getattr(multiprocessing.forkserver, "_forkserver", None), "_forkserver_pid", None)
    if not pid or pid in _checked_fork_servers:
        return
    _checked_fork_servers.add(pid)
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            threads = next(
                (int(line.split()[1]) for line in status if line.startswith("Threads:")), 1
            )
    except OSError:
        return
    if threads > 1:
        warnings.warn(
            f"the multiprocessing fork server (pid {pid}) has {threads} threads: a preloaded "
            "module started threads, so forked workers may inherit locks held by threads that "
            "do not exist in them; remove it from preload",
            RuntimeWarning,
            stacklevel=4,
        )
