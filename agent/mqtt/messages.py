"""Request parsing and reply payloads of the MQTT convention."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from agent.api.openai import ChatCompletionRequest, tool_calls_json
from agent.engine.types import Chunk, EngineError
from agent.mqtt.connection import Received


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


def parse_request(message: Received, max_bytes: int = 1 << 20) -> ParsedRequest:
    payload: object = None
    error = None
    if len(message.payload) > max_bytes:
        error = EngineError(
            "payload_too_large", f"The payload exceeds mqtt_max_payload_bytes ({max_bytes})"
        )
    else:
        try:
            payload = json.loads(message.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            error = EngineError("invalid_json", f"The payload is not valid JSON: {exc}")
    fields = payload if isinstance(payload, dict) else {}
    if error is None and not isinstance(payload, dict):
        error = EngineError("invalid_request", "The payload must be a JSON object")
    request_id = fields.get("id")
    route_topic = message.response_topic or fields.get("reply_to")
    if (
        not isinstance(route_topic, str)
        or not route_topic
        or "#" in route_topic
        or "+" in route_topic
    ):
        return ParsedRequest(None, None, error)
    route = ReplyRoute(
        topic=route_topic,
        correlation=message.correlation,
        request_id=str(request_id) if request_id is not None else None,
    )
    if route.correlation is None and route.request_id is None:
        error = error or EngineError(
            "invalid_request", "A correlation id is needed: Correlation Data or `id`", param="id"
        )
    if error is not None:
        return ParsedRequest(route, None, error)
    try:
        return ParsedRequest(route, ChatCompletionRequest.model_validate(fields), None)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message_text = f"{param or 'payload'}: {first['msg']}"
        return ParsedRequest(route, None, EngineError("invalid_request", message_text, param=param))


def cancel_key(message: Received) -> str | None:
    """The request a cancel names: its correlation (Correlation Data or `id`) under the
    reply topic it was sent with (Response Topic or `reply_to`). None: it names none."""
    try:
        fields = json.loads(message.payload) if message.payload else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        fields = {}
    fields = fields if isinstance(fields, dict) else {}
    topic = message.response_topic or fields.get("reply_to")
    request_id = fields.get("id")
    if not isinstance(topic, str) or (message.correlation is None and request_id is None):
        return None
    return request_key(topic, message.correlation, request_id)


def _tagged(route: ReplyRoute, payload: dict) -> dict:
    if route.request_id is not None:
        payload["id"] = route.request_id
    return payload


def accepted(route: ReplyRoute) -> dict:
    return _tagged(route, {"type": "accepted"})


def rejected(route: ReplyRoute, error: EngineError) -> dict:
    payload = {"type": "rejected", "code": error.code, "message": error.message}
    if error.retry_after_s is not None:
        payload["retry_after_s"] = error.retry_after_s
    return _tagged(route, payload)


def chunk(route: ReplyRoute, seq: int, delta: str) -> dict:
    return _tagged(route, {"type": "chunk", "seq": seq, "delta": delta})


def final(
    route: ReplyRoute,
    text: str,
    finish_reason: str,
    last: Chunk | None,
    backend: str,
    provider: str,
    route_reason: str = "",
) -> dict:
    usage = last.usage if last else None
    timings = last.timings if last else None
    payload: dict = {
        "type": "final",
        "finish_reason": finish_reason,
        "text": text,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
        if usage
        else None,
        "timings": {
            "queue_s": round(timings.queue_s, 4),
            "time_to_first_token_s": round(timings.time_to_first_token_s, 4),
            "decode_tokens_per_s": round(timings.decode_tokens_per_s, 2),
            "total_s": round(timings.total_s, 4),
        }
        if timings
        else None,
        "backend": backend,
        "provider": provider,
        "route_reason": route_reason,
    }
    if last is not None and last.tool_calls:
        payload["tool_calls"] = tool_calls_json(last.tool_calls)
    if last is not None and last.error:
        payload["error"] = last.error
    return _tagged(route, payload)
