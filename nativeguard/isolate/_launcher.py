"""The launcher: a thread that starts worker processes when the manager asks for them.

Starting one takes a round trip to another process; done by the manager, a
task submitted meanwhile would wait for it, which is the latency the warm
spare exists to avoid.

On Linux each worker is forked by the pool's template process
(:mod:`._template`), which this thread starts through multiprocessing before
the first worker, and again before the next worker if it died; the manager
ends it after the last worker (:meth:`Launcher.close`). Elsewhere (no
``pidfd_open``) each worker is a ``multiprocessing.Process``; under ``fork``
this thread is then the workers' parent, so it lives until the manager is
done with them (a child's parent-death signal fires when the forking
*thread* exits).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import multiprocessing.process
import os
import pickle
import socket
import sys
import threading
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from .._core._errors import WorkerStartError
from ._recycle import RecyclePolicy
from ._template import Template
from ._worker import WorkerSettings, run_worker

if TYPE_CHECKING:
    from ._manager import PoolManager, Worker

__all__ = ["TEMPLATED", "Launcher"]

TEMPLATED = (
    sys.platform.startswith("linux")
    and hasattr(os, "pidfd_open")
    and hasattr(os, "fork")
    and hasattr(socket, "send_fds")
)
"""Whether workers are forked by a template process (else each is a ``multiprocessing.Process``)."""


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
        self._template: Template | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def close(self) -> None:
        """End the template (after the last worker: it has nothing left to fork or guard)."""
        template, self._template = self._template, None
        if template is not None:
            template.close()

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

    def _settings(self, policy: RecyclePolicy, claims: Connection | None) -> WorkerSettings:
        return WorkerSettings(policy, self._plain_types, self._initializer, self._initargs, claims)

    def _live_template(self) -> Template:
        """The pool's template, started (again) if there is none or it died."""
        template = self._template
        if template is not None and not template.alive():
            self._template = None
            template.close()  # its workers died with it
        if self._template is None:
            self._template = Template.start(self._context, self._pool_pid)
            if self._start_method == "forkserver":
                _check_forkserver_threads()
        return self._template

    def launch(self, policy: RecyclePolicy) -> tuple[Worker | None, WorkerStartError | None]:
        """Start one worker process (a spare until the manager promotes it)."""
        from ._manager import ClaimPipe, Worker  # noqa: PLC0415 - the manager imports this

        try:
            parent_end, child_end = self._context.Pipe(duplex=True)
        except OSError as error:  # EMFILE, ENFILE: no fds for the worker's pipe
            return None, _start_error("creating a worker's pipe failed", error)
        try:
            claims, claim_writer = self._context.Pipe(duplex=False)
        except OSError as error:
            parent_end.close()
            child_end.close()
            return None, _start_error("creating a worker's claim pipe failed", error)
        os.set_blocking(claims.fileno(), False)  # shared with the worker: both take, neither waits
        try:
            if TEMPLATED:
                process = self._fork(policy, parent_end, child_end, claims)
            else:
                process = self._context.Process(  # type: ignore[attr-defined]
                    target=run_worker,
                    args=(child_end, self._settings(policy, claims)),
                    name="nativeguard-worker",
                )
                process.start()
                # Only the manager may poll a worker: multiprocessing's active_children()
                # (run by every Process.start(), from any thread) would race it for the
                # exit status (forkserver: one read of a pipe; the loser gets "255").
                multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        except WorkerStartError as failure:
            parent_end.close()
            claims.close()
            claim_writer.close()
            return None, failure
        except Exception as error:
            parent_end.close()
            claims.close()
            claim_writer.close()
            return None, _start_error("starting a worker process failed", error)
        finally:
            child_end.close()  # the child has its own copy (or there is no child)
        worker = Worker(process, parent_end, "spare", policy, ClaimPipe(claims, claim_writer))
        return worker, None

    def _fork(
        self,
        policy: RecyclePolicy,
        parent_end: Connection,
        child_end: Connection,
        claims: Connection,
    ) -> Any:
        """Have the template fork a worker and hand it its settings (the first message)."""
        try:
            template = self._live_template()
        except (OSError, ValueError, EOFError) as error:  # EMFILE, a fork server that cannot start
            raise _start_error("starting the pool's template process failed", error) from None
        try:
            process = template.fork(child_end.fileno(), claims.fileno())
        except (OSError, EOFError) as error:
            # Dead or broken: the next start gets a new one.
            self._template = None
            template.close()
            raise _start_error("the pool's template process did not fork a worker", error) from None
        if template.threads > 1 and not template.warned:
            template.warned = True
            _warn_threads(f"the pool's template (pid {template.process.pid})", template.threads)
        try:
            payload = pickle.dumps(self._settings(policy, None), protocol=pickle.HIGHEST_PROTOCOL)
            parent_end.send_bytes(payload)
        except OSError:
            pass  # it died already: its sentinel says how
        return process


def _start_error(what: str, error: BaseException) -> WorkerStartError:
    failure = WorkerStartError(f"{what}: {error!r}")
    failure.__cause__ = error
    return failure


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
        _warn_threads(f"the multiprocessing fork server (pid {pid})", threads)


def _warn_threads(what: str, threads: int) -> None:
    warnings.warn(
        f"{what} has {threads} threads: a preloaded module (or the main script) started "
        "threads, so forked workers may inherit locks held by threads that do not exist in "
        'them; remove it from preload (or start them under `if __name__ == "__main__":`)',
        RuntimeWarning,
        stacklevel=5,
    )
