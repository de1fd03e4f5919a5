"""Tool calling and structured output that hold with a real small model (SmolLM2-135M),
whose chat template ignores `tools`: each test here failed before the fix it names."""

from __future__ import annotations

import json
import re

import jsonschema
import ollama
import openai
import pytest

from agent.engine.types import ChatRequest, Message, Tool
from tests.conftest import Daemon
from tests.real.conftest import NAME, run_on_engine

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
CIRCLE = {"type": "object", "properties": {"radius": {"type": "number"}}, "required": ["radius"]}
VALVE = {
    "type": "object",
    "properties": {"valve": {"type": "integer"}, "open": {"type": "boolean"}},
    "required": ["valve", "open"],
}
SCHEMAS = {"get_weather": WEATHER, "circle_area": CIRCLE, "set_valve": VALVE}
DESCRIPTIONS = {
    "get_weather": "Current weather in a city",
    "circle_area": "Area of a circle",
    "set_valve": "Open or close a valve",
}
TOOLS = [
    {"type": "function", "function": {"name": n, "description": DESCRIPTIONS[n], "parameters": s}}
    for n, s in SCHEMAS.items()
]
ASKS = [
    "What is the weather in Paris?",
    "How warm is it in Tokyo right now, in celsius?",
    "Compute the area of a circle with radius 163.13.",
    "Open valve 3.",
    "Close valve 7, please.",
    "What's the weather like in Berlin in fahrenheit?",
    "I need the area of a circle whose radius is 2.5 meters.",
    "Is it raining in London?",
]
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}
NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="none", max_retries=0)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assert_bounded_numbers(text: str) -> None:
    """At most 15 integer and 16 fraction digits (llama.cpp's JSON grammar bound)."""
    for match in NUMBER.finditer(text):
        whole, _, fraction = match.group(0).lstrip("-").partition(".")
        assert len(whole) <= 15 and len(fraction.split("e")[0].split("E")[0]) <= 16, text


def assert_valid(calls: list) -> None:
    assert calls, "no tool calls"
    seen = set()
    for call in calls:
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        assert_bounded_numbers(call.function.arguments)
        key = (call.function.name, json.dumps(arguments, sort_keys=True))
        assert key not in seen, f"repeated call {key}"
        seen.add(key)


def test_tools_reach_the_prompt_when_the_template_ignores_them(real_daemon: Daemon) -> None:
    """Before: 37 prompt tokens with or without the tool list."""
    ask = user(ASKS[0])
    plain = client(real_daemon).chat.completions.create(model=NAME, messages=ask, max_tokens=1)
    tooled = client(real_daemon).chat.completions.create(
        model=NAME, messages=ask, tools=TOOLS, tool_choice="none", max_tokens=1
    )
    assert tooled.usage.prompt_tokens == plain.usage.prompt_tokens  # `none`: no tools shown
    asked = client(real_daemon).chat.completions.create(
        model=NAME, messages=ask, tools=TOOLS, max_tokens=1
    )
    assert asked.usage.prompt_tokens > plain.usage.prompt_tokens + 100

    async def render(engine) -> str:
        request = ChatRequest(
            model=NAME,
            messages=(Message("user", ASKS[0]),),
            tools=tuple(Tool(n, DESCRIPTIONS[n], s) for n, s in SCHEMAS.items()),
        )
        return engine.render_prompt(request)

    prompt = run_on_engine("cpu-int4", render)
    assert prompt.startswith("<|im_start|>system\nYou can call these tools")
    for name, schema in SCHEMAS.items():
        assert (
            json.dumps({"name": name, "description": DESCRIPTIONS[name], "parameters": schema})
            in prompt
        )
    assert '<tool_call>\n{"name": "TOOL_NAME", "arguments": {ARGUMENTS}}\n</tool_call>' in prompt
    assert prompt.endswith(f"<|im_start|>user\n{ASKS[0]}<|im_end|>\n<|im_start|>assistant\n")


def test_required_calls_complete_within_max_tokens(real_daemon: Daemon) -> None:
    """Before: most replies ran to max_tokens (endless digits, repeated calls) and came
    back with no calls. Now a repeated call ends the reply, and where the model goes on
    calling (Paris in celsius, then in fahrenheit...) the calls made before the cut stay."""
    ended = 0
    for ask in ASKS:
        reply = client(real_daemon).chat.completions.create(
            model=NAME, messages=user(ask), tools=TOOLS, tool_choice="required",
            max_tokens=100, temperature=0,
        )  # fmt: skip
        choice = reply.choices[0]
        assert choice.finish_reason in ("tool_calls", "length"), (ask, choice)
        assert not choice.message.content
        assert_valid(choice.message.tool_calls)
        ended += choice.finish_reason == "tool_calls"
    assert ended >= len(ASKS) // 2


def test_parallel_tool_calls_false_gives_one_call_then_the_end(real_daemon: Daemon) -> None:
    for ask in ASKS[:3]:
        reply = client(real_daemon).chat.completions.create(
            model=NAME, messages=user(ask), tools=TOOLS, tool_choice="required",
            parallel_tool_calls=False, max_tokens=100, temperature=0,
        )  # fmt: skip
        assert reply.choices[0].finish_reason == "tool_calls"
        assert len(reply.choices[0].message.tool_calls) == 1
        assert_valid(reply.choices[0].message.tool_calls)


def test_a_cut_keeps_the_calls_completed_before_it(real_daemon: Daemon) -> None:
    """Before: the complete calls were thrown away and the markup came back as content."""
    body = dict(model=NAME, messages=user(ASKS[0]), tools=TOOLS, tool_choice="required",
                temperature=0)  # fmt: skip
    one = client(real_daemon).chat.completions.create(**body, parallel_tool_calls=False)
    size = one.usage.completion_tokens  # one call, its markup, the end
    cut = client(real_daemon).chat.completions.create(**body, max_tokens=size + 3)
    choice = cut.choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.content
    first = one.choices[0].message.tool_calls[0].function
    assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        (first.name, first.arguments)
    ]
    inside = client(real_daemon).chat.completions.create(**body, max_tokens=size - 4)
    assert inside.choices[0].finish_reason == "length"
    assert not inside.choices[0].message.content and not inside.choices[0].message.tool_calls
    talk = ollama.Client(host=real_daemon.url)
    profile = talk.chat(model=NAME, messages=user(ASKS[0]), tools=TOOLS,
                        options={"num_predict": size - 4, "temperature": 0})  # fmt: skip
    assert "<tool_call>" not in profile.message.content


def test_auto_mode_never_returns_markup_or_undeclared_calls(real_daemon: Daemon) -> None:
    for ask in ASKS[:4]:
        reply = client(real_daemon).chat.completions.create(
            model=NAME, messages=user(ask), tools=TOOLS, max_tokens=100, temperature=0
        )
        message = reply.choices[0].message
        assert "<tool_call>" not in (message.content or "")
        if message.tool_calls:
            assert_valid(message.tool_calls)


@pytest.mark.parametrize("route", ["openai", "ollama"])
def test_json_schema_output_has_only_declared_keys(real_daemon: Daemon, route: str) -> None:
    """Before: without additionalProperties the model invented keys until max_tokens."""
    ask = user("Give the largest city of France and its population as JSON.")
    if route == "openai":
        reply = client(real_daemon).chat.completions.create(
            model=NAME, messages=ask, max_tokens=100, temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}},
        )  # fmt: skip
        content, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    else:
        reply = ollama.Client(host=real_daemon.url).chat(
            model=NAME, messages=ask, format=CITY, options={"num_predict": 100, "temperature": 0}
        )
        content, finish = reply.message.content, reply.done_reason
    assert finish == "stop"
    document = json.loads(content)
    jsonschema.validate(document, {**CITY, "additionalProperties": False})
    assert_bounded_numbers(content)


def test_json_object_output_parses(real_daemon: Daemon) -> None:
    reply = client(real_daemon).chat.completions.create(
        model=NAME, messages=user("Describe pump 2 as a JSON object."), max_tokens=100,
        temperature=0, response_format={"type": "json_object"},
    )  # fmt: skip
    assert_bounded_numbers(reply.choices[0].message.content)
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
