"""The FastAPI application: one app, routes grouped by the API they imitate, all of them
served through the gateway port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from agent import __version__
from agent.api import embeddings, errors, legacy, ollama, openai, ops, responses, tokens
from agent.api.guard import Guard
from agent.api.json_body import JsonBody
from agent.routing.port import Gateway
from agent.security.api_keys import ApiKeys
from agent.security.rate_limit import ConcurrencyLimiter, RateLimiter
from agent.settings import SecuritySettings


def create_app(gateway: Gateway, security: SecuritySettings) -> FastAPI:
    """The app serves whatever state the gateway is in; the service owns start and stop."""
    app = FastAPI(title="edge-agent", version=__version__)
    app.state.gateway = gateway
    app.openapi = _without_422(app.openapi)  # type: ignore[method-assign]
    errors.install(app)
    for module in (ops, openai, responses, ollama, legacy, tokens, embeddings):
        app.include_router(module.router)
    app.add_middleware(JsonBody)
    app.add_middleware(
        Guard,
        keys=ApiKeys.load([k.get_secret_value() for k in security.api_keys], security.api_key_file),
        metrics_open=not security.metrics_require_key,
        max_request_bytes=security.max_request_bytes,
        rate=RateLimiter(security.rate_limit_per_minute, security.rate_limit_burst),
        streams=ConcurrencyLimiter(security.max_streams_per_client),
    )
    return app


def _without_422(build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """FastAPI documents 422 on every route with a body, but errors.install answers an
    invalid request 400 (declared on each route with its error body): drop the 422s and the
    schemas only they used, so the document says what the daemon does."""

    def openapi() -> dict[str, Any]:
        document = build()
        for operations in document["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return document

    return openapi
