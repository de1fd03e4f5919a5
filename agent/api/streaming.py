"""Shared by the HTTP APIs: the route header in, the backend headers out, and reading a
routed reply to the end (or streaming it) with cancel on client disconnect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fastapi import Request

from agent.engine.types import ROUTES, ChatRequest, Chunk, EngineError, FinishReason, Usage
from agent.routing.router import Routed


@dataclass(frozen=True)
class Completed:
    text: str
    final: Chunk

    @property
    def usage(self) -> Usage:
        return self.final.usage or Usage(0, 0)


async def collect(request: Request, routed: Routed) -> Completed:
    """Read the whole reply; a client that disconnects first cancels the generation."""
    reader = asyncio.ensure_future(_read_all(routed.chunks))
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({reader, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not reader.done():
            reader.cancel()
    if reader.cancelled():
        raise asyncio.CancelledError("client disconnected")
    completed = reader.result()
    if completed.final.finish_reason == FinishReason.ERROR:
        raise EngineError("engine_error", f"Generation failed: {completed.final.error}", status=500)
    return completed


async def _read_all(chunks: AsyncIterator[Chunk]) -> Completed:
    parts: list[str] = []
    async for chunk in chunks:
        parts.append(chunk.text)
        if chunk.finish_reason is not None:
            return Completed("".join(parts), chunk)
    raise EngineError("engine_error", "The backend ended the reply without a finish", status=500)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# OpenAPI: what a route may answer besides JSON (so clients and fuzzers know).
SSE_OR_JSON = {200: {"content": {"application/json": {}, "text/event-stream": {}}}}
NDJSON_OR_JSON = {200: {"content": {"application/json": {}, "application/x-ndjson": {}}}}


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def ndjson(payload: dict) -> str:
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
            "invalid_request", f"X-Edge-Route must be one of {', '.join(ROUTES)}", param="route"
        )
    return replace(internal, route=header)
