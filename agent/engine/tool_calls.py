"""Tools and structured output on the local engine.

Three parts: the chat-template inputs (messages with calls and results, the tool list),
the guidance grammar that makes the output parse (onnxruntime-genai's llguidance), and
the reader that turns the model's tool-call markup into ToolCalls. Grammars are checked
with the llguidance package before a request is queued, so a schema that cannot compile
is refused with a 400 before any generation.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import llguidance

from agent.engine.types import (
    ChatRequest,
    Chunk,
    EngineError,
    FinishReason,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
)
from agent.models.local import ToolMarkup

# Compact JSON: a small model cannot wander off into whitespace, and output stays short.
_COMPACT = {"whitespace_flexible": False}


@dataclass(frozen=True)
class Guidance:
    """What og.TurnOptions.set_guidance takes: `json_schema` or `lark_grammar`, and text."""

    kind: str
    data: str


# ---- chat-template inputs ---------------------------------------------------------------


def template_inputs(request: ChatRequest, markup: ToolMarkup) -> tuple[str, str | None]:
    """The messages JSON and the tools JSON (None without tools) for apply_chat_template."""
    messages = [_message_dict(m) for m in request.messages]
    if not request.calls_tools:
        return json.dumps(messages), None
    tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in request.tools
    ]
    if markup.tools_in_system:
        if not messages or messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": ""})
        messages[0]["tools"] = json.dumps(tools)
    return json.dumps(messages), json.dumps(tools)


def _message_dict(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        entry["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _json_or_text(call.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        entry["name"] = message.name
    return entry


def _json_or_text(arguments: str) -> Any:
    """Chat templates expect arguments as an object; OpenAI clients send JSON text."""
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


# ---- guidance ---------------------------------------------------------------------------


def guidance_for(
    request: ChatRequest, markup: ToolMarkup, special: bool, max_calls: int = 8
) -> Guidance | None:
    """The grammar the output must follow, or None for free text.

    `special`: the markup strings are single special tokens (Phi-4-mini's `<|tool_call|>`),
    which llguidance matches by token, not by text. `max_calls` bounds parallel calls.
    """
    output = _output_schema(request.response_format) if request.response_format else None
    if not request.calls_tools:
        if output is None:
            return None
        return _checked(Guidance("json_schema", json.dumps(output)), "response_format")
    tools = request.tools
    if request.choice.name is not None:
        tools = tuple(t for t in tools if t.name == request.choice.name)
    call = {"anyOf": [_call_schema(t) for t in tools]} if len(tools) > 1 else _call_schema(tools[0])
    call["x-guidance"] = _COMPACT
    start, end = (
        (markup.start, markup.end)
        if special
        else (json.dumps(markup.start), json.dumps(markup.end))
    )
    # A named tool_choice means one call to that tool, as in OpenAI's API and vLLM.
    parallel = request.parallel_tool_calls and request.choice.name is None
    extra = max_calls - 1 if parallel else 0
    if markup.format == "array":
        more = ' ("," call)?' * extra
        calls = f'calls: {start} "[" call{more} "]" {end}'
    else:
        more = ' ("\\n"? block)?' * extra
        calls = f'calls: block{more}\nblock: {start} "\\n"? call "\\n"? {end}'
    if request.choice.mode == "required":
        rules = ["start: calls"]
    else:
        text = f"%json {json.dumps(output)}" if output else "/(?s:.+)/"
        rules = ["start: text | calls", f"text: {text}"]
    rules += [calls, f"call: %json {json.dumps(call)}"]
    return _checked(Guidance("lark_grammar", "\n".join(rules)), "tools")


def _output_schema(response_format: ResponseFormat) -> dict[str, Any]:
    schema = dict(response_format.schema or {"type": "object"})
    schema.setdefault("x-guidance", _COMPACT)
    return schema


def _call_schema(tool: Tool) -> dict[str, Any]:
    parameters = dict(tool.parameters)
    if "properties" in parameters and "additionalProperties" not in parameters:
        # Calls carry the declared arguments only (clients such as Ollama's drop the flag).
        parameters["additionalProperties"] = False
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _checked(guidance: Guidance, param: str) -> Guidance:
    kind = "lark" if guidance.kind == "lark_grammar" else guidance.kind
    try:
        problem = llguidance.LLMatcher.validate_grammar(
            llguidance.grammar_from(kind, guidance.data)
        )
    except ValueError as exc:
        problem = str(exc)
    if problem:
        first = problem.strip().splitlines()[0]
        raise EngineError(
            "invalid_schema", f"{param}: the schema cannot be compiled: {first}", param=param
        )
    return guidance


# ---- reading calls from the output ------------------------------------------------------


class ToolCallReader:
    """Splits the model's text into content and tool calls.

    Text is held back only while it could still be the start of the call markup; once it
    cannot, it streams as content. Calls are parsed when the reply ends.
    """

    def __init__(self, markup: ToolMarkup) -> None:
        self.markup = markup
        self.state = "undecided"  # | "text" | "calls"
        self.buffer = ""

    def feed(self, text: str) -> str:
        """Content to emit now."""
        if self.state == "text":
            return text
        self.buffer += text
        if self.state == "calls":
            return ""
        head = self.buffer.lstrip()
        if head.startswith(self.markup.start):
            self.state = "calls"
            return ""
        if self.markup.start.startswith(head):
            return ""
        self.state, out, self.buffer = "text", self.buffer, ""
        return out

    def finish(self, reason: FinishReason) -> tuple[str, tuple[ToolCall, ...], FinishReason]:
        """The remaining content, the calls, and the finish reason (`tool_calls` if any)."""
        if self.state != "calls":
            return self.buffer, (), reason
        calls = parse_calls(self.buffer, self.markup)
        if calls is None:  # cut short (max_tokens, cancel): hand back what was written
            return self.buffer, (), reason
        return "", calls, FinishReason.TOOL_CALLS if reason == FinishReason.STOP else reason


def parse_calls(text: str, markup: ToolMarkup) -> tuple[ToolCall, ...] | None:
    """The calls in `text`, or None if any block is unfinished or not valid JSON."""
    pattern = re.escape(markup.start) + r"(.*?)" + re.escape(markup.end)
    blocks = re.findall(pattern, text, flags=re.DOTALL)
    if not blocks or not text.rstrip().endswith(markup.end):
        return None
    items: list[Any] = []
    try:
        for block in blocks:
            parsed = json.loads(block)
            items.extend(parsed if markup.format == "array" else [parsed])
    except json.JSONDecodeError:
        return None
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        text_arguments = arguments if isinstance(arguments, str) else json.dumps(arguments)
        calls.append(ToolCall(ToolCall.new_id(), item["name"], text_arguments))
    return tuple(calls)


async def read_tool_calls(chunks: AsyncIterator[Chunk], markup: ToolMarkup) -> AsyncIterator[Chunk]:
    """The engine's chunks with the call markup taken out and calls on the final chunk."""
    reader = ToolCallReader(markup)
    try:
        async for chunk in chunks:
            text = reader.feed(chunk.text)
            if chunk.finish_reason is None:
                yield replace(chunk, text=text)
                continue
            rest, calls, reason = reader.finish(chunk.finish_reason)
            yield replace(chunk, text=text + rest, tool_calls=calls, finish_reason=reason)
            return
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
