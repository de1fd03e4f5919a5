"""Fleet commands (`.../cmd/{name}`) and remote configuration (`.../config/desired` ->
`.../config/reported`), shared/DESIGN.md. A command is answered like an inference request:
on MQTT 5's Response Topic + Correlation Data, or (3.1.1) the payload's `reply_to` + `id`,
with `accepted | rejected`, then `progress` replies, then one `final`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from agent.engine.types import EngineError, ErrorCode
from agent.protocol.fields import WireModel, omitted_when_none
from agent.protocol.mqtt import ReplyRoute, Tagged

COMMAND_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Payload fields that are never logged or echoed: credentials a command may carry.
SECRET_FIELDS = frozenset({"token", "hf_token", "password", "api_key", "authorization"})


class CommandFailed(EngineError):
    """A command that failed at a named step; `result` goes into its `final` all the same
    (what was running before, what was asked)."""

    def __init__(self, step: str, reason: str, result: dict[str, Any]) -> None:
        super().__init__(ErrorCode.ENGINE_ERROR, f"{step}: {reason}")
        self.result = {**result, "step": step}


@dataclass(frozen=True)
class ParsedCommand:
    route: ReplyRoute | None  # None: nowhere to answer (dropped, logged)
    arguments: dict[str, Any]
    error: EngineError | None


def parse_command(
    payload: bytes,
    response_topic: str | None,
    correlation: bytes | None,
    max_bytes: int = 1 << 20,
) -> ParsedCommand:
    """A command's reply route and arguments (the payload less `id` and `reply_to`)."""
    if len(payload) > max_bytes:
        fields: object = {}
        error: EngineError | None = EngineError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"The payload exceeds mqtt_max_payload_bytes ({max_bytes})"
        )
    else:
        fields, error = _document(payload)
    arguments = fields if isinstance(fields, dict) else {}
    topic = response_topic or arguments.get("reply_to")
    if not isinstance(topic, str) or not topic or "#" in topic or "+" in topic:
        return ParsedCommand(None, {}, error)
    request_id = arguments.get("id")
    route = ReplyRoute(topic, correlation, str(request_id) if request_id is not None else None)
    if correlation is None and request_id is None:
        error = error or EngineError(
            ErrorCode.INVALID_REQUEST, "A command needs Correlation Data or `id`", param="id"
        )
    rest = {k: v for k, v in arguments.items() if k not in ("id", "reply_to")}
    return ParsedCommand(route, rest, error)


def parse_document(payload: bytes) -> tuple[dict[str, Any], EngineError | None]:
    """A JSON object (a `config/desired` document); an empty payload is an empty one."""
    if not payload:
        return {}, None
    document, error = _document(payload)
    return (document if isinstance(document, dict) else {}), error


def _document(payload: bytes) -> tuple[object, EngineError | None]:
    try:
        document = json.loads(payload) if payload else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, EngineError(ErrorCode.INVALID_JSON, f"The payload is not valid JSON: {exc}")
    if not isinstance(document, dict):
        return {}, EngineError(ErrorCode.INVALID_REQUEST, "The payload must be a JSON object")
    return document, None


def redacted(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments with credentials blanked, at any depth: for logs and replies."""
    return {
        key: "<hidden>"
        if key.lower() in SECRET_FIELDS
        else redacted(value)
        if isinstance(value, dict)
        else value
        for key, value in arguments.items()
    }


class ProgressReply(Tagged):
    type: Literal["progress"] = "progress"
    step: str
    bytes: int | None = omitted_when_none()
    total: int | None = omitted_when_none()


class CommandFinal(Tagged):
    """The one final of a command: `ok`, and on failure `error` naming the failed step."""

    type: Literal["final"] = "final"
    command: str
    ok: bool
    error: str | None = omitted_when_none()
    result: dict[str, Any] = Field(default_factory=dict)


class ReportedConfig(WireModel):
    """`config/reported` (retained): what is in force, what was refused and why, and which
    settings the gateway's own command line or environment pins (they win)."""

    version: int | str | None = omitted_when_none()
    status: Literal["applied", "rejected", "default"]
    error: str | None = omitted_when_none()
    in_force: dict[str, Any]
    overridden: dict[str, str]
    ts: float
