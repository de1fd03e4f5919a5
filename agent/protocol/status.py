"""`GET /v1/agent/status`: the operations document. Its top level is fixed; the parts that
describe components (model, hardware, routing, ...) are free-form objects, as each
component words itself (routing/status.py builds them)."""

from __future__ import annotations

from typing import Any

from agent.protocol.fields import WireModel


class AgentStatus(WireModel):
    version: str
    device_id: str
    state: str
    uptime_s: float
    model: dict[str, Any]
    provider: str
    provider_attempts: list[dict[str, Any]]
    threads: int | None
    queue: dict[str, Any]
    provider_choice: dict[str, Any] | None
    engine_steps: int
    finished: dict[str, int]
    batches: dict[str, int]  # og.Engine batches started, by size
    generator_path: dict[str, Any] | None  # lone requests on og.Generator, prefix reuse
    embedding_model: dict[str, Any] | None
    hardware: dict[str, Any]
    routing: dict[str, Any]
    mqtt: dict[str, Any]
