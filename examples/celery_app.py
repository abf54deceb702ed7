"""A Celery speech service with nativeguard: tasks guarded, pool children recycled by native growth.

The app part (import it as ``celery_app``, as ``celery -A celery_app worker``
does) is what a service writes: one ``install`` call, ordinary tasks.
``transcribe`` leaves its SDK objects to the task guard (released when the
task ends); ``leaky`` stands in for a native core that leaks (malloc, never
freed), which no release can fix: its pool child retires by growth, after
gc + ``malloc_trim`` had their chance, and Celery's pool replaces it.

Run ``python examples/celery_app.py`` for a self-contained demo: it starts a
redis-server (the Debian package) and the bundled SpeechService on
127.0.0.1, a real ``celery worker -P prefork -c 2``, sends 20 transcriptions
and 30 leaking tasks, prints what came back, and stops everything.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import azure.cognitiveservices.speech as speechsdk
from celery import Celery

import nativeguard
import nativeguard.celery
from nativeguard.testing import DEFAULT_KEY, DEFAULT_PHRASES, SpeechService, write_wav

BROKER = os.environ.get("SPEECH_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("speech", broker=BROKER, backend=BROKER)
app.conf.update(
    task_acks_late=True,  # a task whose child dies is delivered again ...
    task_reject_on_worker_lost=True,  # ... instead of being acknowledged as failed
    worker_prefetch_multiplier=1,
)
nativeguard.celery.install(app, max_growth_mb=40, growth_slope_mb_per_task=2)

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


@app.task
def transcribe(host: str, key: str, wav: str) -> list[str]:
    config = speechsdk.SpeechConfig(host=host, subscription=key)
    transcript = nativeguard.transcribe(config, wav, timeout=30)
    return [f"{segment.speaker_id}: {segment.text}" for segment in transcript.segments]


@app.task
def leaky(megabytes: int) -> int:
    block = _libc.malloc(megabytes << 20)
    _libc.memset(block, 1, megabytes << 20)  # resident, and never freed
    return os.getpid()


def _demo() -> None:  # run by tests/serving/test_celery.py
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    url = f"redis://127.0.0.1:{port}/0"
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp, SpeechService() as service:
        redis_server = subprocess.Popen(
            [redis_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            cwd=tmp,
        )
        env = dict(os.environ, SPEECH_BROKER_URL=url)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), env.get("PYTHONPATH")]))
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "prefork",
             "-c", "2", "-l", "WARNING", "--without-heartbeat", "--without-gossip",
             "--without-mingle"],
            cwd=here,
            env=env,
            stdout=subprocess.DEVNULL,  # the worker's banner; its warnings go to stderr
        )  # fmt: skip
        client = Celery("client", broker=url, backend=url)
        try:
            wav = write_wav(Path(tmp) / "call.wav", 1.0)
            jobs = [client.send_task("celery_app.transcribe", (service.url, DEFAULT_KEY, wav))
                    for _ in range(20)]  # fmt: skip
            texts = [job.get(timeout=120) for job in jobs]
            correct = sum(
                lines == [f"{p.speaker}: {p.text}" for p in DEFAULT_PHRASES] for lines in texts
            )
            print(f"{len(texts)} transcriptions, {correct} correct")
            deltas = [nativeguard.celery.native_deltas(job, app=client) for job in jobs]
            handles = {str(d["native_handles_delta"]) for d in deltas if d}
            print(f"native handles left behind per task: {' '.join(sorted(handles))}")
            leaks = [client.send_task("celery_app.leaky", (4,)) for _ in range(30)]
            pids = [job.get(timeout=60) for job in leaks]
            retired = [
                d for d in (nativeguard.celery.native_deltas(j, app=client) for j in leaks)
                if d and d["retire"]
            ]  # fmt: skip
            print(f"30 leaking tasks ran in {len(set(pids))} pool children; {len(retired)} retired")
            for d in retired[:3]:
                print(f"  pid {d['pid']} after {d['unit']} tasks: {d['detail']}")
        finally:
            client.close()
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
            redis_server.terminate()
            redis_server.wait(30)


if __name__ == "__main__":
    _demo()
