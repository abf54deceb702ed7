"""A WSGI speech endpoint for examples/gunicorn_conf.py: one transcription per request.

``GET /?wav=/path/to/call.wav`` transcribes the file through the service at
``SPEECH_HOST`` (for a try-out: the bundled ``nativeguard.testing.SpeechService``)
and answers the segments as JSON. ``nativeguard.transcribe`` releases every SDK
object before it returns; what a native core still leaks is the gunicorn
hook's to handle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import azure.cognitiveservices.speech as speechsdk

import nativeguard


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    wav = parse_qs(environ.get("QUERY_STRING", "")).get("wav", [""])[0]
    if not wav:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"pass ?wav=/path/to/audio.wav\n"]
    config = speechsdk.SpeechConfig(
        host=os.environ.get("SPEECH_HOST", "ws://127.0.0.1:8765"),
        subscription=os.environ.get("SPEECH_KEY", "local"),
    )
    transcript = nativeguard.transcribe(config, wav, timeout=30)
    body = json.dumps(
        [{"speaker": s.speaker_id, "text": s.text} for s in transcript.segments]
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
