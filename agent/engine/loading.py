"""Loading a model for og.Engine: try each provider plan in order, size the KV cache to
the memory there is, and prove the engine can serve a token. Runs on the engine's owner
thread (og.Engine must be driven by the thread that created it) and returns one frozen
value with everything the scheduler needs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime_genai as og
import structlog

from agent.models.info import ModelInfo
from agent.models.memory import fitting_length
from agent.settings import EngineSettings

log = structlog.get_logger(__name__)

FINISHED_FLAG = int(og.EngineEventFlags.TURN_FINISHED)


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
class LoadAttempt:
    provider: str
    error: str  # empty: it loaded


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve on the owner thread that loaded it."""

    plan: LoadPlan
    model: og.Model
    engine: og.Engine | None  # None: og.Engine cannot run it (a pruned LM head)
    tokenizer: og.Tokenizer
    max_length: int
    batch_slots: int  # requests one static batch may hold
    markup_tokens: dict[int, str]  # special tokens that write call markup (decoded as "")
    load_time_s: float

    @property
    def info(self) -> ModelInfo:
        return self.plan.info


class LoadFailed(RuntimeError):
    """No plan could load the model; `attempts` says what each provider answered."""

    def __init__(self, attempts: list[LoadAttempt]) -> None:
        tried = "; ".join(f"{a.provider}: {a.error}" for a in attempts)
        super().__init__(f"no provider could load the model ({tried})")


def load(
    plans: list[LoadPlan],
    settings: EngineSettings,
    threads: int | None,
    memory_bytes: int | None,
    attempts: list[LoadAttempt],
) -> LoadedModel:
    """Try each plan in order (NPU > GPU > CPU); the first that serves a token wins.
    `attempts` receives one entry per plan tried, loaded or not."""
    started = time.perf_counter()
    for plan in plans:
        try:
            loaded = _load_plan(plan, settings, threads, memory_bytes, started)
        except Exception as exc:
            log.warning("provider failed to load", provider=plan.label, error=str(exc))
            attempts.append(LoadAttempt(plan.label, str(exc)))
            continue
        attempts.append(LoadAttempt(plan.label, ""))
        return loaded
    raise LoadFailed(attempts)


def _load_plan(
    plan: LoadPlan,
    settings: EngineSettings,
    threads: int | None,
    memory_bytes: int | None,
    started: float,
) -> LoadedModel:
    wanted = min(plan.info.context_length, settings.max_context)
    max_length = fitting_length(
        plan.info, wanted, settings.kv_caches, memory_bytes, settings.fit_context
    )
    if max_length < wanted:
        log.warning("context shortened to fit in memory", max_length=max_length)
    plan.prepare()
    model = og.Model(og_config(plan, threads, max_length, settings.max_batch))
    engine: og.Engine | None = og.Engine(model)
    error = _probe(engine, plan.info)
    if error is not None:
        # onnxruntime-genai 0.18's static CPU og.Engine fails on models built with
        # prune_lm_head=true; og.Generator runs them, one request at a time.
        engine = None
        _probe_generator(model, plan.info, error)
        log.warning("og.Engine cannot run this model: requests run one at a time on "
                    "og.Generator", error=error)  # fmt: skip
    capacity = engine.get_capabilities().configured_max_batch_size if engine else 1
    tokenizer = og.Tokenizer(model)
    return LoadedModel(
        plan=plan,
        model=model,
        engine=engine,
        tokenizer=tokenizer,
        max_length=max_length,
        batch_slots=max(1, min(settings.max_batch, capacity or settings.max_batch)),
        markup_tokens=_special_markup(tokenizer, plan.info),
        load_time_s=time.perf_counter() - started,
    )


def og_config(
    plan: LoadPlan, threads: int | None, max_length: int, max_batch: int | None = None
) -> og.Config:
    """The plan's provider, its options and the threads, the KV cache length, and og.Engine's
    static batch (None: no og.Engine will be made)."""
    options = dict(plan.options)
    if threads and plan.threads_option:
        # The EP sizes its own pool; onnxruntime's pool would only compete with it.
        options.setdefault(plan.threads_option, str(threads))
        threads = 1
    session = {"intra_op_num_threads": threads} if threads else {}
    overlay: dict[str, object] = {
        "model": {"decoder": {"session_options": session}},
        "search": {"max_length": max_length},
    }
    if max_batch is not None:
        overlay["engine"] = {"static_batching": {"max_batch_size": max_batch}}
    config = og.Config(str(plan.info.path))
    config.overlay(json.dumps(overlay))
    config.clear_providers()
    if plan.og_provider is not None:
        config.append_provider(plan.og_provider)
        for key, value in options.items():
            config.set_provider_option(plan.og_provider, key, value)
    return config


def _probe(engine: og.Engine, info: ModelInfo) -> str | None:
    """Run one token through og.Engine; why it failed, if it did."""
    request = engine.create_request()
    options = og.TurnOptions(request)
    options.set_max_generated_tokens(1)
    options.set_do_sample(False)
    request.begin_turn(_probe_tokens(info), options)
    buffer = engine.create_event_buffer(8)
    error = None
    while engine.has_pending_requests():
        for event in engine.run(buffer):
            if int(event.flags) & FINISHED_FLAG and event.finish_reason == og.FinishReason.FAILED:
                error = str(event.error_code.name)
    request.close()
    return error


def _probe_generator(model: og.Model, info: ModelInfo, engine_error: str) -> None:
    """Run one token through og.Generator, so that a model neither can serve fails at load."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=3, do_sample=False)
    try:
        generator = og.Generator(model, params)
        generator.append_tokens(_probe_tokens(info))
        generator.generate_next_token()
    except Exception as exc:
        raise RuntimeError(
            f"neither og.Engine ({engine_error}) nor og.Generator ({exc}) can run {info.path}"
        ) from None


def _probe_tokens(info: ModelInfo) -> np.ndarray:
    """Two tokens: a pruned LM head fails on og.Engine only past a one-token prompt."""
    return np.array((info.eos_token_ids[:1] or [0]) * 2, dtype=np.int32)


def _special_markup(tokenizer: og.Tokenizer, info: ModelInfo) -> dict[int, str]:
    """Token -> text for call markup that is one special token (decoded as "")."""
    markup = info.tool_markup
    found = {}
    for text in (markup.start, markup.end):
        ids = list(tokenizer.encode(text))
        if 1 <= len(ids) <= 2 and tokenizer.create_stream().decode(ids[-1]) == "":
            found[int(ids[-1])] = text  # a tokenizer may put BOS in front
    return found if len(found) == 2 else {}
