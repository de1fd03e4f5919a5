"""The OpenAI API (with vLLM's extras): requests, responses, stream chunks, errors, and the
encoders between them and the internal types. The cloud backend speaks it upstream too."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.engine.types import (
    ChatRequest,
    EngineError,
    ErrorCode,
    Message,
    ResponseFormat,
    Route,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)
from agent.protocol.fields import (
    MaxTokens,
    MinTokens,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    WireModel,
    omitted_when_none,
    output_format,
)

# ---- requests ---------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCallIn(BaseModel):
    name: str
    arguments: str = "{}"


class ToolCallIn(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def to_internal(self) -> Message:
        content = self.content
        text = content if isinstance(content, str) else "".join(p.text for p in content or [])
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ()
        )
        role = "system" if self.role == "developer" else self.role
        return Message(role, text, calls, self.tool_call_id, self.name)


class FunctionIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class ToolIn(BaseModel):
    type: Literal["function"]
    function: FunctionIn

    def to_internal(self) -> Tool:
        return Tool(self.function.name, self.function.description, self.function.parameters)


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaIn(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = "output"
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None

    def to_internal(self) -> ResponseFormat | None:
        schema = self.json_schema.schema_ if self.json_schema else None
        return output_format(self.type, schema, "response_format")


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions (unknown OpenAI fields are ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None  # optional, as on vLLM: the default model
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    seed: int | None = None
    repetition_penalty: RepetitionPenalty | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    route: Route | None = None
    # vLLM's extras
    min_tokens: MinTokens | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True  # special tokens are never in the text; False is ignored
    logprobs: bool | int | None = None
    top_logprobs: int | None = None

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        if self.n != 1:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"n={self.n}: one choice per request is supported; send {self.n} requests",
                param="n",
            )
        if self.logprobs or self.top_logprobs:
            param = "logprobs" if self.logprobs else "top_logprobs"
            raise EngineError(
                ErrorCode.INVALID_REQUEST, "logprobs are not supported by this server", param=param
            )
        if self.ignore_eos and max_tokens is None:
            raise EngineError(
                ErrorCode.INVALID_REQUEST, "ignore_eos needs max_tokens", param="ignore_eos"
            )
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
            stop=tuple(s for s in stop if s),
            min_tokens=max_tokens if self.ignore_eos else self.min_tokens,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    tools: list[ToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormatIn | None = None

    def to_internal(self) -> ChatRequest:
        limit = self.max_completion_tokens or self.max_tokens
        return ChatRequest(
            model=self.model,
            messages=tuple(m.to_internal() for m in self.messages),
            sampling=self.sampling(limit),
            route=self.route,
            tools=tuple(t.to_internal() for t in self.tools or ()),
            tool_choice=self._tool_choice(),
            parallel_tool_calls=self.parallel_tool_calls,
            response_format=self.response_format.to_internal() if self.response_format else None,
        )

    def _tool_choice(self) -> ToolChoice | None:
        names = [t.function.name for t in self.tools or ()]
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in names:
                raise EngineError(
                    ErrorCode.INVALID_REQUEST,
                    f"tool_choice names {choice.function.name!r}, which is not in tools "
                    f"({', '.join(names) or 'none given'})",
                    param="tool_choice",
                )
            return ToolChoice("required", choice.function.name)
        if choice == "required" and not names:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                "tool_choice is required but no tools were given",
                param="tool_choice",
            )
        return ToolChoice(choice) if choice else None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    max_tokens: MaxTokens | None = 16  # OpenAI's default for completions

    def to_internal(self) -> ChatRequest:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise EngineError(
                    ErrorCode.INVALID_REQUEST,
                    "Only one prompt per request is supported",
                    param="prompt",
                )
            prompt = self.prompt[0]
        else:
            prompt = self.prompt
        return ChatRequest(
            model=self.model,
            prompt=prompt,
            sampling=self.sampling(self.max_tokens),
            route=self.route,
        )


# ---- responses --------------------------------------------------------------------------


class UsageOut(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageOut:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class FunctionCallOut(WireModel):
    name: str
    arguments: str = Field(description="JSON text")


class ToolCallOut(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut

    @classmethod
    def of(cls, call: ToolCall) -> ToolCallOut:
        return cls(id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments))


def tool_calls_out(calls: tuple[ToolCall, ...]) -> list[ToolCallOut]:
    return [ToolCallOut.of(c) for c in calls]


class AssistantMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = omitted_when_none()

    @classmethod
    def of(cls, text: str, calls: tuple[ToolCall, ...]) -> AssistantMessage:
        if calls:
            return cls(content=text or None, tool_calls=tool_calls_out(calls))
        return cls(content=text)


class ChatChoice(WireModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class EdgeFields(WireModel):
    """What edge-agent adds to a reply: the backend that served it and why."""

    backend: str = Field(description="`local` or the cloud endpoint's name")
    route_reason: str = Field(description="why this backend, e.g. `local` or `fallback:memory`")


class ChatCompletion(EdgeFields):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut


class StreamedToolCall(ToolCallOut):
    index: int


class Delta(WireModel):
    role: Literal["assistant"] | None = omitted_when_none()
    content: str | None = omitted_when_none()
    tool_calls: list[StreamedToolCall] | None = omitted_when_none()


class ChunkChoice(WireModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None = omitted_when_none()


class CompletionChoice(WireModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class Completion(WireModel):
    """A text completion, whole or (object `text_completion` too) one streamed piece."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut | None = None
    backend: str | None = omitted_when_none()
    route_reason: str | None = omitted_when_none()


class ModelCard(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "edge-agent"


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(WireModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None
    code: str


class ErrorResponse(WireModel):
    error: ErrorDetail


# ---- upstream: internal requests in OpenAI's shape (vLLM) ---------------------------------


def tool_out(tool: Tool) -> dict[str, Any]:
    function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return {"type": "function", "function": function}


def message_out(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        entry["tool_calls"] = [c.wire() for c in tool_calls_out(message.tool_calls)]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    return entry


def tool_fields(request: ChatRequest) -> dict[str, Any]:
    """tools, tool_choice, parallel_tool_calls and response_format, as vLLM takes them."""
    fields: dict[str, Any] = {}
    if request.tools:
        fields["tools"] = [tool_out(t) for t in request.tools]
        choice = request.choice
        fields["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}} if choice.name else choice.mode
        )
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    output = request.response_format
    if output is not None and output.kind == "json_object":
        fields["response_format"] = {"type": "json_object"}
    elif output is not None:
        fields["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": output.schema},
        }
    return fields
