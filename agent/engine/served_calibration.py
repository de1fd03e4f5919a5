"""Calibration on the model the daemon serves: with one accepted provider there is nothing
to choose before loading, so instead of loading the variant once more to measure it (see
calibration.py), the daemon sends it two requests after loading, before it says ready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from agent.engine.backend import Stream
from agent.engine.calibration import (
    DECODE_BUDGET_S,
    DECODE_STEPS,
    MAX_PROMPT_TOKENS,
    PROMPT,
    WARM_UP_TOKENS,
    Figures,
    calibrated,
    failed,
    prompt_length,
)
from agent.engine.loading import LoadPlan
from agent.engine.reply import Reply, ReplyReader
from agent.engine.types import ChatRequest, SamplingParams

SERVED_TIMEOUT_S = 120.0  # a stalled engine must not hold a start or a switch for ever


class Served(Protocol):
    """What `measure_served` needs of the engine serving the model (LocalEngine)."""

    @property
    def load_time_s(self) -> float: ...

    def tokenize(self, text: str) -> np.ndarray: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    async def submit(self, request: ChatRequest) -> Stream: ...


async def measure_served(engine: Served, plan: LoadPlan) -> Figures:
    """`measure`'s figures, taken on the model the daemon serves (a lone request, as most
    are), before it is announced ready: no second load. The warm-up's pace sizes the prompt
    and the decode steps (DECODE_BUDGET_S)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(SERVED_TIMEOUT_S):
            prompt = [int(t) for t in engine.tokenize(PROMPT)][:MAX_PROMPT_TOKENS]
            warm_up = await _served_turn(engine, prompt[:WARM_UP_TOKENS], 2)
            paced = warm_up.timings
            length = prompt_length(len(prompt), paced.time_to_first_token_s if paced else 1.0)
            rate = paced.decode_tokens_per_s if paced else 0.0
            steps = min(DECODE_STEPS, max(3, int(rate * DECODE_BUDGET_S)))
            reply = await _served_turn(engine, prompt[:length], steps)
        timings, usage = reply.timings, reply.usage
        if reply.error or timings is None or usage.completion_tokens < 2:
            raise RuntimeError(reply.error or "the model ended its reply before a decode step")
    except Exception as exc:
        return failed(plan, exc)
    return calibrated(
        plan, started, timings.time_to_first_token_s, timings.decode_tokens_per_s,
        engine.load_time_s, usage.prompt_tokens, usage.completion_tokens - 1, on="served",
    )  # fmt: skip


async def _served_turn(engine: Served, prompt: list[int], tokens: int) -> Reply:
    """One greedy raw-prompt request; the reply (its timings, usage and error)."""
    request = ChatRequest(
        model=None,
        prompt=engine.detokenize(prompt),
        sampling=SamplingParams(max_tokens=tokens, temperature=0.0),
    )
    reader = ReplyReader((await engine.submit(request)).chunks)
    return await reader.read()
