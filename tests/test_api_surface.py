"""Routes around the chat: vLLM's /tokenize and /detokenize, and unknown routes answered
in the caller's API style (the official clients read the error)."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from tests.conftest import Daemon


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused")


def test_an_unknown_openai_route_is_an_openai_404_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.files.list()
    error = raised.value.body
    assert isinstance(error, dict) and error["code"] == "not_found"
    assert error["type"] == "invalid_request_error"
    assert "GET /v1/files" in error["message"]


def test_an_unknown_ollama_route_is_an_ollama_404_naming_it(daemon: Daemon) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=daemon.url).push("tiny")
    assert raised.value.status_code == 404
    assert "POST /api/push" in raised.value.error
    body = httpx.post(f"{daemon.url}/api/push", json={"model": "tiny"}).json()
    assert list(body) == ["error"]


def test_an_unknown_route_elsewhere_and_a_wrong_method_name_the_route(daemon: Daemon) -> None:
    missing = httpx.get(f"{daemon.url}/nowhere")
    assert missing.status_code == 404
    assert "GET /nowhere" in missing.json()["error"]["message"]
    wrong = httpx.get(f"{daemon.url}/api/chat")
    assert wrong.status_code == 405
    assert "GET /api/chat" in wrong.json()["error"]


def _tokenize(daemon: Daemon, **body: object) -> dict:
    reply = httpx.post(f"{daemon.url}/tokenize", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_tokenize_and_detokenize_round_trip(daemon: Daemon) -> None:
    text = "Sensor 7 reads 21.5 degrees"
    tokens = _tokenize(daemon, model="tiny", prompt=text)
    assert tokens["count"] == len(tokens["tokens"]) > 3
    assert all(isinstance(t, int) for t in tokens["tokens"])
    assert tokens["max_model_len"] == daemon.status()["model"]["max_length"]
    back = httpx.post(f"{daemon.url}/detokenize", json={"tokens": tokens["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": text}


def test_tokenize_counts_what_a_chat_request_counts(daemon: Daemon, client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, gateway!"},
    ]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    assert chat.usage is not None
    tokens = _tokenize(daemon, messages=messages)
    assert tokens["count"] == chat.usage.prompt_tokens
    bare = _tokenize(daemon, prompt="Hello, gateway!")
    assert bare["count"] < tokens["count"]


def test_tokenize_without_special_tokens_is_never_longer(daemon: Daemon) -> None:
    plain = _tokenize(daemon, prompt="Hello")["tokens"]
    bare = _tokenize(daemon, prompt="Hello", add_special_tokens=False)["tokens"]
    assert plain[len(plain) - len(bare) :] == bare


def test_tokenize_refusals_are_openai_errors(daemon: Daemon) -> None:
    for body, code in (
        ({}, "invalid_request"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "invalid_request"),
        ({"model": "nope", "prompt": "x"}, "model_not_found"),
    ):
        reply = httpx.post(f"{daemon.url}/tokenize", json=body)
        assert reply.status_code in (400, 404), reply.text
        assert reply.json()["error"]["code"] == code
    bad = httpx.post(f"{daemon.url}/detokenize", json={"tokens": [-1]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_ollama_copy_makes_an_alias_that_serves_and_deletes(daemon: Daemon) -> None:
    client = ollama.Client(host=daemon.url)
    client.create(model="copy-base", from_="tiny", system="Be brief.")
    client.copy("copy-base", "copy-alias")
    names = {m.model for m in client.list().models}
    assert {"copy-base:latest", "copy-alias:latest"} <= names
    assert "Be brief." in (client.show("copy-alias").modelfile or "")
    chat = {"messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 1}}
    assert (
        client.chat(model="copy-alias", **chat).prompt_eval_count
        == client.chat(model="copy-base", **chat).prompt_eval_count
    )
    with pytest.raises(ollama.ResponseError) as missing:
        client.copy("no-such-model", "copy-other")
    assert missing.value.status_code == 404 and "no-such-model" in missing.value.error
    client.delete("copy-alias")
    client.delete("copy-base")
    assert not {"copy-base:latest", "copy-alias:latest"} & {m.model for m in client.list().models}
