"""Cross-implementation check: tokenizer, chat template and greedy generation must equal
what transformers produced on the same weights (agent/data/tiny/reference.json)."""

from __future__ import annotations

import asyncio

import openai

from agent.engine.loading import LoadPlan
from agent.engine.local import LocalEngine
from agent.engine.types import ChatRequest, Message, SamplingParams
from agent.models.info import resolve_model
from agent.settings import EngineSettings
from tests.conftest import TINY, Daemon


def _engine_outputs(reference: dict) -> list[tuple[list[int], str, list[int]]]:
    plan = LoadPlan("cpu", None, {}, resolve_model(TINY, reference["variant"]))
    engine = LocalEngine([plan], EngineSettings())

    async def run_case(case: dict) -> tuple[list[int], str, list[int]]:
        request = ChatRequest(
            model="tiny",
            messages=tuple(Message(**m) for m in case["messages"]),
            sampling=SamplingParams(max_tokens=case["max_tokens"], temperature=0),
        )
        prompt_ids = engine.tokenize(engine.render_prompt(request)).tolist()
        ids: list[int] = []
        async for chunk in (await engine.submit(request)).chunks:
            ids.extend(chunk.token_ids)
        return prompt_ids, engine.render_prompt(request), ids

    async def main() -> list:
        await engine.start()
        try:
            return await asyncio.gather(*(run_case(case) for case in reference["cases"]))
        finally:
            await engine.stop()

    return asyncio.run(main())


def test_engine_matches_transformers_token_for_token(reference: dict) -> None:
    outputs = _engine_outputs(reference)
    for (prompt_ids, prompt, ids), case in zip(outputs, reference["cases"], strict=True):
        assert prompt == case["prompt"]
        assert prompt_ids == case["prompt_token_ids"]
        assert ids == case["completion_token_ids"]


def test_daemon_text_matches_the_reference_tokens(reference: dict, fp32_daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=f"{fp32_daemon.url}/v1", api_key="unused")
    for case in reference["cases"]:
        reply = client.chat.completions.create(
            model="tiny", messages=case["messages"], max_tokens=case["max_tokens"], temperature=0
        )
        assert reply.choices[0].message.content == case["completion_text"]
        assert reply.usage.prompt_tokens == len(case["prompt_token_ids"])
