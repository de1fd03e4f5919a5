"""The Router: the one place interfaces hand requests to, and the one that picks a backend.

Today every request is served locally; the resource governor and cloud backends plug in
here (routing issue) without any interface changing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from agent.engine.local import LocalEngine
from agent.engine.types import ChatRequest, Chunk
from agent.log import prompt_fields, prompts_logged
from agent.models.profiles import ModelNames, apply_profile

log = structlog.get_logger(__name__)


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
        return Routed(
            backend=self.local.name,
            provider=self.local.provider,
            chunks=self._observe(prepared, self.local.name, chunks),
        )

    def cancel(self, request_id: str) -> bool:
        return self.local.cancel(request_id)

    async def _observe(
        self, request: ChatRequest, backend: str, chunks: AsyncIterator[Chunk]
    ) -> AsyncIterator[Chunk]:
        """One log line per finished request; its text only when `log_prompts` is on."""
        keep_text = prompts_logged()
        parts: list[str] = []
        async for chunk in chunks:
            if keep_text:
                parts.append(chunk.text)
            if chunk.finish_reason is None:
                yield chunk
                continue
            usage, timings = chunk.usage, chunk.timings
            log.info(
                "request finished",
                request_id=request.request_id,
                model=request.model,
                backend=backend,
                finish_reason=chunk.finish_reason.value,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                ttft_s=round(timings.time_to_first_token_s, 4) if timings else None,
                decode_tokens_per_s=round(timings.decode_tokens_per_s, 1) if timings else None,
                **prompt_fields(
                    prompt=request.prompt or [m.content for m in request.messages],
                    completion="".join(parts),
                ),
            )
            yield chunk  # consumers stop reading at the final chunk: log before it
