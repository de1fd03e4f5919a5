"""Local inference with onnxruntime-genai's og.Engine, driven by one owner thread.

og.Engine must be driven by the thread that created it; `engine.run` releases the GIL, so
the asyncio loop (HTTP, MQTT keep-alives, health) keeps running during prefill and decode.
The asyncio side prepares a request (template, tokenize, length checks), puts it in a
bounded queue, and receives Chunks through an asyncio.Queue fed with call_soon_threadsafe.

On the CPU the 0.18 engine batches statically: requests join only when the running batch
has drained. The owner therefore admits up to `max_batch` queued requests at once, after
a short batch window (and a little longer while requests are still being tokenized) so
that requests arriving together share a batch. Per-turn stop strings and seeds need the
dynamic (paged, CUDA) engine, so stop strings are matched here (StopMatcher) and `seed` is
accepted but not reproducible on CPU.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnxruntime_genai as og
import structlog

from agent.engine.stop import StopMatcher
from agent.engine.tool_calls import Guidance, guidance_for, read_tool_calls, template_inputs
from agent.engine.types import (
    ChatRequest,
    Chunk,
    EngineError,
    FinishReason,
    Timings,
    Usage,
    context_length_exceeded,
    model_not_ready,
    server_busy,
)
from agent.models.local import ModelInfo
from agent.models.memory import fitting_length

log = structlog.get_logger(__name__)

_TOKEN = int(og.EngineEventFlags.TOKEN)
_FINISHED = int(og.EngineEventFlags.TURN_FINISHED)
_FINISH_REASONS = {
    og.FinishReason.EOS: FinishReason.STOP,
    og.FinishReason.STOP_STRING: FinishReason.STOP,
    og.FinishReason.MAX_GENERATED_TOKENS: FinishReason.LENGTH,
    og.FinishReason.MAX_SESSION_TOKENS: FinishReason.LENGTH,
    og.FinishReason.CANCELLED: FinishReason.CANCELLED,
}
_BATCH_GATHER_S = 0.05  # longest wait for requests that are still being tokenized
GREEDY_BELOW = 1e-4  # temperatures under this decode greedily


@dataclass(frozen=True)
class LoadPlan:
    """One way to load the model: a provider (og name + options) and the variant it runs."""

    label: str
    og_provider: str | None  # None: onnxruntime's default CPU execution provider
    options: dict[str, str]
    info: ModelInfo
    prepare: Callable[[], None] = lambda: None  # e.g. register a plugin EP library
    threads_option: str | None = None  # EPs with their own thread pool (OpenVINO)


@dataclass(frozen=True)
class EngineLimits:
    max_context: int = 4096
    max_batch: int = 4
    max_queue: int = 16
    max_tool_calls: int = 8  # a small model can repeat calls until max_tokens otherwise
    default_max_tokens: int = 512
    retry_after_s: int = 2
    batch_window_s: float = 0.002  # quiet time after the latest arrival before a batch
    stream_interval_s: float = 0.025  # tokens between first and last go out this often
    fit_context: bool = False  # load with a shorter context rather than refuse
    max_prompt_tokens: int | None = None  # None: whatever the context leaves room for


@dataclass(eq=False)
class _Job:
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
    og_request: og.Request | None = None
    turn_id: int = 0
    cancel_sent: bool = False
    stream: og.TokenizerStream | None = None
    stop: StopMatcher | None = None
    stopped_by_string: bool = False
    admitted_at: float = 0.0
    first_chunk: bool = True  # until the first text: the outbox sends that at once
    first_token_at: float = 0.0
    completion_tokens: int = 0

    def post(self, chunk: Chunk) -> None:
        """Send a chunk straight to the loop (threads other than the engine's owner)."""
        self.finished = self.finished or chunk.finish_reason is not None
        self.loop.call_soon_threadsafe(self.out.put_nowait, chunk)


class _Outbox:
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
        self._held: list[tuple[_Job, Chunk]] = []
        self._urgent = False
        self._sent_at = 0.0
        self._queued: list[tuple[_Job, Chunk]] = []
        self._scheduled = False

    def add(self, job: _Job, chunk: Chunk) -> None:
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


class LocalEngine:
    """Serves ChatRequests from one onnxruntime-genai model on the local hardware."""

    name = "local"

    def __init__(
        self,
        plans: list[LoadPlan],
        limits: EngineLimits,
        threads: int | None = None,
        available_memory: Callable[[], int | None] = lambda: None,
    ) -> None:
        if not plans:
            raise ValueError("no provider to load the model with")
        self.plans = plans
        self.info = plans[0].info
        self.limits = limits
        self.threads = threads
        self.available_memory = available_memory  # bytes the model may take, at load time
        self.provider = "none"
        self.load_attempts: list[dict[str, str]] = []
        self.max_length = min(self.info.context_length, limits.max_context)
        self.load_time_s = 0.0
        self.steps = 0  # engine steps run; grows while the owner thread makes progress
        self.finished: Counter[str] = Counter()  # requests ended, by finish reason
        self.batches: Counter[int] = Counter()  # static batches started, by size
        self._tokenizer: og.Tokenizer | None = None
        self._markup_tokens: dict[int, str] = {}  # special tokens that write call markup
        self._pending: deque[_Job] = deque()
        self._jobs: dict[str, _Job] = {}
        self._running = 0
        self._preparing = 0
        self._last_arrival = 0.0  # when the latest request began admission
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._outbox = _Outbox(limits.stream_interval_s)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
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
    def ready(self) -> bool:
        return self._tokenizer is not None and not self._stopping

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

    # ---- asyncio side ----------------------------------------------------------------

    def render_prompt(self, request: ChatRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        messages, tools = template_inputs(request, self.info.tool_markup)
        return self._require_tokenizer().apply_chat_template(
            messages, tools=tools, add_generation_prompt=True
        )

    def tokenize(self, text: str) -> np.ndarray:
        return self._require_tokenizer().encode(text)

    async def submit(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Admit the request (refusals raise EngineError here, before any reply starts)
        and return its stream of Chunks; closing the stream early cancels the generation."""
        chunks = self._stream(await self._admit(request))
        if request.calls_tools:
            return read_tool_calls(chunks, self.info.tool_markup)
        return chunks

    async def _stream(self, job: _Job) -> AsyncIterator[Chunk]:
        """The job's chunks; tokens that arrived together go on as one chunk, so a reader
        that fell behind (a busy loop) writes one SSE event or MQTT chunk for them."""
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
                self._cancel_job(job)

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running request by id; True if it was still in flight."""
        job = self._jobs.get(request_id)
        if job is None or job.finished:
            return False
        self._cancel_job(job)
        return True

    async def _admit(self, request: ChatRequest) -> _Job:
        if not self.ready:
            raise model_not_ready()
        special = bool(self._markup_tokens)
        guidance = guidance_for(request, self.info.tool_markup, special, self.limits.max_tool_calls)
        with self._cond:
            self._preparing += 1
            self._last_arrival = time.perf_counter()
            self._cond.notify_all()
        try:
            prompt_ids = await asyncio.to_thread(self.tokenize, self.render_prompt(request))
            job = _Job(
                request=request,
                prompt_ids=prompt_ids,
                max_tokens=self._max_tokens(request, len(prompt_ids)),
                loop=asyncio.get_running_loop(),
                guidance=guidance,
            )
            with self._cond:
                idle_slots = self._batch_slots if self._running == 0 else 0
                if len(self._pending) >= self.limits.max_queue + idle_slots:
                    raise server_busy(
                        f"The local queue is full ({self.limits.max_queue} waiting)",
                        self.limits.retry_after_s,
                    )
                self._pending.append(job)
                self._jobs[request.request_id] = job
        finally:
            with self._cond:
                self._preparing -= 1
                self._cond.notify_all()
        return job

    def _max_tokens(self, request: ChatRequest, prompt_tokens: int) -> int:
        cap = self.limits.max_prompt_tokens
        if cap is not None and prompt_tokens > cap:
            raise EngineError(
                "prompt_too_long",
                f"The prompt is {prompt_tokens} tokens; max_prompt_tokens is {cap}",
                param="messages" if request.prompt is None else "prompt",
            )
        limit = min(self.max_length, request.sampling.context_limit or self.max_length)
        room = limit - prompt_tokens
        if room < 1:
            raise context_length_exceeded(
                f"This model's maximum context length is {limit} tokens. However, "
                f"your prompt is {prompt_tokens} tokens, leaving no room for a completion."
            )
        wanted = request.sampling.max_tokens
        if wanted is None:
            return min(self.limits.default_max_tokens, room)
        if wanted > room:
            raise context_length_exceeded(
                f"This model's maximum context length is {limit} tokens. However, "
                f"you requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the prompt, "
                f"{wanted} in the completion). Reduce the prompt or max_tokens.",
                param="max_tokens",
            )
        return wanted

    def _cancel_job(self, job: _Job) -> None:
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._finish(job, FinishReason.CANCELLED)
                return
            job.cancel_requested = True

    def _require_tokenizer(self) -> og.Tokenizer:
        if self._tokenizer is None:
            raise model_not_ready()
        return self._tokenizer

    # ---- owner thread ----------------------------------------------------------------

    def _owner_main(self, loaded: concurrent.futures.Future[None]) -> None:
        try:
            engine, tokenizer = self._load()
        except Exception as exc:
            loaded.set_exception(exc)
            return
        self._engine, self._tokenizer = engine, tokenizer
        self._markup_tokens = self._special_markup(tokenizer)
        loaded.set_result(None)
        events = engine.create_event_buffer(256)
        active: list[_Job] = []
        while True:
            if not active:
                batch = self._next_batch()
                if batch is None:
                    break
                active = [job for job in batch if self._begin(job)]
                self._outbox.flush()  # refusals from _begin
                if active:
                    self.batches[len(active)] += 1
                log.debug("batch started", size=len(active))
                self._running = len(active)
                continue
            for job in active:
                if job.cancel_requested and not job.cancel_sent and job.og_request is not None:
                    job.og_request.cancel_turn(job.turn_id)
                    job.cancel_sent = True
            try:
                for event in engine.run(events):
                    job = next((j for j in active if j.og_request is event.request), None)
                    if job is not None and self._on_event(job, event):
                        active.remove(job)
            except Exception as exc:  # the batch fails, the owner thread and queue live on
                log.error("engine step failed", error=str(exc), batch=len(active))
                for job in active:
                    if not job.finished:
                        self._finish(job, FinishReason.ERROR, error=f"engine step failed: {exc}")
                    job.og_request.close()
                active = []
            self._outbox.flush()
            self.steps += 1
            self._running = len(active)
        for job in active:
            self._finish(job, FinishReason.CANCELLED)
            if job.og_request is not None:
                job.og_request.close()
        self._outbox.flush()
        self._tokenizer = None
        del self._engine

    def _load(self) -> tuple[og.Engine, og.Tokenizer]:
        """Try each plan in order (NPU > GPU > CPU); the first that serves a token wins."""
        started = time.perf_counter()
        for plan in self.plans:
            try:
                engine, tokenizer = self._load_plan(plan)
            except Exception as exc:
                log.warning("provider failed to load", provider=plan.label, error=str(exc))
                self.load_attempts.append({"provider": plan.label, "error": str(exc)})
                continue
            self.load_attempts.append({"provider": plan.label, "error": ""})
            self.info, self.provider = plan.info, plan.label
            self.load_time_s = time.perf_counter() - started
            return engine, tokenizer
        tried = "; ".join(f"{a['provider']}: {a['error']}" for a in self.load_attempts)
        raise RuntimeError(f"no provider could load the model ({tried})")

    def _load_plan(self, plan: LoadPlan) -> tuple[og.Engine, og.Tokenizer]:
        max_length = fitting_length(
            plan.info,
            min(plan.info.context_length, self.limits.max_context),
            self.limits.max_batch,
            self.available_memory(),
            self.limits.fit_context,
        )
        if max_length < min(plan.info.context_length, self.limits.max_context):
            log.warning("context shortened to fit in memory", max_length=max_length)
        plan.prepare()
        options = dict(plan.options)
        threads = self.threads
        if threads and plan.threads_option:
            # The EP sizes its own pool; onnxruntime's pool would only compete with it.
            options.setdefault(plan.threads_option, str(threads))
            threads = 1
        session = {"intra_op_num_threads": threads} if threads else {}
        config = og.Config(str(plan.info.path))
        config.overlay(
            json.dumps(
                {
                    "model": {"decoder": {"session_options": session}},
                    "search": {"max_length": max_length},
                    "engine": {"static_batching": {"max_batch_size": self.limits.max_batch}},
                }
            )
        )
        config.clear_providers()
        if plan.og_provider is not None:
            config.append_provider(plan.og_provider)
            for key, value in options.items():
                config.set_provider_option(plan.og_provider, key, value)
        model = og.Model(config)
        engine = og.Engine(model)
        self._probe(engine, plan.info)
        capacity = engine.get_capabilities().configured_max_batch_size
        self._batch_slots = max(1, min(self.limits.max_batch, capacity or self.limits.max_batch))
        self._model = model
        self.max_length = max_length
        return engine, og.Tokenizer(model)

    def _probe(self, engine: og.Engine, info: ModelInfo) -> None:
        """Run one token through the engine so a model it cannot serve fails at load."""
        request = engine.create_request()
        options = og.TurnOptions(request)
        options.set_max_generated_tokens(1)
        options.set_do_sample(False)
        request.begin_turn(np.array(info.eos_token_ids[:1] or [0], dtype=np.int32), options)
        buffer = engine.create_event_buffer(8)
        error = None
        while engine.has_pending_requests():
            for event in engine.run(buffer):
                if int(event.flags) & _FINISHED and event.finish_reason == og.FinishReason.FAILED:
                    error = event.error_code.name
        request.close()
        if error is not None:
            raise RuntimeError(
                f"og.Engine cannot run {info.path} ({error}); onnxruntime-genai 0.18's "
                "static CPU engine fails on models built with prune_lm_head=true"
            )

    def _special_markup(self, tokenizer: og.Tokenizer) -> dict[int, str]:
        """Token -> text for call markup that is one special token (decoded as "")."""
        markup = self.info.tool_markup
        found = {}
        for text in (markup.start, markup.end):
            ids = list(tokenizer.encode(text))
            if 1 <= len(ids) <= 2 and tokenizer.create_stream().decode(ids[-1]) == "":
                found[int(ids[-1])] = text  # a tokenizer may put BOS in front
        return found if len(found) == 2 else {}

    def _next_batch(self) -> list[_Job] | None:
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
            while len(self._pending) < self._batch_slots and not self._stopping:
                now = time.perf_counter()
                quiet_end = max(start, self._last_arrival) + self.limits.batch_window_s
                end = gather_end if self._preparing > 0 else min(quiet_end, gather_end)
                if now >= end:
                    break
                self._cond.wait(end - now)
            return [
                self._pending.popleft() for _ in range(min(self._batch_slots, len(self._pending)))
            ]

    def _begin(self, job: _Job) -> bool:
        job.admitted_at = time.perf_counter()
        try:
            options = og.RequestOptions()
            options.set_max_session_tokens(len(job.prompt_ids) + job.max_tokens)
            job.og_request = self._engine.create_request(options=options)
            job.turn_id = job.og_request.begin_turn(job.prompt_ids, self._turn_options(job))
        except Exception as exc:  # a bad sampling value must not take the engine down
            self._finish(job, FinishReason.ERROR, error=str(exc))
            if job.og_request is not None:
                job.og_request.close()
            return False
        job.stream = self._tokenizer.create_stream()
        job.stop = StopMatcher(job.request.sampling.stop)
        return True

    def _turn_options(self, job: _Job) -> og.TurnOptions:
        sampling, defaults = job.request.sampling, self.info.search
        options = og.TurnOptions(job.og_request)
        options.set_max_generated_tokens(job.max_tokens)
        if sampling.min_tokens:
            options.set_min_generated_tokens(min(sampling.min_tokens, job.max_tokens))
        temperature = sampling.temperature
        # A vanishing temperature is greedy: og would resolve it so and then reject top_k.
        do_sample = defaults.do_sample if temperature is None else temperature >= GREEDY_BELOW
        options.set_do_sample(do_sample)
        if do_sample:
            options.set_temperature(defaults.temperature if temperature is None else temperature)
            options.set_top_p(sampling.top_p if sampling.top_p is not None else defaults.top_p)
            options.set_top_k(sampling.top_k if sampling.top_k is not None else defaults.top_k)
        if sampling.repetition_penalty is not None:
            options.set_repetition_penalty(sampling.repetition_penalty)
        if job.guidance is not None:
            options.set_guidance(job.guidance.kind, job.guidance.data)
        return options

    def _on_event(self, job: _Job, event: og.EngineEvent) -> bool:
        """Handle one engine event; True when the job's turn is over."""
        flags = int(event.flags)
        if flags & _TOKEN and not job.finished:
            self._on_token(job, int(event.token))
        if not flags & _FINISHED:
            return False
        if not job.finished:
            if event.finish_reason == og.FinishReason.FAILED:
                self._finish(job, FinishReason.ERROR, error=event.error_code.name)
            else:
                reason = _FINISH_REASONS.get(event.finish_reason, FinishReason.STOP)
                self._finish(job, reason, tail=job.stop.flush() if job.stop else "")
        job.og_request.close()
        return True

    def _on_token(self, job: _Job, token: int) -> None:
        now = time.perf_counter()
        if job.completion_tokens == 0:
            job.first_token_at = now
        job.completion_tokens += 1
        if token in self.info.eos_token_ids:
            text = ""
        else:
            text = self._markup_tokens.get(token) or job.stream.decode(token)
        emit, stopped = job.stop.feed(text)
        self._outbox.add(job, Chunk(text=emit, token_ids=(token,)))
        if stopped:
            self._finish(job, FinishReason.STOP)
            job.og_request.cancel_turn(job.turn_id)
            job.cancel_sent = True

    def _finish(
        self, job: _Job, reason: FinishReason, *, tail: str = "", error: str | None = None
    ) -> None:
        end = time.perf_counter()
        start = job.admitted_at or end
        first = job.first_token_at or end
        decode_s = end - first
        final = Chunk(
            text=tail,
            finish_reason=reason,
            error=error,
            usage=Usage(len(job.prompt_ids), job.completion_tokens),
            timings=Timings(
                queue_s=start - job.enqueued_at,
                prompt_s=first - start,
                decode_s=decode_s,
                total_s=end - job.enqueued_at,
                time_to_first_token_s=first - job.enqueued_at,
                decode_tokens_per_s=(job.completion_tokens - 1) / decode_s
                if job.completion_tokens > 1 and decode_s > 0
                else 0.0,
            ),
        )
        if threading.current_thread() is self._thread:
            self._outbox.add(job, final)
        else:  # a queued request cancelled from the loop
            job.post(final)
        with self._cond:
            self.finished[reason.value] += 1
            self._jobs.pop(job.request.request_id, None)
