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


class EngineError(Exception):
    """A refusal with an OpenAI-style string code; interfaces map it to HTTP/MQTT replies."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.param = param
        self.retry_after_s = retry_after_s


def context_length_exceeded(message: str, param: str = "messages") -> EngineError:
    return EngineError("context_length_exceeded", message, status=400, param=param)


def server_busy(message: str, retry_after_s: int) -> EngineError:
    return EngineError("server_busy", message, status=503, retry_after_s=retry_after_s)


def model_not_ready() -> EngineError:
    return EngineError("model_not_ready", "The model is still loading", status=503, retry_after_s=1)
