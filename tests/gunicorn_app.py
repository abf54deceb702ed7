"""The web app the gunicorn tests serve (WSGI for sync workers, ASGI for uvicorn workers).

``/`` answers with the worker's pid; ``/leak?mb=N`` mallocs N MB that are
never freed (a native leak) and answers with the pid too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from isolate_native_tasks import leak_native


def _answer(path: str, query: str) -> bytes:
    if path == "/leak":
        leak_native(int(parse_qs(query).get("mb", ["1"])[0]))
    return json.dumps({"pid": os.getpid(), "path": path}).encode()


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = _answer(environ["PATH_INFO"], environ.get("QUERY_STRING", ""))
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
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
    body = _answer(scope["path"], scope.get("query_string", b"").decode())
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
