"""Access to the startup-loaded runtime from a request."""

from __future__ import annotations

from fastapi import HTTPException, Request

from ..runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        raise HTTPException(503, "the service is starting or stopping; retry shortly", headers={"Retry-After": "1"})
    return runtime
