"""POST /api/search (upload an image) and POST /api/search/by-id ("more like this")."""


import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile
from pydantic import ValidationError

from imageretrieval.engine import FILTER_FIELDS

from ..errors import ERROR_RESPONSES, format_validation_errors
from ..schemas import DEFAULT_TOP_K, RERANK_DESCRIPTION, Rerank, SearchResponse, make_by_id_request
from .deps import FilterForm, RuntimeDep, read_image_upload

JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

TIMING_STAGES = ("decode", "queue", "forward", "search")


def server_timing(timing: dict[str, float], total_ms: float) -> str:
    """`Server-Timing` header value (shown by browser dev tools): where a request's time went."""
    parts = []
    for stage in TIMING_STAGES:
        if stage in timing:
            desc = f';desc="batch of {int(timing["batch"])}"' if stage == "forward" and "batch" in timing else ""
            parts.append(f"{stage};dur={timing[stage]:.2f}{desc}")
    parts.append(f"total;dur={total_ms:.2f}")
    return ", ".join(parts)


def type_first(hits: list, rerank: str, expected: str | None = None) -> str | None:
    """The articleType that category-first re-ranking put first, for the client to show.

    For an image search the vote's winner is always the first hit's type (its voters are in the
    re-ranked pool); for "more like this" it is the product's own type, unless no result has it.
    """
    if rerank != "category" or not hits:
        return None
    first = hits[0].product.get("articleType")
    return first if expected is None or first == expected else None


def _k(top_k: int | None, top_k_alias: int | None) -> int:
    return top_k if top_k is not None else top_k_alias if top_k_alias is not None else DEFAULT_TOP_K


def build_router(top_k_max: int) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["search"])
    by_id_model = make_by_id_request(top_k_max)
    by_id_schema = by_id_model.model_json_schema()
    TopK = Annotated[int | None, Form(ge=1, le=top_k_max, description=f"Results wanted, 1..{top_k_max} "
                                                                       f"(default {DEFAULT_TOP_K})")]

    @router.post("/search", response_model=SearchResponse, responses=ERROR_RESPONSES,
                 summary="Search the catalog with an uploaded image")
    async def search(
        request: Request,
        response: Response,
        rt: RuntimeDep,
        image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, GIF (first frame), BMP, ...; "
                                                      "EXIF orientation is honoured")],
        filter_values: FilterForm,
        model: Annotated[str | None, Form(description="Model name (default: the default model)",
                                          examples=["efficientnet_lite0"])] = None,
        top_k: TopK = None,
        topK: Annotated[int | None, Form(ge=1, le=top_k_max, description="Alias of top_k")] = None,
        rerank: Annotated[Rerank, Form(description=RERANK_DESCRIPTION)] = "none",
    ) -> dict[str, Any]:
        started = time.perf_counter()
        engine = rt.engine(model)
        k = _k(top_k, topK)
        request.state.model, request.state.k = engine.name, k
        filters = engine.check_filters(filter_values)
        data = await read_image_upload(image, rt.settings.max_upload_bytes)
        timing: dict[str, float] = {}
        hits = await rt.search_upload(engine, data, k, filters, timing, rerank)
        took_ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = server_timing(timing, took_ms)
        return {"model": engine.name, "took_ms": round(took_ms, 2), "rerank": rerank,
                "type_first": type_first(hits, rerank), "results": rt.as_results(hits)}

    @router.post(
        "/search/by-id", response_model=SearchResponse, responses=ERROR_RESPONSES,
        summary="More like this: products similar to a catalog product (itself excluded)",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": by_id_schema},
            "application/x-www-form-urlencoded": {"schema": by_id_schema},
        }}},
    )
    async def search_by_id(request: Request, response: Response, rt: RuntimeDep) -> dict[str, Any]:
        started = time.perf_counter()
        payload, strict = await _read_body(request)
        try:
            body = by_id_model.model_validate(payload, strict=strict)
        except ValidationError as exc:
            raise HTTPException(422, format_validation_errors(exc.errors())) from None
        engine = rt.engine(body.model)
        k = _k(body.top_k, body.topK)
        request.state.model, request.state.k = engine.name, k
        filters = engine.check_filters(body.filters())
        searched = time.perf_counter()
        hits = await anyio.to_thread.run_sync(engine.search_by_id, body.product_id, k, filters or None, body.rerank)
        searched_ms = (time.perf_counter() - searched) * 1000
        took_ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = server_timing({"search": searched_ms}, took_ms)
        own = engine.product(body.product_id).get("articleType")
        return {"model": engine.name, "took_ms": round(took_ms, 2), "rerank": body.rerank,
                "type_first": type_first(hits, body.rerank, own), "results": rt.as_results(hits)}

    return router


async def _read_body(request: Request) -> tuple[dict[str, Any], bool]:
    """JSON or form body -> (fields, strict): JSON keeps its types, form values are strings to coerce."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in JSON_TYPES or ctype.endswith("+json"):
        try:
            payload = await request.json()
        except ValueError:
            raise HTTPException(400, "the request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise HTTPException(422, "the JSON body must be an object, e.g. {\"product_id\": 15970}")
        return payload, True
    if ctype in FORM_TYPES:
        form = await request.form()
        payload: dict[str, Any] = {}
        for key in set(form.keys()):
            values = form.getlist(key)
            if any(not isinstance(v, str) for v in values):
                raise HTTPException(422, f"{key}: expected a text field, got a file")
            payload[key] = values if (key in FILTER_FIELDS or len(values) > 1) else values[0]
        return payload, False
    raise HTTPException(415, "send the body as JSON (application/json) or as a form "
                             "(application/x-www-form-urlencoded or multipart/form-data)")
