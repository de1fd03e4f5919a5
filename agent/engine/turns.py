"""One request's turn on og.Engine: how many tokens it may make, its sampling options,
and its final chunk (usage and timings). Pure functions of the job and the settings."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import onnxruntime_genai as og

from agent.engine.delivery import Job
from agent.engine.stop import StopMatcher
from agent.engine.types import (
    ChatRequest,
    Chunk,
    EngineError,
    ErrorCode,
    FinishReason,
    Timings,
    Usage,
    context_length_exceeded,
)
from agent.models.info import SearchDefaults
from agent.settings import EngineSettings

GREEDY_BELOW = 1e-4  # temperatures under this decode greedily
FINISH_REASONS = {
    og.FinishReason.EOS: FinishReason.STOP,
    og.FinishReason.STOP_STRING: FinishReason.STOP,
    og.FinishReason.MAX_GENERATED_TOKENS: FinishReason.LENGTH,
    og.FinishReason.MAX_SESSION_TOKENS: FinishReason.LENGTH,
    og.FinishReason.CANCELLED: FinishReason.CANCELLED,
}


class TurnHandle(Protocol):
    def cancel_turn(self, turn_id: int) -> bool: ...

    def close(self) -> None: ...


@dataclass(eq=False)
class Turn:
    """A job admitted to the engine: its og request and what decodes its tokens."""

    job: Job
    og_request: TurnHandle  # og.Request, or a GeneratorTurn for a lone request
    turn_id: int
    stream: og.TokenizerStream
    stop: StopMatcher
    cancel_sent: bool = False


def completion_budget(
    request: ChatRequest, prompt_tokens: int, max_length: int, settings: EngineSettings
) -> int:
    """The tokens the request may generate; refused if the prompt leaves no room or the
    request asks for more than there is."""
    if prompt_tokens == 0:
        raise EngineError(
            ErrorCode.INVALID_REQUEST,
            "The prompt is empty: there is nothing to continue",
            param="messages" if request.prompt is None else "prompt",
        )
    cap = settings.max_prompt_tokens
    if cap is not None and prompt_tokens > cap:
        raise EngineError(
            ErrorCode.PROMPT_TOO_LONG,
            f"The prompt is {prompt_tokens} tokens; max_prompt_tokens is {cap}",
            param="messages" if request.prompt is None else "prompt",
        )
    limit = min(max_length, request.sampling.context_limit or max_length)
    room = limit - prompt_tokens
    if room < 1:
        raise context_length_exceeded(
            f"This model's maximum context length is {limit} tokens. However, "
            f"your prompt is {prompt_tokens} tokens, leaving no room for a completion."
        )
    wanted = request.sampling.max_tokens
    if wanted is None:
        return min(settings.default_max_tokens, room)
    if wanted > room:
        raise context_length_exceeded(
            f"This model's maximum context length is {limit} tokens. However, "
            f"you requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the prompt, "
            f"{wanted} in the completion). Reduce the prompt or max_tokens.",
            param="max_tokens",
        )
    return wanted


def search_options(job: Job, defaults: SearchDefaults) -> dict[str, float | bool]:
    """The request's sampling on top of the model author's defaults, by og option name
    (og.TurnOptions' `set_<name>`, og.GeneratorParams' search options)."""
    sampling = job.request.sampling
    temperature = sampling.temperature
    # A vanishing temperature is greedy: og would resolve it so and then reject top_k.
    do_sample = defaults.do_sample if temperature is None else temperature >= GREEDY_BELOW
    options: dict[str, float | bool] = {"do_sample": do_sample}
    if do_sample:
        options["temperature"] = defaults.temperature if temperature is None else temperature
        options["top_p"] = sampling.top_p if sampling.top_p is not None else defaults.top_p
        top_k = sampling.top_k if sampling.top_k is not None else defaults.top_k
        options["top_k"] = min(top_k, defaults.vocab_size or top_k)
    if sampling.repetition_penalty is not None:
        options["repetition_penalty"] = sampling.repetition_penalty
    return options


def turn_options(og_request: og.Request, job: Job, defaults: SearchDefaults) -> og.TurnOptions:
    options = og.TurnOptions(og_request)
    options.set_max_generated_tokens(job.max_tokens)
    if job.request.sampling.min_tokens:
        options.set_min_generated_tokens(min(job.request.sampling.min_tokens, job.max_tokens))
    for name, value in search_options(job, defaults).items():
        getattr(options, f"set_{name}")(value)
    if job.guidance is not None:
        options.set_guidance(job.guidance.kind, job.guidance.data)
    return options


def begin_turn(engine: og.Engine, job: Job, defaults: SearchDefaults) -> tuple[og.Request, int]:
    """The job as a new og.Engine request's first turn; the request is closed if refused."""
    options = og.RequestOptions()
    options.set_max_session_tokens(len(job.prompt_ids) + job.max_tokens)
    request = engine.create_request(options=options)
    try:
        return request, request.begin_turn(job.prompt_ids, turn_options(request, job, defaults))
    except Exception:
        request.close()
        raise


def final_chunk(job: Job, reason: FinishReason, tail: str, error: str | None) -> Chunk:
    end = time.perf_counter()
    start = job.admitted_at or end
    first = job.first_token_at or end
    decode_s = end - first
    tokens = job.completion_tokens
    return Chunk(
        text=tail,
        finish_reason=reason,
        error=error,
        usage=Usage(len(job.prompt_ids), tokens),
        timings=Timings(
            queue_s=start - job.enqueued_at,
            prompt_s=first - start,
            decode_s=decode_s,
            total_s=end - job.enqueued_at,
            time_to_first_token_s=first - job.enqueued_at,
            decode_tokens_per_s=(tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0,
        ),
    )


def stall_for_tests(turns: list[Turn]) -> None:
    """EDGE_AGENT_TEST_ENGINE_STALL (tests only): block the owner thread for good inside a
    step, as a hung execution provider would, while a request whose last message is that
    text runs; the watchdog must notice."""
    stall_on = os.environ.get("EDGE_AGENT_TEST_ENGINE_STALL")
    if stall_on is not None and any(turn.job.request.last_text == stall_on for turn in turns):
        threading.Event().wait()


def crash_for_tests(jobs: list[Job]) -> None:
    """EDGE_AGENT_TEST_ENGINE_CRASH (tests only): fail as a fatal engine error would while a
    request whose last message is that text is queued or running."""
    crash_on = os.environ.get("EDGE_AGENT_TEST_ENGINE_CRASH")
    if crash_on is not None and any(job.request.last_text == crash_on for job in jobs):
        raise RuntimeError("test fault: EDGE_AGENT_TEST_ENGINE_CRASH")
