"""A lone request runs on og.Generator instead of og.Engine, keeping its KV cache afterwards
so that the next request sharing a prompt prefix (a profile's system prompt, a tools block,
a conversation that goes on) skips that prefix's prefill.

Why: only a Generator can keep a prefix: `rewind_to` drops the last question and answer, and
only the new tokens are prefilled (0.14x the cold time to first token; og.Engine's turns
cannot hold a prefix without a generated token behind it: scripts/bench/prefix_reuse.py),
and it decodes at least as fast as og.Engine (scripts/bench/RESULTS.md). og.Engine still
serves batches: requests that arrive together.

A Generator holds the GIL while it prefills, so the prompt goes in slices, and between two
the owner thread waits for the event loop to turn: /health and MQTT keep-alives are answered
mid-prefill (within a slice: 0.3-0.5 s for 64 tokens at a 2000-token context on SmolLM2
here). `GeneratorTurn` mimics og.Request and its events, so the owner thread drives both
paths with the same code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime_genai as og

from agent.engine.delivery import Job
from agent.engine.loading import LoadedModel
from agent.engine.turns import search_options
from agent.models.info import SearchDefaults
from agent.settings import EngineSettings

PREFILL_SLICE = 64  # tokens per append: the GIL is free between slices
# onnxruntime-genai 0.18: one token appended after `rewind_to` decodes differently from a
# cold Generator (the same prompt again stopped 5 tokens early on SmolLM2); two or more
# give its tokens exactly.
MIN_FRESH = 2
MIN_REUSE = 16  # a shorter shared prefix is not worth a cached Generator's memory
CAPACITY_STEP = 512  # Generators are sized in steps so that later requests fit in them
_TOKEN = int(og.EngineEventFlags.TOKEN)
_FINISHED = int(og.EngineEventFlags.TURN_FINISHED)
# The og search options and the grammar a Generator was made with: fixed at its creation,
# so they are the cache key (with room enough). A kept Generator's grammar starts over when
# it is rewound: a guided request on it gives a cold Generator's tokens (tested).
Search = tuple[tuple[str, float | bool | str], ...]


@dataclass(frozen=True)
class GeneratorEvent:
    """What og.Engine.run yields, for one Generator step."""

    request: GeneratorTurn
    flags: int
    token: int = 0
    finish_reason: og.FinishReason = og.FinishReason.NONE
    error_code: og.FinishReason = og.FinishReason.NONE  # read only when FAILED: never set


@dataclass
class _Kept:
    generator: og.Generator
    search: Search
    capacity: int  # the Generator's max_length
    tokens: np.ndarray  # its sequence: what its KV cache holds


class GeneratorPath:
    """Lone requests on og.Generator, with a bounded cache of Generators by prompt prefix.

    Runs on the engine's owner thread only, like everything og."""

    def __init__(
        self, loaded: LoadedModel, settings: EngineSettings, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        self.model = loaded.model
        self.max_length = loaded.max_length
        self.loop = loop  # the event loop that must keep turning while a prompt is prefilled
        self.enabled = settings.single_request_generator
        self.required = loaded.engine is None  # every request runs here, one at a time
        self.limit = settings.prefix_cache_entries  # each holds a KV cache of its capacity
        self._kept: list[_Kept] = []  # most recently used first
        self.prefilled_tokens = 0  # prompt tokens computed
        self.reused_tokens = 0  # prompt tokens taken from a kept Generator instead
        self.served = 0  # requests run on a Generator
        self.running: GeneratorTurn | None = None

    def figures(self) -> dict[str, int | bool]:
        """For /v1/agent/status: how much prefill the kept Generators saved."""
        return {
            "enabled": self.enabled,
            "served": self.served,
            "kept": len(self._kept),
            "kept_limit": self.limit,
            "prefilled_tokens": self.prefilled_tokens,
            "reused_tokens": self.reused_tokens,
            "prefill_left": running.prefill_left if (running := self.running) else 0,
        }

    def serves(self, job: Job) -> bool:
        """Min-length requests stay on og.Engine where there is one: a Generator's minimum
        counts the prompt too, so no kept one would match."""
        return self.required or (self.enabled and not job.request.sampling.min_tokens)

    def open(self, job: Job, defaults: SearchDefaults) -> GeneratorTurn:
        options: dict[str, float | bool] = search_options(job, defaults)
        if job.request.sampling.min_tokens:
            options["min_length"] = len(job.prompt_ids) + job.request.sampling.min_tokens
        grammar = f"{job.guidance.kind}\n{job.guidance.data}" if job.guidance else ""
        search: Search = (*sorted(options.items()), ("guidance", grammar))
        needed = len(job.prompt_ids) + job.max_tokens
        prompt = job.prompt_ids
        kept, shared = self._take(prompt, search, needed)
        if kept is None:
            capacity = min(self.max_length, -(-needed // CAPACITY_STEP) * CAPACITY_STEP)
            params = og.GeneratorParams(self.model)
            params.set_search_options(max_length=capacity, **options)
            if job.guidance is not None:
                params.set_guidance(job.guidance.kind, job.guidance.data)
            kept = _Kept(og.Generator(self.model, params), search, capacity, prompt[:0])
        else:
            kept.generator.rewind_to(shared)
        self.reused_tokens += shared
        self.served += 1
        self.prefilled_tokens += len(prompt) - shared
        self.running = GeneratorTurn(self, kept, prompt[shared:], job.max_tokens)
        return self.running

    def keep(self, kept: _Kept) -> None:
        self.running = None
        if self.limit == 0:
            return
        # The last token of a generated sequence has no KV yet: it was sampled, not fed.
        kept.tokens = kept.generator.get_sequence(0)[:-1]
        if len(kept.tokens) < MIN_REUSE:
            return  # it could never be reused: its memory goes now, not a kept one's
        self._kept.insert(0, kept)
        del self._kept[self.limit :]  # the least recently used go: their memory with them

    def _take(self, prompt: np.ndarray, search: Search, needed: int) -> tuple[_Kept | None, int]:
        """The kept Generator sharing the longest prefix with `prompt` (at least MIN_REUSE
        tokens, MIN_FRESH left to prefill), with the same search options and room enough."""
        best, best_shared = None, 0
        for kept in self._kept:
            if kept.search != search or kept.capacity < needed:
                continue
            shared = _shared_length(kept.tokens, prompt)
            if shared > best_shared:
                best, best_shared = kept, shared
        if best is None or best_shared < MIN_REUSE:
            return None, 0
        self._kept.remove(best)
        return best, best_shared


class GeneratorTurn:
    """One request on a Generator, with og.Request's cancel_turn and close."""

    def __init__(self, path: GeneratorPath, kept: _Kept, fresh: np.ndarray, tokens: int) -> None:
        self._path = path
        self._kept = kept
        self._fresh = fresh  # prompt tokens still to prefill
        self._left = tokens
        self._first_token_out = False  # the first token is posted to the event loop
        self._cancelled = False
        self._closed = False

    @property
    def prefill_left(self) -> int:
        return len(self._fresh)

    def cancel_turn(self, turn_id: int) -> bool:
        self._cancelled = True
        return True

    def close(self) -> None:
        """The turn is over: its Generator is kept for the next shared prefix."""
        if not self._closed:
            self._closed = True
            self._path.keep(self._kept)
        self._path.running = None

    def step(self) -> Iterator[GeneratorEvent]:
        """One slice of prefill, or one token; then the end if the turn is over. A step
        that fails leaves its Generator to be dropped, not kept."""
        try:
            yield from self._step()
        except BaseException:
            self._closed = True
            raise

    def _step(self) -> Iterator[GeneratorEvent]:
        if self._cancelled:
            yield self._end(og.FinishReason.CANCELLED)
            return
        generator = self._kept.generator
        if len(self._fresh):
            generator.append_tokens(self._fresh[:PREFILL_SLICE])
            self._fresh = self._fresh[PREFILL_SLICE:]
            if len(self._fresh):
                self._let_the_loop_turn()
                return  # more prompt to go: the owner thread comes back
        elif not self._first_token_out:
            # The first token was posted to the loop; a decode step holds the GIL, and with
            # another thread waiting for it (paho's) the loop could wait a step or more to
            # send it (+30 to +190 ms of TTFT on the Phi-4-mini shape with MQTT on).
            self._first_token_out = True
            self._let_the_loop_turn()
        generator.generate_next_token()
        self._left -= 1
        yield GeneratorEvent(self, _TOKEN, token=int(generator.get_next_tokens()[0]))
        if generator.is_done():
            length = len(generator.get_sequence(0))
            over = length >= self._kept.capacity
            yield self._end(og.FinishReason.MAX_SESSION_TOKENS if over else og.FinishReason.EOS)
        elif self._left == 0:
            yield self._end(og.FinishReason.MAX_GENERATED_TOKENS)

    def _let_the_loop_turn(self) -> None:
        """Wait (briefly) for the event loop to run twice: what was posted to it, and the
        tasks that woke, run before the next og call takes the GIL (a thread that only gives
        it up at the interpreter's switch interval would let the loop run 5 ms per call)."""
        if (loop := self._path.loop) is not None:
            turned = threading.Event()
            loop.call_soon_threadsafe(loop.call_soon, turned.set)
            turned.wait(0.05)

    def _end(self, reason: og.FinishReason) -> GeneratorEvent:
        return GeneratorEvent(self, _FINISHED, finish_reason=reason)


def _shared_length(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens a and b share, leaving b at least MIN_FRESH tokens to prefill."""
    n = min(len(a), len(b) - MIN_FRESH)
    if n <= 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n
