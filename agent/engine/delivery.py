"""Chunks from the engine's owner thread to the event loop, and on to the reader.

The owner thread holds a request's chunks in the Outbox and hands them over once per
engine step at most; the reader's stream merges whatever arrived together, so a reader
that fell behind (a busy loop) writes one SSE event or MQTT chunk for them. This is the one
place where chunks are coalesced."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from agent.engine.tool_calls import Guidance
from agent.engine.types import ChatRequest, Chunk


@dataclass(eq=False)
class Job:
    """One request's life in the engine; fields below `out` belong to the owner thread."""

    request: ChatRequest
    prompt_ids: np.ndarray
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    guidance: Guidance | None = None
    out: asyncio.Queue[Chunk] = field(default_factory=asyncio.Queue)
    enqueued_at: float = field(default_factory=time.perf_counter)
    cancel_requested: bool = False
    finished: bool = False
    admitted_at: float = 0.0
    first_chunk: bool = True  # until the first text: the outbox sends that at once
    first_token_at: float = 0.0
    completion_tokens: int = 0

    def post(self, chunk: Chunk) -> None:
        """Send a chunk straight to the loop (threads other than the engine's owner)."""
        self.finished = self.finished or chunk.finish_reason is not None
        self.loop.call_soon_threadsafe(self.out.put_nowait, chunk)


class Outbox:
    """Chunks from the owner thread to the event loop, one wakeup per engine step at most.

    A step makes one token per running request; each call_soon_threadsafe wakes the loop
    (a pipe write), and on a gateway with as many busy engine threads as cores every
    wakeup takes a core from the engine. Batched per step, and while the loop has not yet
    run the last delivery the next step's chunks join it, so a loop that falls behind
    catches up in one wakeup instead of one per token. With an `interval`, tokens after a
    request's first wait up to that long to go out together; first tokens and finals go at
    once. One engine serves one event loop.
    """

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._held: list[tuple[Job, Chunk]] = []
        self._urgent = False
        self._sent_at = 0.0
        self._queued: list[tuple[Job, Chunk]] = []
        self._scheduled = False

    def add(self, job: Job, chunk: Chunk) -> None:
        """Owner thread: hold a chunk for the next flush."""
        job.finished = job.finished or chunk.finish_reason is not None
        self._held.append((job, chunk))
        first_text = job.first_chunk and bool(chunk.text)
        self._urgent = self._urgent or first_text or chunk.finish_reason is not None
        job.first_chunk = job.first_chunk and not first_text

    def flush(self) -> None:
        """Owner thread, after each step: hand the held chunks to the loop when due."""
        if not self._held:
            return
        now = time.perf_counter()
        if not self._urgent and now - self._sent_at < self._interval_s:
            return
        held, self._held, self._urgent, self._sent_at = self._held, [], False, now
        with self._lock:
            self._queued += held
            if self._scheduled:
                return
            self._scheduled = True
        held[0][0].loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            queued, self._queued, self._scheduled = self._queued, [], False
        for job, chunk in queued:
            job.out.put_nowait(chunk)


async def job_chunks(job: Job, abandon: Callable[[Job], None]) -> AsyncGenerator[Chunk, None]:
    """The job's chunks, tokens that arrived together merged into one; a reader that stops
    before the final chunk abandons the job (`abandon` cancels it)."""
    try:
        while True:
            chunk = await job.out.get()
            while chunk.finish_reason is None and not job.out.empty():
                following = job.out.get_nowait()
                if following.finish_reason is not None:
                    yield chunk
                    chunk = following
                    break
                chunk = replace(
                    chunk,
                    text=chunk.text + following.text,
                    token_ids=chunk.token_ids + following.token_ids,
                )
            yield chunk
            if chunk.finish_reason is not None:
                return
    finally:
        if not job.finished:
            abandon(job)
