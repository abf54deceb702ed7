"""No descendant of a worker outlives the pool: process groups, subreapers and a guardian.

A task may leave processes behind: a ``subprocess.Popen`` it never waited
for, an ``os.fork()`` child, a child in a session of its own. When the pool's
process is SIGKILLed, ``PR_SET_PDEATHSIG`` could kill the worker, but not
what the worker started: those were re-parented to init and kept running (a
``sleep 300`` child, measured alive 10 s after the parent's SIGKILL before
this module, Linux 6.18, Python 3.11).

So (Linux with ``pidfd_open``) each pool has one guardian: its template
process (:mod:`._template`, ``ng-template`` in ``ps``), the parent of every
worker, single-threaded, blocked in ``poll`` on pidfds of the pool's process
and of every worker. No GIL of the pool's or a worker's is involved, so a
task stuck in native code does not delay it. Each worker, right after the
fork (:func:`become_guarded_worker`):

* leads a process group of its own, which its children join unless they
  leave it;
* becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``): a descendant whose
  parent exits is re-parented to the worker, not to init, so the whole tree
  stays reachable from the worker while it lives, including children that
  left the group (``start_new_session=True``);
* dies with the template (``PR_SET_PDEATHSIG``: the template forks from its
  only thread, so the "parent thread" is the whole template).

When the pool's process dies, the template stops each worker (SIGSTOP: it
can start nothing more), SIGKILLs every descendant of it until none is left,
then the worker, then its group (:func:`kill_worker_trees`). When a worker
dies first (a crash, a timeout's SIGKILL), the template SIGKILLs that
worker's process group. A worker that ends normally (retired, stopped) kills
its own descendants first (:func:`kill_descendants`).

History (nativeguard 0.1.0, Linux 6.18, glibc 2.36, Python 3.11.7): until
b83aeb4 every worker forked a guardian of its own (~6 ms of CPU per worker
start-up); then one guardian process per pool, a child of the fork server
that workers registered with over a pipe; now the template is the guardian,
and a pool has one helper process, not two.

Where no template can run (no ``pidfd_open``: Linux < 5.3, other systems)
workers fall back to ``PR_SET_PDEATHSIG`` alone (:func:`die_with_parent`).

Known limit: a descendant that left the worker's process group survives a
worker that was killed (crash, timeout) rather than ended, since by then it
was re-parented to init.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

__all__ = [
    "become_guarded_worker",
    "die_with_parent",
    "kill_descendants",
    "kill_worker_trees",
    "set_process_name",
]

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_SWEEP_ROUNDS = 50


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


def set_process_name(name: bytes) -> None:
    """This process's name in ``ps`` and ``/proc/PID/comm`` (Linux; 15 bytes at most)."""
    _prctl(_PR_SET_NAME, name)


def become_guarded_worker(template: int) -> None:
    """In a worker just forked by ``template``: own group, subreaper, dies with the template.

    Exits at once if the template died before ``PR_SET_PDEATHSIG`` took effect.
    """
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != template:
        os._exit(1)


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


def kill_worker_trees(workers: list[int]) -> None:
    """The pool is gone: end every worker (the caller's children) and everything it started."""
    me = frozenset({os.getpid()})
    for pid in workers:
        # Frozen first, so its tree stays put and grows no more.
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
    for pid in workers:
        kill_descendants(pid, me)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
