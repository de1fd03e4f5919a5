"""The one reader of a routed reply: every interface (HTTP collect and stream, MQTT) reads
a reply through it, so text, tool calls, the final chunk and errors are gathered once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent.engine.types import (
    Chunk,
    EngineError,
    ErrorCode,
    FinishReason,
    Timings,
    ToolCall,
    Usage,
)


@dataclass(frozen=True)
class Reply:
    """A whole reply: its text and the final chunk (reason, calls, usage, timings)."""

    text: str
    final: Chunk

    @property
    def finish_reason(self) -> FinishReason:
        return self.final.finish_reason or FinishReason.STOP

    @property
    def usage(self) -> Usage:
        return self.final.usage or Usage(0, 0)

    @property
    def timings(self) -> Timings | None:
        return self.final.timings

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.final.tool_calls

    @property
    def error(self) -> str | None:
        return self.final.error


class ReplyReader:
    """Reads a stream of chunks once, to its final chunk."""

    def __init__(self, chunks: AsyncIterator[Chunk]) -> None:
        self._chunks = chunks
        self._parts: list[str] = []
        self._final: Chunk | None = None

    async def pieces(self) -> AsyncIterator[Chunk]:
        """Every chunk before the final one (the final one's text comes as a piece too);
        raises EngineError if the backend ends without a final chunk."""
        async for chunk in self._chunks:
            self._parts.append(chunk.text)
            if chunk.finish_reason is None:
                yield chunk
                continue
            self._final = chunk
            if chunk.text:
                yield Chunk(text=chunk.text)
            return
        raise EngineError(ErrorCode.ENGINE_ERROR, "The backend ended the reply without a finish")

    async def texts(self) -> AsyncIterator[str]:
        """The text pieces, empty ones left out."""
        async for piece in self.pieces():
            if piece.text:
                yield piece.text

    def result(self) -> Reply:
        """The whole reply, once the pieces have been read."""
        if self._final is None:
            raise RuntimeError("the reply has not been read to its end")
        return Reply("".join(self._parts), self._final)

    async def read(self) -> Reply:
        async for _ in self.pieces():
            pass
        return self.result()
