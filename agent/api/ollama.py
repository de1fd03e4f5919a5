"""Ollama-compatible routes: /api/chat, /api/generate, /api/tags, /api/ps, /api/show,
/api/version and `GET /`. Streaming is NDJSON and on by default, as in Ollama."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from agent.api.openai import ToolIn
from agent.api.streaming import NDJSON_OR_JSON, collect, headers, ndjson, routed_request
from agent.engine.types import (
    ChatRequest,
    Chunk,
    EngineError,
    Message,
    ResponseFormat,
    Route,
    SamplingParams,
    ToolCall,
)
from agent.models import modelfile
from agent.routing.router import Routed

if TYPE_CHECKING:
    from agent.service import Service

router = APIRouter()
log = structlog.get_logger(__name__)

OLLAMA_API_VERSION = "0.9.0"  # the Ollama API level these routes follow


class Options(BaseModel):
    """Ollama's `options`; the ones without meaning here are ignored with a log warning,
    as Ollama itself does with options it does not know."""

    model_config = ConfigDict(extra="allow")

    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    num_predict: int | None = None
    num_ctx: Annotated[int, Field(ge=16)] | None = None
    stop: list[str] | None = None
    seed: int | None = None
    repeat_penalty: Annotated[float, Field(gt=0.0)] | None = None

    def sampling(self) -> SamplingParams:
        if self.model_extra:
            log.warning("ollama options ignored", options=sorted(self.model_extra))
        # Ollama: num_predict -1 (or -2) means "until the context is full / no limit".
        limit = self.num_predict if self.num_predict and self.num_predict > 0 else None
        return SamplingParams(
            max_tokens=limit,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            repetition_penalty=self.repeat_penalty,
            stop=tuple(self.stop or ()),
            context_limit=self.num_ctx,
        )


class OllamaFunctionCall(BaseModel):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    function: OllamaFunctionCall


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str = ""
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None

    def to_internal(self) -> Message:
        calls = tuple(
            ToolCall(c.id or ToolCall.new_id(), c.function.name, json.dumps(c.function.arguments))
            for c in self.tool_calls or ()
        )
        return Message(self.role, self.content, calls, name=self.tool_name)


def response_format(format: str | dict[str, Any] | None) -> ResponseFormat | None:
    """Ollama's `format`: "json" for any JSON, or a JSON schema."""
    if format in (None, ""):
        return None
    if format == "json":
        return ResponseFormat("json_object")
    if isinstance(format, dict):
        return ResponseFormat("json_schema", format)
    raise EngineError(
        "invalid_request", f'format must be "json" or a JSON schema, not {format!r}', param="format"
    )


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[OllamaMessage] = Field(default_factory=list)
    stream: bool = True
    options: Options = Field(default_factory=Options)
    route: Route | None = None
    tools: list[ToolIn] | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: str | float | None = None  # the model stays resident; 0 answers "unload"


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    stream: bool = True
    options: Options = Field(default_factory=Options)
    route: Route | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: str | float | None = None


class ShowBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    name: str | None = None  # older clients


def _service(request: Request) -> Service:
    return request.app.state.service


def _load_reason(keep_alive: str | float | None) -> str:
    """Ollama loads on an empty request and unloads with keep_alive 0; the gateway's one
    model stays resident either way, and says what the client asked for."""
    return "unload" if keep_alive in (0, "0", "0s", "0m") else "load"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _final_fields(final: Chunk, started: float) -> dict[str, Any]:
    timings, usage = final.timings, final.usage
    fields: dict[str, Any] = {
        "done": True,
        "done_reason": final.finish_reason.value if final.finish_reason else "stop",
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": usage.prompt_tokens if usage else 0,
        "prompt_eval_duration": int(timings.prompt_s * 1e9) if timings else 0,
        "eval_count": usage.completion_tokens if usage else 0,
        "eval_duration": int(timings.decode_s * 1e9) if timings else 0,
    }
    if final.error:
        fields["error"] = final.error
    return fields


@router.get("/api/version")
async def version() -> dict:
    return {"version": OLLAMA_API_VERSION}


@router.post("/api/chat", responses=NDJSON_OR_JSON)
async def chat(body: ChatBody, request: Request) -> Any:
    started = time.perf_counter()
    internal = ChatRequest(
        model=body.model,
        messages=tuple(m.to_internal() for m in body.messages),
        sampling=body.options.sampling(),
        route=body.route,
        tools=tuple(t.to_internal() for t in body.tools or ()),
        response_format=response_format(body.format),
    )
    if not internal.messages:  # Ollama: an empty chat just loads the model
        _service(request).names.resolve(body.model)
        return {
            "model": body.model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": _load_reason(body.keep_alive),
        }
    routed = await _service(request).router.submit(routed_request(internal, request))

    def message(text: str, calls: tuple[ToolCall, ...] = ()) -> dict:
        entry: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            entry["tool_calls"] = [
                {"function": {"name": c.name, "arguments": _arguments(c.arguments)}} for c in calls
            ]
        return entry

    if body.stream:
        return _ndjson_stream(
            routed, body.model, started, lambda t, calls=(): {"message": message(t, calls)}
        )
    done = await collect(request, routed)
    payload = {
        "model": body.model,
        "created_at": _now(),
        "message": message(done.text, done.final.tool_calls),
    }
    return JSONResponse({**payload, **_final_fields(done.final, started)}, headers=headers(routed))


@router.post("/api/generate", responses=NDJSON_OR_JSON)
async def generate(body: GenerateBody, request: Request) -> Any:
    started = time.perf_counter()
    if not body.prompt:  # Ollama: an empty prompt just loads the model
        _service(request).names.resolve(body.model)
        return {
            "model": body.model,
            "created_at": _now(),
            "response": "",
            "done": True,
            "done_reason": _load_reason(body.keep_alive),
        }
    output = response_format(body.format)
    if body.raw:
        internal = ChatRequest(
            model=body.model,
            prompt=body.prompt,
            sampling=body.options.sampling(),
            route=body.route,
            response_format=output,
        )
    else:
        system = (Message("system", body.system),) if body.system else ()
        internal = ChatRequest(
            model=body.model,
            messages=(*system, Message("user", body.prompt)),
            sampling=body.options.sampling(),
            route=body.route,
            response_format=output,
        )
    routed = await _service(request).router.submit(routed_request(internal, request))
    if body.stream:
        return _ndjson_stream(routed, body.model, started, lambda t, calls=(): {"response": t})
    done = await collect(request, routed)
    payload = {"model": body.model, "created_at": _now(), "response": done.text}
    return JSONResponse({**payload, **_final_fields(done.final, started)}, headers=headers(routed))


def _ndjson_stream(routed: Routed, model: str, started: float, body: Any) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for chunk in routed.chunks:
            if chunk.finish_reason is not None:
                if chunk.text or chunk.tool_calls:
                    yield ndjson(
                        {
                            "model": model,
                            "created_at": _now(),
                            **body(chunk.text, chunk.tool_calls),
                            "done": False,
                        }
                    )
                yield ndjson(
                    {
                        "model": model,
                        "created_at": _now(),
                        **body(""),
                        **_final_fields(chunk, started),
                    }
                )
            elif chunk.text:
                yield ndjson(
                    {"model": model, "created_at": _now(), **body(chunk.text), "done": False}
                )

    return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers(routed))


def _arguments(text: str) -> Any:
    """Ollama sends call arguments as an object, not as JSON text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _model_entry(service: Service, name: str) -> dict[str, Any]:
    info = service.info
    size = sum(p.stat().st_size for p in info.path.iterdir() if p.is_file())
    tag = name if ":" in name else f"{name}:latest"
    return {
        "name": tag,
        "model": tag,
        "modified_at": datetime.fromtimestamp(info.path.stat().st_mtime, UTC).isoformat(),
        "size": size,
        "digest": "",
        "details": {
            "parent_model": info.name if name != info.name else "",
            "format": "onnx",
            "family": info.manifest.get("family", "llama"),
            "families": [info.manifest.get("family", "llama")],
            "parameter_size": info.manifest.get("parameter_size", ""),
            "quantization_level": info.precision,
        },
    }


@router.get("/api/tags")
async def tags(request: Request) -> dict:
    service = _service(request)
    return {"models": [_model_entry(service, name) for name in service.names.listed()]}


@router.get("/api/ps")
async def ps(request: Request) -> dict:
    service = _service(request)
    entry = _model_entry(service, service.info.name)
    return {"models": [{**entry, "expires_at": "0001-01-01T00:00:00Z", "size_vram": 0}]}


@router.post("/api/show")
async def show(body: ShowBody, request: Request) -> Any:
    service = _service(request)
    name = body.model or body.name
    if not name:
        raise EngineError("invalid_request", "model is required", param="model")
    profile = service.names.resolve(name)
    info = service.info
    fields = profile.model_dump() if profile is not None else {}
    system = fields.get("system") or ""
    base = fields.get("base") or info.name
    entry = _model_entry(service, name)
    return {
        "modelfile": modelfile.render(base, system, fields),
        "parameters": "\n".join(modelfile.parameter_lines(fields)),
        "template": "",
        "system": system,
        "details": entry["details"],
        "model_info": {
            "general.architecture": info.manifest.get("family", "llama"),
            "context_length": info.context_length,
            "edge_agent.variant": info.variant,
            "edge_agent.provider": service.engine.provider,
        },
        "capabilities": ["completion", "tools"],
        "modified_at": entry["modified_at"],
    }


class CreateBody(BaseModel):
    """Ollama's /api/create: `modelfile` text (older clients) or `from`/`system`/`parameters`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str | None = None
    name: str | None = None  # older clients
    modelfile: str | None = None
    from_: str | None = Field(None, alias="from")
    system: str | None = None
    parameters: dict[str, Any] | None = None
    stream: bool = True

    def to_modelfile(self) -> modelfile.Modelfile:
        if self.modelfile is not None:
            try:
                parsed = modelfile.parse(self.modelfile)
            except modelfile.ModelfileError as exc:
                raise EngineError("invalid_request", str(exc), param="modelfile") from None
        else:
            parsed = modelfile.Modelfile(base=self.from_, system=self.system)
            for key, value in (self.parameters or {}).items():
                parsed.add_parameter(key, value)
        # Fields newer clients send that a profile cannot hold (template, adapters, ...).
        parsed.ignored += [key.upper() for key, value in (self.model_extra or {}).items() if value]
        return parsed


@router.post("/api/create", responses=NDJSON_OR_JSON)
async def create(body: CreateBody, request: Request) -> Any:
    name = body.model or body.name
    if not name:
        raise EngineError("invalid_request", "model is required", param="model")
    parsed = body.to_modelfile()
    _service(request).names.create(name, parsed)
    statuses = [
        {"status": f"ignored {what}: not supported by edge-agent (profiles hold FROM, "
                   "PARAMETER and SYSTEM)"}
        for what in parsed.ignored
    ] + [{"status": "success"}]  # fmt: skip
    log.info("profile created", profile=name, ignored=parsed.ignored)
    if body.stream:
        return StreamingResponse(
            iter(ndjson(status) for status in statuses), media_type="application/x-ndjson"
        )
    return {**statuses[-1], "ignored": parsed.ignored}


@router.delete("/api/delete")
async def delete(body: ShowBody, request: Request) -> Any:
    name = body.model or body.name
    if not name:
        raise EngineError("invalid_request", "model is required", param="model")
    _service(request).names.remove(name)
    return JSONResponse({})
