"""The runtime path on a real instruct model: token-for-token agreement with transformers,
the chat template, agreement across every route, stops and limits, factual answers."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from agent.engine.types import ChatRequest, Message, SamplingParams
from tests.conftest import Daemon
from tests.mqtt_support import Broker, Device
from tests.real.conftest import DEVICE, NAME, run_on_engine


def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="none", max_retries=0)


def _chat(messages: list[dict], **sampling: int) -> ChatRequest:
    return ChatRequest(
        model=NAME,
        messages=tuple(Message(**m) for m in messages),
        sampling=SamplingParams(temperature=0, **sampling),
    )


def test_fp32_greedy_equals_transformers_token_for_token(real_reference: dict) -> None:
    """On the dequantized weights (the fp32 variant), 3 prompts x 32 tokens."""
    cases = real_reference["generations"]

    async def generate(engine) -> list[tuple[str, list[int], list[int]]]:
        outputs = []
        for case in cases:
            n = case["max_tokens"]
            request = _chat(case["messages"], max_tokens=n, min_tokens=n)
            prompt = engine.render_prompt(request)
            ids: list[int] = []
            async for chunk in (await engine.submit(request)).chunks:
                ids.extend(chunk.token_ids)
            outputs.append((prompt, engine.tokenize(prompt).tolist(), ids))
        return outputs

    outputs = run_on_engine("cpu-fp32", generate)
    assert len(cases) == 3
    for (prompt, prompt_ids, ids), case in zip(outputs, cases, strict=True):
        assert prompt == case["prompt"]
        assert prompt_ids == case["prompt_token_ids"]
        assert len(ids) == 32 and ids == case["completion_token_ids"]


def test_chat_template_equals_transformers(real_reference: dict) -> None:
    """System, user, assistant and tool turns render as transformers renders them."""
    cases = real_reference["templates"]

    async def render(engine) -> list[tuple[str, int]]:
        rendered = [engine.render_prompt(_chat(case["messages"])) for case in cases]
        return [(text, len(engine.tokenize(text))) for text in rendered]

    roles = {m["role"] for case in cases for m in case["messages"]}
    assert roles == {"system", "user", "assistant", "tool"}
    for (text, count), case in zip(run_on_engine("cpu-int4", render), cases, strict=True):
        assert text == case["prompt"]
        assert count == case["prompt_tokens"]


def test_every_route_gives_the_same_greedy_text(
    real_daemon: Daemon, broker: Broker, real_reference: dict
) -> None:
    case = real_reference["generations"][0]
    messages, n = case["messages"], 24
    prompt_tokens = len(case["prompt_token_ids"])
    openai_reply = client(real_daemon).chat.completions.create(
        model=NAME, messages=messages, max_tokens=n, temperature=0
    )
    text = openai_reply.choices[0].message.content
    assert text and openai_reply.choices[0].finish_reason == "length"
    assert (openai_reply.usage.prompt_tokens, openai_reply.usage.completion_tokens) == (
        prompt_tokens,
        n,
    )
    stream = client(real_daemon).chat.completions.create(
        model=NAME, messages=messages, max_tokens=n, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    events = list(stream)
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == text
    assert events[-1].usage.prompt_tokens == prompt_tokens

    talk = ollama.Client(host=real_daemon.url)
    options = {"num_predict": n, "temperature": 0}
    whole = talk.chat(model=NAME, messages=messages, options=options)
    assert whole.message.content == text
    assert (whole.prompt_eval_count, whole.eval_count) == (prompt_tokens, n)
    parts = list(talk.chat(model=NAME, messages=messages, options=options, stream=True))
    assert "".join(p.message.content for p in parts) == text and parts[-1].done

    device = Device(broker)
    try:
        body = {"model": NAME, "messages": messages, "max_tokens": n, "temperature": 0,
                "stream": True}  # fmt: skip
        replies = device.replies(device.request(DEVICE, body))
    finally:
        device.close()
    final = replies[-1]
    assert final["type"] == "final" and final["text"] == text
    assert "".join(r["delta"] for r in replies if r["type"] == "chunk") == text
    assert final["usage"]["prompt_tokens"] == prompt_tokens

    legacy = httpx.post(
        f"{real_daemon.url}/reasoning",
        json={"prompt": messages[0]["content"], "task_type": "general", "max_length": n,
              "temperature": 0},
        timeout=60,
    ).json()  # fmt: skip
    assert legacy["generated_text"] == text
    assert (legacy["prompt_tokens"], legacy["tokens_generated"]) == (prompt_tokens, n)


def test_stop_strings_and_max_tokens(real_daemon: Daemon) -> None:
    ask = [{"role": "user", "content": "What is the capital of Germany?"}]
    full = client(real_daemon).chat.completions.create(
        model=NAME, messages=ask, max_tokens=40, temperature=0
    )
    text = full.choices[0].message.content
    assert full.choices[0].finish_reason == "stop" and "Berlin" in text

    stopped = client(real_daemon).chat.completions.create(
        model=NAME, messages=ask, max_tokens=40, temperature=0, stop=["Berlin", "nowhere"]
    )
    assert stopped.choices[0].message.content == text[: text.index("Berlin")]
    assert stopped.choices[0].finish_reason == "stop"
    ollama_stopped = ollama.Client(host=real_daemon.url).chat(
        model=NAME, messages=ask, options={"num_predict": 40, "temperature": 0, "stop": ["Berlin"]}
    )
    assert ollama_stopped.message.content == text[: text.index("Berlin")]

    cut = client(real_daemon).chat.completions.create(
        model=NAME, messages=ask, max_tokens=3, temperature=0
    )
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    assert text.startswith(cut.choices[0].message.content) and cut.choices[0].message.content


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is the capital of France?", "Paris"),
        ("What is the capital of Germany?", "Berlin"),
        ("What is the capital of Italy?", "Rome"),
        ("What is the capital of Japan?", "Tokyo"),
        ("How many days are in a week?", "7"),
        ("What is the largest ocean on Earth?", "Pacific"),
    ],
)
def test_factual_answers(real_daemon: Daemon, question: str, answer: str) -> None:
    reply = client(real_daemon).chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0
    )
    assert answer in reply.choices[0].message.content


def test_usage_counts_equal_the_tokenizers(real_reference: dict, real_daemon: Daemon) -> None:
    for case in real_reference["templates"]:
        reply = client(real_daemon).chat.completions.create(
            model=NAME, messages=case["messages"], max_tokens=1, temperature=0
        )
        assert reply.usage.prompt_tokens == case["prompt_tokens"]
