"""App factory: `create_app(settings)`; models load once at startup, batchers drain on shutdown."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

from imageretrieval.keys import KeyStore

from .errors import document_string_errors, install_error_handlers
from .logs import setup_logging
from .metrics import Metrics
from .middleware import KeyMiddleware, LimitsMiddleware, RequestContextMiddleware
from .ratelimit import RateLimiter
from .routes import catalog, ops, products, search
from .runtime import Runtime, StartupError
from .settings import ApiSettings

log = logging.getLogger(__name__)

DESCRIPTION = """Search a fashion catalog by image. Upload a photo to `POST /api/search` (multipart), or ask for
products like a catalog product with `POST /api/search/by-id`. A shop edits the catalog live with a
`write` API key (`/api/products`: add, update, delete, batch). Every error is JSON `{"detail": "..."}`."""


class RetrievalAPI(FastAPI):
    """FastAPI with a startup that fails with one clear line instead of a traceback.

    The lifespan protocol is handled here: a StartupError (missing or corrupt index, ...) becomes
    `lifespan.startup.failed` carrying just its message, which uvicorn logs before exiting.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await super().__call__(scope, receive, send)
            return
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            runtime = await anyio.to_thread.run_sync(Runtime.load, self.state.settings, self.state.metrics)
            await runtime.start()
        except StartupError as exc:  # the server logs this message once (uvicorn: ERROR, then exits)
            await send({"type": "lifespan.startup.failed", "message": f"startup failed: {exc}"})
            return
        except Exception as exc:
            log.exception("startup failed")
            await send({"type": "lifespan.startup.failed", "message": f"startup failed: {exc!r}"})
            return
        self.state.runtime = runtime
        log.info("search service ready: models %s (default %s)", ", ".join(runtime.engines), runtime.default)
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        try:
            await runtime.close()
        except Exception as exc:  # noqa: BLE001 - report, never hang the shutdown
            log.exception("shutdown failed")
            await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    setup_logging(settings.log_format, settings.log_level)
    metrics = Metrics()
    app = RetrievalAPI(title="imageretrieval search API", version="1.0.0", description=DESCRIPTION,
                       docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = None
    install_error_handlers(app)
    app.state.keys = KeyStore(settings.workdir)
    app.include_router(ops.router)
    app.include_router(catalog.router)  # KeyMiddleware checks keys before any route reads a body
    app.include_router(products.router)
    app.include_router(search.build_router(settings.top_k_max))
    document_string_errors(app)
    dist = settings.web_app_dir()
    if dist is not None:
        mount_web_app(app, dist)
    # Last added runs first: request id/logging wraps the key check, then the limits, CORS and the routes.
    if settings.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "Server-Timing"])
    app.add_middleware(LimitsMiddleware, metrics=metrics, max_upload_bytes=settings.max_upload_bytes,
                       max_inflight=settings.max_inflight, max_batch_bytes=settings.max_batch_bytes)
    # before the limits: a request without a key never takes an in-flight slot
    app.add_middleware(KeyMiddleware, keys=app.state.keys, require_read_key=settings.require_read_key,
                       limiter=RateLimiter(settings.write_rate_per_minute, settings.write_burst))
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


def mount_web_app(app: FastAPI, dist: Path) -> None:
    """Serve the built single-page app at / (static files, index.html for client-side routes)."""
    root = dist.resolve()
    index = root / "index.html"
    log.info("serving the web app from %s", root)

    @app.get("/{path:path}", include_in_schema=False)
    def web_app(path: str) -> Response:
        if path == "api" or path.startswith("api/"):
            raise HTTPException(404, "Not Found")
        candidate = (root / path).resolve()
        if path and candidate.is_file() and candidate.is_relative_to(root):
            immutable = candidate.parent.name == "assets"  # hashed bundle names
            cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
            return FileResponse(candidate, headers={"Cache-Control": cache})
        return FileResponse(index, headers={"Cache-Control": "no-cache"})
