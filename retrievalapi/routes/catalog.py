"""Catalog routes: models, facets, product metadata and product images (cacheable)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import FileResponse
from pydantic import BeforeValidator

from ..errors import ERROR_RESPONSES
from ..runtime import read_evaluation
from ..schemas import FacetsResponse, ModelsResponse, Product
from .deps import RuntimeDep

# A product's image may change or go (the live catalog): its plain URL is revalidated on every use (a
# 304 when unchanged); the versioned URL the API hands out (?v=<image hash>) never changes content.
IMAGE_CACHE_CONTROL = "no-cache"
VERSIONED_IMAGE_CACHE_CONTROL = "public, max-age=2592000, immutable"


def _digits_only(value: Any) -> Any:
    """"1_003", "+1005" or "1003.0" would parse as ints: a path names a product in digits alone."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("a product id is written in digits only, e.g. 15970")
    return value


ProductId = Annotated[int, BeforeValidator(_digits_only),
                      Path(ge=0, le=2**63 - 1, description="Catalog product id", examples=[15970])]

router = APIRouter(prefix="/api", tags=["catalog"])


@router.get("/models", response_model=ModelsResponse, summary="Loaded models, their indexes and evaluation")
def models(rt: RuntimeDep) -> dict[str, Any]:
    out = []
    for name, engine in rt.engines.items():
        info = engine.describe()
        out.append({**info, "default": name == rt.default,
                    "evaluation": read_evaluation(rt.settings.workdir, name)})
    synthetic = any(bool(e.manifest.get("synthetic_catalog")) for e in rt.engines.values())
    return {"default": rt.default, "synthetic_catalog": synthetic, "models": out}


@router.get("/facets", response_model=FacetsResponse, summary="Filter values with product counts")
def facets(rt: RuntimeDep) -> dict[str, Any]:
    return rt.facets


@router.get("/products/{product_id}", response_model=Product, responses={404: ERROR_RESPONSES[404]},
            summary="One product's metadata")
def product(rt: RuntimeDep, product_id: ProductId) -> dict[str, Any]:
    info = rt.product(product_id)
    if info is None:
        raise HTTPException(404, f"unknown product id {product_id}")
    return {**info, "image_url": rt.image_url(product_id)}


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/images/{product_id}", response_class=FileResponse, summary="A product's catalog image (JPEG)",
    responses={200: {"content": {"image/jpeg": {}}, "description": "The JPEG"},
               304: {"description": "Not modified (If-None-Match)"}, 404: ERROR_RESPONSES[404]},
)
def image(request: Request, rt: RuntimeDep, product_id: ProductId) -> Response:
    rt.refresh_catalog()
    path = rt.catalog.image_path(product_id)
    if path is None:
        raise HTTPException(404, f"no image for product id {product_id}")
    asked = request.query_params.get("v")
    versioned = asked == rt.image_version(product_id)
    if asked is not None and not versioned:  # a URL of the image before the last change: that image
        named = rt.catalog.image_version_path(product_id, asked)
        path, versioned = (named, True) if named is not None else (path, False)
    st = path.stat()
    etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    headers = {"ETag": etag, "Cache-Control": VERSIONED_IMAGE_CACHE_CONTROL if versioned else IMAGE_CACHE_CONTROL}
    if _etag_matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="image/jpeg", headers=headers, stat_result=st)
