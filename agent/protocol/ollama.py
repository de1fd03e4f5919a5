"""The Ollama API: requests, responses, NDJSON stream lines, errors, and the encoders
between them and the internal types. The cloud backend speaks it upstream too."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.engine.types import (
    ChatRequest,
    Chunk,
    EngineError,
    ErrorCode,
    Message,
    ResponseFormat,
    Route,
    SamplingParams,
    ToolCall,
)
from agent.protocol.fields import (
    ContextLimit,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    WireModel,
    omitted_when_none,
)
from agent.protocol.openai import ToolIn

VERSION = "0.9.0"  # the Ollama API level this module follows

# ---- requests ---------------------------------------------------------------------------


class Options(BaseModel):
    """Ollama's `options`; the ones without meaning here are listed by `ignored()` (the
    route logs them, as Ollama itself does with options it does not know)."""

    model_config = ConfigDict(extra="allow")

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    num_predict: int | None = None
    num_ctx: ContextLimit | None = None
    stop: list[str] | None = None
    seed: int | None = None
    repeat_penalty: RepetitionPenalty | None = None

    def ignored(self) -> list[str]:
        return sorted(self.model_extra or {})

    def sampling(self) -> SamplingParams:
        # Ollama: num_predict -1 (or -2) means "until the context is full / no limit".
        limit = self.num_predict if self.num_predict and self.num_predict > 0 else None
        return SamplingParams(
            max_tokens=limit,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            repetition_penalty=self.repeat_penalty,
            stop=tuple(self.stop or ()),
            context_limit=self.num_ctx,
        )


class FunctionCall(BaseModel):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    function: FunctionCall


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str = ""
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None

    def to_internal(self) -> Message:
        calls = tuple(
            ToolCall(c.id or ToolCall.new_id(), c.function.name, json.dumps(c.function.arguments))
            for c in self.tool_calls or ()
        )
        return Message(self.role, self.content, calls, name=self.tool_name)


def response_format(format: str | dict[str, Any] | None) -> ResponseFormat | None:
    """Ollama's `format`: "json" for any JSON, or a JSON schema."""
    if format in (None, ""):
        return None
    if format == "json":
        return ResponseFormat("json_object")
    if isinstance(format, dict):
        return ResponseFormat("json_schema", format)
    raise EngineError(
        ErrorCode.INVALID_REQUEST,
        f'format must be "json" or a JSON schema, not {format!r}',
        param="format",
    )


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[MessageIn] = Field(default_factory=list)
    stream: bool = True
    options: Options = Field(default_factory=Options)
    route: Route | None = None
    tools: list[ToolIn] | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: str | float | None = None  # the model stays resident; 0 answers "unload"

    def to_internal(self) -> ChatRequest:
        return ChatRequest(
            model=self.model,
            messages=tuple(m.to_internal() for m in self.messages),
            sampling=self.options.sampling(),
            route=self.route,
            tools=tuple(t.to_internal() for t in self.tools or ()),
            response_format=response_format(self.format),
        )


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    stream: bool = True
    options: Options = Field(default_factory=Options)
    route: Route | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: str | float | None = None

    def to_internal(self) -> ChatRequest:
        """`raw`: the prompt as it is; otherwise a user turn (after `system`) templated."""
        output = response_format(self.format)
        sampling = self.options.sampling()
        if self.raw:
            return ChatRequest(
                model=self.model,
                prompt=self.prompt,
                sampling=sampling,
                route=self.route,
                response_format=output,
            )
        system = (Message("system", self.system),) if self.system else ()
        return ChatRequest(
            model=self.model,
            messages=(*system, Message("user", self.prompt)),
            sampling=sampling,
            route=self.route,
            response_format=output,
        )


class NameBody(BaseModel):
    """/api/show and /api/delete: the model (or, from older clients, `name`)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    name: str | None = None  # older clients

    def required_name(self) -> str:
        name = self.model or self.name
        if not name:
            raise EngineError(ErrorCode.INVALID_REQUEST, "model is required", param="model")
        return name


class CopyBody(BaseModel):
    """/api/copy: a new name for a model, alias or profile."""

    model_config = ConfigDict(extra="allow")

    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


class CreateBody(NameBody):
    """/api/create: `modelfile` text (older clients) or `from`/`system`/`parameters`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    modelfile: str | None = None
    from_: str | None = Field(None, alias="from")
    system: str | None = None
    parameters: dict[str, Any] | None = None
    stream: bool = True


class PullBody(NameBody):
    """/api/pull: a catalog name or Ollama tag (`insecure` has no meaning here)."""

    stream: bool = True


# ---- responses --------------------------------------------------------------------------


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def arguments_object(text: str) -> Any:
    """Ollama sends call arguments as an object, not as JSON text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class FunctionCallOut(WireModel):
    name: str
    arguments: Any = Field(description="an object")


class ToolCallOut(WireModel):
    function: FunctionCallOut


class MessageOut(WireModel):
    role: str = "assistant"
    content: str
    tool_calls: list[ToolCallOut] | None = omitted_when_none()

    @classmethod
    def of(cls, text: str, calls: tuple[ToolCall, ...] = ()) -> MessageOut:
        out = [
            ToolCallOut(
                function=FunctionCallOut(name=c.name, arguments=arguments_object(c.arguments))
            )
            for c in calls
        ]
        return cls(content=text, tool_calls=out or None)


class Reply(WireModel):
    """What every /api/chat and /api/generate line has; the last line (`done`) adds why it
    ended and the counts and durations (nanoseconds)."""

    model: str
    created_at: str = Field(default_factory=now)
    done: bool = False
    done_reason: str | None = omitted_when_none()
    total_duration: int | None = omitted_when_none()
    load_duration: int | None = omitted_when_none()
    prompt_eval_count: int | None = omitted_when_none()
    prompt_eval_duration: int | None = omitted_when_none()
    eval_count: int | None = omitted_when_none()
    eval_duration: int | None = omitted_when_none()
    error: str | None = omitted_when_none()

    def finished(self, final: Chunk, started: float) -> Reply:
        """This reply as the last one, with `final`'s reason, counts and durations."""
        timings, usage = final.timings, final.usage
        return self.model_copy(
            update={
                "done": True,
                "done_reason": final.finish_reason.value if final.finish_reason else "stop",
                "total_duration": int((time.perf_counter() - started) * 1e9),
                "load_duration": 0,
                "prompt_eval_count": usage.prompt_tokens if usage else 0,
                "prompt_eval_duration": int(timings.prompt_s * 1e9) if timings else 0,
                "eval_count": usage.completion_tokens if usage else 0,
                "eval_duration": int(timings.decode_s * 1e9) if timings else 0,
                "error": final.error,
            }
        )


class ChatResponse(Reply):
    message: MessageOut


class GenerateResponse(Reply):
    response: str


class ModelDetails(WireModel):
    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class ModelEntry(WireModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class ListResponse(WireModel):
    models: list[ModelEntry]


class RunningModel(ModelEntry):
    expires_at: str
    size_vram: int


class ProcessResponse(WireModel):
    models: list[RunningModel]


class ShowResponse(WireModel):
    modelfile: str
    parameters: str
    template: str
    system: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class VersionResponse(WireModel):
    version: str = VERSION


class StatusLine(WireModel):
    """A progress line of /api/create (and /api/pull)."""

    status: str
    ignored: list[str] | None = omitted_when_none()


class PullLine(WireModel):
    """A progress line of /api/pull: a step, or the download's bytes so far."""

    status: str
    digest: str | None = omitted_when_none()
    total: int | None = omitted_when_none()
    completed: int | None = omitted_when_none()


class ErrorReply(WireModel):
    error: str


class Empty(WireModel):
    """What /api/copy and /api/delete answer: an empty object."""


# ---- upstream: internal requests in Ollama's shape ----------------------------------------


def message_out(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        entry["tool_calls"] = [
            {"function": {"name": c.name, "arguments": arguments_object(c.arguments or "{}")}}
            for c in message.tool_calls
        ]
    if message.role == "tool" and message.name:
        entry["tool_name"] = message.name
    return entry


def format_out(output: ResponseFormat | None) -> str | dict[str, Any] | None:
    if output is None:
        return None
    return "json" if output.kind == "json_object" else output.schema
