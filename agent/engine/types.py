"""The one internal request/response contract shared by every interface and backend."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made; `arguments` is JSON text, as in the OpenAI API."""

    id: str
    name: str
    arguments: str

    @staticmethod
    def new_id() -> str:
        return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # role "tool": the call this message answers
    name: str | None = None  # role "tool": the function that produced it


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is a JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True)
class ToolChoice:
    """`auto`: text or calls; `none`: text only; `required`: calls only (to `name` if set)."""

    mode: Literal["auto", "none", "required"] = "auto"
    name: str | None = None


@dataclass(frozen=True)
class ResponseFormat:
    """Structured output: any JSON object, or JSON valid against `schema`."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; None means "the model's (or profile's) default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    context_limit: int | None = None  # Ollama num_ctx: cap on prompt + completion tokens
    min_tokens: int | None = None  # end-of-sequence is suppressed until this many tokens


@dataclass(frozen=True)
class ChatRequest:
    """A chat (templated `messages`) or a raw completion (`prompt`, no template)."""

    model: str | None  # None: the default model (the `default_model` setting)
    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    route: str | None = None  # local_only | prefer_local | prefer_cloud | cloud_only
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None  # None: not given (auto, or the profile's)
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None

    @property
    def calls_tools(self) -> bool:
        """Whether the reply may hold tool calls."""
        return bool(self.tools) and self.choice.mode != "none"

    @property
    def choice(self) -> ToolChoice:
        return self.tool_choice or ToolChoice()

    @property
    def last_text(self) -> str:
        """The prompt, or the last message's text."""
        if self.prompt is not None:
            return self.prompt
        return self.messages[-1].content if self.messages else ""


Route = Literal["local_only", "prefer_local", "prefer_cloud", "cloud_only"]
ROUTES: tuple[str, ...] = get_args(Route)


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Seconds, measured by the backend; `queue_s` is time spent waiting for a slot."""

    queue_s: float
    prompt_s: float
    decode_s: float
    total_s: float
    time_to_first_token_s: float
    decode_tokens_per_s: float


@dataclass(frozen=True)
class Chunk:
    """One step of a reply: a text delta, and on the last chunk the finish reason and usage."""

    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # on the last chunk only
    usage: Usage | None = None
    timings: Timings | None = None
    error: str | None = None


class ErrorCode(StrEnum):
    """Why a request was refused or failed; the interfaces map each to an HTTP status and
    error body (agent/api/errors.py) or an MQTT `rejected` reply (agent/protocol/mqtt.py)."""

    INVALID_REQUEST = "invalid_request"
    INVALID_JSON = "invalid_json"
    INVALID_SCHEMA = "invalid_schema"
    MODEL_NOT_FOUND = "model_not_found"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    PROMPT_TOO_LONG = "prompt_too_long"
    TOO_MANY_MESSAGES = "too_many_messages"
    MAX_TOKENS_TOO_LARGE = "max_tokens_too_large"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    SERVER_BUSY = "server_busy"
    SERVER_DRAINING = "server_draining"
    MODEL_NOT_READY = "model_not_ready"
    ENGINE_FAILED = "engine_failed"  # the local engine's thread died
    ENGINE_ERROR = "engine_error"
    INTERNAL_ERROR = "internal_error"
    # Refusals at the HTTP door, before a request reaches the router
    INVALID_API_KEY = "invalid_api_key"
    REQUEST_TOO_LARGE = "request_too_large"
    TOO_MANY_CONCURRENT_REQUESTS = "too_many_concurrent_requests"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"


class EngineError(Exception):
    """A request refused (or failed) with an ErrorCode; nothing here knows HTTP."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


def context_length_exceeded(message: str, param: str = "messages") -> EngineError:
    return EngineError(ErrorCode.CONTEXT_LENGTH_EXCEEDED, message, param=param)


def server_busy(message: str, retry_after_s: int) -> EngineError:
    return EngineError(ErrorCode.SERVER_BUSY, message, retry_after_s=retry_after_s)


def model_not_ready() -> EngineError:
    return EngineError(ErrorCode.MODEL_NOT_READY, "The model is still loading", retry_after_s=1)
