"""The door in front of every route (pure ASGI, so streaming replies pass untouched):
API keys, the request-size cap, and per-client rate and concurrency limits on the routes
that generate. Clients are told apart by API key when keys are on, else by address."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from agent.api.errors import error_for_path
from agent.engine.types import EngineError, ErrorCode
from agent.security.api_keys import ApiKeys
from agent.security.rate_limit import ConcurrencyLimiter, RateLimiter, retry_after

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/ready"})
# The routes that cost the gateway compute (or, for /api/pull, a download): limited per client.
GENERATING = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/pull",
        "/reasoning",
    }
)


class Guard:
    def __init__(
        self,
        app: App,
        keys: ApiKeys,
        *,
        metrics_open: bool,
        max_request_bytes: int,
        rate: RateLimiter,
        streams: ConcurrencyLimiter,
    ) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = OPEN_PATHS | ({"/metrics"} if metrics_open else set())
        self.max_request_bytes = max_request_bytes
        self.rate = rate
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        authorization = headers.get("authorization")
        if (
            self.keys.enabled
            and path not in self.open_paths
            and not self.keys.allows(authorization)
        ):
            refusal = EngineError(
                ErrorCode.INVALID_API_KEY,
                "Invalid or missing API key: send Authorization: Bearer KEY",
            )
            await self._refuse(scope, receive, send, refusal, {"WWW-Authenticate": "Bearer"})
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_request_bytes:
            await self._too_large(scope, receive, send)
            return
        if path not in GENERATING or scope["method"] != "POST":
            await self._forward(scope, receive, send)
            return
        client = self._client(scope, authorization)
        wait = self.rate.take(client)
        if wait > 0:
            refusal = EngineError(
                ErrorCode.RATE_LIMITED,
                f"Rate limit: {self.rate.per_minute:g} requests per minute",
                retry_after_s=retry_after(wait),
            )
            await self._refuse(scope, receive, send, refusal)
            return
        if not self.streams.enter(client):
            refusal = EngineError(
                ErrorCode.TOO_MANY_CONCURRENT_REQUESTS,
                f"At most {self.streams.limit} requests at a time per client",
                retry_after_s=1,
            )
            await self._refuse(scope, receive, send, refusal)
            return
        try:
            await self._forward(scope, receive, send)
        finally:
            self.streams.leave(client)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, counting body bytes that arrive without a length. Past the
        cap the app is told the client left, its reply is dropped, and the client gets 413."""
        received = 0
        too_large = False
        started = False

        async def counted() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_request_bytes:
                too_large = True
                return {"type": "http.disconnect"}
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = EngineError(
            ErrorCode.REQUEST_TOO_LARGE,
            f"The request body exceeds max_request_bytes ({self.max_request_bytes} bytes)",
        )
        await self._refuse(scope, receive, send, refusal)

    def _client(self, scope: Scope, authorization: str | None) -> str:
        if self.keys.enabled and authorization:
            return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
        host = (scope.get("client") or ("unknown", 0))[0]
        return f"addr:{host}"

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        refusal: EngineError,
        headers: dict[str, str] | None = None,
    ) -> None:
        response = error_for_path(scope["path"], refusal, headers)
        await response(scope, receive, send)
