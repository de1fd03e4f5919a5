"""The Router: the one place interfaces hand requests to, and the one that picks a backend.

Routes: `local_only` never leaves the gateway; `prefer_local` (default) goes to the cloud
only when the ResourceGovernor reports a shortage or the local queue is full;
`prefer_cloud` uses the cloud while an endpoint is available; `cloud_only` never runs
locally. Every reply says which backend served it and why.

Cancellation is by request id for every backend: the router keeps each request from submit
to its final chunk, with what stops it where it runs (a local engine's queue or batch, a
cloud endpoint's first-token wait or stream).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from functools import partial

import structlog

from agent.engine.backend import LocalBackend, Stream
from agent.engine.types import (
    ChatRequest,
    Chunk,
    EngineError,
    ErrorCode,
    FinishReason,
    Usage,
)
from agent.log import prompt_fields, prompts_logged
from agent.models.profiles import ModelNames, apply_profile
from agent.routing.cloud_pool import CloudPool
from agent.routing.governor import ResourceGovernor
from agent.routing.port import Routed
from agent.settings import SecuritySettings
from agent.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class _InFlight:
    """A request between submit and its final chunk."""

    cancelled: bool = False
    stop: Callable[[], object] | None = None  # None while no backend holds it yet


class Router:
    def __init__(
        self,
        local: LocalBackend,
        names: ModelNames,
        cloud: CloudPool,
        governor: ResourceGovernor,
        metrics: Metrics,
        default_route: str,
        limits: SecuritySettings,
    ) -> None:
        self.local = local
        self.names = names
        self.cloud = cloud
        self.governor = governor
        self.metrics = metrics
        self.default_route = default_route
        self.limits = limits
        self.draining = False  # shutting down: new requests are refused
        self.measuring_local = False  # a first start calibrates the local model: it is not ready
        self._inflight: dict[str, _InFlight] = {}

    def prepare(self, request: ChatRequest) -> ChatRequest:
        """Resolve the model name (404 if unknown) and apply its profile."""
        return apply_profile(request, self.names.resolve(request.model))

    async def submit(self, request: ChatRequest) -> Routed:
        if self.draining:
            raise EngineError(
                ErrorCode.SERVER_DRAINING,
                "The gateway is shutting down; retry on another",
                retry_after_s=self.local.load().retry_after_s,
            )
        self._check(request)
        prepared = self.prepare(request)
        entry = self._inflight[request.request_id] = _InFlight()
        try:
            routed = await self._route(entry, prepared, request.route or self.default_route)
        except BaseException:
            self._forget(request.request_id, entry)
            raise
        if entry.cancelled and entry.stop is not None:  # cancelled while being admitted
            entry.stop()
        return routed

    def _check(self, request: ChatRequest) -> None:
        """Caps on what one request may ask for, whichever interface it came through."""
        limits = self.limits
        if len(request.messages) > limits.max_messages:
            raise EngineError(
                ErrorCode.TOO_MANY_MESSAGES,
                f"{len(request.messages)} messages exceed max_messages ({limits.max_messages})",
                param="messages",
            )
        wanted, cap = request.sampling.max_tokens, limits.max_completion_tokens
        if wanted is not None and cap is not None and wanted > cap:
            raise EngineError(
                ErrorCode.MAX_TOKENS_TOO_LARGE,
                f"max_tokens {wanted} exceeds max_completion_tokens ({cap})",
                param="max_tokens",
            )
        try:  # JSON can carry a lone surrogate (`\ud800`) in any string; nothing downstream
            # (template, tokenizer, upstream) can encode it
            json.dumps(asdict(request), ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                "A string in the request holds a lone UTF-16 surrogate, which is not Unicode text",
            ) from None

    def swap_local(self, new: LocalBackend, names: ModelNames) -> Coroutine[None, None, None]:
        """The hot swap of the local model: new requests go to `new` (under `names`) at
        once. Await the result to retire the old one: it finishes what was admitted to it
        (or is still being admitted), then is unloaded."""
        old, self.local, self.names = self.local, new, names
        return self._retire(old)

    async def _retire(self, old: LocalBackend) -> None:
        while not old.idle:
            await asyncio.sleep(0.05)
        await old.stop()

    async def _route(self, entry: _InFlight, request: ChatRequest, route: str) -> Routed:
        if route == "local_only":
            return await self._local(entry, request, "local_only")
        if route == "cloud_only":
            return await self._cloud(entry, request, "cloud_only")
        if route == "prefer_cloud" and self.cloud.available():
            try:
                return await self._cloud(entry, request, "prefer_cloud")
            except EngineError:
                return await self._local(entry, request, "cloud_unavailable")
        shortages = self.governor.shortages(self._kv_bytes(request))
        if shortages and self.cloud.available():
            try:
                return await self._fallback(entry, request, shortages)
            except EngineError:
                pass  # the cloud failed too: local still takes it if its queue has room
        reason = "local_" + "_".join(shortages) if shortages else "local"
        try:
            return await self._local(entry, request, reason)
        except EngineError as error:
            if error.code != ErrorCode.SERVER_BUSY or not self.cloud.available():
                raise
            return await self._fallback(entry, request, ["queue_full"])

    def cancel(self, request_id: str) -> bool:
        """End a request wherever it is: queued or running on a local engine (the one it
        was admitted to, even if a model switch replaced it since), waiting for a cloud
        endpoint's first token, or streaming from one. True if it was in flight."""
        entry = self._inflight.get(request_id)
        if entry is None:
            return False
        entry.cancelled = True
        if entry.stop is not None:  # else submit stops it once a backend has it
            entry.stop()
        return True

    def _forget(self, request_id: str, entry: _InFlight) -> None:
        if self._inflight.get(request_id) is entry:
            del self._inflight[request_id]

    async def _fallback(self, entry: _InFlight, request: ChatRequest, reasons: list[str]) -> Routed:
        routed = await self._cloud(entry, request, "fallback:" + ",".join(reasons))
        for reason in reasons:
            self.metrics.fallbacks.labels(reason).inc()
        return routed

    async def _local(self, entry: _InFlight, request: ChatRequest, reason: str) -> Routed:
        if self.measuring_local:  # as while it loads: its figures must be its own
            raise EngineError(
                ErrorCode.MODEL_NOT_READY,
                "The model is being measured before it serves (first start)",
                retry_after_s=1,
            )
        engine = self.local
        stream = await engine.submit(request)
        entry.stop = partial(engine.cancel, request.request_id)
        return self._routed(entry, request, stream, reason)

    async def _cloud(self, entry: _InFlight, request: ChatRequest, reason: str) -> Routed:
        if not self.cloud.configured:  # a request this gateway can never serve: not a 503
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                "route cloud_only: this gateway has no cloud endpoint configured",
                param="route",
            )
        waiting = asyncio.ensure_future(self.cloud.submit(replace(request, model=self.names.model)))
        entry.stop = waiting.cancel
        try:
            stream = await waiting
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not entry.cancelled or (current is not None and current.cancelling()):
                raise
            unserved = Stream("cloud", "cloud", _just(_cancelled(0)))  # no endpoint answered
            return self._routed(entry, request, unserved, reason)
        read_apart = Stream(stream.backend, stream.provider, _read_apart(entry, stream.chunks))
        return self._routed(entry, request, read_apart, reason)

    def _kv_bytes(self, request: ChatRequest) -> int:
        """The KV cache this request would need locally (a prompt token is ~4 characters)."""
        load = self.local.load()
        characters = len(request.prompt or "") + sum(len(m.content) for m in request.messages)
        tokens = characters // 4 + (request.sampling.max_tokens or load.default_max_tokens)
        return tokens * load.kv_bytes_per_token

    def _routed(
        self, entry: _InFlight, request: ChatRequest, stream: Stream, reason: str
    ) -> Routed:
        observed = self._observe(entry, request, stream.backend, reason, stream.chunks)
        return Routed(backend=stream.backend, provider=stream.provider, reason=reason,
                      chunks=observed)  # fmt: skip

    async def _observe(
        self,
        entry: _InFlight,
        request: ChatRequest,
        backend: str,
        reason: str,
        chunks: AsyncGenerator[Chunk, None],
    ) -> AsyncGenerator[Chunk, None]:
        """One log line per finished request; its text only when `log_prompts` is on.
        Closing this early (a client gone) closes the backend's stream, which cancels it."""
        keep_text = prompts_logged()
        parts: list[str] = []
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    if keep_text:
                        parts.append(chunk.text)
                    if chunk.finish_reason is None:
                        yield chunk
                        continue
                    self._finished(request, backend, reason, chunk, "".join(parts))
                    yield chunk  # consumers stop reading at the final chunk: log before it
        finally:
            self._forget(request.request_id, entry)

    def _finished(
        self, request: ChatRequest, backend: str, reason: str, final: Chunk, text: str
    ) -> None:
        usage, timings = final.usage, final.timings
        if backend == self.local.name and timings is not None:
            self.governor.observe(timings.total_s)
        self.metrics.observe(backend, final)
        log.info(
            "request finished",
            request_id=request.request_id,
            model=request.model or self.names.default,
            backend=backend,
            route_reason=reason,
            finish_reason=(final.finish_reason or FinishReason.STOP).value,
            error=final.error,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            queue_s=round(timings.queue_s, 4) if timings else None,
            ttft_s=round(timings.time_to_first_token_s, 4) if timings else None,
            decode_tokens_per_s=round(timings.decode_tokens_per_s, 1) if timings else None,
            **prompt_fields(
                prompt=request.prompt or [m.content for m in request.messages],
                completion=text,
            ),
        )


def _read_apart(
    entry: _InFlight, chunks: AsyncGenerator[Chunk, None]
) -> AsyncGenerator[Chunk, None]:
    """A cloud reply read by a task of its own, started now: a cancel stops that task,
    which closes the upstream stream, while the interface waits for the next chunk."""
    queue: asyncio.Queue[Chunk | None] = asyncio.Queue()

    async def pump() -> None:
        async for chunk in chunks:
            queue.put_nowait(chunk)

    reader = asyncio.ensure_future(pump())
    reader.add_done_callback(lambda _: queue.put_nowait(None))  # even if cancelled unstarted
    entry.stop = reader.cancel
    return _read_queue(entry, queue, reader)


async def _read_queue(
    entry: _InFlight, queue: asyncio.Queue[Chunk | None], reader: asyncio.Future[None]
) -> AsyncGenerator[Chunk, None]:
    texts = 0
    try:
        while (chunk := await queue.get()) is not None:
            yield chunk
            if chunk.finish_reason is not None:
                return
            texts += bool(chunk.text)  # streamed pieces: about one token each
        if entry.cancelled:
            yield _cancelled(texts)
        else:  # no final chunk, which the backends send even when they fail
            error = f"the cloud reply ended early ({reader.exception()!r})"
            yield Chunk(finish_reason=FinishReason.ERROR, error=error)
    finally:
        reader.cancel()
        await asyncio.wait({reader})


def _cancelled(completion_tokens: int) -> Chunk:
    return Chunk(finish_reason=FinishReason.CANCELLED, usage=Usage(0, completion_tokens))


async def _just(chunk: Chunk) -> AsyncGenerator[Chunk, None]:
    yield chunk
