"""Ollama-compatible routes: /api/chat, /api/generate, /api/tags, /api/ps, /api/show,
/api/create, /api/copy, /api/pull, /api/delete, /api/version. Streaming is NDJSON and on by
default, as in Ollama."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agent.api.deps import GatewayDep
from agent.api.errors import GENERATING, GUARDED, WITH_BODY, ollama_errors
from agent.api.streaming import NDJSON_OR_JSON, collect, headers, ndjson, routed_request
from agent.engine.reply import ReplyReader
from agent.engine.types import EngineError, ErrorCode, ToolCall
from agent.protocol import modelfile
from agent.protocol.ollama import (
    ChatBody,
    ChatResponse,
    CopyBody,
    CreateBody,
    Empty,
    ErrorReply,
    GenerateBody,
    GenerateResponse,
    ListResponse,
    MessageOut,
    ModelDetails,
    ModelEntry,
    NameBody,
    Options,
    ProcessResponse,
    PullBody,
    PullLine,
    Reply,
    RunningModel,
    ShowResponse,
    StatusLine,
    VersionResponse,
)
from agent.routing.port import Routed

router = APIRouter()
log = structlog.get_logger(__name__)


def _load_reason(keep_alive: str | float | None) -> str:
    """Ollama loads on an empty request and unloads with keep_alive 0; the gateway's one
    model stays resident either way, and says what the client asked for."""
    return "unload" if keep_alive in (0, "0", "0s", "0m") else "load"


def _warn_ignored(options: Options) -> None:
    if ignored := options.ignored():
        log.warning("ollama options ignored", options=ignored)


@router.get("/api/version", responses=ollama_errors(GUARDED))
async def version() -> VersionResponse:
    return VersionResponse()


@router.post(
    "/api/chat",
    responses={**NDJSON_OR_JSON, **ollama_errors(GENERATING)},
    response_model=ChatResponse,
)
async def chat(
    body: ChatBody, request: Request, gateway: GatewayDep
) -> JSONResponse | StreamingResponse:
    started = time.perf_counter()
    _warn_ignored(body.options)
    internal = body.to_internal()
    if not internal.messages:  # Ollama: an empty chat just loads the model
        gateway.names.resolve(body.model)
        loaded = ChatResponse(model=body.model, message=MessageOut.of(""), done=True,
                              done_reason=_load_reason(body.keep_alive))  # fmt: skip
        return JSONResponse(loaded.wire())
    routed = await gateway.submit(routed_request(internal, request))

    def line(text: str, calls: tuple[ToolCall, ...] = ()) -> ChatResponse:
        return ChatResponse(model=body.model, message=MessageOut.of(text, calls))

    if body.stream:
        return _ndjson_stream(routed, started, line)
    done = await collect(request, routed)
    reply = line(done.text, done.tool_calls).finished(done.final, started)
    return JSONResponse(reply.wire(), headers=headers(routed))


@router.post(
    "/api/generate",
    responses={**NDJSON_OR_JSON, **ollama_errors(GENERATING)},
    response_model=GenerateResponse,
)
async def generate(
    body: GenerateBody, request: Request, gateway: GatewayDep
) -> JSONResponse | StreamingResponse:
    started = time.perf_counter()
    _warn_ignored(body.options)
    if not body.prompt:  # Ollama: an empty prompt just loads the model
        gateway.names.resolve(body.model)
        loaded = GenerateResponse(model=body.model, response="", done=True,
                                  done_reason=_load_reason(body.keep_alive))  # fmt: skip
        return JSONResponse(loaded.wire())
    routed = await gateway.submit(routed_request(body.to_internal(), request))

    def line(text: str, calls: tuple[ToolCall, ...] = ()) -> GenerateResponse:
        return GenerateResponse(model=body.model, response=text)

    if body.stream:
        return _ndjson_stream(routed, started, line)
    done = await collect(request, routed)
    reply = line(done.text).finished(done.final, started)
    return JSONResponse(reply.wire(), headers=headers(routed))


def _ndjson_stream(
    routed: Routed, started: float, line: Callable[[str, tuple[ToolCall, ...]], Reply]
) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        reader = ReplyReader(routed.chunks)
        async for text in reader.texts():
            yield ndjson(line(text, ()).wire())
        done = reader.result()
        if done.tool_calls:
            yield ndjson(line("", done.tool_calls).wire())
        yield ndjson(line("", ()).finished(done.final, started).wire())

    return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers(routed))


def _model_entry(gateway: GatewayDep, name: str) -> ModelEntry:
    served = gateway.served_model()
    tag = name if ":" in name else f"{name}:latest"
    return ModelEntry(
        name=tag,
        model=tag,
        modified_at=datetime.fromtimestamp(served.modified_at, UTC).isoformat(),
        size=served.size_bytes,
        digest="",
        details=ModelDetails(
            parent_model=served.name if name != served.name else "",
            format="onnx",
            family=served.family,
            families=[served.family],
            parameter_size=served.parameter_size,
            quantization_level=served.precision,
        ),
    )


@router.get("/api/tags", responses=ollama_errors(GUARDED))
async def tags(gateway: GatewayDep) -> ListResponse:
    return ListResponse(models=[_model_entry(gateway, name) for name in gateway.names.listed()])


@router.get("/api/ps", responses=ollama_errors(GUARDED))
async def ps(gateway: GatewayDep) -> ProcessResponse:
    entry = _model_entry(gateway, gateway.served_model().name)
    running = RunningModel(**entry.model_dump(), expires_at="0001-01-01T00:00:00Z", size_vram=0)
    return ProcessResponse(models=[running])


@router.post("/api/show", responses=ollama_errors(WITH_BODY))
async def show(body: NameBody, gateway: GatewayDep) -> ShowResponse:
    name = body.required_name()
    profile = gateway.names.resolve(name)
    served = gateway.served_model()
    fields: dict[str, Any] = profile.model_dump() if profile is not None else {}
    system = fields.get("system") or ""
    base = fields.get("base") or served.name
    entry = _model_entry(gateway, name)
    return ShowResponse(
        modelfile=modelfile.render(base, system, fields),
        parameters="\n".join(modelfile.parameter_lines(fields)),
        template="",
        system=system,
        details=entry.details,
        model_info={
            "general.architecture": served.family,
            "context_length": served.context_length,
            "edge_agent.variant": served.variant,
            "edge_agent.provider": served.provider,
        },
        capabilities=["completion", "tools"],
        modified_at=entry.modified_at,
    )


def _modelfile(body: CreateBody) -> modelfile.Modelfile:
    if body.modelfile is not None:
        try:
            parsed = modelfile.parse(body.modelfile)
        except modelfile.ModelfileError as exc:
            raise EngineError(ErrorCode.INVALID_REQUEST, str(exc), param="modelfile") from None
    else:
        parsed = modelfile.Modelfile(base=body.from_, system=body.system)
        for key, value in (body.parameters or {}).items():
            parsed.add_parameter(key, value)
    # Fields newer clients send that a profile cannot hold (template, adapters, ...).
    parsed.ignored += [key.upper() for key, value in (body.model_extra or {}).items() if value]
    return parsed


@router.post(
    "/api/create",
    responses={**NDJSON_OR_JSON, **ollama_errors(WITH_BODY)},
    response_model=StatusLine,
)
async def create(body: CreateBody, gateway: GatewayDep) -> JSONResponse | StreamingResponse:
    name = body.required_name()
    parsed = _modelfile(body)
    gateway.names.create(name, parsed)
    statuses = [
        StatusLine(status=f"ignored {what}: not supported by edge-agent (profiles hold FROM, "
                          "PARAMETER and SYSTEM)")
        for what in parsed.ignored
    ] + [StatusLine(status="success")]  # fmt: skip
    log.info("profile created", profile=name, ignored=parsed.ignored)
    if body.stream:
        return StreamingResponse(
            iter(ndjson(status.wire()) for status in statuses), media_type="application/x-ndjson"
        )
    final = StatusLine(status="success", ignored=parsed.ignored)
    return JSONResponse(final.wire())


@router.post("/api/copy", response_model=Empty, responses=ollama_errors(WITH_BODY))
async def copy(body: CopyBody, gateway: GatewayDep) -> JSONResponse:
    """A profile FROM the source, with nothing of its own: the same model, system prompt
    and parameters under the new name."""
    gateway.names.resolve(body.source)
    gateway.names.create(body.destination, modelfile.Modelfile(base=body.source))
    log.info("model copied", source=body.source, destination=body.destination)
    return JSONResponse(Empty().wire())


@router.post(
    "/api/pull",
    responses={**NDJSON_OR_JSON, **ollama_errors(GENERATING)},
    response_model=PullLine,
)
async def pull(body: PullBody, gateway: GatewayDep) -> JSONResponse | StreamingResponse:
    """`edge-agent models pull` of a catalog name or Ollama tag, its progress streamed."""
    progress = await gateway.pull(body.required_name())
    if not body.stream:
        async for _ in progress:  # a failure raises: its status and Ollama's error body
            pass
        return JSONResponse(PullLine(status="success").wire())

    async def lines() -> AsyncIterator[str]:
        try:
            async for line in progress:
                yield ndjson(PullLine(status=line.status, digest=line.digest, total=line.total,
                                      completed=line.completed).wire())  # fmt: skip
        except EngineError as exc:  # the status is sent: Ollama's error line, as it does
            yield ndjson(ErrorReply(error=exc.message).wire())

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.delete("/api/delete", response_model=Empty, responses=ollama_errors(WITH_BODY))
async def delete(body: NameBody, gateway: GatewayDep) -> JSONResponse:
    """A stored profile, else a pulled model (as `edge-agent models remove`)."""
    name = body.required_name()
    try:
        gateway.names.remove(name)
    except EngineError as exc:
        if exc.code != ErrorCode.MODEL_NOT_FOUND:
            raise
        await asyncio.to_thread(gateway.remove_model, name)  # deletes files: off the loop
    return JSONResponse(Empty().wire())
