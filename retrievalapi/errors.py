"""Every error is JSON `{"detail": "<human message>"}`, validation errors included (a string, not a list)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imageretrieval.backends import BackendUnavailableError
from imageretrieval.engine import RerankUnavailableError, UnknownFilterError, UnknownProductError
from imageretrieval.live.products import ProductValidationError
from imageretrieval.live.store import DuplicateProductError, StorageFullError, UnknownLiveProductError
from imageretrieval.text.encoders import TextEncoderUnavailableError
from imageretrieval.text.queries import QueryTextError
from imageretrieval.text.search import TextSearchUnavailableError

from .batcher import OverloadedError
from .runtime import (
    BadImageError,
    ForbiddenKeyError,
    InvalidKeyError,
    KeyStoreUnavailableError,
    MissingKeyError,
    NotReadyError,
    UnknownModelError,
)
from .schemas import ErrorResponse
from .writes import WriteImageError

log = logging.getLogger(__name__)

_LOCATION_PREFIXES = {"body", "query", "path", "header", "cookie", "form"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad input: not an image, unknown model or filter value, a model "
                                                 "without a text projection, a rerank the model cannot do (gender "
                                                 "without its gender predictor)"},
    401: {"model": ErrorResponse, "description": "No API key, or an unknown or revoked one (REQUIRE_READ_KEY, writes)"},
    403: {"model": ErrorResponse, "description": "The API key's scope does not allow this route"},
    404: {"model": ErrorResponse, "description": "Unknown product"},
    413: {"model": ErrorResponse, "description": "Upload over MAX_UPLOAD_MB"},
    415: {"model": ErrorResponse, "description": "Unsupported body content type"},
    422: {"model": ErrorResponse, "description": "Missing or invalid field"},
    503: {"model": ErrorResponse, "description": "Overloaded, starting or stopping: retry"},
}
TEXT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    501: {"model": ErrorResponse, "description": "This server cannot search by words (its text encoder is missing)"},
}
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: ERROR_RESPONSES[code] for code in (400, 401, 403, 413, 422, 503)},
    400: {"model": ErrorResponse, "description": "An image that cannot be used (the product is named)"},
    404: {"model": ErrorResponse, "description": "Unknown product id (update, delete)"},
    409: {"model": ErrorResponse, "description": "The id exists with other data (add): update it instead"},
    415: {"model": ErrorResponse, "description": "The body is not a form (POST, PUT and batch writes are forms)"},
    422: {"model": ErrorResponse, "description": "Invalid metadata or CSV rows: the field and line are named"},
    429: {"model": ErrorResponse, "description": "Too many writes for this key: retry after Retry-After seconds"},
    507: {"model": ErrorResponse, "description": "The server's disk is full: nothing was written"},
}


# every domain error a request can meet -> its HTTP status; 503s tell the client when to retry
DOMAIN_ERRORS: dict[type[Exception], int] = {
    UnknownModelError: 400, UnknownFilterError: 400, BadImageError: 400, RerankUnavailableError: 400,
    UnknownProductError: 404, NotReadyError: 503, OverloadedError: 503, KeyStoreUnavailableError: 503,
    MissingKeyError: 401, InvalidKeyError: 401, ForbiddenKeyError: 403,
    WriteImageError: 400, UnknownLiveProductError: 404, DuplicateProductError: 409, ProductValidationError: 422,
    StorageFullError: 507, QueryTextError: 422, TextSearchUnavailableError: 400, TextEncoderUnavailableError: 501,
    BackendUnavailableError: 503,
}
RETRY_AFTER = {"Retry-After": "1"}


def domain_status(exc: Exception) -> tuple[int, dict[str, str]]:
    """The HTTP status of a domain error and its headers: when to retry (503), how to authenticate (401)."""
    status = next(code for kind, code in DOMAIN_ERRORS.items() if isinstance(exc, kind))
    headers = RETRY_AFTER if status == 503 else {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return status, headers


def format_validation_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    """FastAPI/pydantic error list -> 'top_k: Input should be ...; image: Field required'."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if str(p) not in _LOCATION_PREFIXES]
        where = ".".join(loc)
        msg = str(err.get("msg", "invalid value"))
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


def document_string_errors(app: FastAPI) -> None:
    """FastAPI documents 422 as its list of errors; ours is `{"detail": "<string>"}` like every error."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in components:
                components["HTTPValidationError"] = ErrorResponse.model_json_schema()
                components["HTTPValidationError"]["title"] = "HTTPValidationError"
                components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        status, headers = domain_status(exc)
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers or None)

    for kind in DOMAIN_ERRORS:
        app.add_exception_handler(kind, domain_error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": format_validation_errors(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        log.exception("unhandled error on %s %s (request id %s)", request.method, request.url.path, request_id)
        return JSONResponse({"detail": f"internal error (request id {request_id})"}, status_code=500)
