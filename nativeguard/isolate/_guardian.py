"""No descendant of a worker outlives the pool: process groups, subreapers and one guardian.

A task may leave processes behind: a ``subprocess.Popen`` it never waited
for, an ``os.fork()`` child, a child in a session of its own. When the pool's
process is SIGKILLed, ``PR_SET_PDEATHSIG`` could kill the worker, but not
what the worker started: those were re-parented to init and kept running (a
``sleep 300`` child, measured alive 10 s after the parent's SIGKILL before
this module, Linux 6.18, Python 3.11).

So (Linux with ``pidfd_open``) each pool starts one *guardian*: a small
single-threaded process (named ``ng-guardian``) started like a worker (a
child of the fork server; of the pool's process under fork/spawn), that
holds pidfds of the pool's process, of its own parent (the fork server) and
of every worker, and blocks in ``select``. No GIL of the pool's or a
worker's is involved, so a task stuck in native code does not delay it. Each
worker, at start:

* leads a process group of its own, which its children join unless they
  leave it;
* becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``): a descendant whose
  parent exits is re-parented to the worker, not to init, so the whole tree
  stays reachable from the worker while it lives, including children that
  left the group (``start_new_session=True``);
* registers its pid with the pool's guardian (4 bytes on a pipe), then checks
  that the pool is still alive.

When the pool's process or the fork server dies, the guardian stops each
worker (SIGSTOP: it can start nothing more), SIGKILLs every descendant of it
until none is left, then the worker, then its group. When a worker dies first
(a crash, a timeout's SIGKILL), the guardian SIGKILLs that worker's process
group. A worker that ends normally (retired, stopped) kills its own
descendants first.

Until nativeguard 0.1.0 at b83aeb4 every worker forked a guardian of its own: ~6 ms of CPU
per worker start-up (the fork of a ~40 MB process, the guardian's
copy-on-write faults and its exit; measured with the speech SDK preloaded,
Linux 6.18, glibc 2.36, Python 3.11.7), a third of a start-up, paid again on
every recycle. One per pool costs that once.

The worker no longer uses ``PR_SET_PDEATHSIG``: it would race the guardian
for the worker's life, and the guardian needs the worker alive to find
descendants that left the group. Where the guardian cannot run (no
``pidfd_open``: Linux < 5.3, other systems) workers fall back to
``PR_SET_PDEATHSIG`` alone.

Known limit: a descendant that left the worker's process group survives a
worker that was killed (crash, timeout) rather than ended, since by then it
was re-parented to init.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import struct
import sys
from multiprocessing.connection import Connection

__all__ = ["die_with_parent", "join_guardian", "kill_descendants", "run_guardian"]

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_GUARDIAN_NAME = b"ng-guardian"
_SWEEP_ROUNDS = 50
_PID = struct.Struct("=i")  # one registration: a worker's pid


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to load
        return None


# Loaded once, at import (in the fork server, where this module is preloaded),
# not in every worker start-up.
_LIBC = _load_libc()


def _prctl(option: int, value: int | bytes) -> bool:
    try:
        return _LIBC is not None and int(_LIBC.prctl(option, value, 0, 0, 0)) == 0
    except AttributeError:  # pragma: no cover - no prctl
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


def join_guardian(pool_pid: int, registrations: int | None) -> bool:
    """Make this worker a group leader and subreaper, and register it with the pool's guardian.

    ``registrations`` is the write end of the guardian's pipe (closed here).
    Returns False (after arranging ``PR_SET_PDEATHSIG`` instead) where no
    guardian watches this worker. Exits at once if the pool is already gone:
    registered first, checked second, so a guardian that is killing the
    pool's workers either finds this one or this one finds the pool gone.
    """
    parent = os.getppid()
    if registrations is None or not sys.platform.startswith("linux"):
        die_with_parent()
        return False
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        os.write(registrations, _PID.pack(os.getpid()))  # atomic: 4 bytes < PIPE_BUF
    except OSError:  # no guardian reads the pipe any more
        registered = False
    else:
        registered = True
    finally:
        os.close(registrations)
    if os.getppid() != parent or not _exists(pool_pid):
        os._exit(1)  # the pool (or the fork server) died before this worker started
    if not registered:
        die_with_parent()
    return registered


def run_guardian(registrations: Connection, pool_pid: int) -> None:
    """The guardian process's whole life (a ``multiprocessing.Process`` target).

    Waits for the pool, its own parent (the fork server, or the pool itself
    under fork/spawn) or a registered worker to die, and acts as the module
    docstring says. Ends when the pool, after its last worker, kills it.
    """
    try:
        _guard(registrations.fileno(), pool_pid)
    finally:
        os._exit(0)


def _guard(registrations: int, pool_pid: int) -> None:
    _prctl(_PR_SET_NAME, _GUARDIAN_NAME)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        with contextlib.suppress(OSError, ValueError):
            signal.signal(number, signal.SIG_IGN)
    watched: list[int] = []
    try:
        for pid in dict.fromkeys((pool_pid, os.getppid())):  # one process under fork/spawn
            watched.append(os.pidfd_open(pid))
    except OSError:
        return  # the pool (or the fork server) is gone: its workers see it and exit
    # Hold nothing else open (under fork the pool's fds came along): a copy of
    # another pipe's end here would hide its closing from the pool.
    keep = {0, 1, 2, registrations, *watched}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
    os.set_blocking(registrations, False)
    workers: dict[int, int] = {}  # pidfd -> worker pid
    pending = b""
    me = frozenset({os.getpid()})
    reading = True
    while True:
        wanted = [*watched, *workers]
        if reading:
            wanted.append(registrations)
        try:
            ready, _, _ = select.select(wanted, [], [])
        except InterruptedError:  # pragma: no cover - retried by Python itself
            continue
        if registrations in ready or any(fd in ready for fd in watched):
            # On the pool's death too: a worker that registered just before it
            # is killed with the others.
            pending, reading = _register(registrations, pending, workers, reading)
        if any(fd in ready for fd in watched):
            _kill_all(workers, me)
            return
        for fd in ready:
            if fd in workers:
                # The worker is gone: what stayed in its group goes with it.
                with contextlib.suppress(OSError):
                    os.killpg(workers.pop(fd), signal.SIGKILL)
                os.close(fd)


def _register(
    registrations: int, pending: bytes, workers: dict[int, int], reading: bool
) -> tuple[bytes, bool]:
    """Read every registration waiting in the pipe; watch each worker through a pidfd."""
    while reading:
        try:
            chunk = os.read(registrations, 4096)
        except BlockingIOError:
            break
        except OSError:
            chunk = b""
        if not chunk:  # every writer closed: no worker can register any more
            reading = False
            break
        pending += chunk
        while len(pending) >= _PID.size:
            (pid,) = _PID.unpack(pending[: _PID.size])
            pending = pending[_PID.size :]
            try:
                workers[os.pidfd_open(pid)] = pid
            except OSError:  # already gone: its group goes now
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
    return pending, reading


def _kill_all(workers: dict[int, int], me: frozenset[int]) -> None:
    """The pool (or the fork server) is gone: end every worker and everything it started."""
    for pid in workers.values():
        # Frozen first, so its tree stays put and grows no more.
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
    for pid in workers.values():
        kill_descendants(pid, me)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
