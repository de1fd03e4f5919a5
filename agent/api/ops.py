"""Operations routes: liveness, readiness, Prometheus metrics, agent status."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    service = request.app.state.service
    if service.ready:
        return JSONResponse({"status": "ready"})
    state = "draining" if service.draining else "loading"
    return JSONResponse({"status": state}, status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics", responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    registry = request.app.state.service.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/agent/status")
async def status(request: Request) -> dict:
    return request.app.state.service.status()
