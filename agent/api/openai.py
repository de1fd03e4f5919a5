"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from agent.api.streaming import collect, headers, routed_request, sse
from agent.engine.types import ChatRequest, EngineError, Message, Route, SamplingParams
from agent.routing.router import Routed

if TYPE_CHECKING:
    from agent.service import Service

router = APIRouter(prefix="/v1")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions (unknown OpenAI fields are ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    seed: int | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    stop: str | list[str] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    route: Route | None = None

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
            stop=tuple(s for s in stop if s),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def to_internal(self) -> ChatRequest:
        messages = tuple(
            Message(
                role="system" if m.role == "developer" else m.role,
                content=m.content
                if isinstance(m.content, str)
                else "".join(part.text for part in m.content or []),
            )
            for m in self.messages
        )
        limit = self.max_completion_tokens or self.max_tokens
        return ChatRequest(
            model=self.model, messages=messages, sampling=self.sampling(limit), route=self.route
        )


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default for completions

    def to_internal(self) -> ChatRequest:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise EngineError(
                    "invalid_request", "Only one prompt per request is supported", param="prompt"
                )
            prompt = self.prompt[0]
        else:
            prompt = self.prompt
        return ChatRequest(
            model=self.model,
            prompt=prompt,
            sampling=self.sampling(self.max_tokens),
            route=self.route,
        )


def _service(request: Request) -> Service:
    return request.app.state.service


def _usage(usage: Any) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


@router.get("/models")
async def list_models(request: Request) -> dict:
    service = _service(request)
    created = int(service.started_at)
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "edge-agent"}
            for name in service.names.listed()
        ],
    }


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    return await _respond(
        request,
        body,
        prefix="chatcmpl",
        kind="chat.completion",
        events=_chat_events,
        choice=lambda text: {"message": {"role": "assistant", "content": text}},
    )


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    return await _respond(
        request,
        body,
        prefix="cmpl",
        kind="text_completion",
        events=_completion_events,
        choice=lambda text: {"text": text},
    )


async def _respond(
    request: Request,
    body: ChatCompletionRequest | CompletionRequest,
    *,
    prefix: str,
    kind: str,
    events: Callable[..., AsyncIterator[str]],
    choice: Callable[[str], dict],
) -> Any:
    """Route the request, then stream SSE events or answer with one JSON document."""
    routed = await _service(request).router.submit(routed_request(body.to_internal(), request))
    completion_id = f"{prefix}-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        return StreamingResponse(
            events(routed, body, completion_id, created),
            media_type="text/event-stream",
            headers=headers(routed),
        )
    done = await collect(request, routed)
    payload = {
        "id": completion_id,
        "object": kind,
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                **choice(done.text),
                "logprobs": None,
                "finish_reason": done.final.finish_reason.value,
            }
        ],
        "usage": _usage(done.usage),
        "backend": routed.backend,
        "route_reason": routed.reason,
    }
    return JSONResponse(payload, headers=headers(routed))


async def _chat_events(
    routed: Routed, body: ChatCompletionRequest, completion_id: str, created: int
) -> AsyncIterator[str]:
    def event(delta: dict, finish: str | None = None) -> dict:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if body.include_usage:
            payload["usage"] = None
        return payload

    yield sse(event({"role": "assistant", "content": ""}))
    async for chunk in routed.chunks:
        if chunk.text:
            yield sse(event({"content": chunk.text}))
        if chunk.finish_reason is None:
            continue
        if chunk.error:
            yield sse(
                {"error": {"message": chunk.error, "type": "server_error", "code": "engine_error"}}
            )
        yield sse(event({}, chunk.finish_reason.value))
        if body.include_usage and chunk.usage:
            yield sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.model,
                    "choices": [],
                    "usage": _usage(chunk.usage),
                }
            )
    yield sse("[DONE]")


async def _completion_events(
    routed: Routed, body: CompletionRequest, completion_id: str, created: int
) -> AsyncIterator[str]:
    def event(text: str, finish: str | None = None, usage: Any = None) -> dict:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(usage) if usage is not None else None,
        }

    async for chunk in routed.chunks:
        if chunk.finish_reason is not None:
            usage = chunk.usage if body.include_usage else None
            yield sse(event(chunk.text, chunk.finish_reason.value, usage))
        elif chunk.text:
            yield sse(event(chunk.text))
    yield sse("[DONE]")
