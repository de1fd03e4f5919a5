"""The Ollama surface, driven by the official `ollama` client."""

from __future__ import annotations

import httpx
import ollama
import pytest

from tests.conftest import Daemon


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> ollama.Client:
    return ollama.Client(host=daemon.url)


MESSAGES = [{"role": "user", "content": "Hello, gateway!"}]
GREEDY = {"temperature": 0, "num_predict": 12}


def test_chat_non_streaming_reports_counts_and_durations(client: ollama.Client) -> None:
    reply = client.chat(model="tiny", messages=MESSAGES, options=GREEDY, stream=False)
    assert reply.done and reply.done_reason == "length"
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count == 12
    assert reply.prompt_eval_count > 5
    assert reply.total_duration >= reply.eval_duration > 0
    assert reply.prompt_eval_duration > 0


def test_chat_stream_equals_the_whole_reply(client: ollama.Client) -> None:
    whole = client.chat(model="tiny:latest", messages=MESSAGES, options=GREEDY, stream=False)
    parts = list(client.chat(model="tiny:latest", messages=MESSAGES, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 12


def test_generate_templated_raw_and_streamed(client: ollama.Client) -> None:
    templated = client.generate(model="tiny", prompt="Sensor 7", options=GREEDY)
    raw = client.generate(model="tiny", prompt="Sensor 7", raw=True, options=GREEDY)
    assert raw.prompt_eval_count < templated.prompt_eval_count
    with_system = client.generate(
        model="tiny", prompt="Sensor 7", system="Be brief.", options=GREEDY
    )
    assert with_system.prompt_eval_count > templated.prompt_eval_count
    parts = list(client.generate(model="tiny", prompt="Sensor 7", options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == templated.response
    assert parts[-1].done_reason == "length"


def test_stop_option_cuts_the_reply(client: ollama.Client) -> None:
    full = client.chat(model="tiny", messages=MESSAGES, options={**GREEDY, "num_predict": 40})
    text = full.message.content
    stop = text[8:11]
    cut = client.chat(
        model="tiny", messages=MESSAGES, options={**GREEDY, "num_predict": 40, "stop": [stop]}
    )
    assert cut.message.content == text[: text.index(stop)]
    assert cut.done_reason == "stop"


def test_tags_ps_show_version(client: ollama.Client, daemon: Daemon) -> None:
    names = {m.model for m in client.list().models}
    assert {"tiny:latest", "reasoning:latest", "math:latest", "coding:latest"} <= names
    running = client.ps().models
    assert running[0].model == "tiny:latest"
    shown = client.show("reasoning")
    assert "temperature 0.3" in shown.parameters
    assert "step by step" in shown.modelfile
    assert client.show("tiny").modelinfo["context_length"] > 0
    assert httpx.get(f"{daemon.url}/api/version").json()["version"]
    assert httpx.get(f"{daemon.url}/").text == "Ollama is running"


def test_unknown_model_is_a_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="llama3:70b", messages=MESSAGES)
    assert raised.value.status_code == 404
    assert "tiny" in raised.value.error


def test_replies_name_their_backend(daemon: Daemon) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "stream": False, "options": {"num_predict": 2}}
    reply = httpx.post(f"{daemon.url}/api/chat", json=body, timeout=30)
    assert reply.headers["x-edge-backend"] == "local"
    assert reply.json()["done_reason"] == "length"


def test_bad_option_type_is_a_400(daemon: Daemon) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "options": {"temperature": "warm"}}
    response = httpx.post(f"{daemon.url}/api/chat", json=body)
    assert response.status_code == 400
    assert "temperature" in response.json()["error"]
