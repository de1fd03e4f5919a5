"""Function calling and structured output, over HTTP (OpenAI and Ollama clients), MQTT and
cloud pass-through, with real guidance-constrained decoding on the bundled model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import llguidance
import ollama
import onnxruntime_genai as og
import openai
import pytest

from agent.engine.tool_calls import (
    Guidance,
    ToolCallReader,
    guidance_for,
    render_prompt,
    template_inputs,
)
from agent.engine.types import (
    ChatRequest,
    EngineError,
    FinishReason,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
)
from agent.models.info import ToolMarkup
from tests.conftest import TINY, Daemon, start_daemon
from tests.mqtt_support import Broker, Device

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Oslo", "Lyon", "Pune", "Quito"]},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
VALVE = {
    "type": "object",
    "properties": {
        "valve": {"type": "integer", "enum": [1, 2, 3, 4, 5, 6, 7, 8]},
        "open": {"type": "boolean"},
    },
    "required": ["valve", "open"],
    "additionalProperties": False,
}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "set_valve", "description": "Open or close a valve",
                                      "parameters": VALVE}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "set_valve": VALVE}
READING = {
    "type": "object",
    "properties": {
        "sensor": {"type": "integer", "minimum": 0, "maximum": 99},
        "status": {"enum": ["ok", "fault"]},
        "alarm": {"type": "boolean"},
    },
    "required": ["sensor", "status", "alarm"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Open valve 3 and tell me the weather in Oslo."}]
F_AND_G = ChatRequest(
    model="m",
    tools=(
        Tool("f", "", {"type": "object", "properties": {"a": {"type": "integer"}},
                       "additionalProperties": False}),
        Tool("g", "", {"type": "object"}),
    ),
)  # fmt: skip
TOKENIZER = llguidance.LLTokenizer(str(TINY / "cpu-int4" / "tokenizer.json"))
CONFIG = """
[profiles.actuator]
description = "Device control: every reply is a call"
tool_choice = "required"
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tools") / "edge-agent.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def agent(config: Path) -> Iterator[Daemon]:
    instance = start_daemon("--config", str(config))
    yield instance
    instance.stop()


def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="none", max_retries=0)


def assert_valid_calls(calls: list, names: set[str] | None = None) -> None:
    assert calls, "no tool calls"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in (names or SCHEMAS)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


# ---- OpenAI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [True, False])
def test_required_tool_calls_parse_and_validate(agent: Daemon, parallel: bool) -> None:
    reply = client(agent).chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=parallel, max_tokens=1200, temperature=0,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert_valid_calls(choice.message.tool_calls)
    if not parallel:
        assert len(choice.message.tool_calls) == 1


def test_named_tool_choice_calls_that_tool(agent: Daemon) -> None:
    for name in SCHEMAS:
        reply = client(agent).chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, max_tokens=400,
            tool_choice={"type": "function", "function": {"name": name}},
        )  # fmt: skip
        assert reply.choices[0].finish_reason == "tool_calls"
        assert len(reply.choices[0].message.tool_calls) == 1
        assert_valid_calls(reply.choices[0].message.tool_calls, {name})


def test_streamed_tool_calls_reassemble_to_the_same_call(agent: Daemon) -> None:
    body = dict(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                parallel_tool_calls=False, max_tokens=400, temperature=0)  # fmt: skip
    whole = client(agent).chat.completions.create(**body).choices[0].message.tool_calls[0]
    calls: dict[int, dict] = {}
    finish = None
    for event in client(agent).chat.completions.create(**body, stream=True):
        for piece in event.choices[0].delta.tool_calls or ():
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            call["name"] += piece.function.name or ""
            call["arguments"] += piece.function.arguments or ""
        finish = event.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert len(calls) == 1 and calls[0]["id"].startswith("call_")
    assert (calls[0]["name"], calls[0]["arguments"]) == (
        whole.function.name,
        whole.function.arguments,
    )


def test_auto_and_none_answer_in_text(agent: Daemon) -> None:
    for choice in ("auto", "none"):
        reply = client(agent).chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=40,
            temperature=0,
        )  # fmt: skip
        message = reply.choices[0].message
        if message.tool_calls:  # the random model may pick a call under auto
            assert choice == "auto" and reply.choices[0].finish_reason == "tool_calls"
            assert_valid_calls(message.tool_calls)
        else:
            assert message.content and reply.choices[0].finish_reason in ("stop", "length")


def test_a_conversation_with_calls_and_results_continues(agent: Daemon) -> None:
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "set_valve", "arguments": '{"valve": 3, "open": true}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
    ]  # fmt: skip
    reply = client(agent).chat.completions.create(
        model="tiny", messages=messages, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, max_tokens=400,
    )  # fmt: skip
    assert_valid_calls(reply.choices[0].message.tool_calls)
    plain = client(agent).chat.completions.create(model="tiny", messages=ASK, max_tokens=1)
    # The call, its result and the tool list are all in the rendered prompt.
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens + 300


def test_chat_template_renders_tools_calls_and_results() -> None:
    tokenizer = og.Tokenizer(og.Model(str(TINY / "cpu-int4")))
    request = ChatRequest(
        model="tiny",
        messages=(
            Message("user", "Open valve 3"),
            Message("assistant", "", (ToolCall("call_1", "set_valve", '{"valve": 3}'),)),
            Message("tool", '{"ok": true}', tool_call_id="call_1"),
        ),
        tools=(Tool("set_valve", "Open or close a valve", VALVE),),
    )
    text = render_prompt(tokenizer, request, ToolMarkup())
    assert '<tool_call>{"name": "set_valve", "arguments": {"valve": 3}}</tool_call>' in text
    assert '<tool_response>{"ok": true}</tool_response>' in text
    assert '"description": "Open or close a valve"' in text
    assert text.endswith("<|im_start|>assistant\n")


def test_response_format_json_schema_output_validates(agent: Daemon) -> None:
    reply = client(agent).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Sensor 4 status?"}], max_tokens=2000,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": READING}},
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), READING)


def test_response_format_json_object_output_parses(agent: Daemon) -> None:
    # A random-weight model can write one endless key; sampled tries end soon enough.
    finished = []
    for _ in range(8):
        reply = client(agent).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Sensor 4 status?"}],
            response_format={"type": "json_object"}, max_tokens=600, temperature=1.0,
        )  # fmt: skip
        content = reply.choices[0].message.content
        assert content.startswith("{")
        if reply.choices[0].finish_reason == "stop":
            finished.append(json.loads(content))
    assert finished and all(isinstance(document, dict) for document in finished)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
          "schema": {"type": "strin"}}}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f",
          "parameters": {"type": "object", "properties": {"a": {"minimum": "x"}}}}}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)  # fmt: skip
def test_bad_schemas_and_choices_are_refused_before_generation(
    agent: Daemon, body: dict, param: str
) -> None:
    before = sum(agent.status()["finished"].values())
    reply = httpx.post(
        f"{agent.url}/v1/chat/completions",
        json={"model": "tiny", "messages": ASK, **body},
        timeout=30,
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == param and error["message"]
    assert sum(agent.status()["finished"].values()) == before  # nothing was generated
    assert client(agent).chat.completions.create(model="tiny", messages=ASK, max_tokens=2)


# ---- Ollama ---------------------------------------------------------------------------------


def test_ollama_format_json_and_schema(agent: Daemon) -> None:
    talk = ollama.Client(host=agent.url)
    messages = [{"role": "user", "content": "Sensor 4 status?"}]
    loose = [
        talk.chat(model="tiny", messages=messages, format="json",
                  options={"num_predict": 600, "temperature": 1.0})
        for _ in range(8)
    ]  # fmt: skip
    done = [json.loads(r.message.content) for r in loose if r.done_reason == "stop"]
    assert done and all(isinstance(document, dict) for document in done)
    strict = talk.chat(
        model="tiny", messages=messages, format=READING, options={"num_predict": 2000}
    )
    jsonschema.validate(json.loads(strict.message.content), READING)
    generated = talk.generate(model="tiny", prompt="Sensor 4?", format=READING,
                              options={"num_predict": 2000})  # fmt: skip
    jsonschema.validate(json.loads(generated.response), READING)


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_tool_calls_have_object_arguments(agent: Daemon, stream: bool) -> None:
    talk = ollama.Client(host=agent.url)
    # Ollama has no tool_choice: the `actuator` profile requires a call.
    reply = talk.chat(model="actuator", messages=ASK, tools=TOOLS, stream=stream,
                      options={"num_predict": 1200})  # fmt: skip
    parts = list(reply) if stream else [reply]
    calls = [call for part in parts for call in part.message.tool_calls or ()]
    assert calls and parts[-1].done
    for call in calls:
        assert isinstance(call.function.arguments, dict)
        jsonschema.validate(dict(call.function.arguments), SCHEMAS[call.function.name])


# ---- MQTT and the cloud ---------------------------------------------------------------------


def test_mqtt_final_carries_tool_calls_and_structured_text(tmp_path, config: Path) -> None:
    broker = Broker(tmp_path).start()
    gateway = start_daemon("--config", str(config), "--mqtt-url", broker.url,
                           "--device-id", "gw-tools")  # fmt: skip
    try:
        device = Device(broker)
        body = {"model": "tiny", "messages": ASK, "tools": TOOLS, "tool_choice": "required",
                "max_tokens": 1200}  # fmt: skip
        final = device.replies(device.request("gw-tools", body))[-1]
        assert final["type"] == "final" and final["finish_reason"] == "tool_calls"
        for call in final["tool_calls"]:
            arguments = json.loads(call["function"]["arguments"])
            jsonschema.validate(arguments, SCHEMAS[call["function"]["name"]])
        reading = {"type": "json_schema", "json_schema": {"name": "r", "schema": READING}}
        body = {"model": "tiny", "messages": ASK, "max_tokens": 2000, "response_format": reading}
        final = device.replies(device.request("gw-tools", body))[-1]
        jsonschema.validate(json.loads(final["text"]), READING)
        bad = {"model": "tiny", "messages": ASK, "response_format":
               {"type": "json_schema", "json_schema": {"schema": {"type": "strin"}}}}  # fmt: skip
        rejected = device.replies(device.request("gw-tools", bad))[-1]
        assert rejected["type"] == "rejected" and rejected["code"] == "invalid_schema"
    finally:
        gateway.stop()
        broker.stop()


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_cloud_pass_through_keeps_tools_and_formats(
    daemon_factory, config: Path, kind: str
) -> None:
    cloud = daemon_factory("--config", str(config))
    # An Ollama endpoint cannot take tool_choice: its model is the cloud's `actuator` profile.
    endpoint = f"openai={cloud.url}/v1" if kind == "openai" else f"ollama={cloud.url}#actuator"
    gateway = daemon_factory("--cloud", endpoint, "--default-route", "cloud_only")
    reply = client(gateway).chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=1200
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    assert_valid_calls(reply.choices[0].message.tool_calls)
    assert reply.model_extra["backend"].startswith(kind)
    shaped = client(gateway).chat.completions.create(
        model="tiny", messages=ASK, max_tokens=2000,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": READING}},
    )  # fmt: skip
    jsonschema.validate(json.loads(shaped.choices[0].message.content), READING)
    via_ollama = ollama.Client(host=gateway.url).chat(
        model="tiny", messages=ASK, tools=TOOLS, options={"num_predict": 1200}
    )
    if kind == "ollama":  # the cloud's profile requires a call; back in Ollama's shape
        assert via_ollama.message.tool_calls
        assert all(isinstance(c.function.arguments, dict) for c in via_ollama.message.tool_calls)


# ---- the pieces on their own ----------------------------------------------------------------


def test_reader_streams_text_and_holds_back_only_possible_markup() -> None:
    reader = ToolCallReader(F_AND_G, ToolMarkup())
    assert reader.feed("<to") == ""  # could still be a call
    assert reader.feed("ast is ready") == "<toast is ready"
    assert reader.feed(" now") == " now"
    assert reader.finish(FinishReason.STOP) == ("", (), FinishReason.STOP)

    calls = ToolCallReader(F_AND_G, ToolMarkup())
    for piece in [" <tool", '_call>{"name": "f", "arguments": {"a": 1}}</tool_call>', "\n",
                  '<tool_call>{"name": "g", "arguments": {}}</tool_call>']:  # fmt: skip
        assert calls.feed(piece) == ""
    text, found, reason = calls.finish(FinishReason.STOP)
    assert text == "" and reason == FinishReason.TOOL_CALLS
    assert [(c.name, json.loads(c.arguments)) for c in found] == [("f", {"a": 1}), ("g", {})]

    before = ToolCallReader(F_AND_G, ToolMarkup())
    assert before.feed("Let me check.\n<tool_") == "Let me check."
    before.feed('call>\n{"name": "g", "arguments": {}}\n</tool_call>')
    assert before.finish(FinishReason.STOP)[1:] == (before.calls and tuple(before.calls),
                                                    FinishReason.TOOL_CALLS)  # fmt: skip


def test_a_cut_returns_the_completed_calls_and_never_markup() -> None:
    cut = ToolCallReader(F_AND_G, ToolMarkup())
    cut.feed('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n<tool_call>{"name": "g"')
    text, calls, reason = cut.finish(FinishReason.LENGTH)
    assert (text, [c.name for c in calls], reason) == ("", ["f"], FinishReason.LENGTH)
    inside = ToolCallReader(F_AND_G, ToolMarkup())
    inside.feed('<tool_call>{"name": "f", "argu')
    assert inside.finish(FinishReason.LENGTH) == ("", (), FinishReason.LENGTH)


def test_the_reader_drops_undeclared_tools_and_invalid_arguments() -> None:
    reader = ToolCallReader(F_AND_G, ToolMarkup())
    for block in ['{"name": "format_disk", "arguments": {}}',
                  '{"name": "f", "arguments": {"a": "x"}}',
                  '{"name": "f", "arguments": {"a": 1, "b": 2}}', '{"name": "f", "arguments": 3}',
                  '{"name": "g", "arguments": {"x": 1e400}}',
                  '{"name": "f", "arguments": {"a": 2}}']:  # fmt: skip
        reader.feed(f"<tool_call>{block}</tool_call>")
    _, calls, reason = reader.finish(FinishReason.STOP)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 2})]
    assert reason == FinishReason.TOOL_CALLS
    nothing = ToolCallReader(F_AND_G, ToolMarkup())
    nothing.feed('<tool_call>{"name": "format_disk", "arguments": {}}</tool_call>')
    assert nothing.finish(FinishReason.STOP) == ("", (), FinishReason.STOP)


def test_a_repeated_call_ends_the_reply() -> None:
    stopped = []
    reader = ToolCallReader(F_AND_G, ToolMarkup(), stop=lambda: stopped.append(True))
    call = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n'
    reader.feed(call + '<tool_call>{"name": "f", "arguments": {"a": 2}}</tool_call>\n')
    assert not stopped
    reader.feed(call + call)
    assert stopped == [True]
    assert reader.feed("<tool_call>") == ""
    _, calls, reason = reader.finish(FinishReason.CANCELLED)  # the engine was stopped
    assert reason == FinishReason.TOOL_CALLS and len(calls) == 2


def accepts(guidance: Guidance, text: str) -> bool:
    """Whether the grammar takes `text` whole (llguidance, the tiny model's tokenizer)."""
    kind = "lark" if guidance.kind == "lark_grammar" else "json"
    matcher = llguidance.LLMatcher(
        TOKENIZER, llguidance.grammar_from(kind, guidance.data), log_level=0
    )
    ids = TOKENIZER.tokenize_str(text)
    return matcher.consume_tokens(ids) and matcher.is_accepting() and not matcher.is_error()


def test_numbers_in_generated_json_are_bounded() -> None:
    """15 integer and 16 fraction digits at most: a small model otherwise writes
    163.1333333... until max_tokens."""
    shape = {"type": "object", "properties": {"r": {"type": "number"}, "n": {"type": "integer"}},
             "required": ["r", "n"]}  # fmt: skip
    request = ChatRequest(model="m", response_format=ResponseFormat("json_schema", shape))
    grammar = guidance_for(request, ToolMarkup(), special=False)
    assert accepts(grammar, '{"r":1.1234567890123456,"n":123456789012345}')
    assert not accepts(grammar, '{"r":1.12345678901234567,"n":1}')
    assert not accepts(grammar, '{"r":1,"n":1234567890123456}')
    assert not accepts(grammar, '{"r":1234567890123456.5,"n":1}')
    assert accepts(grammar, '{"r":1.5e-99,"n":0}')
    assert not accepts(grammar, '{"r":1e400,"n":1}')  # inf: not JSON, a 500 at Ollama's encoder
    tools = ChatRequest(
        model="m", tools=(Tool("f", "", shape),), tool_choice=ToolChoice("required")
    )
    call = guidance_for(tools, ToolMarkup(), special=False)
    assert accepts(call, '<tool_call>{"name":"f","arguments":{"r":-0.5,"n":7}}</tool_call>')
    assert not accepts(call, '<tool_call>{"name":"f","arguments":{"r":0.33333333333333333')


def test_response_format_objects_take_only_declared_keys() -> None:
    open_shape = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = ChatRequest(model="m", response_format=ResponseFormat("json_schema", open_shape))
    grammar = guidance_for(request, ToolMarkup(), special=False)
    assert accepts(grammar, '{"city":"Lyon"}') and accepts(grammar, "{}")
    assert not accepts(grammar, '{"city":"Lyon","population_years_per_year":111}')
    declared = {**open_shape, "additionalProperties": {"type": "integer"}}
    request = ChatRequest(model="m", response_format=ResponseFormat("json_schema", declared))
    assert accepts(guidance_for(request, ToolMarkup(), special=False), '{"city":"Lyon","n":1}')
    loose = ChatRequest(model="m", response_format=ResponseFormat("json_object"))
    assert accepts(guidance_for(loose, ToolMarkup(), special=False), '{"any":[1,{"b":null}]}')


def test_auto_mode_constrains_everything_after_the_call_markup() -> None:
    """Before: a text branch that took anything, so `format_disk` passed as a call."""
    request = ChatRequest(model="m", tools=(Tool("set_valve", "", VALVE),))
    grammar = guidance_for(request, ToolMarkup(), special=False)
    assert accepts(grammar, "The valve is open. <tool> tags are fine.")
    call = '<tool_call>\n{"name":"set_valve","arguments":{"valve":3,"open":true}}\n</tool_call>'
    assert accepts(grammar, call)
    assert accepts(grammar, "Opening it now.\n" + call)
    assert not accepts(grammar, '<tool_call>\n{"name":"format_disk","arguments":{}}\n</tool_call>')
    assert not accepts(grammar, call.replace("3", "9"))  # not in the valve enum
    assert not accepts(grammar, call + " and more text")


def test_json_style_compact_by_default_or_spaced() -> None:
    request = ChatRequest(
        model="m", tools=(Tool("set_valve", "", VALVE),), tool_choice=ToolChoice("required")
    )
    spaced = '<tool_call>{"name": "set_valve", "arguments": {"valve": 3, "open": true}}</tool_call>'
    compact = '<tool_call>{"name":"set_valve","arguments":{"valve":3,"open":true}}</tool_call>'
    default = guidance_for(request, ToolMarkup(), special=False)
    assert accepts(default, compact) and not accepts(default, spaced)
    loose = guidance_for(request, ToolMarkup(json_style="spaced"), special=False)
    assert accepts(loose, spaced) and not accepts(loose, compact)


def test_phi4_markup_array_format_and_special_tokens() -> None:
    phi4 = ToolMarkup(start="<|tool_call|>", end="<|/tool_call|>", format="array",
                      tools_in_system=True)  # fmt: skip
    request = ChatRequest(
        model="m",
        messages=(Message("user", "hi"),),
        tools=(Tool("f", "", VALVE), Tool("g", "", {"type": "object"})),
        tool_choice=ToolChoice("required"),
    )
    reader = ToolCallReader(request, phi4)
    reader.feed('<|tool_call|>[{"name": "f", "arguments": {"valve": 1, "open": false}}, '
                '{"name": "g", "arguments": {}}]<|/tool_call|>')  # fmt: skip
    assert [c.name for c in reader.finish(FinishReason.STOP)[1]] == ["f", "g"]
    grammar = guidance_for(request, phi4, special=True)
    assert grammar.kind == "lark_grammar"
    assert "calls: <|tool_call|> calls_after" in grammar.data
    assert 'calls_after: "[" call ("," call){0,7} "]" <|/tool_call|>' in grammar.data
    messages, _ = template_inputs(request, phi4)
    system = messages[0]
    assert system["role"] == "system" and json.loads(system["tools"])[0]["function"]["name"] == "f"
    with pytest.raises(EngineError) as refused:
        guidance_for(
            ChatRequest(model="m", tools=(Tool("f", "", {"type": "wrong"}),)), phi4, special=True
        )
    assert refused.value.param == "tools"
