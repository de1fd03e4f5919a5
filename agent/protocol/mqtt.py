"""The MQTT convention (shared/DESIGN.md): requests (an OpenAI chat request, answered on
MQTT 5's Response Topic + Correlation Data or, for 3.1.1, the payload's `reply_to` + `id`)
and the replies `accepted | rejected | chunk | final`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, ValidationError

from agent.engine.reply import Reply
from agent.engine.types import EngineError, ErrorCode, Timings
from agent.protocol.fields import WireModel, omitted_when_none
from agent.protocol.openai import ChatCompletionRequest, ToolCallOut, UsageOut


@dataclass(frozen=True)
class ReplyRoute:
    """Where and how to answer: MQTT 5 Response Topic + Correlation Data, or (3.1.1)
    the payload's `reply_to` and `id`, echoed in every reply."""

    topic: str
    correlation: bytes | None
    request_id: str | None

    @property
    def key(self) -> str:
        """De-duplication and cancel key: the reply topic with the correlation. Two devices
        may use the same correlation id; they never share a reply topic."""
        return request_key(self.topic, self.correlation, self.request_id)


def request_key(topic: str, correlation: bytes | None, request_id: object) -> str:
    """U+0000 cannot occur in an MQTT topic, so it separates the two parts unambiguously."""
    tag = correlation.hex() if correlation is not None else f"id:{request_id}"
    return f"{topic}\x00{tag}"


@dataclass(frozen=True)
class ParsedRequest:
    route: ReplyRoute | None  # None: nowhere to answer (the message is dropped, logged)
    body: ChatCompletionRequest | None
    error: EngineError | None


def _fields(payload: bytes) -> dict[str, object]:
    try:
        fields = json.loads(payload) if payload else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return fields if isinstance(fields, dict) else {}


def parse_request(
    payload: bytes,
    response_topic: str | None,
    correlation: bytes | None,
    max_bytes: int = 1 << 20,
) -> ParsedRequest:
    error = None
    if len(payload) > max_bytes:
        error = EngineError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"The payload exceeds mqtt_max_payload_bytes ({max_bytes})",
        )
    else:
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            error = EngineError(ErrorCode.INVALID_JSON, f"The payload is not valid JSON: {exc}")
        else:
            if not isinstance(document, dict):
                error = EngineError(ErrorCode.INVALID_REQUEST, "The payload must be a JSON object")
    fields = _fields(payload) if error is None or error.code != ErrorCode.PAYLOAD_TOO_LARGE else {}
    request_id = fields.get("id")
    route_topic = response_topic or fields.get("reply_to")
    if (
        not isinstance(route_topic, str)
        or not route_topic
        or "#" in route_topic
        or "+" in route_topic
    ):
        return ParsedRequest(None, None, error)
    route = ReplyRoute(
        topic=route_topic,
        correlation=correlation,
        request_id=str(request_id) if request_id is not None else None,
    )
    if route.correlation is None and route.request_id is None:
        error = error or EngineError(
            ErrorCode.INVALID_REQUEST,
            "A correlation id is needed: Correlation Data or `id`",
            param="id",
        )
    if error is not None:
        return ParsedRequest(route, None, error)
    try:
        return ParsedRequest(route, ChatCompletionRequest.model_validate(fields), None)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = f"{param or 'payload'}: {first['msg']}"
        return ParsedRequest(
            route, None, EngineError(ErrorCode.INVALID_REQUEST, message, param=param)
        )


def cancel_key(payload: bytes, response_topic: str | None, correlation: bytes | None) -> str | None:
    """The request a cancel names: its correlation (Correlation Data or `id`) under the
    reply topic it was sent with (Response Topic or `reply_to`). None: it names none."""
    fields = _fields(payload)
    topic = response_topic or fields.get("reply_to")
    request_id = fields.get("id")
    if not isinstance(topic, str) or (correlation is None and request_id is None):
        return None
    return request_key(topic, correlation, request_id)


# ---- replies ----------------------------------------------------------------------------


class Tagged(WireModel):
    """Every reply; 3.1.1 requests get their `id` back in it."""

    id: str | None = omitted_when_none()


class Accepted(Tagged):
    type: Literal["accepted"] = "accepted"


class Rejected(Tagged):
    type: Literal["rejected"] = "rejected"
    code: ErrorCode
    message: str
    retry_after_s: int | None = omitted_when_none()

    @classmethod
    def of(cls, route: ReplyRoute, error: EngineError) -> Rejected:
        return cls(
            id=route.request_id,
            code=error.code,
            message=error.message,
            retry_after_s=error.retry_after_s,
        )


class ChunkReply(Tagged):
    type: Literal["chunk"] = "chunk"
    seq: int
    delta: str


class TimingsOut(WireModel):
    queue_s: float
    time_to_first_token_s: float
    decode_tokens_per_s: float
    total_s: float

    @classmethod
    def of(cls, timings: Timings) -> TimingsOut:
        return cls(
            queue_s=round(timings.queue_s, 4),
            time_to_first_token_s=round(timings.time_to_first_token_s, 4),
            decode_tokens_per_s=round(timings.decode_tokens_per_s, 2),
            total_s=round(timings.total_s, 4),
        )


class FinalReply(Tagged):
    type: Literal["final"] = "final"
    finish_reason: str
    text: str
    usage: UsageOut | None
    timings: TimingsOut | None
    backend: str = Field(description="`local`, a cloud endpoint's name, or `none`")
    provider: str
    route_reason: str = ""
    gateway: str | None = omitted_when_none()
    tool_calls: list[ToolCallOut] | None = omitted_when_none()
    error: str | None = omitted_when_none()

    @classmethod
    def of(
        cls,
        route: ReplyRoute,
        reply: Reply,
        finish_reason: str,
        *,
        backend: str,
        provider: str,
        route_reason: str,
        gateway: str,
    ) -> FinalReply:
        timings = reply.timings
        return cls(
            id=route.request_id,
            finish_reason=finish_reason,
            text=reply.text,
            usage=UsageOut.of(reply.usage),
            timings=TimingsOut.of(timings) if timings else None,
            backend=backend,
            provider=provider,
            route_reason=route_reason,
            gateway=gateway,
            tool_calls=[ToolCallOut.of(c) for c in reply.tool_calls] or None,
            error=reply.error,
        )

    @classmethod
    def unserved(cls, route: ReplyRoute, finish_reason: str) -> FinalReply:
        """A request that ended before any backend took it (cancelled, expired)."""
        return cls(
            id=route.request_id,
            finish_reason=finish_reason,
            text="",
            usage=None,
            timings=None,
            backend="none",
            provider="none",
        )
