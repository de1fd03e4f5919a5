"""The port: all that the interfaces (HTTP routes, the MQTT bridge) may ask of the daemon.

Interfaces depend on this protocol, never on the composition root: the service implements
it, the FastAPI routes receive it through `Depends`, the bridge through its constructor.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from agent.engine.embedder import Embeddings
from agent.engine.types import ChatRequest, Chunk
from agent.models.profiles import ModelNames
from agent.models.pull import PullProgress
from agent.state.conversations import Conversations


@dataclass(frozen=True)
class Routed:
    """An admitted request: which backend serves it, why, and its stream of chunks."""

    backend: str
    provider: str
    reason: str
    chunks: AsyncGenerator[Chunk, None]


ReadinessState = Literal["ready", "loading", "draining", "engine_failed", "stalled"]


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

    def render_prompt(self, request: ChatRequest) -> str:
        """The text the served model is given for `request` (its model's profile
        applied): the prompt, or the messages (and tools) through the chat template; an
        unknown model raises EngineError."""
        ...

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The served model's token ids for `text`."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of token ids; ids outside the vocabulary raise EngineError."""
        ...

    async def embed(self, texts: Sequence[str], model: str | None, truncate: bool) -> Embeddings:
        """Embed `texts` with the embedding model (`model` names it); no embedding model,
        another name, or (without `truncate`) a text too long raise EngineError."""
        ...

    def max_model_len(self) -> int:
        """Prompt plus completion tokens one request may take on the served model."""
        ...

    @property
    def conversations(self) -> Conversations:
        """Responses kept for `previous_response_id` (in memory, bounded)."""
        ...

    async def command(
        self, name: str, arguments: dict[str, Any], progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Carry out a fleet command (`cmd/{name}`: drain, resume, reload); its result, or
        EngineError saying which step failed. `progress` takes interim reports."""
        ...

    def apply_config(self, desired: dict[str, Any]) -> dict[str, Any]:
        """`config/desired`: applied live and persisted whole, or refused whole; returns
        the `config/reported` document either way."""
        ...

    def reported_config(self) -> dict[str, Any]:
        """The `config/reported` document: what is in force and what is pinned locally."""
        ...

    async def pull(self, name: str) -> AsyncIterator[PullProgress]:
        """`models pull` of a catalog name or Ollama tag, run off the event loop: its
        progress lines, then `success`; an unknown name raises EngineError before any."""
        ...

    def remove_model(self, name: str) -> None:
        """`models remove` of a pulled model; unknown or active ones raise EngineError."""
        ...
