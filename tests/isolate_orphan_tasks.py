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
