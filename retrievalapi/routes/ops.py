"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..schemas import ErrorResponse, HealthResponse, ReadyResponse

router = APIRouter(prefix="/api", tags=["operations"])


@router.get("/health", response_model=HealthResponse, summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", response_model=ReadyResponse, summary="Readiness: models loaded, batchers running",
            responses={503: {"model": ErrorResponse, "description": "Starting or stopping"}})
async def ready(request: Request) -> Response | dict:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready or not all(b.running for b in runtime.batchers.values()):
        return JSONResponse({"detail": "not ready"}, status_code=503, headers={"Retry-After": "1"})
    return {"status": "ready", "models": list(runtime.engines)}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)
