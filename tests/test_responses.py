"""The Responses API (`/v1/responses`), driven by the official `openai` client's
`responses.create` and `responses.stream` against the real daemon. The bundled model is
random-weight: structure, counts and event order are checked, and greedy text only against
the same model's chat completion."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import Daemon, start_daemon

VALVE = {
    "type": "object",
    "properties": {
        "valve": {"type": "integer", "enum": [1, 2, 3, 4, 5, 6, 7, 8]},
        "open": {"type": "boolean"},
    },
    "required": ["valve", "open"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "name": "set_valve",
        "description": "Open or close a valve",
        "parameters": VALVE,
    }
]
READING = {
    "type": "object",
    "properties": {"sensor": {"type": "integer", "minimum": 0, "maximum": 99},
                   "status": {"enum": ["ok", "fault"]}},
    "required": ["sensor", "status"],
    "additionalProperties": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0)


def test_text_input_is_answered_with_one_message(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model="tiny", input="Hello, gateway!", max_output_tokens=8, temperature=0
    )
    assert reply.id.startswith("resp_") and reply.object == "response"
    assert reply.status == "incomplete"
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in reply.output] == ["message"]
    assert reply.output[0].role == "assistant" and reply.output_text
    assert reply.usage.output_tokens == 8
    assert reply.usage.total_tokens == reply.usage.input_tokens + 8
    assert reply.max_output_tokens == 8 and reply.temperature == 0


def test_instructions_and_messages_count_and_answer_as_a_chat(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model="tiny",
        instructions="Be brief.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}],
        max_output_tokens=12,
        temperature=0,
    )
    chat = client.chat.completions.create(
        model="tiny",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello!"},
        ],
        max_tokens=12,
        temperature=0,
    )
    assert reply.usage.input_tokens == chat.usage.prompt_tokens
    assert reply.output_text == chat.choices[0].message.content
    assert reply.instructions == "Be brief."


def test_stream_events_arrive_in_order_and_add_up(client: openai.OpenAI) -> None:
    whole = client.responses.create(model="tiny", input="Sensor 7", max_output_tokens=10,
                                    temperature=0)  # fmt: skip
    with client.responses.stream(
        model="tiny", input="Sensor 7", max_output_tokens=10, temperature=0
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert kinds[4:-4] == ["response.output_text.delta"] * len(deltas) and deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(deltas) == final.output_text == whole.output_text
    assert events[0].response.status == "in_progress"
    assert final.status == "incomplete" and final.usage.output_tokens == 10
    assert final.id == events[0].response.id


def test_previous_response_id_continues_the_conversation(
    client: openai.OpenAI, daemon: Daemon
) -> None:
    first = client.responses.create(model="tiny", input="Hello!", max_output_tokens=6)
    second = client.responses.create(
        model="tiny", input="And then?", previous_response_id=first.id, max_output_tokens=6
    )
    assert second.previous_response_id == first.id
    conversation = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And then?"},
    ]
    counted = httpx.post(f"{daemon.url}/tokenize", json={"messages": conversation}).json()
    assert second.usage.input_tokens == counted["count"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="tiny", input="x", previous_response_id="resp_nope")
    assert missing.value.body["param"] == "previous_response_id"


def test_stored_responses_are_bounded_by_the_setting() -> None:
    daemon = start_daemon("--http-max-stored-responses", "1")
    try:
        client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0)
        first = client.responses.create(input="One", max_output_tokens=2)
        second = client.responses.create(input="Two", max_output_tokens=2)
        client.responses.create(input="Go on", previous_response_id=second.id, max_output_tokens=2)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(input="x", previous_response_id=first.id, max_output_tokens=2)
        unstored = client.responses.create(input="Three", max_output_tokens=2, store=False)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(input="x", previous_response_id=unstored.id)
    finally:
        daemon.stop()


def test_tools_give_function_call_items_and_take_their_outputs(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model="tiny", input="Open valve 3.", tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=400, temperature=0,
    )  # fmt: skip
    calls = [item for item in reply.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "set_valve"
    assert calls[0].call_id.startswith("call_") and calls[0].status == "completed"
    jsonschema.validate(json.loads(calls[0].arguments), VALVE)
    assert reply.status == "completed"
    answer = client.responses.create(
        model="tiny",
        previous_response_id=reply.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "done"}],
        tools=TOOLS,
        tool_choice="none",
        max_output_tokens=4,
    )
    assert [item.type for item in answer.output] == ["message"]
    call = {
        "id": calls[0].call_id,
        "type": "function",
        "function": {"name": "set_valve", "arguments": calls[0].arguments},
    }
    chat = client.chat.completions.create(
        model="tiny", max_tokens=1, tool_choice="none",
        tools=[{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
               for t in TOOLS],
        messages=[{"role": "user", "content": "Open valve 3."},
                  {"role": "assistant", "content": None, "tool_calls": [call]},
                  {"role": "tool", "tool_call_id": calls[0].call_id, "content": "done"}],
    )  # fmt: skip
    assert answer.usage.input_tokens == chat.usage.prompt_tokens


def test_streamed_function_calls_carry_their_arguments(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="tiny", input="Open valve 3.", tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=400, temperature=0,
    ) as stream:  # fmt: skip
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[-5:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    call = final.output[-1]
    assert call.type == "function_call" and done.arguments == call.arguments
    jsonschema.validate(json.loads(call.arguments), VALVE)


def test_text_format_json_schema_constrains_the_output(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model="tiny", input="Sensor 4 status?", max_output_tokens=2000,
        text={"format": {"type": "json_schema", "name": "reading", "schema": READING}},
    )  # fmt: skip
    assert reply.status == "completed"
    jsonschema.validate(json.loads(reply.output_text), READING)
    assert reply.text.format.type == "json_schema"


def test_bad_requests_are_openai_400s(client: openai.OpenAI) -> None:
    for kwargs in (
        {"input": []},
        {"input": "x", "tool_choice": "required"},
        {"input": "x", "tools": [{"type": "web_search"}]},
        {"input": "x", "text": {"format": {"type": "json_schema", "name": "r"}}},
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model="tiny", **kwargs)
        assert raised.value.body["code"] == "invalid_request"
