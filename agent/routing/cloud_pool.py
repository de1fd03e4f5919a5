"""The ordered cloud endpoints with their breakers and health probes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator

import structlog

from agent.engine.backend import Stream
from agent.engine.cloud import upstream
from agent.engine.types import ChatRequest, Chunk, FinishReason, server_busy
from agent.routing.breaker import Breaker
from agent.settings import RoutingSettings

log = structlog.get_logger(__name__)


class CloudPool:
    """The cloud as one backend: each request goes to the first endpoint that answers."""

    name = "cloud"
    provider = "cloud"

    def __init__(self, settings: RoutingSettings, retry_after_s: int) -> None:
        self.members = [
            (upstream(e), Breaker(settings.breaker_failures, settings.breaker_cooldown_s))
            for e in settings.endpoints
        ]
        self.probe_interval_s = settings.probe_interval_s
        self.retry_after_s = retry_after_s
        self._probing: asyncio.Task[None] | None = None
        self._in_flight: Counter[str] = Counter()  # requests streaming, by endpoint

    @property
    def configured(self) -> bool:
        return bool(self.members)

    def available(self) -> bool:
        return any(breaker.allows() for _, breaker in self.members)

    def states(self) -> dict[str, str]:
        return {backend.name: breaker.state for backend, breaker in self.members}

    def start(self) -> None:
        if self.members:
            self._probing = asyncio.ensure_future(self._probe_forever())

    async def stop(self) -> None:
        if self._probing is not None:
            self._probing.cancel()

    async def submit(self, request: ChatRequest) -> Stream:
        """The first endpoint, in priority order, that produces a first token in time.
        Retrying elsewhere is only possible before anything was sent to the client."""
        errors = []
        for backend, breaker in self.members:
            if not breaker.allows():
                continue
            self._in_flight[backend.name] += 1
            stream = (await backend.submit(request)).chunks
            try:  # the connect timeout is httpx's; this bounds the wait for a first token
                first = await asyncio.wait_for(
                    anext(stream), timeout=backend.endpoint.first_token_timeout_s
                )
            except Exception as exc:  # refused, timed out, HTTP error: try the next one
                reason = "no first token in time" if isinstance(exc, TimeoutError) else str(exc)
                log.warning("cloud endpoint failed", endpoint=backend.name, error=reason)
                errors.append(f"{backend.name}: {reason}")
                breaker.failure()
                self._in_flight[backend.name] -= 1
                await stream.aclose()
                continue
            breaker.success()
            return Stream(
                backend.name, self.provider, self._rest(first, stream, breaker, backend.name)
            )
        detail = "; ".join(errors) or "every endpoint's breaker is open"
        raise server_busy(
            f"No cloud endpoint could take the request ({detail})", self.retry_after_s
        )

    async def _rest(
        self, first: Chunk, stream: AsyncGenerator[Chunk, None], breaker: Breaker, name: str
    ) -> AsyncGenerator[Chunk, None]:
        try:
            yield first
            if first.finish_reason is None:
                async for chunk in stream:
                    yield chunk
        except Exception as exc:
            breaker.failure()
            log.warning("cloud endpoint failed mid-reply", endpoint=name, error=str(exc))
            yield Chunk(finish_reason=FinishReason.ERROR, error=f"{name} failed mid-reply: {exc}")
        finally:
            self._in_flight[name] -= 1
            await stream.aclose()

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            for backend, breaker in self.members:
                if breaker.state == "open" and not breaker.allows():
                    continue  # still cooling down
                if self._in_flight[backend.name]:
                    # A reply in flight proves the endpoint answers, and a probe would end
                    # it on llama.cpp's Python server (it interrupts a running reply when
                    # another request arrives).
                    continue
                try:
                    await asyncio.wait_for(backend.probe(), backend.endpoint.connect_timeout_s + 2)
                except Exception:
                    breaker.failure()
                else:
                    breaker.success()
