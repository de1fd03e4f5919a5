"""Cloud backends: vLLM through its OpenAI API (official `openai` async client) and Ollama
through its native API (official `ollama` async client), streaming into the same Chunk
and Usage types as the local engine.

Each client is imported when an upstream of its kind is made: together they cost ~0.5 s of
start-up and ~40 MiB of memory on a gateway that never falls back to the cloud."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import httpx

from agent.engine.backend import Stream
from agent.engine.types import (
    ChatRequest,
    Chunk,
    FinishReason,
    Timings,
    ToolCall,
    Usage,
)
from agent.protocol import ollama, openai
from agent.settings import CloudEndpoint

_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
}


class Upstream:
    """One cloud endpoint as a backend. The stream raises before its first chunk if the
    endpoint fails (the pool then tries the next); later failures end it with an ERROR
    chunk, never a silent truncation."""

    provider = "cloud"

    def __init__(self, endpoint: CloudEndpoint) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name

    async def probe(self) -> None:
        """Raises unless the endpoint answers its model list."""
        raise NotImplementedError

    async def submit(self, request: ChatRequest) -> Stream:
        return Stream(self.name, self.provider, self._stream(request))

    def _stream(self, request: ChatRequest) -> AsyncGenerator[Chunk, None]:
        raise NotImplementedError

    def _model(self, request: ChatRequest) -> str:
        """The endpoint's model, else the one the request names (the router fills it)."""
        return self.endpoint.model or request.model or ""


class OpenAIUpstream(Upstream):
    """vLLM (or any OpenAI-compatible server) through the official `openai` client."""

    def __init__(self, endpoint: CloudEndpoint) -> None:
        super().__init__(endpoint)
        import openai

        self._openai = openai.AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.key() or "none",
            timeout=openai.Timeout(
                endpoint.first_token_timeout_s, connect=endpoint.connect_timeout_s
            ),
            max_retries=0,
        )

    async def probe(self) -> None:
        await self._openai.models.list()

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[Chunk, None]:
        sampling = request.sampling
        given: dict[str, Any] = {
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "stop": list(sampling.stop) or None,
        }
        common = {k: v for k, v in given.items() if v is not None}
        model, usage_too = self._model(request), {"include_usage": True}
        clock = _Clock()
        # The SDK's request TypedDicts restate agent.protocol.openai's shapes: typed there.
        client: Any = self._openai
        events: Any
        if request.prompt is not None:
            events = await client.completions.create(
                model=model, prompt=request.prompt, stream=True, stream_options=usage_too,
                **common,
            )  # fmt: skip
        else:
            events = await client.chat.completions.create(
                model=model,
                messages=[openai.message_out(m) for m in request.messages],
                stream=True,
                stream_options=usage_too,
                **common,
                **openai.tool_fields(request),
            )
        reason, usage = FinishReason.STOP, None
        calls: dict[int, dict[str, str]] = {}  # streamed call pieces, by index
        async with events:  # closed however this ends: the endpoint stops generating
            async for event in events:
                if event.usage is not None:
                    usage = Usage(event.usage.prompt_tokens, event.usage.completion_tokens)
                for choice in event.choices:
                    text = getattr(choice, "text", None)
                    if text is None:
                        text = choice.delta.content or ""
                        for piece in choice.delta.tool_calls or ():
                            _merge_call_piece(calls.setdefault(piece.index, {}), piece)
                    if text:
                        clock.token()
                        yield Chunk(text=text)
                    if choice.finish_reason:
                        reason = _REASONS.get(choice.finish_reason, FinishReason.STOP)
        tool_calls = tuple(
            ToolCall(c.get("id") or ToolCall.new_id(), c.get("name", ""), c.get("arguments", "{}"))
            for _, c in sorted(calls.items())
        )
        yield clock.final(reason, usage, tool_calls=tool_calls)


class OllamaUpstream(Upstream):
    """Ollama through the official `ollama` client."""

    def __init__(self, endpoint: CloudEndpoint) -> None:
        super().__init__(endpoint)
        import ollama

        key = endpoint.key()
        self._ollama = ollama.AsyncClient(
            host=endpoint.base_url,
            timeout=httpx.Timeout(
                endpoint.first_token_timeout_s, connect=endpoint.connect_timeout_s
            ),
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )

    async def probe(self) -> None:
        await self._ollama.list()

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[Chunk, None]:
        sampling = request.sampling
        given: dict[str, Any] = {
            "num_predict": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "seed": sampling.seed,
            "repeat_penalty": sampling.repetition_penalty,
            "stop": list(sampling.stop) or None,
        }
        options = {k: v for k, v in given.items() if v is not None}
        clock = _Clock()
        output: Any = ollama.format_out(request.response_format)
        client: Any = self._ollama  # likewise for the Ollama client's request types
        parts: Any
        if request.prompt is not None:
            parts = await client.generate(
                model=self._model(request),
                prompt=request.prompt,
                raw=True,
                options=options,
                format=output,
                stream=True,
            )
        else:
            parts = await client.chat(
                model=self._model(request),
                messages=[ollama.message_out(m) for m in request.messages],
                tools=[openai.tool_out(t) for t in request.tools] if request.calls_tools else None,
                options=options,
                format=output,
                stream=True,
            )
        tool_calls: list[ToolCall] = []
        async with aclosing(parts):  # closed however this ends: the endpoint stops generating
            async for part in parts:
                message = getattr(part, "message", None)
                text = message.content if message is not None else part.response
                for call in (message.tool_calls if message is not None else None) or ():
                    arguments = json.dumps(dict(call.function.arguments))
                    tool_calls.append(ToolCall(ToolCall.new_id(), call.function.name, arguments))
                if text:
                    clock.token()
                    yield Chunk(text=text)
                if part.done:
                    reason = _REASONS.get(part.done_reason or "stop", FinishReason.STOP)
                    if tool_calls and reason == FinishReason.STOP:
                        reason = FinishReason.TOOL_CALLS
                    usage = Usage(part.prompt_eval_count or 0, part.eval_count or 0)
                    yield clock.final(reason, usage, tool_calls=tuple(tool_calls))
                    return
        yield clock.final(FinishReason.ERROR, None, "the stream ended without `done`")


def upstream(endpoint: CloudEndpoint) -> Upstream:
    return OpenAIUpstream(endpoint) if endpoint.kind == "openai" else OllamaUpstream(endpoint)


def _merge_call_piece(call: dict[str, str], piece: Any) -> None:
    """OpenAI streams a call as pieces: id and name first, then argument fragments. The name
    comes whole, once; llama.cpp's Python server repeats it in every piece."""
    if piece.id:
        call["id"] = piece.id
    if piece.function is not None:
        if piece.function.name and not call.get("name"):
            call["name"] = piece.function.name
        if piece.function.arguments:
            call["arguments"] = call.get("arguments", "") + piece.function.arguments


class _Clock:
    """Timings for a cloud reply, measured here (the endpoint's own are not comparable)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first = 0.0
        self.tokens = 0

    def token(self) -> None:
        self.tokens += 1
        if not self.first:
            self.first = time.perf_counter()

    def final(
        self,
        reason: FinishReason,
        usage: Usage | None,
        error: str | None = None,
        tool_calls: tuple[ToolCall, ...] = (),
    ) -> Chunk:
        end = time.perf_counter()
        first = self.first or end
        decode = end - first
        completion = usage.completion_tokens if usage else self.tokens
        return Chunk(
            finish_reason=reason,
            error=error,
            tool_calls=tool_calls,
            usage=usage or Usage(0, completion),
            timings=Timings(
                queue_s=0.0,
                prompt_s=first - self.started,
                decode_s=decode,
                total_s=end - self.started,
                time_to_first_token_s=first - self.started,
                decode_tokens_per_s=(completion - 1) / decode if completion > 1 and decode else 0.0,
            ),
        )
