"""Pure ASGI middlewares: request id + access log + metrics, API keys, request-size/in-flight limits."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageretrieval.keys import KeyStore

from .errors import domain_status
from .metrics import Metrics
from .ratelimit import RateLimitedError, RateLimiter
from .runtime import ForbiddenKeyError, InvalidKeyError, KeyStoreUnavailableError, MissingKeyError, check_key

access_log = logging.getLogger("retrievalapi.access")

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
FORM_OVERHEAD_BYTES = 256 * 1024  # multipart boundaries + text fields around the one file
OTHER_BODY_LIMIT = 1024 * 1024
UPLOAD_PATHS = frozenset({"/api/search"})  # bodies up to MAX_UPLOAD_MB
INFLIGHT_PATHS = frozenset({"/api/search", "/api/search/text"})  # searches counted against MAX_INFLIGHT


class PayloadTooLargeError(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the {limit / 1024 / 1024:.1f} MB limit")


async def send_json(send: Send, status: int, payload: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PRODUCTS_PATH = "/api/products"
BATCH_PATH = "/api/products/batch"


def is_catalog_write(scope: Scope) -> bool:
    path = scope.get("path", "")
    return scope.get("method") in WRITE_METHODS and (path == PRODUCTS_PATH or path.startswith(PRODUCTS_PATH + "/"))


class KeyMiddleware:
    """API keys, checked before a body is read (an upload without a key costs nothing).

    Catalog writes always need a `write` key, and each key's writes are rate limited; with
    REQUIRE_READ_KEY every other `/api/` route needs a key too, except health, readiness, metrics
    and the docs. A CORS preflight carries no credentials and passes.
    """

    OPEN = frozenset({"/api/health", "/api/ready", "/api/metrics", "/api/docs", "/api/openapi.json"})

    def __init__(self, app: ASGIApp, keys: KeyStore, require_read_key: bool, limiter: RateLimiter):
        self.app = app
        self.keys = keys
        self.require_read_key = require_read_key
        self.limiter = limiter

    def _scope_needed(self, scope: Scope) -> str | None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            return None
        if is_catalog_write(scope):
            return "write"
        path = scope.get("path", "")
        if self.require_read_key and path.startswith("/api/") and path not in self.OPEN:
            return "read"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        needed = self._scope_needed(scope)
        if needed is not None:
            authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            try:
                record = check_key(self.keys, authorization, needed)
                if needed == "write":
                    self.limiter.take(record.id)
            except (MissingKeyError, InvalidKeyError, ForbiddenKeyError, KeyStoreUnavailableError) as exc:
                status, headers = domain_status(exc)
                await send_json(send, status, {"detail": str(exc)},
                                [(k.lower().encode(), v.encode()) for k, v in headers.items()])
                return
            except RateLimitedError as exc:
                await send_json(send, 429, {"detail": str(exc)},
                                [(b"retry-after", str(max(1, round(exc.retry_after))).encode())])
                return
        await self.app(scope, receive, send)


class RequestContextMiddleware:
    """Request id (X-Request-ID in and out), one access-log line and metrics per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            model = state.get("model", "")
            method = scope["method"]
            self.metrics.requests.labels(method, route, model, str(status)).inc()
            self.metrics.latency.labels(method, route, model).observe(elapsed)
            fields = {"request_id": request_id, "method": method, "path": scope["path"], "route": route,
                      "status": status, "model": model or None, "k": state.get("k"),
                      "latency_ms": round(elapsed * 1000, 2)}
            if route != "/api/metrics":
                line = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
                access_log.info("request %s", line, extra={"event": "request", "fields": fields})


class LimitsMiddleware:
    """Refuse oversized bodies while they stream (413) and too many searches in flight (503).

    A Content-Length over the limit is refused before any byte is read; a body without one is
    counted as it arrives, so memory never holds more than the limit.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_upload_bytes: int, max_inflight: int,
                 max_batch_bytes: int = 0):
        self.app = app
        self.metrics = metrics
        self.max_upload_bytes = max_upload_bytes
        self.max_batch_bytes = max_batch_bytes
        self.max_inflight = max_inflight
        self.inflight = 0

    def _limit(self, scope: Scope) -> int:
        """The body limit shown to clients: one image (search, product write), a batch, or small JSON."""
        if scope["path"] == BATCH_PATH:
            return self.max_batch_bytes
        if scope["path"] in UPLOAD_PATHS or (is_catalog_write(scope) and scope["method"] in ("POST", "PUT")):
            return self.max_upload_bytes
        return OTHER_BODY_LIMIT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        is_upload = scope["path"] in INFLIGHT_PATHS  # searches: counted in flight
        shown_limit = self._limit(scope)
        limit = shown_limit + (FORM_OVERHEAD_BYTES if shown_limit != OTHER_BODY_LIMIT else 0)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.metrics.rejected.labels(model="", reason="too_large").inc()
            await send_json(send, 413, {"detail": PayloadTooLargeError(shown_limit).detail},
                            [(b"connection", b"close")])
            return
        if is_upload and self.inflight >= self.max_inflight:
            self.metrics.rejected.labels(model="", reason="inflight").inc()
            await send_json(send, 503, {"detail": f"the server is busy ({self.max_inflight} searches in progress); "
                                                  "retry shortly"}, [(b"retry-after", b"1")])
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    self.metrics.rejected.labels(model="", reason="too_large").inc()
                    raise PayloadTooLargeError(shown_limit)
            return message

        if is_upload:
            self.inflight += 1
            self.metrics.inflight.set(self.inflight)
        try:
            await self.app(scope, limited_receive, send)
        finally:
            if is_upload:
                self.inflight -= 1
                self.metrics.inflight.set(self.inflight)
