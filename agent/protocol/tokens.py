"""vLLM's /tokenize and /detokenize: a prompt (or chat messages, through the chat template)
to the model's token ids, and ids back to text."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from agent.engine.types import ChatRequest, EngineError, ErrorCode
from agent.protocol.fields import WireModel
from agent.protocol.openai import ChatMessageIn, ToolIn

TokenId = Annotated[int, Field(ge=0)]


class TokenizeRequest(BaseModel):
    """Either `prompt` (tokenized as is) or `messages` (rendered as a chat request is)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = None
    tools: list[ToolIn] | None = None
    add_special_tokens: bool = True

    def to_internal(self) -> ChatRequest:
        if (self.prompt is None) == (self.messages is None):
            raise EngineError(
                ErrorCode.INVALID_REQUEST, "Send either prompt or messages", param="prompt"
            )
        if self.messages is not None:
            return ChatRequest(
                model=self.model,
                messages=tuple(m.to_internal() for m in self.messages),
                tools=tuple(t.to_internal() for t in self.tools or ()),
            )
        return ChatRequest(model=self.model, prompt=self.prompt)


class TokenizeResponse(WireModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(WireModel):
    prompt: str
