"""Field definitions shared by every wire model that carries sampling settings, so a range
is declared once (OpenAI, Ollama, the old engine's /reasoning, profiles)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from agent.engine.types import EngineError, ErrorCode, ResponseFormat

Temperature = Annotated[
    float, Field(ge=0.0, le=2.0, allow_inf_nan=False, description="0 decodes greedily")
]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=0, description="0: no top-k cut")]
MaxTokens = Annotated[int, Field(ge=1)]
MinTokens = Annotated[int, Field(ge=0)]
# Outside 0.01..10 a penalty only breaks the text, and extremes overflow the logits.
RepetitionPenalty = Annotated[float, Field(ge=0.01, le=10.0, allow_inf_nan=False)]
ContextLimit = Annotated[int, Field(ge=16, description="cap on prompt + completion tokens")]


def _is_none(value: object) -> bool:
    return value is None


def omitted_when_none(default: Any = None, **kwargs: Any) -> Any:
    """A response field that is left out of the JSON when None (where the API itself
    omits it); fields without this are written as null, as the API writes them."""
    return Field(default, exclude_if=_is_none, **kwargs)


class WireModel(BaseModel):
    """A response, chunk or reply as it goes on the wire."""

    model_config = ConfigDict(extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The JSON object to send."""
        return self.model_dump(mode="json", by_alias=True)


def output_format(kind: str, schema: dict[str, Any] | None, param: str) -> ResponseFormat | None:
    """A requested output format (`text`, `json_object`, `json_schema` + schema) as the
    internal one; both OpenAI shapes (chat `response_format`, Responses `text.format`)."""
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if schema is None:
        raise EngineError(
            ErrorCode.INVALID_REQUEST,
            f"{param} needs a schema when type is json_schema",
            param=param,
        )
    return ResponseFormat("json_schema", schema)
