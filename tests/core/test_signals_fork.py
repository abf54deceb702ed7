"""Signals, interrupts and fork against live scopes, each in its own subprocess (issue 10).

- A SIGALRM handler closing the current scope every millisecond while the main
  thread registers into it and closes it: no deadlock, every tracked object
  closed exactly once, nothing closed twice.
- ``KeyboardInterrupt`` raised by every kind of release step (a generic
  ``close()``, a custom adapter step, a finalizer, an ``async`` close) is kept as
  that step's failure: the other objects are still closed exactly once, and the
  scope is released. A SIGINT arriving while ``close()`` waits for a slow step
  propagates at once, and the release still completes (SDK handles back to their
  baseline, with a real recognizer in the scope).
- ``os.fork()`` with live scopes and a release in progress on the reaper: the
  child creates and closes its own scopes (custom steps on the step runner, a
  ``@guarded`` call) and exits promptly, closing none of the parent's objects;
  the parent's scopes release exactly as without the fork.
- A WorkerPool's parent SIGKILLed while a task runs that has nested descendants
  (a ``Popen`` child with its own child, a forked child that forked again):
  every worker and descendant is gone within 10 s.

Every scenario runs in a fresh interpreter with a timeout, and prints one JSON
line of counts that the test compares exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from isolate_support import assert_all_gone

pytestmark = pytest.mark.timeout(120)

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
RUN_TIMEOUT_S = 60

PRELUDE = """
import asyncio, gc, json, os, signal, sys, threading, time
import nativeguard as ng

class Counted:
    '''Counts its close() calls; closes and pids are read after the run.'''
    def __init__(self):
        self.closes = 0
        self.pids = []
    def close(self):
        self.closes += 1
        self.pids.append(os.getpid())

def report(**counts):
    print(json.dumps(counts), flush=True)
"""


def run_script(body: str, *, timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """Run PRELUDE + body in a fresh interpreter; its last stdout line is a JSON report."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=TESTS,
        env=env,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"no report\n{done.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = done.stderr
    return result


# -- a signal handler closing scopes -------------------------------------------------------


def test_sigalrm_closing_the_scope_while_registering_and_closing() -> None:
    result = run_script(
        """
        current = [None]
        def on_alarm(signum, frame):
            scope = current[0]
            if scope is not None:
                scope.close()
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
        scopes, registered, refused = [], [], []
        end = time.monotonic() + 3
        while time.monotonic() < end:
            scope = ng.Scope()
            current[0] = scope
            scopes.append(scope)
            try:
                for _ in range(20):
                    obj = Counted()
                    scope.register(obj)
                    registered.append(obj)
            except ng.ClosedResourceError:
                refused.append(obj)
            scope.close()  # the handler may run inside this close() too
        signal.setitimer(signal.ITIMER_REAL, 0)
        current[0] = None
        released = sum(scope.wait_released(10) for scope in scopes)
        report(
            scopes=len(scopes),
            released=released,
            refused=len(refused),
            registered_closes=sorted({o.closes for o in registered}),
            refused_closes=sorted({o.closes for o in refused}),
            release_errors=sum(scope.statistics().release_errors for scope in scopes),
        )
        """
    )
    assert result["scopes"] >= 10
    assert result["refused"] > 0, "the handler never interrupted a register() loop"
    assert result["released"] == result["scopes"]
    # register() returned: closed exactly once; register() refused: never closed.
    assert result["registered_closes"] == [1]
    assert result["refused_closes"] == [0]
    assert result["release_errors"] == 0


def test_a_handler_close_inside_close_reports_the_release_that_ran() -> None:
    result = run_script(
        """
        import linecache
        scope = ng.Scope()
        objects = [scope.register(Counted()) for _ in range(5)]
        signal.signal(signal.SIGALRM, lambda signum, frame: scope.close())
        fired = []

        def in_begin(frame, event, arg):
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
            if event == "line" and not fired and "_closed_at = " in line:
                fired.append(frame.f_lineno)
                signal.raise_signal(signal.SIGALRM)  # handled before this line runs
            return in_begin

        def tracer(frame, event, arg):
            if frame.f_code.co_name == "_begin" and "nativeguard" in frame.f_code.co_filename:
                return in_begin
            return None

        sys.settrace(tracer)
        try:
            scope.close()
        finally:
            sys.settrace(None)
        released = scope.wait_released(10)
        stats = scope.statistics()
        report(
            fired=len(fired),
            released=released,
            closes=[o.closes for o in objects],
            tracked=stats.objects_tracked,
            steps=stats.release_steps_run,
        )
        """
    )
    assert result["fired"] == 1
    assert result["released"] is True
    assert result["closes"] == [1] * 5
    assert result["tracked"] == 5


@pytest.fixture(scope="module")
def handler_closes() -> dict[str, Any]:
    """The handler closes whatever scopes are open; the main thread only registers."""
    return run_script(
        """
        live = []
        durations = []
        def on_alarm(signum, frame):
            while live:
                scope = live.pop()
                start = time.monotonic()
                scope.close()
                durations.append(time.monotonic() - start)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
        scopes, objects = [], []
        end = time.monotonic() + 2
        while time.monotonic() < end:
            scope = ng.Scope()
            scopes.append(scope)
            live.append(scope)
            for _ in range(10):
                obj = Counted()
                objects.append(obj)
                try:
                    scope.register(obj)
                except ng.ClosedResourceError:
                    break
        signal.setitimer(signal.ITIMER_REAL, 0)
        for scope in scopes:
            scope.close()
        released = sum(scope.wait_released(10) for scope in scopes)
        stats = [scope.statistics() for scope in scopes]
        report(
            scopes=len(scopes),
            released=released,
            tracked=sum(s.objects_tracked for s in stats),
            closes=sum(o.closes for o in objects),
            closed_twice=sum(o.closes > 1 for o in objects),
            handler_closes=len(durations),
            slowest_handler_close_s=max(durations, default=0.0),
        )
        """
    )


def test_sigalrm_closing_every_open_scope_from_the_handler(
    handler_closes: dict[str, Any],
) -> None:
    result = handler_closes
    assert result["scopes"] >= 5
    assert result["handler_closes"] >= 5
    assert result["released"] == result["scopes"]
    assert result["closes"] == result["tracked"]
    assert result["closed_twice"] == 0


def test_a_handler_close_of_trivial_objects_does_not_wait_out_the_exit_budget(
    handler_closes: dict[str, Any],
) -> None:
    # The bug waited the whole 1 s budget; a handler close measured 0.25-0.57 s at most
    # on this loaded 2-core machine (thread wake-ups), so the bound sits between.
    assert handler_closes["slowest_handler_close_s"] < 0.85, handler_closes


# -- KeyboardInterrupt in every kind of release step --------------------------------------------

RUDE_KINDS = {
    "generic-close": """
        class Rude:
            def close(self):
                raise KeyboardInterrupt("from close()")
        scope.register(keep(Rude()))
        """,
    "custom-step": """
        class Rude:
            pass
        def step(obj, timeout_s):
            raise KeyboardInterrupt("from a custom step")
        ng.register_adapter(Rude, [step], name="rude")
        scope.register(keep(Rude()))
        """,
    "finalizer": """
        def finalizer():
            raise KeyboardInterrupt("from a finalizer")
        scope.add_finalizer(finalizer)
        """,
    "signal-disconnect": """
        class RudeSignal:  # the SDK's EventSignal interface
            def connect(self, callback):
                pass
            def is_connected(self):
                return True
            def disconnect_all(self):
                raise KeyboardInterrupt("from disconnect_all()")
        scope.connect(keep(RudeSignal()), lambda evt: None)
        """,
    "async-close": """
        class Rude:
            async def close(self):
                raise KeyboardInterrupt("from an async close()")
        scope.register(keep(Rude()))
        """,
}


_KIND_XFAIL: dict[str, str] = {}


def _kind(kind: str) -> Any:
    reason = _KIND_XFAIL.get(kind)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(kind, id=kind, marks=marks)


@pytest.mark.parametrize("kind", [_kind(kind) for kind in sorted(RUDE_KINDS)])
def test_keyboard_interrupt_in_a_release_step_fails_only_that_step(kind: str) -> None:
    use_async = kind == "async-close"
    body = (
        """
        kept = []
        def keep(obj):
            kept.append(obj)
            return obj
        scope = ng.Scope()
        before = [scope.register(keep(Counted())) for _ in range(3)]
        """
        + textwrap.indent(textwrap.dedent(RUDE_KINDS[kind]), " " * 8)
        + f"""
        after = [scope.register(keep(Counted())) for _ in range(3)]
        failures = []
        try:
            if {use_async!r}:
                asyncio.run(scope.aclose())
            else:
                scope.close()
        except ng.ReleaseError as error:
            failures = [f"{{type(e).__name__}}: {{e}}" for e in error.exceptions]
        except BaseException as error:
            failures = ["escaped: " + type(error).__name__]
        scope.close()  # idempotent
        fresh = ng.Scope()
        again = fresh.register(Counted())
        fresh.close()
        waited = scope.wait_released(10)  # background mode: drops finish on the reaper
        report(
            failures=failures,
            released=scope.released,
            waited=waited,
            closes=[o.closes for o in before + after],
            release_errors=scope.statistics().release_errors,
            fresh_closes=again.closes,
        )
        """
    )
    result = run_script(body)
    assert result["closes"] == [1] * 6  # the others: closed exactly once
    assert len(result["failures"]) == 1, result["failures"]
    assert "KeyboardInterrupt" in result["failures"][0]
    assert (result["released"], result["waited"]) == (True, True)
    assert result["release_errors"] == 1
    assert result["fresh_closes"] == 1  # the process is still fine afterwards


def test_a_reaper_job_that_raises_is_reported_and_the_reaper_recovers() -> None:
    result = run_script(
        """
        from nativeguard._core._reaper import get_reaper
        reaper = get_reaper()
        def failing():
            raise RuntimeError("job failed")
        reaper.submit("a failing job", failing)
        idle = reaper.wait_idle(5)
        ran = []
        reaper.submit("a good job", lambda: ran.append(1))
        report(idle=idle, idle_after=reaper.wait_idle(5), ran=ran, pending=reaper.pending())
        """
    )
    assert (result["idle"], result["idle_after"], result["ran"], result["pending"]) == (
        True,
        True,
        [1],
        0,
    )
    assert "Exception in nativeguard-reaper while running a failing job" in result["stderr"]
    assert "RuntimeError: job failed" in result["stderr"]
    assert "TypeError" not in result["stderr"]
    assert "still running" not in result["stderr"]


def test_sigint_while_close_waits_propagates_and_the_release_completes() -> None:
    result = run_script(
        """
        class Slow:
            def __init__(self):
                self.gate = threading.Event()
                self.done = 0
        def slow_step(obj, timeout_s):
            obj.gate.wait(30)
            obj.done += 1
        ng.register_adapter(Slow, [slow_step], name="slow")
        scope = ng.Scope(step_timeout_s=20, exit_budget_s=10)
        first = scope.register(Counted())
        slow = scope.register(Slow())  # released first: close() waits on it
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        try:
            scope.close()
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        waited_s = time.monotonic() - start
        closes_at_interrupt = first.closes
        slow.gate.set()
        released = scope.wait_released(10)
        stats = scope.statistics()
        report(
            interrupted=interrupted,
            waited_s=waited_s,
            closes_at_interrupt=closes_at_interrupt,
            released=released,
            slow_done=slow.done,
            first_closes=first.closes,
            release_errors=stats.release_errors,
        )
        """
    )
    assert result["interrupted"] is True
    assert 0.25 < result["waited_s"] < 1.5, result["waited_s"]  # at once, not after 10 s
    assert result["closes_at_interrupt"] == 0
    assert result["released"] is True
    assert (result["slow_done"], result["first_closes"]) == (1, 1)
    assert result["release_errors"] == 0


def test_sigint_while_close_waits_with_a_real_recognizer_in_the_scope(tmp_path: Path) -> None:
    result = run_script(
        f"""
        import azure.cognitiveservices.speech as speechsdk
        from nativeguard import verify
        from nativeguard.testing import SpeechService, write_wav

        wav = write_wav({str(tmp_path / "one.wav")!r}, 1.0)
        class Slow:
            def __init__(self):
                self.gate = threading.Event()
        ng.register_adapter(Slow, [lambda obj, t: obj.gate.wait(30)], name="slow")
        with SpeechService() as service:
            config = service.speech_config()
            baseline = verify.snapshot().native_handles
            scope = ng.Scope(step_timeout_s=20, exit_budget_s=10)
            recognizer = scope.register(
                speechsdk.SpeechRecognizer(
                    speech_config=config,
                    audio_config=speechsdk.audio.AudioConfig(filename=wav),
                )
            )
            result = recognizer.recognize_once_async().get()
            text = result.text
            del result, recognizer
            slow = scope.register(Slow())
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            start = time.monotonic()
            try:
                scope.close()
                interrupted = False
            except KeyboardInterrupt:
                interrupted = True
            waited_s = time.monotonic() - start
            slow.gate.set()
            released = scope.wait_released(20)
            del slow
            gc.collect()
            after = verify.snapshot().native_handles
            report(
                text=text,
                interrupted=interrupted,
                waited_s=waited_s,
                released=released,
                release_errors=scope.statistics().release_errors,
                handles_before=dict(baseline),
                handles_after=dict(after),
            )
        """
    )
    assert result["text"]
    assert result["interrupted"] is True
    assert 0.25 < result["waited_s"] < 1.5, result["waited_s"]
    assert result["released"] is True
    assert result["release_errors"] == 0
    assert result["handles_after"] == result["handles_before"]


# -- fork with live scopes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def forked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    log = tmp_path_factory.mktemp("fork") / "closes.log"
    return run_script(
        f"""
        LOG = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        class Logged(Counted):
            def __init__(self, name):
                super().__init__()
                self.name = name
            def close(self):
                super().close()
                os.write(LOG, f"{{os.getpid()}} {{self.name}}\\n".encode())

        class Slow:
            gate = threading.Event()
        ng.register_adapter(Slow, [lambda obj, t: Slow.gate.wait(30)], name="slow")

        # A released scope whose release is still running on the reaper thread,
        # and an open scope, both alive at the fork.
        busy = ng.Scope(exit_budget_s=0.2)
        busy_objects = [busy.register(Logged(f"busy{{i}}")) for i in range(5)]
        busy.adopt(busy.register(Slow()))
        busy.close()
        assert not busy.released
        open_scope = ng.Scope()
        open_objects = [open_scope.register(Logged(f"open{{i}}")) for i in range(5)]

        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                class Mine:
                    def __init__(self):
                        self.stepped = 0
                def step(obj, timeout_s):
                    obj.stepped += 1
                ng.register_adapter(Mine, [step], name="mine")
                scope = ng.Scope(exit_budget_s=5)
                mine = [scope.register(Logged(f"child{{i}}")) for i in range(10)]
                custom = [scope.register(Mine()) for _ in range(3)]
                scope.close()
                ok = scope.wait_released(5)

                @ng.guarded
                def guarded_call():
                    inner = ng.Scope()
                    held = inner.register(Logged("child-guarded"))
                    inner.close()
                    return inner.wait_released(5) and held.closes == 1

                ok = ok and guarded_call()
                ok = ok and all(o.closes == 1 for o in mine)
                ok = ok and all(c.stepped == 1 for c in custom)
                ok = ok and all(o.closes == 0 for o in busy_objects + open_objects)
                code = 0 if ok else 3
            finally:
                sys.stdout.flush()
                # A normal exit: atexit handlers (the reaper's drain) run in the child.
                os._exit(code) if code else sys.exit(0)
        start = time.monotonic()
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() - start > 30:
                break
            time.sleep(0.01)
        child_s = time.monotonic() - start
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        Slow.gate.set()
        busy_released = busy.wait_released(10)
        open_scope.close()
        open_released = open_scope.wait_released(10)
        os.close(LOG)
        lines = open({str(log)!r}).read().split()
        by_pid = {{}}
        for who, name in zip(lines[0::2], lines[1::2]):
            by_pid.setdefault(int(who), []).append(name)
        report(
            child_exit=os.waitstatus_to_exitcode(status) if done else "hung",
            child_s=child_s,
            child_closed=sorted(by_pid.get(pid, [])),
            parent_closed=sorted(by_pid.get(os.getpid(), [])),
            busy_released=busy_released,
            open_released=open_released,
            parent_closes=[o.closes for o in busy_objects + open_objects],
            parent_pids=sorted({{p for o in busy_objects + open_objects for p in o.pids}}),
            me=os.getpid(),
        )
        """
    )


def test_fork_with_live_scopes_and_a_release_in_progress(forked: dict[str, Any]) -> None:
    result = forked
    assert result["child_exit"] == 0, result
    assert result["child_s"] < 10, result["child_s"]
    assert result["child_closed"] == sorted([f"child{i}" for i in range(10)] + ["child-guarded"])
    expected_parent = sorted([f"busy{i}" for i in range(5)] + [f"open{i}" for i in range(5)])
    assert result["parent_closed"] == expected_parent
    assert result["parent_closes"] == [1] * 10
    assert result["parent_pids"] == [result["me"]]
    assert (result["busy_released"], result["open_released"]) == (True, True)


def test_a_forked_child_exits_promptly_and_silently(forked: dict[str, Any]) -> None:
    assert forked["child_s"] < 1.5, forked["child_s"]
    assert "still running" not in forked["stderr"], forked["stderr"]


# -- parent SIGKILL while a task with nested descendants runs ----------------------------------

PARENT = """
import json, os, sys, time
from nativeguard.isolate import WorkerPool
import signals_fork_tasks

path = sys.argv[1]
pool = WorkerPool(1, warm_spare=False)
future = pool.submit(signals_fork_tasks.start_nested_and_block, path, 300.0)
deadline = time.monotonic() + 60
while not os.path.exists(path):
    if time.monotonic() > deadline or future.done():
        print(json.dumps({"error": "the task did not start"}), flush=True)
        sys.exit(1)
    time.sleep(0.02)
import multiprocessing.resource_tracker
pids = json.load(open(path))
pids["parent"] = os.getpid()
pids["tracker"] = multiprocessing.resource_tracker._resource_tracker._pid
print(json.dumps(pids), flush=True)
time.sleep(600)
"""


def test_parent_sigkill_while_a_task_with_nested_descendants_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "pids.json")],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=TESTS,
        env=env,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(parent.stdout, selectors.EVENT_READ)
            assert selector.select(60), "the parent printed nothing in 60 s"
        pids = json.loads(parent.stdout.readline())
        assert "error" not in pids, pids
        roles = ("worker", "popen", "popen_child", "fork", "fork_child", "tracker")
        assert all(isinstance(pids[role], int) for role in roles), pids
        assert len({pids[role] for role in roles}) == len(roles)
        os.kill(pids["parent"], signal.SIGKILL)
        parent.wait(10)
        assert_all_gone([pids[role] for role in roles], within_s=10.0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
