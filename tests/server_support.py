"""Real servers for the Celery and gunicorn tests: redis-server, a celery worker, gunicorn.

Each runs as a child process on 127.0.0.1 (a free port picked here), in its
own session, with its output in a log file the test can read; ``stop()`` ends
it gracefully, kills it after a bound, and every process it ever had (its pool
children included) is checked gone (:func:`isolate_support.assert_all_gone`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest
import redis
from isolate_support import assert_all_gone, wait_for

TESTS_DIR = Path(__file__).resolve().parent
START_S = 30.0  # bounds that only prove "did not hang"
STOP_S = 30.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """One server process: its command, its log, every pid seen in its tree."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: set[int] = set()

    def start(self) -> Server:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=TESTS_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pids.add(self.process.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> set[int]:
        """The live processes under this server now (recorded for the final check)."""
        try:
            found = {child.pid for child in psutil.Process(self.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            found = set()
        self.pids |= found
        return found

    def wait_log(self, text: str, within_s: float = START_S) -> None:
        def seen() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}) before logging {text!r}:\n"
                    + self.log()[-3000:]
                )
            return text in self.log()

        wait_for(seen, f"{self.name} to log {text!r}", within_s)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Graceful stop (``sig``), SIGKILL to the session after STOP_S; all pids gone."""
        if self.process is None:
            return None
        self.children()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_S)
                raise AssertionError(f"{self.name} did not stop within {STOP_S} s") from None
        assert_all_gone(self.pids)
        return self.process.returncode


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A real redis-server (the Debian package) on a free 127.0.0.1 port; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed (.ci/run installs it: apt-get install redis-server)"
        )
    port = free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp),
    ]
    server = Server("redis-server", argv, tmp / "redis.log", dict(os.environ)).start()
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        server.wait_log("Ready to accept connections")
        wait_for(answers, "redis-server to answer PING", START_S)
        yield url
    finally:
        client.close()
        server.stop()


def python_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def celery_worker(
    tmp: Path,
    redis_url: str,
    policy: str,
    *,
    pool: str = "prefork",
    concurrency: int = 2,
    events: bool = False,
    env: dict[str, str] | None = None,
) -> Server:
    """A real ``celery worker`` on tests/celery_tasks.py (not started)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celery_tasks",
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-l",
        "INFO",
        "-n",
        f"ng{os.getpid()}@127.0.0.1",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ]
    if events:
        argv.append("-E")
    environment = python_env(NG_REDIS_URL=redis_url, NG_POLICY=policy, **(env or {}))
    return Server("celery worker", argv, tmp / f"celery-{pool}.log", environment)


def gunicorn_server(
    tmp: Path, worker_class: str, policy: dict[str, object], *, workers: int = 2
) -> tuple[Server, str]:
    """A real gunicorn master with ``workers`` workers serving tests/gunicorn_app.py; its URL."""
    port = free_port()
    config = tmp / f"gunicorn-{worker_class}.conf.py"
    options = ", ".join(f"{key}={value!r}" for key, value in policy.items())
    config.write_text(
        "import nativeguard.gunicorn\n"
        f"bind = '127.0.0.1:{port}'\n"
        f"workers = {workers}\n"
        f"control_socket = {str(tmp / 'gunicorn.ctl')!r}\n"
        "def post_request(worker, req, environ, resp):\n"  # the config's own hook: still runs
        "    worker.log.info('config post_request hook ran for %s', req.path)\n"
        f"nativeguard.gunicorn.install(globals(), {options})\n"
    )
    app = "gunicorn_app:wsgi" if worker_class in ("sync", "gthread") else "gunicorn_app:asgi"
    argv = [sys.executable, "-m", "gunicorn", "-c", str(config), "-k", worker_class, app]
    server = Server("gunicorn", argv, tmp / f"gunicorn-{worker_class}.log", python_env())
    return server, f"http://127.0.0.1:{port}"
