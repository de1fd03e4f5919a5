"""The older FastAPI ONNX engine's contract, for the clients written against it:
`POST /reasoning` (task_type -> profile) and the JSON answer of `GET /`."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from agent.api.streaming import collect
from agent.engine.types import ChatRequest, Message, SamplingParams

router = APIRouter()

TASK_PROFILES = {"reasoning": "reasoning", "math": "math", "coding": "coding", "code": "coding"}
# What the older FastAPI ONNX engine listed in `/health` and `GET /`: its task types.
CAPABILITIES = ("reasoning", "math", "coding", "general")


class ReasoningBody(BaseModel):
    """That engine's request, with its defaults (max_length 200, temperature 0.3)."""

    prompt: Annotated[str, Field(min_length=1)]
    task_type: str = Field("reasoning", description="unknown task types use the plain model")
    max_length: Annotated[int, Field(ge=1)] = 200
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.3


@router.post("/reasoning")
async def reasoning(body: ReasoningBody, request: Request) -> dict[str, object]:
    service = request.app.state.service
    profile = TASK_PROFILES.get(body.task_type)
    internal = ChatRequest(
        model=profile or service.names.model,
        messages=(Message("user", body.prompt),),
        sampling=SamplingParams(max_tokens=body.max_length, temperature=body.temperature),
    )
    started = time.perf_counter()
    routed = await service.router.submit(internal)
    done = await collect(request, routed)
    return {
        "generated_text": done.text,
        "task_type": body.task_type,
        "inference_time": round(time.perf_counter() - started, 4),
        "model": service.names.model,
        "profile": profile,
        "finish_reason": done.final.finish_reason.value,
        "tokens_generated": done.usage.completion_tokens,
        "prompt_tokens": done.usage.prompt_tokens,
        "backend": routed.backend,
    }


@router.get("/", response_class=PlainTextResponse)
async def root(request: Request) -> Response:
    """Ollama's "Ollama is running" (what its clients probe for); a client that asks for
    JSON gets the older engine's description of itself."""
    if "application/json" not in request.headers.get("accept", ""):
        return PlainTextResponse("Ollama is running")
    return JSONResponse(
        {
            "name": "edge-agent",
            "model": request.app.state.service.names.model,
            "endpoints": sorted(request.app.openapi()["paths"]),
            "capabilities": list(CAPABILITIES),
        }
    )
