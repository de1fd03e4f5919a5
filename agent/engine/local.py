"""Local inference: admission on the asyncio side, scheduling and decoding on the one
thread that drives og.Engine (it must be driven by its creating thread; `engine.run`
releases the GIL) and og.Generator for lone requests (it holds it: generator_path.py
slices the prompt), so HTTP, MQTT keep-alives and health go on during prefill and decode.

The 0.18 CPU engine batches statically: requests join only when the running batch has
drained, so the owner admits up to `max_batch` queued requests at once after a short
batch window. Stop strings are matched here (StopMatcher); `seed` is not reproducible.
If the owner thread dies, every queued and running request ends with an error, new ones
are refused with `engine_failed`, and `on_failure` tells the service. Tests make it die
(EDGE_AGENT_TEST_ENGINE_CRASH) or hang (EDGE_AGENT_TEST_ENGINE_STALL) on a request's text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime_genai as og
import structlog

from agent.engine.backend import Load, Stream
from agent.engine.delivery import Job, Outbox, job_chunks
from agent.engine.generator_path import GeneratorPath, GeneratorTurn
from agent.engine.loading import FINISHED_FLAG, LoadAttempt, LoadedModel, LoadPlan, load
from agent.engine.stop import StopMatcher
from agent.engine.tool_calls import guidance_for, read_tool_calls, render_prompt
from agent.engine.turns import (
    FINISH_REASONS,
    Turn,
    begin_turn,
    completion_budget,
    crash_for_tests,
    final_chunk,
    stall_for_tests,
)
from agent.engine.types import (
    ChatRequest,
    Chunk,
    EngineError,
    ErrorCode,
    FinishReason,
    model_not_ready,
    server_busy,
)
from agent.models.info import ModelInfo
from agent.settings import EngineSettings

__all__ = ["LoadPlan", "LocalEngine"]

log = structlog.get_logger(__name__)

_TOKEN = int(og.EngineEventFlags.TOKEN)
_BATCH_GATHER_S = 0.05  # longest wait for requests that are still being tokenized


class LocalEngine:
    """Serves ChatRequests from one onnxruntime-genai model on the local hardware."""

    name = "local"

    def __init__(
        self,
        plans: list[LoadPlan],
        settings: EngineSettings,
        threads: int | None = None,
        available_memory: Callable[[], int | None] = lambda: None,
        on_failure: Callable[[LocalEngine], None] = lambda engine: None,
    ) -> None:
        if not plans:
            raise ValueError("no provider to load the model with")
        self.plans = plans
        self.settings = settings
        self.threads = threads
        self.available_memory = available_memory  # bytes the model may take, at load time
        self.on_failure = on_failure  # called on the event loop when the owner thread dies
        self.failure: str | None = None  # why the owner thread died
        self.load_attempts: list[LoadAttempt] = []
        self.steps = 0  # engine steps run; grows while the owner thread makes progress
        self.finished: Counter[str] = Counter()  # requests ended, by finish reason
        self.batches: Counter[int] = Counter()  # static batches started, by size
        self._loaded: LoadedModel | None = None
        self._pending: deque[Job] = deque()
        self._batch: list[Job] = []  # the owner thread's batch; a dying thread answers it
        self._turns: list[Turn] = []  # the batch's turns on the engine
        self._jobs: dict[str, Job] = {}
        self._running = 0
        self._preparing = 0
        self._last_arrival = 0.0  # when the latest request began admission
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox = Outbox(settings.stream_interval_ms / 1000)
        self._test_faults = "EDGE_AGENT_TEST_ENGINE_CRASH" in os.environ
        self.generator_path: GeneratorPath | None = None  # lone requests (owner thread)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        loaded: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._owner_main, args=(loaded,), name="og-engine", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(loaded)

    async def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    @property
    def info(self) -> ModelInfo:
        """The loaded variant (before loading: the first candidate's)."""
        return self._loaded.info if self._loaded else self.plans[0].info

    @property
    def provider(self) -> str:
        return self._loaded.plan.label if self._loaded else "none"

    @property
    def max_length(self) -> int:
        if self._loaded is not None:
            return self._loaded.max_length
        return min(self.info.context_length, self.settings.max_context)

    @property
    def load_time_s(self) -> float:
        return self._loaded.load_time_s if self._loaded else 0.0

    @property
    def ready(self) -> bool:
        return self._refusal() is None

    @property
    def alive(self) -> bool:
        """The owner thread is running (it ends only on stop or a fatal error)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return self._running

    @property
    def idle(self) -> bool:
        """Nothing queued, running or still being admitted: stopping now loses nothing."""
        with self._cond:
            return not (self._pending or self._running or self._preparing)

    def load(self) -> Load:
        return Load(
            queued=len(self._pending),
            running=self._running,
            batch_slots=self._loaded.batch_slots if self._loaded else self.settings.max_batch,
            kv_bytes_per_token=self.info.kv_bytes_per_token,
            default_max_tokens=self.settings.default_max_tokens,
            retry_after_s=self.settings.retry_after_s,
        )

    # ---- asyncio side ----------------------------------------------------------------

    def render_prompt(self, request: ChatRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        return render_prompt(self._model().tokenizer, request, self.info.tool_markup)

    def tokenize(self, text: str) -> np.ndarray:
        return np.asarray(self._model().tokenizer.encode(text))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self._model().tokenizer.decode(np.array(tokens, dtype=np.int32)))

    async def submit(self, request: ChatRequest) -> Stream:
        """Admit the request (refusals raise EngineError here, before any reply starts)
        and return its stream of Chunks; closing the stream early cancels the generation."""
        chunks = job_chunks(await self._admit(request), self._cancel_job)
        if request.calls_tools:
            chunks = read_tool_calls(
                chunks, request, self.info.tool_markup, lambda: self.cancel(request.request_id)
            )
        return Stream(self.name, self.provider, chunks)

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running request by id; True if it was still in flight."""
        job = self._jobs.get(request_id)
        if job is None or job.finished:
            return False
        self._cancel_job(job)
        return True

    async def _admit(self, request: ChatRequest) -> Job:
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        special = bool(self._model().markup_tokens)
        guidance = guidance_for(
            request, self.info.tool_markup, special, self.settings.max_tool_calls
        )
        with self._cond:
            self._preparing += 1
            self._last_arrival = time.perf_counter()
            self._cond.notify_all()
        try:
            prompt_ids = await asyncio.to_thread(self.tokenize, self.render_prompt(request))
            job = Job(
                request=request,
                prompt_ids=prompt_ids,
                max_tokens=completion_budget(
                    request, len(prompt_ids), self.max_length, self.settings
                ),
                loop=asyncio.get_running_loop(),
                guidance=guidance,
            )
            with self._cond:
                refusal = self._refusal()  # stopped or died while this one was tokenized
                if refusal is not None:
                    raise refusal
                loaded = self._model()
                idle_slots = loaded.batch_slots if self._running == 0 else 0
                if len(self._pending) >= self.settings.max_queue + idle_slots:
                    raise server_busy(
                        f"The local queue is full ({self.settings.max_queue} waiting)",
                        self.settings.retry_after_s,
                    )
                self._pending.append(job)
                self._jobs[request.request_id] = job
        finally:
            with self._cond:
                self._preparing -= 1
                self._cond.notify_all()
        return job

    def _cancel_job(self, job: Job) -> None:
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._finish(job, FinishReason.CANCELLED)
                return
            job.cancel_requested = True

    def _refusal(self) -> EngineError | None:
        """Why a request cannot be admitted now, if it cannot."""
        if self.failure is not None:
            return EngineError(
                ErrorCode.ENGINE_FAILED,
                f"The local engine failed: {self.failure}",
                retry_after_s=self.settings.retry_after_s,
            )
        if self._stopping:
            return EngineError(
                ErrorCode.MODEL_NOT_READY, "The model is being unloaded", retry_after_s=1
            )
        if self._loaded is None:
            return model_not_ready()
        return None

    def _model(self) -> LoadedModel:
        if self._loaded is None:
            raise model_not_ready()
        return self._loaded

    # ---- owner thread ----------------------------------------------------------------

    def _owner_main(self, started: concurrent.futures.Future[None]) -> None:
        try:
            loaded = load(
                self.plans, self.settings, self.threads, self.available_memory(),
                self.load_attempts,
            )  # fmt: skip
        except Exception as exc:
            started.set_exception(exc)
            return
        self._loaded = loaded
        started.set_result(None)
        try:
            self._serve(loaded)
        except BaseException as exc:  # whatever ends the thread must not leave requests waiting
            self._die(exc)
        finally:  # og objects are released on the thread that made them
            self._loaded = self.generator_path = None

    def _serve(self, loaded: LoadedModel) -> None:
        engine = loaded.engine
        self.generator_path = GeneratorPath(loaded, self.settings, self._loop)
        events = engine.create_event_buffer(256) if engine else None
        turns = self._turns
        while True:
            if self._test_faults:
                with self._cond:
                    crash_for_tests([*self._pending, *self._batch])
            if not turns:
                batch = self._next_batch()
                if batch is None:
                    break
                self._batch = batch
                alone = len(batch) == 1
                turns[:] = [t for job in batch if (t := self._begin(job, alone)) is not None]
                self._outbox.flush()  # refusals from _begin
                if turns:
                    self.batches[len(turns)] += 1
                log.debug("batch started", size=len(turns))
                self._running = len(turns)
                continue
            for turn in turns:
                if turn.job.cancel_requested and not turn.cancel_sent:
                    turn.og_request.cancel_turn(turn.turn_id)
                    turn.cancel_sent = True
            stall_for_tests(turns)
            solo = turns[0].og_request if isinstance(turns[0].og_request, GeneratorTurn) else None
            try:
                if solo is None:
                    assert engine is not None  # og.Engine turns exist only with og.Engine
                    stepped = engine.run(events)
                for event in solo.step() if solo else stepped:
                    found = next((t for t in turns if t.og_request is event.request), None)
                    if found is not None and self._on_event(found, event):
                        turns.remove(found)
            except Exception as exc:  # the batch fails, the owner thread and queue live on
                log.error("engine step failed", error=str(exc), batch=len(turns))
                for turn in turns:
                    if not turn.job.finished:
                        error = f"engine step failed: {exc}"
                        self._finish(turn.job, FinishReason.ERROR, error=error)
                    turn.og_request.close()
                turns.clear()
            self._outbox.flush()
            self.steps += 1
            self._running = len(turns)
        with self._cond:  # stopped: what is still queued is cancelled, not left waiting
            leftover = list(self._pending)
            self._pending.clear()
        for job in leftover:
            self._finish(job, FinishReason.CANCELLED)
        self._outbox.flush()

    def _die(self, exc: BaseException) -> None:
        """The owner thread is ending on an error: refuse new requests, end every queued and
        running one with an error, and tell the service."""
        reason = f"{type(exc).__name__}: {exc}"
        log.critical("local engine thread died", error=reason)
        with self._cond:
            self.failure = reason
            jobs = [*self._batch, *self._pending]
            self._pending.clear()
            self._running = 0
        for job in jobs:
            if not job.finished:
                self._finish(job, FinishReason.ERROR, error=f"the local engine failed: {reason}")
        self._outbox.flush()
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the process is ending
                self._loop.call_soon_threadsafe(self.on_failure, self)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            # The CPU engine batches statically: gather what arrives together before starting,
            # until no request has arrived for a window (each arrival opens a new one) and
            # none is still being tokenized, or the gather limit.
            start = time.perf_counter()
            gather_end = start + _BATCH_GATHER_S
            while len(self._pending) < self._model().batch_slots and not self._stopping:
                now = time.perf_counter()
                quiet_end = max(start, self._last_arrival) + self.settings.batch_window_ms / 1000
                end = gather_end if self._preparing > 0 else min(quiet_end, gather_end)
                if now >= end:
                    break
                self._cond.wait(end - now)
            return [
                self._pending.popleft()
                for _ in range(min(self._model().batch_slots, len(self._pending)))
            ]

    def _begin(self, job: Job, alone: bool) -> Turn | None:
        job.admitted_at = time.perf_counter()
        loaded, path = self._model(), self.generator_path
        try:
            if alone and path is not None and path.serves(job):
                handle, turn_id = path.open(job, self.info.search), 0
            else:
                handle, turn_id = begin_turn(loaded.engine, job, self.info.search)
        except Exception as exc:  # a bad sampling value must not take the engine down
            self._finish(job, FinishReason.ERROR, error=str(exc))
            return None
        stop = StopMatcher(job.request.sampling.stop)
        return Turn(job, handle, turn_id, loaded.tokenizer.create_stream(), stop)

    def _on_event(self, turn: Turn, event: og.EngineEvent) -> bool:
        """Handle one engine event; True when the turn is over."""
        job = turn.job
        flags = int(event.flags)
        if flags & _TOKEN and not job.finished:
            self._on_token(turn, int(event.token))
        if not flags & FINISHED_FLAG:
            return False
        if not job.finished:
            if event.finish_reason == og.FinishReason.FAILED:
                self._finish(job, FinishReason.ERROR, error=event.error_code.name)
            else:
                reason = FINISH_REASONS.get(event.finish_reason, FinishReason.STOP)
                self._finish(job, reason, tail=turn.stop.flush())
        turn.og_request.close()
        return True

    def _on_token(self, turn: Turn, token: int) -> None:
        job = turn.job
        if job.completion_tokens == 0:
            job.first_token_at = time.perf_counter()
        job.completion_tokens += 1
        if token in self.info.eos_token_ids:
            text = ""
        else:
            text = self._model().markup_tokens.get(token) or turn.stream.decode(token)
        emit, stopped = turn.stop.feed(text)
        self._outbox.add(job, Chunk(text=emit, token_ids=(token,)))
        if stopped:
            self._finish(job, FinishReason.STOP)
            turn.og_request.cancel_turn(turn.turn_id)
            turn.cancel_sent = True

    def _finish(
        self, job: Job, reason: FinishReason, *, tail: str = "", error: str | None = None
    ) -> None:
        final = final_chunk(job, reason, tail, error)
        if threading.current_thread() is self._thread:
            self._outbox.add(job, final)
        else:  # a queued request cancelled from the loop
            job.post(final)
        with self._cond:
            self.finished[reason.value] += 1
            self._jobs.pop(job.request.request_id, None)
