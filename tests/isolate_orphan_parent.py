"""A pool's parent process whose tasks leave children behind; the test SIGKILLs it.

Run as ``python isolate_orphan_parent.py`` with tests/ on PYTHONPATH. Starts a
1-worker pool (plus the warm spare), has the worker start a ``Popen`` child,
an ``os.fork()`` child and a ``start_new_session`` child that each sleep
300 s, waits for the spare, and prints one JSON line naming every process it
knows: its own pid, the fork server, the resource tracker, the workers and
the task's children. Then it sleeps until killed.
"""

from __future__ import annotations

import json
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import sys
import time

import isolate_orphan_tasks

from nativeguard.isolate import WorkerPool

LEFT_S = 300.0


def main() -> int:
    pool = WorkerPool(1)
    left = pool.submit(isolate_orphan_tasks.start_leftovers, LEFT_S).result(60)
    deadline = time.monotonic() + 30
    while True:
        workers = pool.statistics().workers
        if len(workers) == 2 and all(w.state == "idle" for w in workers):
            break
        if time.monotonic() > deadline:
            print(json.dumps({"error": str(pool.statistics())}), flush=True)
            return 1
        time.sleep(0.02)
    server = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    tracker = multiprocessing.resource_tracker._resource_tracker._pid  # type: ignore[attr-defined]
    report = {
        "parent": os.getpid(),
        "fork_server": server,
        "tracker": tracker,
        "workers": sorted(w.pid for w in workers),
        "left": left,
    }
    print(json.dumps(report), flush=True)
    time.sleep(600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
