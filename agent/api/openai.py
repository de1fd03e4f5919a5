"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agent.api.deps import GatewayDep
from agent.api.errors import GENERATING, GUARDED, openai_errors
from agent.api.streaming import SSE_OR_JSON, collect, headers, routed_request, sse
from agent.engine.reply import ReplyReader
from agent.engine.types import ErrorCode
from agent.protocol.openai import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    StreamedToolCall,
    UsageOut,
    tool_calls_out,
)
from agent.routing.port import Routed

router = APIRouter(prefix="/v1")


@router.get("/models", responses=openai_errors(GUARDED))
async def list_models(gateway: GatewayDep) -> ModelList:
    created = int(gateway.started_at)
    return ModelList(data=[ModelCard(id=name, created=created) for name in gateway.names.listed()])


@router.post(
    "/chat/completions",
    responses={**SSE_OR_JSON, **openai_errors(GENERATING)},
    response_model=ChatCompletion,
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, gateway: GatewayDep
) -> JSONResponse | StreamingResponse:
    routed = await gateway.submit(routed_request(body.to_internal(), request))
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    model = body.model or gateway.names.default
    if body.stream:
        events = _chat_events(routed, body.include_usage, model, completion_id, created)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers(routed))
    done = await collect(request, routed)
    reply = ChatCompletion(
        id=completion_id,
        created=created,
        model=model,
        choices=[
            ChatChoice(
                message=AssistantMessage.of(done.text, done.tool_calls),
                finish_reason=done.finish_reason.value,
            )
        ],
        usage=UsageOut.of(done.usage),
        backend=routed.backend,
        route_reason=routed.reason,
    )
    return JSONResponse(reply.wire(), headers=headers(routed))


@router.post(
    "/completions",
    responses={**SSE_OR_JSON, **openai_errors(GENERATING)},
    response_model=Completion,
)
async def completions(
    body: CompletionRequest, request: Request, gateway: GatewayDep
) -> JSONResponse | StreamingResponse:
    routed = await gateway.submit(routed_request(body.to_internal(), request))
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    model = body.model or gateway.names.default
    if body.stream:
        events = _completion_events(routed, body.include_usage, model, completion_id, created)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers(routed))
    done = await collect(request, routed)
    reply = Completion(
        id=completion_id,
        created=created,
        model=model,
        choices=[CompletionChoice(text=done.text, finish_reason=done.finish_reason.value)],
        usage=UsageOut.of(done.usage),
        backend=routed.backend,
        route_reason=routed.reason,
    )
    return JSONResponse(reply.wire(), headers=headers(routed))


async def _chat_events(
    routed: Routed, include_usage: bool, model: str, completion_id: str, created: int
) -> AsyncIterator[str]:
    def event(delta: Delta, finish: str | None = None) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        chunk = ChatCompletionChunk(
            id=completion_id, created=created, model=model, choices=[choice]
        )
        return sse(chunk.wire())

    yield event(Delta(role="assistant", content=""))
    reader = ReplyReader(routed.chunks)
    async for text in reader.texts():
        yield event(Delta(content=text))
    done = reader.result()
    for index, call in enumerate(tool_calls_out(done.tool_calls)):
        yield event(Delta(tool_calls=[StreamedToolCall(index=index, **call.model_dump())]))
    if done.error:
        detail = ErrorDetail(
            message=done.error, type="server_error", param=None, code=ErrorCode.ENGINE_ERROR
        )
        yield sse(ErrorResponse(error=detail).wire())
    yield event(Delta(), done.finish_reason.value)
    if include_usage:
        usage = ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=model,
            choices=[],
            usage=UsageOut.of(done.usage),
        )
        yield sse(usage.wire())
    yield sse("[DONE]")


async def _completion_events(
    routed: Routed, include_usage: bool, model: str, completion_id: str, created: int
) -> AsyncIterator[str]:
    def event(choice: CompletionChoice, usage: UsageOut | None = None) -> str:
        piece = Completion(
            id=completion_id, created=created, model=model, choices=[choice], usage=usage
        )
        return sse(piece.wire())

    reader = ReplyReader(routed.chunks)
    async for text in reader.texts():
        yield event(CompletionChoice(text=text))
    done = reader.result()
    usage = UsageOut.of(done.usage) if include_usage else None
    yield event(CompletionChoice(text="", finish_reason=done.finish_reason.value), usage)
    yield sse("[DONE]")
