"""The OpenAI Responses API (`POST /v1/responses`, as vLLM serves it): the request and its
input items into the internal ChatRequest, the response object, its output items, and the
typed stream events."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.engine.reply import Reply
from agent.engine.types import (
    ChatRequest,
    EngineError,
    ErrorCode,
    FinishReason,
    Message,
    ResponseFormat,
    Route,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
)
from agent.protocol.fields import (
    MaxTokens,
    Temperature,
    TopP,
    WireModel,
    omitted_when_none,
    output_format,
)

# ---- requests ---------------------------------------------------------------------------


class ContentPartIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItemIn(BaseModel):
    """A message (`type` may be left out, as the easy input form does)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPartIn]

    @property
    def text(self) -> str:
        content = self.content
        return content if isinstance(content, str) else "".join(p.text for p in content)


class FunctionCallItemIn(BaseModel):
    """A call the model made earlier, sent back by the client with its result."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = "{}"


class FunctionCallOutputIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function_call_output"]
    call_id: str
    output: str


InputItem = MessageItemIn | FunctionCallItemIn | FunctionCallOutputIn


class FunctionToolIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def to_internal(self) -> Tool:
        return Tool(self.name, self.description or "", self.parameters or {"type": "object"})


class FunctionChoiceIn(BaseModel):
    type: Literal["function"]
    name: str


class TextFormatIn(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    def to_internal(self) -> ResponseFormat | None:
        return output_format(self.type, self.schema_, "text.format.schema")


class TextConfigIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: TextFormatIn = Field(default_factory=TextFormatIn)


class ResponsesRequest(BaseModel):
    """Fields the API has but a local model cannot honour (reasoning, include, ...) are
    accepted and ignored, as vLLM does."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool = False
    tools: list[FunctionToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoiceIn | None = None
    parallel_tool_calls: bool = True
    text: TextConfigIn = Field(default_factory=TextConfigIn)
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, str] | None = None
    route: Route | None = None

    def turn(self) -> tuple[Message, ...]:
        """This request's input as messages (instructions apart: they are not carried on
        to a later response)."""
        if isinstance(self.input, str):
            return (Message("user", self.input),)
        names = {i.call_id: i.name for i in self.input if isinstance(i, FunctionCallItemIn)}
        messages: list[Message] = []
        for item in self.input:
            if isinstance(item, MessageItemIn):
                role = "system" if item.role == "developer" else item.role
                messages.append(Message(role, item.text))
            elif isinstance(item, FunctionCallOutputIn):
                name = names.get(item.call_id)
                messages.append(Message("tool", item.output, tool_call_id=item.call_id, name=name))
            else:  # calls join the assistant message before them
                call = ToolCall(item.call_id, item.name, item.arguments)
                last = messages[-1] if messages else None
                if last is not None and last.role == "assistant":
                    messages[-1] = Message("assistant", last.content, (*last.tool_calls, call))
                else:
                    messages.append(Message("assistant", "", (call,)))
        return tuple(messages)

    def to_internal(self, history: tuple[Message, ...]) -> ChatRequest:
        system = (Message("system", self.instructions),) if self.instructions else ()
        return ChatRequest(
            model=self.model,
            messages=(*system, *history, *self.turn()),
            sampling=SamplingParams(
                max_tokens=self.max_output_tokens, temperature=self.temperature, top_p=self.top_p
            ),
            route=self.route,
            tools=tuple(t.to_internal() for t in self.tools or ()),
            tool_choice=self._tool_choice(),
            parallel_tool_calls=self.parallel_tool_calls,
            response_format=self.text.format.to_internal(),
        )

    def _tool_choice(self) -> ToolChoice | None:
        names = [t.name for t in self.tools or ()]
        choice = self.tool_choice
        if isinstance(choice, FunctionChoiceIn):
            if choice.name not in names:
                raise EngineError(
                    ErrorCode.INVALID_REQUEST,
                    f"tool_choice names {choice.name!r}, which is not in tools",
                    param="tool_choice",
                )
            return ToolChoice("required", choice.name)
        if choice == "required" and not names:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                "tool_choice is required but no tools were given",
                param="tool_choice",
            )
        return ToolChoice(choice) if choice else None


# ---- the response and its output items ----------------------------------------------------

Status = Literal["in_progress", "completed", "incomplete", "failed", "cancelled"]


class OutputText(WireModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(WireModel):
    id: str
    type: Literal["message"] = "message"
    status: Status
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallOut(WireModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: Status
    call_id: str
    name: str
    arguments: str = Field(description="JSON text")


OutputItem = OutputMessage | FunctionCallOut


class ResponseUsage(WireModel):
    input_tokens: int
    input_tokens_details: dict[str, int] = Field(default_factory=lambda: {"cached_tokens": 0})
    output_tokens: int
    output_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})
    total_tokens: int


class IncompleteDetails(WireModel):
    reason: Literal["max_output_tokens"]


class ResponseError(WireModel):
    code: str
    message: str


class ResponseObject(WireModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    text: dict[str, Any]
    previous_response_id: str | None
    store: bool
    metadata: dict[str, str]
    backend: str | None = omitted_when_none()
    route_reason: str | None = omitted_when_none()

    @classmethod
    def started(cls, body: ResponsesRequest, model: str) -> ResponseObject:
        """The response in progress, echoing what the request set."""
        choice = body.tool_choice or "auto"
        return cls(
            id=f"resp_{uuid.uuid4().hex}",
            created_at=int(time.time()),
            status="in_progress",
            model=model,
            output=[],
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            tools=[t.model_dump(exclude_none=True) for t in body.tools or ()],
            tool_choice=choice if isinstance(choice, str) else choice.model_dump(),
            parallel_tool_calls=body.parallel_tool_calls,
            text={"format": body.text.format.model_dump(by_alias=True, exclude_none=True)},
            previous_response_id=body.previous_response_id,
            store=body.store,
            metadata=body.metadata or {},
        )

    def finished(self, reply: Reply, output: list[OutputItem]) -> ResponseObject:
        usage = reply.usage
        status: Status = _STATUS.get(reply.finish_reason, "completed")
        return self.model_copy(
            update={
                "status": status,
                "output": output,
                "usage": ResponseUsage(
                    input_tokens=usage.prompt_tokens,
                    output_tokens=usage.completion_tokens,
                    total_tokens=usage.total_tokens,
                ),
                "incomplete_details": (
                    IncompleteDetails(reason="max_output_tokens")
                    if status == "incomplete"
                    else None
                ),
                "error": (
                    ResponseError(code=ErrorCode.ENGINE_ERROR, message=reply.error or "")
                    if status == "failed"
                    else None
                ),
            }
        )


_STATUS: dict[FinishReason, Status] = {
    FinishReason.LENGTH: "incomplete",
    FinishReason.ERROR: "failed",
    FinishReason.CANCELLED: "cancelled",
}


def message_item(text: str, status: Status = "completed") -> OutputMessage:
    return OutputMessage(
        id=f"msg_{uuid.uuid4().hex}", status=status, content=[OutputText(text=text)]
    )


def call_item(call: ToolCall, status: Status = "completed") -> FunctionCallOut:
    return FunctionCallOut(
        id=f"fc_{uuid.uuid4().hex}",
        status=status,
        call_id=call.id,
        name=call.name,
        arguments=call.arguments,
    )


def output_items(reply: Reply) -> list[OutputItem]:
    """The text as one message (left out when the model only called tools), then the calls."""
    items: list[OutputItem] = []
    if reply.text or not reply.tool_calls:
        items.append(message_item(reply.text))
    items.extend(call_item(call) for call in reply.tool_calls)
    return items


def reply_message(reply: Reply) -> Message:
    """The reply as the assistant turn a later response continues from."""
    return Message("assistant", reply.text, reply.tool_calls)


# ---- stream events ------------------------------------------------------------------------


class Event(WireModel):
    type: str
    sequence_number: int


class LifecycleEvent(Event):
    response: ResponseObject


class ItemEvent(Event):
    output_index: int
    item: OutputItem


class PartEvent(Event):
    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class TextDeltaEvent(Event):
    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class TextDoneEvent(Event):
    item_id: str
    output_index: int
    content_index: int = 0
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class ArgumentsDeltaEvent(Event):
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(Event):
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(Event):
    code: str
    message: str
    param: str | None = None
