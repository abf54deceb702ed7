"""A FastAPI speech service with nativeguard: each request guarded, the process monitored.

- ``GuardedRequests``, a plain ASGI middleware, runs every HTTP request inside
  ``@nativeguard.guarded``: each Speech SDK object the request creates (in an
  ``async def`` endpoint, or a ``def`` endpoint in Starlette's thread pool,
  which copies the request's context) is released when the response is done,
  even when the handler kept it in a closure, as the field's services do.
- The lifespan starts a ``nativeguard.monitor.Monitor``: a sampler thread logs
  memory, native handles and threads through ``logging.getLogger("nativeguard")``
  and warns on growth; ``GET /metrics`` serves them to Prometheus.
- ``POST /transcribe`` takes a WAV body and returns the recognized text.

Run against the bundled local service (installs: ``pip install 'nativeguard[monitor]'
fastapi uvicorn``)::

    python examples/fastapi_service.py          # http://127.0.0.1:8000
    curl --data-binary @call.wav http://127.0.0.1:8000/transcribe
    curl http://127.0.0.1:8000/metrics

In production, pass ``create_app`` a factory that builds your real
``SpeechConfig`` (key from the environment, never from the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import azure.cognitiveservices.speech as speechsdk
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import nativeguard
from nativeguard.monitor import Monitor

ASGIApp = Callable[..., Any]


class GuardedRequests:
    """ASGI middleware: every HTTP request runs in a guarded call.

    The monitor counts each guarded call's release by itself
    (``nativeguard_releases_total`` is every scope the process released).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

        # An ``async def``, not the app object itself: @guarded tells async from
        # sync by the function, and an ASGI app is an object whose __call__ is async.
        async def guarded_request(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await app(scope, receive, send)

        self.guarded_request = nativeguard.guarded(guarded_request)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.guarded_request(scope, receive, send)


def create_app(
    speech_config: Callable[[], speechsdk.SpeechConfig],
    *,
    sample_interval_s: float = 30.0,
    kept: list[Any] | None = None,
    guard: bool = True,
) -> FastAPI:
    """The service; ``speech_config`` builds the SDK config each request uses.

    ``kept`` is where the handler keeps every result (as plain data), as the
    field's services keep a history (a list of its own when None).
    ``guard=False`` leaves the middleware out: the handler then leaks its
    recognizer until a garbage collection, the problem this recipe solves.
    """
    registry = CollectorRegistry()
    history: list[Any] = [] if kept is None else kept

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Monitor(
            interval_s=sample_interval_s, prometheus=True, registry=registry
        ) as monitor:
            app.state.monitor = monitor
            yield
        app.state.monitor = None

    app = FastAPI(lifespan=lifespan)
    app.state.monitor = None
    if guard:
        app.add_middleware(GuardedRequests)

    @app.post("/transcribe")
    async def transcribe(request: Request) -> dict[str, Any]:
        body = await request.body()
        # The blocking SDK calls go to a thread; asyncio.to_thread copies the
        # request's context, so the guarded call still sees what they create.
        return await asyncio.to_thread(recognize, body)

    def recognize(body: bytes) -> dict[str, Any]:
        # Written as the field writes it: a recognizer per request, a callback
        # whose closure captures it, results kept. GuardedRequests releases it.
        with tempfile.NamedTemporaryFile(suffix=".wav", delete=False) as file:
            file.write(body)
        try:
            audio = speechsdk.audio.AudioConfig(filename=file.name)
            recognizer = speechsdk.SpeechRecognizer(
                speech_config=speech_config(), audio_config=audio
            )
            done = threading.Event()
            texts: list[str] = []

            def on_recognized(evt: Any) -> None:
                # Keep plain data: results are built on the SDK's threads, outside
                # the request's context, so the guard cannot release kept ones.
                history.append(nativeguard.extract(evt.result))
                texts.append(evt.result.text)
                assert recognizer is not None  # the capture that makes a cycle

            recognizer.recognized.connect(on_recognized)
            recognizer.session_stopped.connect(lambda evt: done.set())
            recognizer.canceled.connect(lambda evt: done.set())
            recognizer.start_continuous_recognition_async().get()
            done.wait(30)
            recognizer.stop_continuous_recognition_async().get()
            return {"text": " ".join(texts)}
        finally:
            os.remove(file.name)

    @app.get("/metrics")
    def metrics(request: Request) -> Response:
        monitor: Monitor | None = request.app.state.monitor
        if monitor is not None:
            monitor.sample()  # a fresh reading for each scrape
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main() -> None:
    import uvicorn  # noqa: PLC0415

    from nativeguard.testing import SpeechService  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO)
    with SpeechService() as service:
        app = create_app(service.speech_config, sample_interval_s=10.0)
        uvicorn.run(app, host="127.0.0.1", port=8000)


if __name__ == "__main__":
    main()
