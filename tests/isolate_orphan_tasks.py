"""Tasks for the orphan tests: each leaves descendants behind in its worker, as real code does.

Kept apart from isolate_tasks so the parent harness imports nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def start_leftovers(seconds: float) -> dict[str, int]:
    """Start a ``subprocess.Popen`` sleeper, an ``os.fork()`` child and a ``setsid`` child.

    None is waited for: they are what a careless task leaves behind. Returns
    their pids and the worker's.
    """
    popen = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep({seconds!r})"],
        stdin=subprocess.DEVNULL,
    )
    forked = os.fork()
    if forked == 0:  # pragma: no cover - the child only sleeps
        try:
            time.sleep(seconds)
        finally:
            os._exit(0)
    session = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep({seconds!r})"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    popen.returncode = session.returncode = 0  # no ResourceWarning: left running on purpose
    return {"worker": os.getpid(), "popen": popen.pid, "fork": forked, "setsid": session.pid}


def leave_child_then_die(path: str, seconds: float) -> None:
    """Start a sleeper in the worker's process group, write its pid to ``path``, kill the worker."""
    child = subprocess.Popen(["sleep", repr(seconds)], stdin=subprocess.DEVNULL)
    child.returncode = 0  # no ResourceWarning: left running on purpose
    with open(path + ".tmp", "w", encoding="ascii") as out:
        out.write(str(child.pid))
    os.replace(path + ".tmp", path)
    os.kill(os.getpid(), 9)
