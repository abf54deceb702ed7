"""The web app the gunicorn tests serve (WSGI for sync workers, ASGI for uvicorn workers).

``/`` answers with the worker's pid; ``/leak?mb=N`` mallocs N MB that are
never freed (a native leak) and answers with the pid too; ``/metrics`` is the
Prometheus exposition of every worker, as a gunicorn service serves it in
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set:
``MultiProcessCollector`` over the directory), so retirements counted by
workers that already left show too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

# Imported with the app, before a worker's first request (its baseline), so the first
# /metrics scrape does not count as growth.
import prometheus_client
from isolate_native_tasks import leak_native
from prometheus_client.multiprocess import MultiProcessCollector


def _metrics() -> bytes:
    registry = prometheus_client.CollectorRegistry()
    MultiProcessCollector(registry)
    return prometheus_client.generate_latest(registry)


def _answer(path: str, query: str) -> tuple[bytes, str]:
    if path == "/metrics":
        return _metrics(), prometheus_client.CONTENT_TYPE_LATEST
    if path == "/leak":
        leak_native(int(parse_qs(query).get("mb", ["1"])[0]))
    return json.dumps({"pid": os.getpid(), "path": path}).encode(), "application/json"


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body, content_type = _answer(environ["PATH_INFO"], environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body, content_type = _answer(scope["path"], scope.get("query_string", b"").decode())
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
