"""The older FastAPI ONNX engine's contract: `POST /reasoning`, `GET /health` and the JSON
answer of `GET /`, kept for the clients written against it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agent.protocol.fields import MaxTokens, Temperature, WireModel, omitted_when_none

TASK_PROFILES = {"reasoning": "reasoning", "math": "math", "coding": "coding", "code": "coding"}
# What that engine listed in `/health` and `GET /`: its task types.
CAPABILITIES = ("reasoning", "math", "coding", "general")


class ReasoningBody(BaseModel):
    """That engine's request, with its defaults (max_length 200, temperature 0.3)."""

    prompt: str = Field(min_length=1)
    task_type: str = Field("reasoning", description="unknown task types use the plain model")
    max_length: MaxTokens = 200
    temperature: Temperature = 0.3

    @property
    def profile(self) -> str | None:
        return TASK_PROFILES.get(self.task_type)


class ReasoningResponse(WireModel):
    generated_text: str
    task_type: str
    inference_time: float = Field(description="seconds")
    model: str
    profile: str | None
    finish_reason: str
    tokens_generated: int
    prompt_tokens: int
    backend: str


class EngineDescription(WireModel):
    """`GET /` for a client that asks for JSON."""

    name: str = "edge-agent"
    model: str
    endpoints: list[str]
    capabilities: list[str] = Field(default_factory=lambda: list(CAPABILITIES))


class Health(WireModel):
    """`GET /health`: `healthy` while the engine can serve (loading or draining included);
    `unhealthy` with the reason once it cannot."""

    status: Literal["healthy", "unhealthy"]
    model: str
    capabilities: list[str] = Field(default_factory=lambda: list(CAPABILITIES))
    reason: str | None = omitted_when_none()


class Ready(WireModel):
    """`GET /ready`: `ready`, or why not (`loading`, `draining`, `engine_failed`,
    `stalled`)."""

    status: str
    reason: str | None = omitted_when_none()
