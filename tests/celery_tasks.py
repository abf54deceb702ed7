"""The Celery app the Celery tests run in a real ``celery worker`` process (prefork pool).

Configured from the environment the test sets: ``NG_REDIS_URL`` (broker and
result backend, a redis-server the test started on 127.0.0.1) and
``NG_POLICY`` (the JSON keyword arguments of ``nativeguard.celery.install``,
or ``off`` for a worker without nativeguard); ``NG_CELERY_MAX_MEMORY_KB`` sets
Celery's own ``worker_max_memory_per_child`` (benchmarks/celery_recycling.py
compares the two). ``NG_METRICS_PORT`` makes the worker's parent process serve
Prometheus metrics on 127.0.0.1 once the worker is ready, as an operator runs
it in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set for the whole
worker): ``MultiProcessCollector`` over the directory (every pool child's
counters, those that retired included) and a ``Monitor`` for the parent's own
readings.
Tasks: real transcriptions through the bundled SpeechService, native memory
leaked on purpose (malloc, never freed), freed heap glibc keeps (churn), and
a slow task that records each of its starts in Redis (for the SIGKILL test).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, signals

import nativeguard
import nativeguard.celery
from nativeguard.monitor import Monitor
from nativeguard.testing import DEFAULT_KEY

REDIS_URL = os.environ.get("NG_REDIS_URL", "redis://127.0.0.1:1/0")

app = Celery("ngtest", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)
if "NG_CELERY_MAX_MEMORY_KB" in os.environ:
    app.conf.worker_max_memory_per_child = int(os.environ["NG_CELERY_MAX_MEMORY_KB"])
_POLICY = os.environ.get("NG_POLICY", "{}")
guard = None if _POLICY == "off" else nativeguard.celery.install(app, **json.loads(_POLICY))

MB = 1 << 20

_EXPORTER: list[Any] = []  # what the parent's exporter holds (kept alive)


def _serve_metrics(**_: Any) -> None:
    """In the worker's parent, once ready: /metrics on 127.0.0.1:NG_METRICS_PORT."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    monitor = Monitor(interval_s=None, prometheus=True, registry=registry, slope_limits=None)
    monitor.start()
    server, thread = start_http_server(
        int(os.environ["NG_METRICS_PORT"]), addr="127.0.0.1", registry=registry
    )
    _EXPORTER.extend([monitor, server, thread])


if "NG_METRICS_PORT" in os.environ:
    signals.worker_ready.connect(_serve_metrics, weak=False)


@app.task
def echo(index: int) -> dict[str, Any]:
    return {"index": index, "pid": os.getpid()}


@app.task
def transcribe(url: str, wav: str, index: int, gc_off: bool = False) -> dict[str, Any]:
    """A real ConversationTranscriber session, left to the task guard to release.

    As in the field reports, a callback captures the transcriber and stays
    connected: a reference cycle that keeps the native recognizer alive until
    a garbage collection. The guard disconnects it when the task ends (the
    deltas say whether any native handle survived the task). ``gc_off``
    disables this child's collector for good (a control: without the guard,
    the handles then stay).
    """
    import gc

    import azure.cognitiveservices.speech as speechsdk
    from sdk_helpers import run_continuous

    config = speechsdk.SpeechConfig(host=url, subscription=DEFAULT_KEY)
    audio = speechsdk.audio.AudioConfig(filename=wav)
    transcriber = speechsdk.transcription.ConversationTranscriber(
        speech_config=config, audio_config=audio
    )
    if gc_off:
        gc.disable()
    started: list[str] = []
    transcriber.session_started.connect(lambda evt: started.append(str(transcriber)))
    session = run_continuous(transcriber, timeout_s=30)
    return {
        "index": index,
        "texts": [text for text, *_ in session.recognized],
        "pid": os.getpid(),
    }


@app.task
def leak(megabytes: int, index: int) -> dict[str, Any]:
    """malloc ``megabytes`` MB, touch it, never free it (a native leak)."""
    from isolate_native_tasks import leak_native

    return leak_native(megabytes) | {"index": index}


@app.task
def churn(megabytes: int, index: int) -> dict[str, Any]:
    """Allocate and free ``megabytes`` MB that glibc keeps: retained heap, not a leak."""
    from isolate_native_tasks import churn_native

    return churn_native(megabytes) | {"index": index}


@app.task
def slow(index: int, seconds: float) -> dict[str, Any]:
    """Record this start (task id -> pid list) in Redis, then sleep: a task to SIGKILL."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.rpush(f"ng:starts:{index}", os.getpid())
    finally:
        client.close()
    time.sleep(seconds)
    return {"index": index, "pid": os.getpid()}


@app.task(bind=True, max_retries=1)
def outer(self: Any, index: int) -> dict[str, Any]:
    """Calls another task directly (one task for the policy) and retries itself once."""
    inner = echo(index)  # a direct call runs in this task, under this task's guard
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return {"index": index, "inner": inner, "retries": self.request.retries}


@app.task(ignore_result=True)
def quiet(index: int) -> None:
    """Stores no result, so no deltas either."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.rpush("ng:quiet", index)
    finally:
        client.close()


@app.task
def fails(index: int) -> None:
    """Creates an SDK object, then raises: the guard still releases it."""
    import azure.cognitiveservices.speech as speechsdk

    speechsdk.SpeechConfig(subscription=DEFAULT_KEY, region="westus")
    raise ValueError(f"task {index} failed on purpose")
