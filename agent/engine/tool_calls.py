"""Tools and structured output on the local engine.

Three parts: the prompt (the chat template's own rendering, or, for a template that
ignores `tools`, a system block listing them in the model's call markup), the guidance
grammar that makes the output parse (onnxruntime-genai's llguidance; JSON rules from
json_grammar), and the reader that turns the model's markup into ToolCalls, checking
each call's name and arguments. Grammars are checked with the llguidance package before
a request is queued, so a schema that cannot compile is refused with a 400 before any
generation.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from typing import Any

import llguidance

from agent.engine.json_grammar import JsonRules, SchemaError, conforms, literal
from agent.engine.types import (
    ChatRequest,
    Chunk,
    EngineError,
    ErrorCode,
    FinishReason,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
)
from agent.models.info import ToolMarkup


@dataclass(frozen=True)
class Guidance:
    """What og.TurnOptions.set_guidance takes: `json_schema` or `lark_grammar`, and text."""

    kind: str
    data: str


# ---- the prompt -------------------------------------------------------------------------


def render_prompt(tokenizer: Any, request: ChatRequest, markup: ToolMarkup) -> str:
    """The prompt for `request` through the model's chat template (an og.Tokenizer).

    A template that ignores `tools` (SmolLM2's, like many) renders the same text with or
    without them, and the model never learns which tools exist: then the tools go into a
    system block in the model's markup, as llama.cpp's generic handler does, and earlier
    calls into their assistant turns."""

    def apply(messages: list[dict[str, Any]], tools: str | None) -> str:
        return str(
            tokenizer.apply_chat_template(
                json.dumps(messages), tools=tools, add_generation_prompt=True
            )
        )

    messages, tools = template_inputs(request, markup)
    prompt = apply(messages, tools)
    if tools is None or prompt != apply([_message_dict(m) for m in request.messages], None):
        return prompt
    return apply(_with_tool_prompt(request, markup), None)


def template_inputs(
    request: ChatRequest, markup: ToolMarkup
) -> tuple[list[dict[str, Any]], str | None]:
    """The messages and the tools JSON (None without tools) for apply_chat_template."""
    messages = [_message_dict(m) for m in request.messages]
    if not request.calls_tools:
        return messages, None
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
    return messages, json.dumps(tools)


def tool_prompt(tools: tuple[Tool, ...], markup: ToolMarkup) -> str:
    """The system block that teaches a model whose template has no tools section."""
    listed = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters})
        for t in tools
    )
    example = '{"name": "TOOL_NAME", "arguments": {ARGUMENTS}}'
    if markup.format == "array":
        example = f"[{example}]"
    return (
        "You can call these tools (each with a JSON schema of its arguments):\n"
        f"{listed}\n"
        f"To call a tool, reply with only:\n{markup.start}\n{example}\n{markup.end}"
    )


def _with_tool_prompt(request: ChatRequest, markup: ToolMarkup) -> list[dict[str, Any]]:
    messages = []
    for message in request.messages:
        entry = _message_dict(message)
        if entry.pop("tool_calls", None):
            entry["content"] = (message.content or "") + _calls_text(message.tool_calls, markup)
        messages.append(entry)
    block = tool_prompt(request.tools, markup)
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{block}".lstrip()
    else:
        messages.insert(0, {"role": "system", "content": block})
    return messages


def _calls_text(calls: tuple[ToolCall, ...], markup: ToolMarkup) -> str:
    items = [{"name": c.name, "arguments": _json_or_text(c.arguments)} for c in calls]
    if markup.format == "array":
        return f"{markup.start}{json.dumps(items)}{markup.end}"
    return "".join(f"{markup.start}\n{json.dumps(item)}\n{markup.end}" for item in items)


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
    """Chat templates expect arguments as an object; OpenAI clients send JSON text. Text
    that parses to NaN or an infinity (`Infinity`, `1e999`) stays text: written back it
    would not be JSON, and the template's parser refuses it."""
    try:
        value = json.loads(arguments)
        json.dumps(value, allow_nan=False)
    except ValueError:
        return arguments
    return value


# ---- guidance ---------------------------------------------------------------------------


def guidance_for(
    request: ChatRequest, markup: ToolMarkup, special: bool, max_calls: int = 8
) -> Guidance | None:
    """The grammar the output must follow, or None for free text.

    `special`: the markup strings are single special tokens (Phi-4-mini's `<|tool_call|>`),
    which llguidance matches by token, not by text. `max_calls` bounds parallel calls.
    In `auto` mode the text is free until it writes the call markup; from there on only
    calls to the declared tools, with valid arguments, can follow.
    """
    rules = JsonRules(markup.json_style)
    param = "tools" if request.calls_tools else "response_format"
    try:
        output = _output_rule(rules, request.response_format)
        if not request.calls_tools:
            if output is None:
                return None
            return _checked(_grammar([f"start: {output}"], rules), param)
        calls = _calls_rules(request, markup, special, max_calls, rules)
    except SchemaError as exc:
        raise _invalid(param, str(exc)) from None
    if request.choice.mode == "required":
        top = ["start: calls"]
    elif special:
        top = [f"start: {output} | calls" if output else "start: TEXT calls?", "TEXT: /(?s:.*)/"]
    elif output:
        top = [f"start: {output} | calls"]
    else:
        start = literal(markup.start)
        # The text branch cannot hold the markup; the lazy head ends at its first start.
        top = [
            "start: TEXT | head calls_after",
            f"TEXT: /(?s:.*)/ & ~/(?s:.*){_regex_escape(markup.start)}(?s:.*)/",
            f"head[lazy]: /(?s:.*)/ {start}",
        ]
    return _checked(_grammar(top + calls, rules), param)


def _calls_rules(
    request: ChatRequest, markup: ToolMarkup, special: bool, max_calls: int, rules: JsonRules
) -> list[str]:
    tools = request.tools
    if request.choice.name is not None:
        tools = tuple(t for t in tools if t.name == request.choice.name)
    alternatives = []
    for tool in tools:
        head = "{" + rules.dumps("name") + rules.colon + rules.dumps(tool.name) + rules.comma
        head += rules.dumps("arguments") + rules.colon
        alternatives.append(f'{literal(head)} {rules.rule(tool.parameters, "args")} "}}"')
    start, end = (
        (markup.start, markup.end) if special else (literal(markup.start), literal(markup.end))
    )
    # A named tool_choice means one call to that tool, as in OpenAI's API and vLLM.
    parallel = request.parallel_tool_calls and request.choice.name is None
    extra = max_calls - 1 if parallel else 0
    if markup.format == "array":
        more = f" ({literal(rules.comma)} call){{0,{extra}}}" if extra else ""
        lines = [f"calls: {start} calls_after", f'calls_after: "[" call{more} "]" {end}']
    else:
        more = f' ("\\n"? block){{0,{extra}}}' if extra else ""
        lines = [
            f"calls: {start} calls_after",
            f'calls_after: "\\n"? call "\\n"? {end}{more} "\\n"?',
            f'block: {start} "\\n"? call "\\n"? {end}',
        ]
    return [*lines, "call: " + " | ".join(alternatives)]


def _output_rule(rules: JsonRules, response_format: ResponseFormat | None) -> str | None:
    if response_format is None:
        return None
    return rules.rule(response_format.schema or {"type": "object"}, "out")


def _grammar(top: list[str], rules: JsonRules) -> Guidance:
    return Guidance("lark_grammar", "\n".join(top + rules.lines()))


def _regex_escape(text: str) -> str:
    """`text` as a literal inside a lark /regex/ (Rust regex syntax)."""
    return "".join(f"\\{c}" if c in "\\.+*?()|[]{}^$#&-~/" else c for c in text)


def _checked(guidance: Guidance, param: str) -> Guidance:
    try:
        problem = llguidance.LLMatcher.validate_grammar(
            llguidance.grammar_from("lark", guidance.data)
        )
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise _invalid(param, problem.strip().splitlines()[0])
    return guidance


def _invalid(param: str, detail: str) -> EngineError:
    message = f"{param}: the schema cannot be compiled: {detail}"
    return EngineError(ErrorCode.INVALID_SCHEMA, message, param=param)


# ---- reading calls from the output ------------------------------------------------------


class ToolCallReader:
    """Splits the model's text into content and checked tool calls, as it streams.

    Text streams as content except what could still be the start of the call markup.
    From the markup on, each complete call is parsed and checked (a declared tool, valid
    arguments); an invalid one is dropped, never returned. A call identical to an earlier
    one ends the reply (a small model repeats itself until max_tokens): `stop` is called
    so the engine stops generating.
    """

    def __init__(
        self, request: ChatRequest, markup: ToolMarkup, stop: Callable[[], object] = lambda: None
    ) -> None:
        self.markup = markup
        self.tools = {t.name: t for t in request.tools}
        self.stop = stop
        self.in_calls = False
        self.buffer = ""
        self.calls: list[ToolCall] = []
        self._seen: set[tuple[str, str]] = set()
        self.stopped = False  # this reader ended the reply

    def feed(self, text: str) -> str:
        """Content to emit now."""
        if self.stopped:
            return ""
        self.buffer += text
        if self.in_calls:
            self._take_calls()
            return ""
        found = self.buffer.find(self.markup.start)
        if found >= 0:
            content = self.buffer[:found].rstrip()
            self.buffer = self.buffer[found + len(self.markup.start) :]
            self.in_calls = True
            self._take_calls()
            return content
        keep = _held_back(self.buffer, self.markup.start)
        out, self.buffer = (
            self.buffer[: len(self.buffer) - keep],
            self.buffer[len(self.buffer) - keep :],
        )
        return out

    def finish(self, reason: FinishReason) -> tuple[str, tuple[ToolCall, ...], FinishReason]:
        """The remaining content, the calls, and the finish reason (`tool_calls` if any
        calls and the reply ended by itself; `length` stays, with the calls made)."""
        if not self.in_calls:
            return self.buffer, (), reason
        if self.stopped or reason == FinishReason.STOP:
            reason = FinishReason.TOOL_CALLS if self.calls else FinishReason.STOP
        return "", tuple(self.calls), reason

    def _take_calls(self) -> None:
        end = self.markup.end
        while not self.stopped and end in self.buffer:
            block, self.buffer = self.buffer.split(end, 1)
            start = block.find(self.markup.start)
            if start >= 0:
                block = block[start + len(self.markup.start) :]
            for call in self._parse(block):
                key = (call.name, json.dumps(json.loads(call.arguments), sort_keys=True))
                if key in self._seen:
                    self.stopped = True
                    self.stop()
                    return
                self._seen.add(key)
                self.calls.append(call)

    def _parse(self, block: str) -> list[ToolCall]:
        try:
            parsed = json.loads(block, parse_float=_finite, parse_constant=_finite)
        except ValueError:
            return []
        items = parsed if self.markup.format == "array" else [parsed]
        return [call for item in items if (call := self._checked_call(item)) is not None]

    def _checked_call(self, item: Any) -> ToolCall | None:
        if not isinstance(item, dict) or item.get("name") not in self.tools:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        if not conforms(arguments, self.tools[item["name"]].parameters):
            return None
        return ToolCall(ToolCall.new_id(), item["name"], json.dumps(arguments))


def _finite(text: str) -> float:
    """JSON numbers as floats, refusing what is not JSON (1e400 is inf, NaN)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _held_back(text: str, start: str) -> int:
    """How many characters at the end of `text` could still begin the markup (with the
    whitespace before them, which is dropped if the markup follows)."""
    for size in range(min(len(start) - 1, len(text)), 0, -1):
        if start.startswith(text[-size:]):
            return size + len(text[:-size]) - len(text[:-size].rstrip())
    return len(text) - len(text.rstrip())


async def read_tool_calls(
    chunks: AsyncGenerator[Chunk, None],
    request: ChatRequest,
    markup: ToolMarkup,
    stop: Callable[[], object] = lambda: None,
) -> AsyncGenerator[Chunk, None]:
    """The engine's chunks with the call markup taken out and calls on the final chunk."""
    reader = ToolCallReader(request, markup, stop)
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
        await chunks.aclose()
