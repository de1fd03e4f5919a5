"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from agent.api.streaming import SSE_OR_JSON, Completed, collect, headers, routed_request, sse
from agent.engine.types import (
    ChatRequest,
    EngineError,
    Message,
    ResponseFormat,
    Route,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
)
from agent.routing.router import Routed

if TYPE_CHECKING:
    from agent.service import Service

router = APIRouter(prefix="/v1")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCallIn(BaseModel):
    name: str
    arguments: str = "{}"


class ToolCallIn(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def to_internal(self) -> Message:
        content = self.content
        text = content if isinstance(content, str) else "".join(p.text for p in content or [])
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ()
        )
        role = "system" if self.role == "developer" else self.role
        return Message(role, text, calls, self.tool_call_id, self.name)


class FunctionIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class ToolIn(BaseModel):
    type: Literal["function"]
    function: FunctionIn

    def to_internal(self) -> Tool:
        return Tool(self.function.name, self.function.description, self.function.parameters)


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaIn(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = "output"
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None

    def to_internal(self) -> ResponseFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return ResponseFormat("json_object")
        if self.json_schema is None:
            raise EngineError(
                "invalid_request",
                "response_format.json_schema is required when type is json_schema",
                param="response_format",
            )
        return ResponseFormat("json_schema", self.json_schema.schema_)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions (unknown OpenAI fields are ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None  # optional, as on vLLM: the default model
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    seed: int | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    route: Route | None = None
    # vLLM's extras
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True  # special tokens are never in the text; False is ignored
    logprobs: bool | int | None = None
    top_logprobs: int | None = None

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        if self.n != 1:
            raise EngineError(
                "invalid_request",
                f"n={self.n}: one choice per request is supported; send {self.n} requests",
                param="n",
            )
        if self.logprobs or self.top_logprobs:
            param = "logprobs" if self.logprobs else "top_logprobs"
            raise EngineError(
                "invalid_request", "logprobs are not supported by this server", param=param
            )
        if self.ignore_eos and max_tokens is None:
            raise EngineError("invalid_request", "ignore_eos needs max_tokens", param="ignore_eos")
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
            stop=tuple(s for s in stop if s),
            min_tokens=max_tokens if self.ignore_eos else self.min_tokens,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormatIn | None = None

    def to_internal(self) -> ChatRequest:
        limit = self.max_completion_tokens or self.max_tokens
        return ChatRequest(
            model=self.model,
            messages=tuple(m.to_internal() for m in self.messages),
            sampling=self.sampling(limit),
            route=self.route,
            tools=tuple(t.to_internal() for t in self.tools or ()),
            tool_choice=self._tool_choice(),
            parallel_tool_calls=self.parallel_tool_calls,
            response_format=self.response_format.to_internal() if self.response_format else None,
        )

    def _tool_choice(self) -> ToolChoice | None:
        names = [t.function.name for t in self.tools or ()]
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in names:
                raise EngineError(
                    "invalid_request",
                    f"tool_choice names {choice.function.name!r}, which is not in tools "
                    f"({', '.join(names) or 'none given'})",
                    param="tool_choice",
                )
            return ToolChoice("required", choice.function.name)
        if choice == "required" and not names:
            raise EngineError(
                "invalid_request", "tool_choice is required but no tools were given",
                param="tool_choice",
            )  # fmt: skip
        return ToolChoice(choice) if choice else None


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


def tool_calls_json(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def _chat_choice(done: Completed) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": done.text}
    if done.final.tool_calls:
        message["content"] = done.text or None
        message["tool_calls"] = tool_calls_json(done.final.tool_calls)
    return {"message": message}


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


@router.post("/chat/completions", responses=SSE_OR_JSON)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    return await _respond(
        request,
        body,
        prefix="chatcmpl",
        kind="chat.completion",
        events=_chat_events,
        choice=_chat_choice,
    )


@router.post("/completions", responses=SSE_OR_JSON)
async def completions(body: CompletionRequest, request: Request) -> Any:
    return await _respond(
        request,
        body,
        prefix="cmpl",
        kind="text_completion",
        events=_completion_events,
        choice=lambda done: {"text": done.text},
    )


async def _respond(
    request: Request,
    body: ChatCompletionRequest | CompletionRequest,
    *,
    prefix: str,
    kind: str,
    events: Callable[..., AsyncIterator[str]],
    choice: Callable[[Completed], dict],
) -> Any:
    """Route the request, then stream SSE events or answer with one JSON document."""
    service = _service(request)
    routed = await service.router.submit(routed_request(body.to_internal(), request))
    completion_id = f"{prefix}-{uuid.uuid4().hex}"
    created = int(time.time())
    model = body.model or service.names.default
    if body.stream:
        return StreamingResponse(
            events(routed, body, model, completion_id, created),
            media_type="text/event-stream",
            headers=headers(routed),
        )
    done = await collect(request, routed)
    payload = {
        "id": completion_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                **choice(done),
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
    routed: Routed, body: ChatCompletionRequest, model: str, completion_id: str, created: int
) -> AsyncIterator[str]:
    def event(delta: dict, finish: str | None = None) -> dict:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
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
        for index, call in enumerate(tool_calls_json(chunk.tool_calls)):
            yield sse(event({"tool_calls": [{"index": index, **call}]}))
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
                    "model": model,
                    "choices": [],
                    "usage": _usage(chunk.usage),
                }
            )
    yield sse("[DONE]")


async def _completion_events(
    routed: Routed, body: CompletionRequest, model: str, completion_id: str, created: int
) -> AsyncIterator[str]:
    def event(text: str, finish: str | None = None, usage: Any = None) -> dict:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
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
