"""A local managed-identity token endpoint (App Service style) on 127.0.0.1.

``azure.identity.ManagedIdentityCredential`` reads ``IDENTITY_ENDPOINT`` and
``IDENTITY_HEADER`` and fetches tokens over HTTP; pointing those at this
service gives the real credential real tokens offline, which
:class:`~nativeguard.testing.SpeechService` can be told to accept.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .._core._errors import ServiceError
from .._core._redact import redact_text
from ._speech_service import _check_loopback

__all__ = ["MAX_TOKEN_REQUESTS", "TokenRequest", "TokenService"]

_TOKEN_PATH = "/msi/token"
_ENV_KEYS = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")
# Variables that would make azure-identity pick another managed-identity source.
_CONFLICTING_ENV = ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT")
_STOP_TIMEOUT_S = 1.0
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b'Content-Length: 20\r\nConnection: close\r\n\r\n{"error":"too_busy"}'
)
MAX_TOKEN_REQUESTS = 1000
"""Token requests :attr:`TokenService.requests` keeps (the newest)."""


class _BoundedHTTPServer(HTTPServer):
    """An HTTP server with at most ``limit`` connection threads, all tracked.

    The stdlib's ThreadingHTTPServer starts a thread per connection without a
    limit and, with daemon threads, forgets them. Here a connection beyond the
    limit gets an immediate 503, every thread is known by identity, a client
    that stalls is cut off after ``request_timeout_s``, and :meth:`close_all`
    shuts every client socket down and joins every thread.
    """

    # The stdlib's backlog of 5 makes bursts of clients wait for SYN-ACK retries.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        limit: int,
        on_error: Any,
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(limit)
        self._active: dict[socket.socket, threading.Thread] = {}
        self._active_lock = threading.Lock()
        self._closing = False
        self._on_error = on_error
        self.rejected = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if self._closing or not self._slots.acquire(blocking=False):
            self.rejected += 1
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve_one,
            args=(request, client_address),
            name="nativeguard-token-service-request",
            daemon=True,
        )
        with self._active_lock:
            self._active[request] = thread
        thread.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError:
            pass  # the client went away, or stop() cut it off
        except Exception:
            self._on_error(traceback.format_exc())
        finally:
            self.shutdown_request(request)
            with self._active_lock:
                self._active.pop(request, None)
            self._slots.release()

    def threads(self) -> tuple[threading.Thread, ...]:
        with self._active_lock:
            return tuple(self._active.values())

    def close_all(self, timeout_s: float) -> list[threading.Thread]:
        """Cut every client off and join its thread; returns the ones still alive."""
        self._closing = True
        with self._active_lock:
            active = list(self._active.items())
        for request, _ in active:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout_s
        for _, thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread for _, thread in active if thread.is_alive()]


@dataclass(frozen=True)
class TokenRequest:
    """One request the endpoint received (no secrets)."""

    path: str
    resource: str | None
    api_version: str | None
    authorized: bool
    status: int


@dataclass
class _Issued:
    resource: str
    expires_on: float


class TokenService:
    """Serve managed-identity tokens on loopback.

    ``with TokenService() as tokens, tokens.patch_environ():`` makes every
    ``ManagedIdentityCredential()`` created inside the block use it. Tokens
    are random and expire after ``lifetime_s``; :meth:`is_valid` tells whether
    a token was issued here and is still good, so
    ``SpeechService(require_token=tokens.is_valid)`` accepts exactly those.
    """

    def __init__(
        self,
        *,
        lifetime_s: float = 3600.0,
        host: str = "127.0.0.1",
        max_connections: int = 16,
        request_timeout_s: float = 5.0,
    ) -> None:
        if not lifetime_s > 0:
            raise ValueError(f"lifetime_s must be > 0, got {lifetime_s!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"max_connections must be an int, got {type(max_connections).__name__}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if not 0 < request_timeout_s < float("inf"):
            raise ValueError(f"request_timeout_s must be > 0 and finite, got {request_timeout_s!r}")
        self._lifetime_s = lifetime_s
        self._host = _check_loopback(host, "TokenService")
        self._max_connections = max_connections
        self._request_timeout_s = float(request_timeout_s)
        self._secret = secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        self._issued: dict[str, _Issued] = {}
        self._requests: deque[TokenRequest] = deque(maxlen=MAX_TOKEN_REQUESTS)
        self._tokens_issued = 0
        self._errors: list[str] = []
        self._server: _BoundedHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._state = "new"

    # -- lifecycle -------------------------------------------------------

    def start(self) -> TokenService:
        if self._state != "new":
            raise ServiceError(f"TokenService is {self._state}; a service starts once")
        self._server = _BoundedHTTPServer(
            (self._host, 0), self._handler_class(), self._max_connections, self._record_error
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="nativeguard-token-service",
            daemon=True,
        )
        self._thread.start()
        self._state = "running"
        return self

    def stop(self) -> None:
        """Stop serving, cut off every client and join every thread; idempotent.

        Raises ``ServiceError`` (after stopping) if a thread outlived the stop
        or the service itself failed while serving.
        """
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        assert self._server is not None
        assert self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        stuck = self._server.close_all(_STOP_TIMEOUT_S)
        self._thread.join(_STOP_TIMEOUT_S)
        if self._thread.is_alive() or stuck:
            names = [t.name for t in stuck]
            if self._thread.is_alive():
                names.append(self._thread.name)
            raise ServiceError(
                f"TokenService threads did not stop within {_STOP_TIMEOUT_S:g} s: {names}"
            )
        if self._errors:
            raise ServiceError("TokenService failed while serving:\n" + "\n".join(self._errors))

    def __enter__(self) -> TokenService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- public surface --------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise ServiceError("TokenService has no endpoint until start()")
        port = self._server.server_address[1]
        return f"http://{self._host}:{port}{_TOKEN_PATH}"

    @property
    def identity_header(self) -> str:
        """The shared secret clients must send as ``X-IDENTITY-HEADER``."""
        return self._secret

    def environ(self) -> dict[str, str]:
        """The environment variables ``ManagedIdentityCredential`` reads."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self._secret}

    @contextlib.contextmanager
    def patch_environ(self) -> Iterator[dict[str, str]]:
        """Point managed identity at this service for the block, then restore."""
        saved = {key: os.environ.get(key) for key in (*_ENV_KEYS, *_CONFLICTING_ENV)}
        try:
            for key in _CONFLICTING_ENV:
                os.environ.pop(key, None)
            values = self.environ()
            os.environ.update(values)
            yield values
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def is_valid(self, token: str) -> bool:
        """True if ``token`` was issued here and has not expired or been revoked."""
        with self._lock:
            issued = self._issued.get(token)
        return issued is not None and issued.expires_on > time.time()

    def revoke_all(self) -> None:
        """Invalidate every token issued so far."""
        with self._lock:
            self._issued.clear()

    @property
    def requests(self) -> tuple[TokenRequest, ...]:
        with self._lock:
            return tuple(self._requests)

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return self._tokens_issued

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The threads serving a request right now (at most ``max_connections``)."""
        return self._server.threads() if self._server is not None else ()

    @property
    def connections_rejected(self) -> int:
        """Connections answered 503 at once because ``max_connections`` were busy."""
        return self._server.rejected if self._server is not None else 0

    def __repr__(self) -> str:
        where = self.endpoint if self._server is not None else "unbound"
        return f"<TokenService {where} {self._state} issued={self.tokens_issued}>"

    # -- HTTP ------------------------------------------------------------

    def _issue(self, resource: str) -> dict[str, str]:
        token = secrets.token_urlsafe(32)
        expires_on = time.time() + self._lifetime_s
        with self._lock:
            self._issued[token] = _Issued(resource, expires_on)
        return {
            "access_token": token,
            "expires_on": str(int(expires_on)),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": "00000000-0000-0000-0000-000000000000",
        }

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)
            if request.status == 200:
                self._tokens_issued += 1

    def _record_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(redact_text(text, [self._secret, *self._issued]))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            # A client that stalls mid-request is cut off, freeing its thread.
            timeout = service._request_timeout_s

            def do_GET(self) -> None:
                split = urlsplit(self.path)
                query = parse_qs(split.query)
                resource = query.get("resource", [""])[0] or None
                api_version = query.get("api-version", [""])[0] or None
                authorized = secrets.compare_digest(
                    self.headers.get("X-IDENTITY-HEADER", ""), service._secret
                )
                if split.path != _TOKEN_PATH:
                    status, body = 404, {"error": "not_found"}
                elif not authorized:
                    status, body = (
                        401,
                        {"error": "invalid_request", "error_description": "bad header"},
                    )
                elif not resource:
                    status, body = (
                        400,
                        {"error": "invalid_request", "error_description": "no resource"},
                    )
                else:
                    status, body = 200, service._issue(resource)
                service._record(TokenRequest(split.path, resource, api_version, authorized, status))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                # Requests are recorded in TokenService.requests instead of stderr.
                return

        return Handler
