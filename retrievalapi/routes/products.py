"""Catalog writes (a `write` API key): add, replace, patch and delete products, and batch loads.

Each answer comes once the write is durable and visible to every loaded model's searches.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError

from imageretrieval.keys import ApiKey
from imageretrieval.live.products import FIELDS, MAX_BATCH, ProductValidationError, check_id, parse_styles_rows
from imageretrieval.live.store import DuplicateProductError

from ..errors import WRITE_RESPONSES
from ..schemas import ProductPatch, WriteResponse
from ..writes import WriteImageError, WriteRequest
from .catalog import ProductId
from .deps import RuntimeDep, form_fields, read_image_upload, require_scope

router = APIRouter(prefix="/api", tags=["catalog writes"])
WriteKey = Annotated[ApiKey, Depends(require_scope("write"))]


def require_form_body(request: Request) -> None:
    """A write with an image is a form: refuse another body type before its fields are validated (a JSON
    body would otherwise read as 'image: field required')."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise HTTPException(415, f"send this write as a form (multipart/form-data), not {ctype or 'no body type'}; "
                                 "JSON is for PATCH")


FormBody = Annotated[None, Depends(require_form_body)]
FieldParam = Annotated[str | None, Form(description="A styles.csv column")]


FieldsForm = Annotated[dict[str, str], Depends(form_fields(FIELDS, FieldParam, drop_missing=True))]


async def _refuse_unknown_form_fields(request: Request, allowed: tuple[str, ...], repeatable: tuple[str, ...] = ()
                                      ) -> None:
    form = await request.form()
    unknown = sorted(set(form.keys()) - set(allowed))
    if unknown:
        raise ProductValidationError(f"unknown field(s) {', '.join(map(repr, unknown))}; fields: {', '.join(allowed)}")
    repeated = sorted(k for k in set(form.keys()) - set(repeatable) if len(form.getlist(k)) > 1)
    if repeated:  # which one would count? refuse rather than guess
        raise ProductValidationError(f"field(s) {', '.join(map(repr, repeated))} given more than once; send each once")


def _created_or_ok(response: Response, answer: dict) -> dict:
    """201 when the product was added, 200 when it was there already with the same data (a no-op)."""
    response.status_code = 201 if any(c["action"] == "added" for c in answer["changes"]) else 200
    return answer


@router.post("/products", response_model=WriteResponse, status_code=201, responses=WRITE_RESPONSES,
             summary="Add a product (multipart: image + id + styles.csv fields)")
async def add_product(request: Request, response: Response, rt: RuntimeDep, key: WriteKey, _: FormBody,
                      fields: FieldsForm,
                      image: Annotated[UploadFile, File(description="The product photo (JPEG, PNG, WebP, ...)")],
                      id: Annotated[str, Form(description="New product id, 1..2^53-1", examples=["90001"])]
                      ) -> dict[str, Any]:
    await _refuse_unknown_form_fields(request, ("id", "image", *FIELDS))
    data = await read_image_upload(image, rt.settings.max_upload_bytes)
    answer = await rt.writer.write([WriteRequest("add", check_id(id), fields, data)], key)
    return _created_or_ok(response, answer)


@router.put("/products/{product_id}", response_model=WriteResponse, responses=WRITE_RESPONSES,
            summary="Replace a product's metadata (fields left out become empty), and its image if one is sent")
async def replace_product(request: Request, rt: RuntimeDep, key: WriteKey, _: FormBody, product_id: ProductId,
                          fields: FieldsForm, image: Annotated[UploadFile | None, File()] = None) -> dict[str, Any]:
    await _refuse_unknown_form_fields(request, ("image", *FIELDS))
    data = await read_image_upload(image, rt.settings.max_upload_bytes) if image is not None else None
    return await rt.writer.write([WriteRequest("update", product_id, fields, data, replace=True)], key)


@router.patch("/products/{product_id}", response_model=WriteResponse, responses=WRITE_RESPONSES,
              summary="Change some of a product's fields (JSON; the image stays)")
async def patch_product(rt: RuntimeDep, key: WriteKey, product_id: ProductId, patch: ProductPatch) -> dict[str, Any]:
    fields = patch.model_dump(exclude_unset=True)
    if not fields:
        raise ProductValidationError("nothing to change: send at least one field")
    return await rt.writer.write([WriteRequest("update", product_id, fields)], key)


@router.delete("/products/{product_id}", response_model=WriteResponse, responses=WRITE_RESPONSES,
               summary="Delete a product: never returned again, by image or by id")
async def delete_product(rt: RuntimeDep, key: WriteKey, product_id: ProductId) -> dict[str, Any]:
    return await rt.writer.write([WriteRequest("delete", product_id)], key)


@router.post("/products/batch", response_model=WriteResponse, responses=WRITE_RESPONSES,
             summary=f"Add, replace or delete up to {MAX_BATCH} products in one all-or-nothing write")
async def batch(
    request: Request, rt: RuntimeDep, key: WriteKey, _: FormBody,
    styles: Annotated[UploadFile | None, File(description="styles.csv rows: a header (id + columns) and one row "
                                                          "per product")] = None,
    images: Annotated[list[UploadFile] | None, File(description="One image per new product, named <id>.jpg "
                                                                "(any image format and extension)")] = None,
    delete: Annotated[list[str] | None, Form(description="Ids to delete (repeat the field)")] = None,
    mode: Annotated[str, Form(description="add: new ids only (re-adding identical data is a no-op); "
                                          "upsert: existing ids are replaced")] = "add",
) -> dict[str, Any]:
    await _refuse_unknown_form_fields(request, ("styles", "images", "delete", "mode"), repeatable=("images", "delete"))
    if mode not in ("add", "upsert"):
        raise RequestValidationError([{"loc": ("form", "mode"), "msg": "mode must be add or upsert"}])
    by_id: dict[int, bytes] = {}
    for upload in images or []:
        stem = PurePath(upload.filename or "").stem
        if not stem.isdigit():
            raise WriteImageError(f"image file {upload.filename!r}: name it <product id>.<extension>")
        pid = check_id(stem)
        if pid in by_id:
            raise WriteImageError(f"image file {upload.filename!r}: a second image for product {pid}; send one")
        by_id[pid] = await read_image_upload(upload, rt.settings.max_upload_bytes)
    rows = []
    if styles is not None:
        raw = await styles.read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ProductValidationError("styles: not UTF-8 text") from None
        rows = parse_styles_rows(text, PurePath(styles.filename or "styles").name)
    requests: list[WriteRequest] = []
    for pid, fields in rows:
        exists = rt.catalog.current(pid) is not None
        if exists and mode == "upsert":
            requests.append(WriteRequest("update", pid, fields, by_id.pop(pid, None), replace=True))
        elif exists and pid not in by_id:
            raise DuplicateProductError(f"product {pid} already exists: send mode=upsert to replace it")
        else:
            requests.append(WriteRequest("add", pid, fields, by_id.pop(pid, None)))
    if by_id:
        raise WriteImageError(f"image(s) for id(s) {', '.join(map(str, sorted(by_id)))} without a styles row")
    requests += [WriteRequest("delete", check_id(pid)) for pid in delete or []]
    if not requests:
        raise ProductValidationError("nothing to write: send styles rows (with images) or ids to delete")
    if len(requests) > MAX_BATCH:
        raise ProductValidationError(f"at most {MAX_BATCH} products per batch")
    return await rt.writer.write(requests, key)
