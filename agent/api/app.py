"""The FastAPI application: one app, routes grouped by the API they imitate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from agent import __version__
from agent.api import errors, legacy, ollama, openai, ops

if TYPE_CHECKING:
    from agent.service import Service


def create_app(service: Service) -> FastAPI:
    """The app serves whatever state `service` is in; the service owns start and stop."""
    app = FastAPI(title="edge-agent", version=__version__)
    app.state.service = service
    errors.install(app)
    for module in (ops, openai, ollama, legacy):
        app.include_router(module.router)
    return app
