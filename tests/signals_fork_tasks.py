"""A worker-pool task for tests/core/test_signals_fork.py: nested descendants, still running.

Importable by the pool's worker processes. ``start_nested_and_block`` starts a
``Popen`` child that starts its own child, and an ``os.fork()`` child that
forks again, writes every pid to ``path`` as JSON, then keeps the task
running: the parent is SIGKILLed while the task is in progress.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

_SLEEPER = "import time; time.sleep({seconds!r})"
_STARTER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', {sleeper!r}], stdin=subprocess.DEVNULL)\n"
    "child.returncode = 0\n"
    "print(child.pid, flush=True)\n"
    "time.sleep({seconds!r})\n"
)


def start_nested_and_block(path: str, seconds: float) -> None:
    popen = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _STARTER.format(sleeper=_SLEEPER.format(seconds=seconds), seconds=seconds),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert popen.stdout is not None
    popen_child = int(popen.stdout.readline())
    read, write = os.pipe()
    forked = os.fork()
    if forked == 0:  # pragma: no cover - runs in the forked child only
        try:
            os.close(read)
            grandchild = os.fork()
            if grandchild == 0:
                time.sleep(seconds)
                os._exit(0)
            os.write(write, f"{grandchild}\n".encode())
            time.sleep(seconds)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        fork_child = int(pipe.readline())
    popen.returncode = 0  # left running on purpose: no ResourceWarning
    pids = {
        "worker": os.getpid(),
        "popen": popen.pid,
        "popen_child": popen_child,
        "fork": forked,
        "fork_child": fork_child,
    }
    with open(path + ".tmp", "w") as out:
        json.dump(pids, out)
    os.replace(path + ".tmp", path)
    time.sleep(seconds)
