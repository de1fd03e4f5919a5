"""What every backend is to the router: the local ONNX engine and the cloud endpoints
(OpenAI-compatible, Ollama) alike."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from agent.engine.types import ChatRequest, Chunk


@dataclass(frozen=True)
class Stream:
    """A request a backend took: who serves it and its chunks (the last one final).
    Closing `chunks` early ends the request on the backend."""

    backend: str  # `local`, or the cloud endpoint's name
    provider: str  # the execution provider, or `cloud`
    chunks: AsyncGenerator[Chunk, None]


@dataclass(frozen=True)
class Load:
    """What the governor and the router estimate a local request's wait and cost from."""

    queued: int
    running: int
    batch_slots: int
    kv_bytes_per_token: int
    default_max_tokens: int
    retry_after_s: int


class Backend(Protocol):
    name: str

    @property
    def provider(self) -> str: ...

    async def submit(self, request: ChatRequest) -> Stream:
        """Take the request or refuse it (EngineError) before any chunk."""
        ...


class LocalBackend(Backend, Protocol):
    """The gateway's own engine: cancellable by request id, with a queue to estimate from,
    and swapped live for another model (drained, then stopped)."""

    def cancel(self, request_id: str) -> bool: ...

    def load(self) -> Load: ...

    @property
    def idle(self) -> bool: ...

    async def stop(self) -> None: ...
