"""Embedding requests and replies: OpenAI's /v1/embeddings, Ollama's /api/embed and its older
/api/embeddings."""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.engine.types import EngineError, ErrorCode
from agent.protocol.fields import WireModel


def _texts(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


class EmbeddingRequest(BaseModel):
    """OpenAI's shape. Its Python client asks for base64 unless told otherwise."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, gt=0)
    user: str | None = None

    def texts(self) -> list[str]:
        return _texts(self.input)

    def check_dimensions(self, dimensions: int) -> None:
        """The model's own width only: these encoders are not trained to be shortened."""
        if self.dimensions is not None and self.dimensions != dimensions:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"dimensions {self.dimensions}: this model's vectors have {dimensions}",
                param="dimensions",
            )


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """float32 little-endian bytes in base64, as OpenAI sends them, or the floats."""
    if encoding_format == "float":
        return vector
    packed = array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


class EmbeddingData(WireModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(WireModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class EmbedBody(BaseModel):
    """Ollama's /api/embed: texts past the model's length are cut unless `truncate` is off."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str]
    truncate: bool = True
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None

    def texts(self) -> list[str]:
        return _texts(self.input)


class EmbedResponse(WireModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int  # nanoseconds, as Ollama counts
    load_duration: int = 0  # the encoder stays resident
    prompt_eval_count: int


class EmbeddingsBody(BaseModel):
    """Ollama's older /api/embeddings: one prompt."""

    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None


class EmbeddingsResponse(WireModel):
    embedding: list[float]
