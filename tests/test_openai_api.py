"""The OpenAI surface, driven by the official `openai` client (and httpx for bad input)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import Daemon


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused")


def chat(client: openai.OpenAI, content: str = "Hello, gateway!", **kwargs):
    return client.chat.completions.create(
        model=kwargs.pop("model", "tiny"),
        messages=[{"role": "user", "content": content}],
        **kwargs,
    )


def test_models_lists_model_aliases_and_profiles(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"tiny", "tiny:latest", "reasoning", "math", "coding"} <= ids


def test_non_streaming_chat_reports_usage_and_length(client: openai.OpenAI) -> None:
    reply = chat(client, max_tokens=12, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 12
    assert reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12
    assert reply.choices[0].message.content


def test_streaming_matches_non_streaming_and_ends_with_usage(client: openai.OpenAI) -> None:
    whole = chat(client, max_tokens=16, temperature=0).choices[0].message.content
    stream = chat(
        client, max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


def test_stop_string_cuts_the_reply_before_it(client: openai.OpenAI) -> None:
    full = chat(client, max_tokens=40, temperature=0).choices[0].message.content
    stop = full[10:13]
    cut = full[: full.index(stop)]
    for stream in (False, True):
        if stream:
            chunks = list(chat(client, max_tokens=40, temperature=0, stop=[stop], stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            reply = chat(client, max_tokens=40, temperature=0, stop=stop)
            text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert text == cut
        assert finish == "stop"


def test_text_completion_uses_the_raw_prompt(client: openai.OpenAI) -> None:
    raw = client.completions.create(model="tiny", prompt="Sensor 7", max_tokens=5, temperature=0)
    templated = chat(client, "Sensor 7", max_tokens=5, temperature=0)
    assert raw.object == "text_completion"
    assert raw.usage.completion_tokens == 5
    assert raw.usage.prompt_tokens < templated.usage.prompt_tokens  # no chat template
    streamed = client.completions.create(
        model="tiny", prompt="Sensor 7", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == raw.choices[0].text


def test_profile_adds_its_system_prompt(client: openai.OpenAI) -> None:
    plain = chat(client, max_tokens=1, temperature=0)
    reasoning = chat(client, model="reasoning", max_tokens=1, temperature=0)
    assert reasoning.usage.prompt_tokens > plain.usage.prompt_tokens + 10
    with_system = client.chat.completions.create(
        model="reasoning",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=1,
    )
    assert with_system.usage.prompt_tokens < reasoning.usage.prompt_tokens  # client's system wins


def test_sampling_parameters_are_accepted(client: openai.OpenAI) -> None:
    reply = chat(
        client,
        max_tokens=8,
        temperature=0.7,
        top_p=0.9,
        seed=3,
        extra_body={"top_k": 20, "repetition_penalty": 1.1},
    )
    assert reply.usage.completion_tokens <= 8


def test_reply_names_its_backend(daemon: Daemon) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = httpx.post(f"{daemon.url}/v1/chat/completions", json=body, timeout=30)
    assert response.headers["x-edge-backend"] == "local"
    assert response.headers["x-edge-provider"] == "cpu"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": "tiny", "messages": "hi"}, 400, "invalid_request", "messages"),
        ({"model": "tiny", "messages": []}, 400, "invalid_request", "messages"),
        (
            {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]},
            400,
            "invalid_request",
            "messages.0.role",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1},
            400,
            "invalid_request",
            "max_tokens",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            400,
            "invalid_request",
            "temperature",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2},
            400,
            "invalid_request",
            "n",
        ),
        (
            {"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model_not_found",
            "model",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000},
            400,
            "context_length_exceeded",
            "max_tokens",
        ),
    ],
)
def test_bad_requests_get_openai_errors(daemon: Daemon, body, status, code, param) -> None:
    response = httpx.post(f"{daemon.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]


def test_malformed_json_is_a_400(daemon: Daemon) -> None:
    response = httpx.post(
        f"{daemon.url}/v1/chat/completions",
        content=b'{"model": "tiny", "messages": [',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_prompt_longer_than_the_context_is_refused(client: openai.OpenAI, daemon: Daemon) -> None:
    context = daemon.status()["model"]["max_length"]
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, "sensor 7 reports the temperature " * context, max_tokens=1)
    assert raised.value.code == "context_length_exceeded"
    assert str(context) in raised.value.message
    assert chat(client, max_tokens=1).usage.completion_tokens == 1  # still serving


def test_openai_client_error_for_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        chat(client, model="llama-70b")
    assert "tiny" in raised.value.message


def test_a_vanishing_temperature_decodes_greedily(client: openai.OpenAI) -> None:
    # Found by schemathesis: 2e-220 with top_k made onnxruntime-genai refuse the turn (a 500).
    greedy = chat(client, max_tokens=8, temperature=0).choices[0].message.content
    tiny = chat(client, max_tokens=8, temperature=2e-220, top_p=0.5, extra_body={"top_k": 5})
    assert tiny.choices[0].message.content == greedy


@pytest.mark.parametrize(
    "body",
    [
        '{"messages": [{"role": "user", "content": "\\udb2a hi"}], "max_tokens": 2}',
        '{"messages": [{"role": "user", "content": "hi", "name": "\\udb2a"}], "max_tokens": 2}',
        '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "tools": [{"type":'
        ' "function", "function": {"name": "a", "description": "\\udb2a"}}]}',
    ],
)
def test_a_lone_surrogate_anywhere_is_a_400_not_a_500(daemon: Daemon, body: str) -> None:
    """Found by the fuzz: JSON escapes can make a lone UTF-16 surrogate, which no chat
    template or tokenizer can encode."""
    reply = httpx.post(f"{daemon.url}/v1/chat/completions", content=body.encode(),
                       headers={"content-type": "application/json"})  # fmt: skip
    assert reply.status_code == 400 and "surrogate" in reply.json()["error"]["message"]


def test_call_arguments_that_are_not_finite_json_go_to_the_template_as_text(
    client: openai.OpenAI,
) -> None:
    """Found by the fuzz: `Infinity` parses in Python but is no JSON for the template."""
    history = [
        {"role": "user", "content": "Area?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "area", "arguments": '{"r": Infinity, "s": 1e999}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "inf"},
    ]  # fmt: skip
    reply = client.chat.completions.create(model="tiny", messages=history, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"
