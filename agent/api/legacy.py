"""The older FastAPI ONNX engine's routes: `POST /reasoning` (task_type -> profile) and the
JSON answer of `GET /` (Ollama's plain text to everyone else)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from agent.api.deps import GatewayDep
from agent.api.errors import GENERATING, GUARDED, openai_errors
from agent.api.streaming import collect
from agent.engine.types import ChatRequest, Message, SamplingParams
from agent.protocol.legacy import EngineDescription, ReasoningBody, ReasoningResponse

router = APIRouter()


@router.post("/reasoning", responses=openai_errors(GENERATING))
async def reasoning(
    body: ReasoningBody, request: Request, gateway: GatewayDep
) -> ReasoningResponse:
    model = gateway.names.model
    internal = ChatRequest(
        model=body.profile or model,
        messages=(Message("user", body.prompt),),
        sampling=SamplingParams(max_tokens=body.max_length, temperature=body.temperature),
    )
    started = time.perf_counter()
    routed = await gateway.submit(internal)
    done = await collect(request, routed)
    return ReasoningResponse(
        generated_text=done.text,
        task_type=body.task_type,
        inference_time=round(time.perf_counter() - started, 4),
        model=model,
        profile=body.profile,
        finish_reason=done.finish_reason.value,
        tokens_generated=done.usage.completion_tokens,
        prompt_tokens=done.usage.prompt_tokens,
        backend=routed.backend,
    )


@router.get(
    "/",
    response_model=EngineDescription,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **openai_errors(GUARDED),
    },
)
async def root(request: Request, gateway: GatewayDep) -> Response:
    """Ollama's "Ollama is running" (what its clients probe for); a client that asks for
    JSON gets the older engine's description of itself."""
    if "application/json" not in request.headers.get("accept", ""):
        return PlainTextResponse("Ollama is running")
    described = EngineDescription(
        model=gateway.names.model, endpoints=sorted(request.app.openapi()["paths"])
    )
    return Response(described.model_dump_json(), media_type="application/json")
