"""A pool's parent process for the orphan tests: start workers, report them, wait to be interrupted.

Run as ``python isolate_parent.py`` with tests/ on PYTHONPATH. It starts a
2-worker pool (plus the warm spare), gives both workers a long sleeping task,
waits until the spare is ready, prints one JSON line
``{"parent": pid, "workers": [pids]}`` and blocks on the results. The test
then interrupts it (SIGINT) or kills it (SIGKILL) and checks that every worker
is gone. On KeyboardInterrupt it prints a second JSON line with the pool's
counters and exits with code 130.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import isolate_tasks

from nativeguard.isolate import WorkerPool

WORKERS = 2
SLEEP_S = 120.0


def main() -> int:
    # A shell starts background jobs with SIGINT ignored, and Python keeps an
    # inherited SIG_IGN: take Ctrl-C as KeyboardInterrupt whoever started us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with WorkerPool(WORKERS) as pool:
            futures = [pool.submit(isolate_tasks.sleep_then, SLEEP_S, i) for i in range(WORKERS)]
            deadline = time.monotonic() + 30
            while True:
                workers = pool.statistics().workers
                busy = [w for w in workers if w.role == "active" and w.state == "busy"]
                spare = [w for w in workers if w.role == "spare" and w.state == "idle"]
                if len(busy) == WORKERS and len(spare) == 1:
                    break
                if time.monotonic() > deadline:
                    print(json.dumps({"error": str(pool.statistics())}), flush=True)
                    return 1
                time.sleep(0.02)
            pids = [w.pid for w in workers]
            print(json.dumps({"parent": os.getpid(), "workers": pids}), flush=True)
            for future in futures:
                future.result()
    except KeyboardInterrupt:
        stats = pool.statistics()
        print(
            json.dumps(
                {
                    "interrupted": True,
                    "tasks_failed": stats.tasks_failed,
                    "workers_left": len(stats.workers),
                    "retirements": sorted(r.reason for r in stats.retirements),
                }
            ),
            flush=True,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
