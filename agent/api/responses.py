"""The OpenAI Responses API: `POST /v1/responses`, whole or as typed SSE events, with
`previous_response_id` continuing a conversation the gateway keeps in memory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agent.api.deps import GatewayDep
from agent.api.errors import GENERATING, openai_errors
from agent.api.streaming import SSE_OR_JSON, collect, headers, routed_request
from agent.engine.reply import Reply, ReplyReader
from agent.engine.types import EngineError, ErrorCode, Message
from agent.protocol.responses import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ErrorEvent,
    Event,
    ItemEvent,
    LifecycleEvent,
    OutputItem,
    OutputText,
    PartEvent,
    ResponseObject,
    ResponsesRequest,
    TextDeltaEvent,
    TextDoneEvent,
    call_item,
    message_item,
    output_items,
    reply_message,
)
from agent.routing.port import Gateway, Routed

router = APIRouter(prefix="/v1")


@router.post(
    "/responses",
    responses={**SSE_OR_JSON, **openai_errors(GENERATING)},
    response_model=ResponseObject,
)
async def create_response(
    body: ResponsesRequest, request: Request, gateway: GatewayDep
) -> JSONResponse | StreamingResponse:
    history = _history(gateway, body.previous_response_id)
    routed = await gateway.submit(routed_request(body.to_internal(history), request))
    started = ResponseObject.started(body, body.model or gateway.names.default)
    started = started.model_copy(update={"backend": routed.backend, "route_reason": routed.reason})

    def remember(reply: Reply) -> None:
        if body.store:
            conversation = (*history, *body.turn(), reply_message(reply))
            gateway.conversations.remember(started.id, conversation)

    if body.stream:
        events = _events(routed, started, remember)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers(routed))
    done = await collect(request, routed)
    remember(done)
    return JSONResponse(started.finished(done, output_items(done)).wire(), headers=headers(routed))


def _history(gateway: Gateway, previous: str | None) -> tuple[Message, ...]:
    if previous is None:
        return ()
    found = gateway.conversations.recall(previous)
    if found is None:
        raise EngineError(
            ErrorCode.NOT_FOUND,
            f"Previous response with id {previous!r} not found (responses are kept in memory, "
            f"the latest {gateway.conversations.limit})",
            param="previous_response_id",
        )
    return found


class _Numbered:
    """Writes events as SSE (`event:` and `data:` lines), numbering them in order."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, kind: type[Event], type: str, **fields: Any) -> str:
        event = kind(type=type, sequence_number=self.sent, **fields)
        self.sent += 1
        return f"event: {type}\ndata: {json.dumps(event.wire(), separators=(',', ':'))}\n\n"


async def _events(
    routed: Routed, started: ResponseObject, remember: Callable[[Reply], None]
) -> AsyncIterator[str]:
    """response.created, .in_progress; the message's item, part, text deltas and their
    done events; each call's item and arguments; then response.completed (or an error
    event and response.failed)."""
    sse = _Numbered()
    yield sse(LifecycleEvent, "response.created", response=started)
    yield sse(LifecycleEvent, "response.in_progress", response=started)
    reader = ReplyReader(routed.chunks)
    message = message_item("", status="in_progress")
    at = {"item_id": message.id, "output_index": 0}
    output: list[OutputItem] = []
    text = ""

    def open_message() -> Iterator[str]:
        if not output:
            output.append(message.model_copy(update={"content": []}))
            yield sse(ItemEvent, "response.output_item.added", output_index=0, item=output[0])
            yield sse(PartEvent, "response.content_part.added", **at, part=OutputText(text=""))

    async for piece in reader.texts():
        for line in open_message():
            yield line
        text += piece
        yield sse(TextDeltaEvent, "response.output_text.delta", **at, delta=piece)
    done = reader.result()
    if output or not done.tool_calls:
        for line in open_message():
            yield line
        part = OutputText(text=text)
        output[0] = message.model_copy(update={"status": "completed", "content": [part]})
        yield sse(TextDoneEvent, "response.output_text.done", **at, text=text)
        yield sse(PartEvent, "response.content_part.done", **at, part=part)
        yield sse(ItemEvent, "response.output_item.done", output_index=0, item=output[0])
    for call in done.tool_calls:
        item = call_item(call)
        where = {"item_id": item.id, "output_index": len(output)}
        output.append(item)
        added = item.model_copy(update={"status": "in_progress", "arguments": ""})
        yield sse(ItemEvent, "response.output_item.added", output_index=len(output) - 1, item=added)
        yield sse(ArgumentsDeltaEvent, "response.function_call_arguments.delta", **where,
                  delta=call.arguments)  # fmt: skip
        yield sse(ArgumentsDoneEvent, "response.function_call_arguments.done", **where,
                  name=call.name, arguments=call.arguments)  # fmt: skip
        yield sse(ItemEvent, "response.output_item.done", output_index=len(output) - 1, item=item)
    final = started.finished(done, output)
    if final.status == "failed":
        yield sse(ErrorEvent, "error", code=ErrorCode.ENGINE_ERROR, message=done.error or "")
        yield sse(LifecycleEvent, "response.failed", response=final)
        return
    remember(done)
    yield sse(LifecycleEvent, "response.completed", response=final)
