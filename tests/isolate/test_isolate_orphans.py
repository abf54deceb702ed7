"""Parent SIGKILL with grandchildren: nothing a worker started outlives the pool's process.

The parent (tests/isolate_orphan_parent.py) runs in its own session; a task
in its pool leaves a ``subprocess.Popen`` child, an ``os.fork()`` child and a
``start_new_session`` child sleeping 300 s. Every process is accounted for
by pid and role before the SIGKILL, and every one must be gone within 10 s
after it (the resource tracker included).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from isolate_support import HANG_S, assert_all_gone

pytestmark = pytest.mark.timeout(90)

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def _session(sid: int) -> dict[int, str]:
    """Live processes of session ``sid``: pid -> name."""
    members = {}
    for process in psutil.process_iter(["name"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                members[process.pid] = process.info["name"]
    return members


def _read_line(proc: subprocess.Popen[str], within_s: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(within_s):
            raise AssertionError(f"isolate_orphan_parent.py printed nothing in {within_s} s")
    return proc.stdout.readline()


def test_parent_sigkill_ends_every_descendant_of_its_workers() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "isolate_orphan_parent.py")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    everyone: set[int] = set()
    try:
        info = json.loads(_read_line(proc, HANG_S * 2))
        assert "left" in info, info
        left = info["left"]
        workers = info["workers"]
        members = _session(proc.pid)
        templates = {pid for pid, name in members.items() if name == "ng-template"}
        # Exact accounting: the parent, its fork server and resource tracker, two
        # workers (one ran the task, one is the warm spare), the pool's one
        # template (their parent and guardian), and the task's Popen and fork()
        # children. The setsid child has a session of its own.
        expected = {
            proc.pid,
            info["fork_server"],
            info["tracker"],
            *workers,
            left["popen"],
            left["fork"],
        }
        assert len(workers) == 2
        assert left["worker"] in workers
        assert set(members) - templates == expected, members
        assert psutil.Process(left["setsid"]).is_running()
        template_parents = {psutil.Process(pid).ppid() for pid in templates}
        worker_parents = {psutil.Process(pid).ppid() for pid in workers}
        everyone = set(members) | {left["setsid"]}

        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=HANG_S) == -signal.SIGKILL
        assert_all_gone(everyone - {proc.pid}, within_s=10)
        # One template for the pool (a child of the fork server, the workers'
        # parent), and nothing else was there.
        assert len(templates) == 1, members
        assert template_parents == {info["fork_server"]}
        assert worker_parents == templates
    finally:
        proc.kill()
        proc.wait()
        for pid in everyone:
            with contextlib.suppress(psutil.Error, OSError):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    os.kill(pid, signal.SIGKILL)
