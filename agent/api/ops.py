"""Operations routes: liveness, readiness, Prometheus metrics, agent status."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from agent.api.deps import GatewayDep
from agent.api.errors import GUARDED, openai_errors
from agent.protocol.legacy import Health, Ready
from agent.protocol.status import AgentStatus

router = APIRouter()
_TOO_LARGE = openai_errors((413,))  # the probes need no key; the size cap holds everywhere


@router.get("/health", response_model=Health, responses={503: {"model": Health}, **_TOO_LARGE})
async def health(gateway: GatewayDep) -> JSONResponse:
    """Liveness, in the older FastAPI ONNX engine's shape. A dead or stalled engine thread is
    a 503, so a container HEALTHCHECK (`curl -f`) or a liveness probe restarts the daemon;
    loading and draining are `/ready`'s."""
    readiness = gateway.readiness()
    if readiness.state not in ("engine_failed", "stalled"):
        return JSONResponse(Health(status="healthy", model=gateway.names.model).wire())
    body = Health(status="unhealthy", model=gateway.names.model, reason=readiness.reason)
    return JSONResponse(body.wire(), status_code=503)


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}, **_TOO_LARGE})
async def ready(gateway: GatewayDep) -> JSONResponse:
    """200 while new requests are served; 503 while loading, draining, or with a dead
    engine (then with the reason)."""
    readiness = gateway.readiness()
    body = Ready(status=readiness.state, reason=readiness.reason).wire()
    if readiness.ready:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **openai_errors(GUARDED),
    },
)
async def metrics(gateway: GatewayDep) -> Response:
    return Response(gateway.metrics_text(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/agent/status", response_model=AgentStatus, responses=openai_errors(GUARDED))
async def status(gateway: GatewayDep) -> JSONResponse:
    """Sent as built (AgentStatus documents it; the fuzz test checks the two agree)."""
    return JSONResponse(jsonable_encoder(gateway.status()))
