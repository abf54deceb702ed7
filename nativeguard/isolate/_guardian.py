"""No descendant of a worker outlives it: process group, subreaper and a guardian process.

A task may leave processes behind: a ``subprocess.Popen`` it never waited
for, an ``os.fork()`` child, a child in a session of its own. When the pool's
process is SIGKILLed, ``PR_SET_PDEATHSIG`` could kill the worker, but not
what the worker started: those were re-parented to init and kept running (a
``sleep 300`` child, measured alive 10 s after the parent's SIGKILL before
this module, Linux 6.18, Python 3.11).

So each worker, at start (Linux with ``pidfd_open``):

* leads a process group of its own, which its children join unless they
  leave it;
* becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``): a descendant whose
  parent exits is re-parented to the worker, not to init, so the whole tree
  stays reachable from the worker while it lives, including children that
  left the group (``start_new_session=True``);
* forks a *guardian*: a tiny single-threaded child (named ``ng-guardian``)
  that holds pidfds of the pool's process, the worker's parent and the worker,
  and blocks in ``select``. No GIL of the worker's is involved, so a task stuck
  in native code does not delay it.

When the pool's process or the worker's parent (the fork server) dies, the
guardian stops the worker (SIGSTOP: it can start nothing more), SIGKILLs every
descendant of the worker until none is left, then the worker, then the group.
When the worker itself dies first (a crash, a timeout's SIGKILL), the guardian
SIGKILLs the worker's process group. A worker that ends normally (retired,
stopped) kills its own descendants and then its guardian.

The worker then no longer uses ``PR_SET_PDEATHSIG``: it would race the
guardian for the worker's life, and the guardian needs the worker alive to
find descendants that left the group. Where the guardian cannot run (no
``pidfd_open``: Linux < 5.3, other systems) the worker falls back to
``PR_SET_PDEATHSIG`` alone.

Known limits: a task calling ``os.wait()`` without children of its own waits
for the guardian instead of failing with ``ChildProcessError``; a descendant
that left the worker's process group survives a worker that was killed (crash,
timeout) rather than ended, since by then it was re-parented to init.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys

__all__ = ["Guardian", "die_with_parent", "kill_descendants", "start_guardian"]

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_GUARDIAN_NAME = b"ng-guardian"
_SWEEP_ROUNDS = 50


def _prctl(option: int, value: int | bytes) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return False


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux); the fallback."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    if not _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL):  # pragma: no cover - no prctl
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (``/proc/PID/task/*/children``; empty once it is gone)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            # Bytes, not text: a text file would import a codec in every worker at exit.
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as listing:
                found.extend(int(child) for child in listing.read().split())
        except (OSError, ValueError):
            continue
    return found


def _descendants(pid: int, exclude: frozenset[int]) -> list[int]:
    result: list[int] = []
    stack = [pid]
    while stack:
        for child in _children(stack.pop()):
            if child not in exclude:
                result.append(child)
                stack.append(child)
    return result


def _alive(pid: int) -> bool:
    """Running or stopped, not a zombie (a zombie cannot be killed, only reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def kill_descendants(root: int, exclude: frozenset[int] = frozenset()) -> int:
    """SIGKILL every live descendant of ``root`` (not ``root``), round after round.

    A killed process's children are re-parented to the nearest subreaper (the
    worker), so the next round finds them. Returns how many were signalled.
    """
    killed = 0
    for _ in range(_SWEEP_ROUNDS):
        alive = [pid for pid in _descendants(root, exclude) if _alive(pid)]
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


class Guardian:
    """The worker's handle on its guardian: ended and reaped when the worker ends normally."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(self.pid, 0)


def start_guardian(pool_pid: int) -> Guardian | None:
    """Make this worker a group leader and subreaper, and fork its guardian.

    Returns ``None`` (after arranging ``PR_SET_PDEATHSIG`` instead) where a
    guardian cannot run.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        die_with_parent()
        return None
    worker = os.getpid()
    parent = os.getppid()
    watched: list[int] = []
    try:
        for pid in dict.fromkeys((pool_pid, parent)):  # the same process under fork/spawn
            watched.append(os.pidfd_open(pid))
        own = os.pidfd_open(worker)
    except OSError:
        for fd in watched:
            os.close(fd)
        if parent == 1 or not _exists(pool_pid):
            os._exit(1)  # the pool died before this worker started
        die_with_parent()
        return None
    if os.getppid() != parent:  # the parent died while we opened its pidfd
        os._exit(1)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        pid = os.fork()
    except OSError:
        for fd in (*watched, own):
            os.close(fd)
        die_with_parent()
        return None
    if pid == 0:  # the guardian
        try:
            _guard(worker, tuple(watched), own)
        finally:
            os._exit(0)
    for fd in (*watched, own):
        os.close(fd)
    return Guardian(pid)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _guard(worker: int, watched: tuple[int, ...], own: int) -> None:
    """The guardian's whole life: wait for the pool, the worker's parent or the worker to die."""
    _prctl(_PR_SET_NAME, _GUARDIAN_NAME)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        with contextlib.suppress(OSError, ValueError):
            signal.signal(number, signal.SIG_IGN)
    keep = {0, 1, 2, own, *watched}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
    group = worker  # the worker leads its own process group
    me = frozenset({os.getpid()})
    while True:
        try:
            ready, _, _ = select.select([own, *watched], [], [])
        except InterruptedError:  # pragma: no cover - retried by Python itself
            continue
        break
    if own not in ready:
        # The pool (or the fork server) is gone: freeze the worker so its tree
        # stays put and grows no more, kill the tree, then the worker.
        with contextlib.suppress(OSError):
            os.kill(worker, signal.SIGSTOP)
        kill_descendants(worker, me)
        with contextlib.suppress(OSError):
            os.kill(worker, signal.SIGKILL)
    # The worker is gone or going: what stayed in its group goes with it.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # leave the group first, so the guardian lives to finish
    with contextlib.suppress(OSError):
        os.killpg(group, signal.SIGKILL)
