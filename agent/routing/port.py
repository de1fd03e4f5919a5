"""The port: all that the interfaces (HTTP routes, the MQTT bridge) may ask of the daemon.

Interfaces depend on this protocol, never on the composition root: the service implements
it, the FastAPI routes receive it through `Depends`, the bridge through its constructor.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from agent.engine.types import ChatRequest, Chunk
from agent.models.profiles import ModelNames


@dataclass(frozen=True)
class Routed:
    """An admitted request: which backend serves it, why, and its stream of chunks."""

    backend: str
    provider: str
    reason: str
    chunks: AsyncGenerator[Chunk, None]


ReadinessState = Literal["ready", "loading", "draining", "engine_failed"]


@dataclass(frozen=True)
class Readiness:
    """Whether new requests are served now, and if not, why."""

    state: ReadinessState
    reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"


@dataclass(frozen=True)
class ServedModel:
    """The loaded model as clients see it (Ollama's tags/show, the status document)."""

    name: str
    variant: str
    precision: str
    family: str
    parameter_size: str
    context_length: int
    provider: str
    size_bytes: int
    modified_at: float  # seconds since the epoch


class Gateway(Protocol):
    started_at: float

    @property
    def names(self) -> ModelNames:
        """The names requests may use: the model, its aliases, profiles."""
        ...

    async def submit(self, request: ChatRequest) -> Routed:
        """Route and admit a request; refusals raise EngineError before any reply."""
        ...

    def cancel(self, request_id: str) -> bool:
        """End a queued or running request on whichever backend serves it."""
        ...

    def readiness(self) -> Readiness: ...

    def served_model(self) -> ServedModel: ...

    def status(self) -> dict[str, Any]:
        """The operations document (`/v1/agent/status`)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the MQTT status and telemetry say about the model and backends."""
        ...

    def metrics_text(self) -> bytes:
        """The Prometheus exposition."""
        ...
