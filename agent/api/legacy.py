"""`POST /reasoning`, for clients of the older FastAPI ONNX engine: maps task_type to a profile."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from agent.api.streaming import collect
from agent.engine.types import ChatRequest, Message, SamplingParams

router = APIRouter()

TASK_PROFILES = {"reasoning": "reasoning", "math": "math", "coding": "coding", "code": "coding"}


class ReasoningBody(BaseModel):
    prompt: Annotated[str, Field(min_length=1)]
    task_type: Literal["reasoning", "math", "coding", "code", "general"] = "reasoning"
    max_length: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None


@router.post("/reasoning")
async def reasoning(body: ReasoningBody, request: Request) -> dict:
    service = request.app.state.service
    model = TASK_PROFILES.get(body.task_type, service.names.model)
    internal = ChatRequest(
        model=model,
        messages=(Message("user", body.prompt),),
        sampling=SamplingParams(max_tokens=body.max_length, temperature=body.temperature),
    )
    routed = await service.router.submit(internal)
    done = await collect(request, routed)
    timings = done.final.timings
    return {
        "response": done.text,
        "task_type": body.task_type,
        "profile": model,
        "finish_reason": done.final.finish_reason.value,
        "tokens_generated": done.usage.completion_tokens,
        "prompt_tokens": done.usage.prompt_tokens,
        "inference_time_s": round(timings.total_s, 4) if timings else None,
        "backend": routed.backend,
    }
