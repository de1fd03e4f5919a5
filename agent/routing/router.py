"""The Router: the one place interfaces hand requests to, and the one that picks a backend.

Today every request is served locally; the resource governor and cloud backends plug in
here (routing issue) without any interface changing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent.engine.local import LocalEngine
from agent.engine.types import ChatRequest, Chunk
from agent.models.profiles import ModelNames, apply_profile


@dataclass(frozen=True)
class Routed:
    """An admitted request: which backend serves it, and its stream of chunks."""

    backend: str
    provider: str
    chunks: AsyncIterator[Chunk]


class Router:
    def __init__(self, local: LocalEngine, names: ModelNames) -> None:
        self.local = local
        self.names = names

    def prepare(self, request: ChatRequest) -> ChatRequest:
        """Resolve the model name (404 if unknown) and apply its profile."""
        return apply_profile(request, self.names.resolve(request.model))

    async def submit(self, request: ChatRequest) -> Routed:
        prepared = self.prepare(request)
        chunks = await self.local.submit(prepared)
        return Routed(backend=self.local.name, provider=self.local.provider, chunks=chunks)

    def cancel(self, request_id: str) -> bool:
        return self.local.cancel(request_id)
