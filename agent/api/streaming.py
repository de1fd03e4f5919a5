"""Shared by the HTTP APIs: the route header in, the backend headers out, and reading a
routed reply to the end with cancel on client disconnect."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from fastapi import Request

from agent.engine.reply import Reply, ReplyReader
from agent.engine.types import ROUTES, ChatRequest, EngineError, ErrorCode, FinishReason
from agent.routing.port import Routed


async def collect(request: Request, routed: Routed) -> Reply:
    """Read the whole reply; a client that disconnects first cancels the generation."""
    reader = asyncio.ensure_future(ReplyReader(routed.chunks).read())
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({reader, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not reader.done():
            reader.cancel()
    if reader.cancelled():
        raise asyncio.CancelledError("client disconnected")
    reply = reader.result()
    if reply.finish_reason == FinishReason.ERROR:
        raise EngineError(ErrorCode.ENGINE_ERROR, f"Generation failed: {reply.error}")
    return reply


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# OpenAPI: what a route may answer besides JSON (so clients and fuzzers know). The schema of
# an event stream describes one event (OpenAPI 3.1); each event's data is one JSON chunk of
# the route's shape (or OpenAI's closing `[DONE]`), each NDJSON line one JSON object.
_SSE = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "description": "the event's type (Responses API)"},
        "data": {"type": "string", "description": "one JSON chunk, or `[DONE]`"},
    },
}
_NDJSON = {"type": "string", "description": "One JSON object per line"}
SSE_OR_JSON: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/event-stream": {"schema": _SSE}}}
}
NDJSON_OR_JSON: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "application/x-ndjson": {"schema": _NDJSON}}}
}


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def ndjson(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":")) + "\n"


def headers(routed: Routed) -> dict[str, str]:
    return {
        "X-Edge-Backend": routed.backend,
        "X-Edge-Provider": routed.provider,
        "X-Edge-Route-Reason": routed.reason,
    }


def routed_request(internal: ChatRequest, request: Request) -> ChatRequest:
    """The X-Edge-Route header, when sent, overrides the body's `route`."""
    header = request.headers.get("x-edge-route")
    if header is None:
        return internal
    if header not in ROUTES:
        raise EngineError(
            ErrorCode.INVALID_REQUEST,
            f"X-Edge-Route must be one of {', '.join(ROUTES)}",
            param="route",
        )
    return replace(internal, route=header)
