"""POST /api/search (upload an image) and POST /api/search/by-id ("more like this")."""


import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile
from pydantic import BaseModel, ValidationError

from imageretrieval.engine import FILTER_FIELDS, RetrievalEngine
from imageretrieval.rerank import reranks_gender

from ..errors import ERROR_RESPONSES, TEXT_RESPONSES, format_validation_errors
from ..runtime import Runtime
from ..schemas import (
    DEFAULT_TOP_K,
    Q_DESCRIPTION,
    RERANK_DESCRIPTION,
    Rerank,
    SearchResponse,
    make_by_id_request,
    make_text_request,
)
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


def _k(top_k: int | None, top_k_alias: int | None) -> int:
    return top_k if top_k is not None else top_k_alias if top_k_alias is not None else DEFAULT_TOP_K


def build_router(top_k_max: int) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["search"])
    by_id_model = make_by_id_request(top_k_max)
    TopK = Annotated[int | None, Form(ge=1, le=top_k_max, description=f"Results wanted, 1..{top_k_max} "
                                                                       f"(default {DEFAULT_TOP_K})")]

    text_model = make_text_request(top_k_max)

    @router.post("/search", response_model=SearchResponse, responses=TEXT_RESPONSES,
                 summary="Search the catalog with an uploaded image, words (q), or both")
    async def search(
        request: Request,
        response: Response,
        rt: RuntimeDep,
        filter_values: FilterForm,
        image: Annotated[UploadFile | None, File(description="JPEG, PNG, WebP, GIF (first frame), BMP, ...; "
                                                             "EXIF orientation is honoured")] = None,
        q: Annotated[str | None, Form(description=Q_DESCRIPTION, examples=["but in red"])] = None,
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
        if image is None and q is None:
            raise HTTPException(422, "send an image, words (q), or both")
        if q is None and reranks_gender(rerank):
            engine.check_gender_rerank()  # a 400 before the upload is read and encoded
        data = await read_image_upload(image, rt.settings.max_upload_bytes) if image is not None else None
        timing: dict[str, float] = {}
        if q is not None:  # words alone, or a photo refined by words
            hits = await rt.search_words(engine, q, k, filters, image=data, timing=timing)
            rerank = "none"
        else:
            hits = await rt.search_upload(engine, data, k, filters, timing, rerank)
        took_ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = server_timing(timing, took_ms)
        return {"model": engine.name, "took_ms": round(took_ms, 2), "rerank": rerank,
                "type_first": getattr(hits, "type_first", None), "gender_first": getattr(hits, "gender_first", None),
                "results": rt.as_results(hits)}

    @router.post("/search/by-id", response_model=SearchResponse, responses=ERROR_RESPONSES,
                 summary="More like this: products similar to a catalog product (itself excluded)",
                 openapi_extra=json_or_form(by_id_model))
    async def search_by_id(request: Request, response: Response, rt: RuntimeDep) -> dict[str, Any]:
        started = time.perf_counter()
        body, engine, k, filters = await _body_and_target(request, rt, by_id_model)
        searched = time.perf_counter()
        hits = await anyio.to_thread.run_sync(engine.search_by_id, body.product_id, k, filters or None, body.rerank)
        searched_ms = (time.perf_counter() - searched) * 1000
        took_ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = server_timing({"search": searched_ms}, took_ms)
        return {"model": engine.name, "took_ms": round(took_ms, 2), "rerank": body.rerank,
                "type_first": hits.type_first, "gender_first": hits.gender_first, "results": rt.as_results(hits)}

    @router.post("/search/text", response_model=SearchResponse, responses=TEXT_RESPONSES,
                 summary="Search the catalog by words (hybrid: by meaning and by letter)",
                 openapi_extra=json_or_form(text_model))
    async def search_text(request: Request, response: Response, rt: RuntimeDep) -> dict[str, Any]:
        started = time.perf_counter()
        body, engine, k, filters = await _body_and_target(request, rt, text_model)
        timing: dict[str, float] = {}
        hits = await rt.search_words(engine, body.q, k, filters, body.mode, timing=timing)
        took_ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = server_timing(timing, took_ms)
        return {"model": engine.name, "took_ms": round(took_ms, 2), "rerank": "none", "type_first": None,
                "results": rt.as_results(hits)}

    return router


async def _body_and_target(request: Request, rt: Runtime, model: type[BaseModel]
                           ) -> tuple[Any, RetrievalEngine, int, dict[str, list[str]]]:
    """A JSON or form search body validated as `model`, its engine, k and checked filters (logged on the request)."""
    body = await read_body_as(request, model)
    engine = rt.engine(body.model)
    k = _k(body.top_k, body.topK)
    request.state.model, request.state.k = engine.name, k
    return body, engine, k, engine.check_filters(body.filters())


def json_or_form(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI: the body is `model`, as JSON or as a form."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                          "application/x-www-form-urlencoded": {"schema": schema}}}}


async def read_body_as(request: Request, model: type[BaseModel]) -> Any:
    """The JSON or form body validated as `model` (422 with the fields named)."""
    payload, strict = await _read_body(request)
    try:
        return model.model_validate(payload, strict=strict)
    except ValidationError as exc:
        raise HTTPException(422, format_validation_errors(exc.errors())) from None


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
