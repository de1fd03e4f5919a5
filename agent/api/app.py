"""The FastAPI application: one app, routes grouped by the API they imitate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from agent import __version__
from agent.api import errors, legacy, ollama, openai, ops
from agent.api.guard import Guard
from agent.api.json_body import JsonBody
from agent.security.api_keys import ApiKeys
from agent.security.rate_limit import ConcurrencyLimiter, RateLimiter

if TYPE_CHECKING:
    from agent.service import Service


def create_app(service: Service) -> FastAPI:
    """The app serves whatever state `service` is in; the service owns start and stop."""
    app = FastAPI(title="edge-agent", version=__version__)
    app.state.service = service
    errors.install(app)
    for module in (ops, openai, ollama, legacy):
        app.include_router(module.router)
    settings = service.settings
    app.add_middleware(JsonBody)
    app.add_middleware(
        Guard,
        keys=ApiKeys.load([k.get_secret_value() for k in settings.api_keys], settings.api_key_file),
        metrics_open=not settings.metrics_require_key,
        max_request_bytes=settings.max_request_bytes,
        rate=RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst),
        streams=ConcurrencyLimiter(settings.max_streams_per_client),
    )
    return app
