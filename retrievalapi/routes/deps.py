"""Dependencies of the routes: the startup-loaded runtime, and the filter form fields."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Form, HTTPException, Request, UploadFile
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imageretrieval.engine import FILTER_FIELDS
from imageretrieval.keys import ApiKey

from ..runtime import NotReadyError, Runtime, check_key
from ..schemas import FILTER_DESCRIPTION


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        raise NotReadyError("the service is starting or stopping; retry shortly")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

bearer = HTTPBearer(auto_error=False, description="An API key: `imageretrieval keys create --scope read|write`")


def require_scope(scope: str) -> Callable[..., ApiKey]:
    """A dependency that admits a request carrying a valid key of `scope` (a write key may also read)."""

    def check(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
        header = f"{credentials.scheme} {credentials.credentials}" if credentials is not None else None
        return check_key(request.app.state.keys, header, scope)

    return check

async def read_image_upload(upload: UploadFile, limit: int) -> bytes:
    """An uploaded image's bytes, or 413 past `limit` (never more than limit + 1 bytes read)."""
    message = f"the image is larger than the {limit / 1024 / 1024:.1f} MB upload limit"
    if upload.size is not None and upload.size > limit:
        raise HTTPException(413, message)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, message)
    return data


FilterParam = Annotated[list[str] | None, Form(description=FILTER_DESCRIPTION)]


def form_fields(names: tuple[str, ...], annotation: Any, drop_missing: bool = False) -> Callable[..., dict]:
    """A dependency taking one optional form field per name, each documented in OpenAPI; its value is
    {name: value} (without the fields not sent, with `drop_missing`)."""

    def read(**values: Any) -> dict:
        return {n: values.get(n) for n in names if not (drop_missing and values.get(n) is None)}

    read.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation) for n in names])
    return read


FilterForm = Annotated[dict[str, list[str] | None], Depends(form_fields(FILTER_FIELDS, FilterParam))]
