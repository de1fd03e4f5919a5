"""Cloud backends: vLLM through its OpenAI API (official `openai` async client) and Ollama
through its native API (official `ollama` async client), streaming into the same Chunk
and Usage types as the local engine.

Each client is imported when a backend of its kind is made: together they cost ~0.5 s of
start-up and ~40 MiB of memory on a gateway that never falls back to the cloud."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import httpx

from agent.engine.types import (
    ChatRequest,
    Chunk,
    FinishReason,
    Message,
    ResponseFormat,
    Timings,
    Tool,
    ToolCall,
    Usage,
)

Kind = Literal["openai", "ollama"]
_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
}


@dataclass(frozen=True)
class CloudEndpoint:
    kind: Kind
    base_url: str
    model: str | None = None  # None: the model name the client asked for
    api_key: str | None = None
    api_key_file: Path | None = None
    connect_timeout_s: float = 3.0
    first_token_timeout_s: float = 20.0

    @property
    def name(self) -> str:
        parsed = urlparse(self.base_url)
        return f"{self.kind}:{parsed.hostname}:{parsed.port or ''}".rstrip(":")

    @classmethod
    def parse(cls, spec: str) -> CloudEndpoint:
        """`openai=http://host:port/v1#model` or `ollama=http://host:port` (CLI form)."""
        kind, sep, rest = spec.partition("=")
        if not sep or kind not in ("openai", "ollama"):
            raise ValueError(f"{spec!r}: expected openai=URL or ollama=URL")
        url, _, model = rest.partition("#")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{spec!r}: the URL must start with http:// or https://")
        return cls(kind=kind, base_url=url, model=model or None)  # type: ignore[arg-type]

    def key(self) -> str | None:
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip()
        return self.api_key


class CloudBackend:
    """One endpoint. `stream` raises before the first chunk if the endpoint fails; later
    failures end the stream with an ERROR chunk (never a silent truncation)."""

    def __init__(self, endpoint: CloudEndpoint) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        timeout = httpx.Timeout(endpoint.first_token_timeout_s, connect=endpoint.connect_timeout_s)
        if endpoint.kind == "openai":
            import openai

            self._openai = openai.AsyncOpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.key() or "none",
                timeout=timeout,
                max_retries=0,
            )
        else:
            import ollama

            headers = {"Authorization": f"Bearer {endpoint.key()}"} if endpoint.key() else None
            self._ollama = ollama.AsyncClient(
                host=endpoint.base_url, timeout=timeout, headers=headers
            )

    async def probe(self) -> None:
        """Raises unless the endpoint answers its model list."""
        if self.endpoint.kind == "openai":
            await self._openai.models.list()
        else:
            await self._ollama.list()

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        if self.endpoint.kind == "openai":
            return self._stream_openai(request)
        return self._stream_ollama(request)

    def _model(self, request: ChatRequest) -> str:
        return self.endpoint.model or request.model

    async def _stream_openai(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        sampling = request.sampling
        common = {
            "model": self._model(request),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "stop": list(sampling.stop) or None,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        common = {k: v for k, v in common.items() if v is not None}
        clock = _Clock()
        if request.prompt is not None:
            events = await self._openai.completions.create(prompt=request.prompt, **common)
        else:
            events = await self._openai.chat.completions.create(
                messages=[openai_message(m) for m in request.messages],
                **common,
                **openai_tool_fields(request),
            )
        reason, usage = FinishReason.STOP, None
        calls: dict[int, dict[str, str]] = {}  # streamed call pieces, by index
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

    async def _stream_ollama(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        sampling = request.sampling
        options = {
            "num_predict": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "seed": sampling.seed,
            "repeat_penalty": sampling.repetition_penalty,
            "stop": list(sampling.stop) or None,
        }
        options = {k: v for k, v in options.items() if v is not None}
        clock = _Clock()
        output = ollama_format(request.response_format)
        if request.prompt is not None:
            parts = await self._ollama.generate(
                model=self._model(request),
                prompt=request.prompt,
                raw=True,
                options=options,
                format=output,
                stream=True,
            )
        else:
            parts = await self._ollama.chat(
                model=self._model(request),
                messages=[ollama_message(m) for m in request.messages],
                tools=[openai_tool(t) for t in request.tools] if request.calls_tools else None,
                options=options,
                format=output,
                stream=True,
            )
        tool_calls: list[ToolCall] = []
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


# ---- request conversion: the caller's tools and formats, in each API's shape -------------


def openai_tool(tool: Tool) -> dict[str, Any]:
    function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return {"type": "function", "function": function}


def openai_message(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        entry["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    return entry


def openai_tool_fields(request: ChatRequest) -> dict[str, Any]:
    """tools, tool_choice, parallel_tool_calls and response_format, as vLLM takes them."""
    fields: dict[str, Any] = {}
    if request.tools:
        fields["tools"] = [openai_tool(t) for t in request.tools]
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


def ollama_message(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        entry["tool_calls"] = [
            {"function": {"name": c.name, "arguments": json.loads(c.arguments or "{}")}}
            for c in message.tool_calls
        ]
    if message.role == "tool" and message.name:
        entry["tool_name"] = message.name
    return entry


def ollama_format(output: ResponseFormat | None) -> str | dict[str, Any] | None:
    if output is None:
        return None
    return "json" if output.kind == "json_object" else output.schema


def _merge_call_piece(call: dict[str, str], piece: Any) -> None:
    """OpenAI streams a call as pieces: id and name first, then argument fragments."""
    if piece.id:
        call["id"] = piece.id
    if piece.function is not None:
        if piece.function.name:
            call["name"] = call.get("name", "") + piece.function.name
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
