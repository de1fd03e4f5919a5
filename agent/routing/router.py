"""The Router: the one place interfaces hand requests to, and the one that picks a backend.

Routes: `local_only` never leaves the gateway; `prefer_local` (default) goes to the cloud
only when the ResourceGovernor reports a shortage or the local queue is full;
`prefer_cloud` uses the cloud while an endpoint is available; `cloud_only` never runs
locally. Every reply says which backend served it and why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import structlog

from agent.engine.local import LocalEngine
from agent.engine.types import ChatRequest, Chunk, EngineError, server_busy
from agent.log import prompt_fields, prompts_logged
from agent.models.profiles import ModelNames, apply_profile
from agent.routing.cloud_pool import CloudPool
from agent.routing.governor import ResourceGovernor
from agent.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RequestLimits:
    """Caps on what one request may ask for, whichever interface it came through."""

    max_messages: int = 256
    max_completion_tokens: int | None = None  # None: the context decides

    def check(self, request: ChatRequest) -> None:
        if len(request.messages) > self.max_messages:
            raise EngineError(
                "too_many_messages",
                f"{len(request.messages)} messages exceed max_messages ({self.max_messages})",
                param="messages",
            )
        wanted = request.sampling.max_tokens
        cap = self.max_completion_tokens
        if wanted is not None and cap is not None and wanted > cap:
            raise EngineError(
                "max_tokens_too_large",
                f"max_tokens {wanted} exceeds max_completion_tokens ({self.max_completion_tokens})",
                param="max_tokens",
            )


@dataclass(frozen=True)
class Routed:
    """An admitted request: which backend serves it, why, and its stream of chunks."""

    backend: str
    provider: str
    reason: str
    chunks: AsyncIterator[Chunk]


class Router:
    def __init__(
        self,
        local: LocalEngine,
        names: ModelNames,
        cloud: CloudPool,
        governor: ResourceGovernor,
        metrics: Metrics,
        default_route: str = "prefer_local",
        limits: RequestLimits | None = None,
    ) -> None:
        self.local = local
        self.names = names
        self.cloud = cloud
        self.governor = governor
        self.metrics = metrics
        self.default_route = default_route
        self.limits = limits or RequestLimits()
        self.draining = False  # shutting down: new requests are refused
        self.previous: LocalEngine | None = None  # a replaced model finishing its requests

    def prepare(self, request: ChatRequest) -> ChatRequest:
        """Resolve the model name (404 if unknown) and apply its profile."""
        return apply_profile(request, self.names.resolve(request.model))

    async def submit(self, request: ChatRequest) -> Routed:
        if self.draining:
            raise EngineError(
                "server_draining", "The gateway is shutting down; retry on another",
                status=503, retry_after_s=self.local.limits.retry_after_s,
            )  # fmt: skip
        self.limits.check(request)
        prepared = self.prepare(request)
        route = request.route or self.default_route
        if route == "local_only":
            return await self._local(prepared, "local_only")
        if route == "cloud_only":
            return await self._cloud(prepared, "cloud_only")
        if route == "prefer_cloud" and self.cloud.available():
            try:
                return await self._cloud(prepared, "prefer_cloud")
            except EngineError:
                return await self._local(prepared, "cloud_unavailable")
        shortages = self.governor.shortages(self._kv_bytes(prepared))
        if shortages and self.cloud.available():
            try:
                return await self._fallback(prepared, shortages)
            except EngineError:
                pass  # the cloud failed too: local still takes it if its queue has room
        reason = "local_" + "_".join(shortages) if shortages else "local"
        try:
            return await self._local(prepared, reason)
        except EngineError as error:
            if error.code != "server_busy" or not self.cloud.available():
                raise
            return await self._fallback(prepared, ["queue_full"])

    def cancel(self, request_id: str) -> bool:
        previous = self.previous
        return self.local.cancel(request_id) or (
            previous is not None and previous.cancel(request_id)
        )

    async def _fallback(self, request: ChatRequest, reasons: list[str]) -> Routed:
        routed = await self._cloud(request, "fallback:" + ",".join(reasons))
        for reason in reasons:
            self.metrics.fallbacks.labels(reason).inc()
        return routed

    async def _local(self, request: ChatRequest, reason: str) -> Routed:
        chunks = await self.local.submit(request)
        return self._routed(request, self.local.name, self.local.provider, reason, chunks)

    async def _cloud(self, request: ChatRequest, reason: str) -> Routed:
        if not self.cloud.configured:
            raise server_busy("No cloud endpoint is configured", self.cloud.retry_after_s)
        name, chunks = await self.cloud.submit(replace(request, model=self.names.model))
        return self._routed(request, name, "cloud", reason, chunks)

    def _kv_bytes(self, request: ChatRequest) -> int:
        """The KV cache this request would need locally (a prompt token is ~4 characters)."""
        characters = len(request.prompt or "") + sum(len(m.content) for m in request.messages)
        tokens = characters // 4 + (
            request.sampling.max_tokens or self.local.limits.default_max_tokens
        )
        return tokens * self.local.info.kv_bytes_per_token

    def _routed(
        self,
        request: ChatRequest,
        backend: str,
        provider: str,
        reason: str,
        chunks: AsyncIterator[Chunk],
    ) -> Routed:
        observed = self._observe(request, backend, reason, chunks)
        return Routed(backend=backend, provider=provider, reason=reason, chunks=observed)

    async def _observe(
        self, request: ChatRequest, backend: str, reason: str, chunks: AsyncIterator[Chunk]
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
            if backend == self.local.name and timings is not None:
                self.governor.observe(timings.total_s)
            self.metrics.observe(backend, chunk)
            log.info(
                "request finished",
                request_id=request.request_id,
                model=request.model,
                backend=backend,
                route_reason=reason,
                finish_reason=chunk.finish_reason.value,
                error=chunk.error,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                queue_s=round(timings.queue_s, 4) if timings else None,
                ttft_s=round(timings.time_to_first_token_s, 4) if timings else None,
                decode_tokens_per_s=round(timings.decode_tokens_per_s, 1) if timings else None,
                **prompt_fields(
                    prompt=request.prompt or [m.content for m in request.messages],
                    completion="".join(parts),
                ),
            )
            yield chunk  # consumers stop reading at the final chunk: log before it
