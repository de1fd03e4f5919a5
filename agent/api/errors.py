"""Error replies: the HTTP status of each ErrorCode, OpenAI-style bodies on /v1 and the
operations routes, Ollama-style `{"error": "..."}` on /api."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from agent.engine.types import EngineError, ErrorCode
from agent.protocol.fields import WireModel
from agent.protocol.ollama import ErrorReply
from agent.protocol.openai import ErrorDetail, ErrorResponse

Responses = dict[int | str, dict[str, Any]]

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_SCHEMA: 400,
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: 400,
    ErrorCode.PROMPT_TOO_LONG: 400,
    ErrorCode.TOO_MANY_MESSAGES: 400,
    ErrorCode.MAX_TOKENS_TOO_LARGE: 400,
    ErrorCode.INVALID_API_KEY: 401,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_MANY_CONCURRENT_REQUESTS: 429,
    ErrorCode.ENGINE_ERROR: 500,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.SERVER_BUSY: 503,
    ErrorCode.SERVER_DRAINING: 503,
    ErrorCode.MODEL_NOT_READY: 503,
    ErrorCode.ENGINE_FAILED: 503,
}
_BY_STATUS = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}
_ROUTING = {
    ErrorCode.NOT_FOUND: "no such route",
    ErrorCode.METHOD_NOT_ALLOWED: "method not allowed",
}


# OpenAPI: what each refusal means, for the statuses a route declares next to its 200.
_MEANING = {
    400: "Invalid request: a body that fails validation, or a limit of the model",
    401: "Missing or wrong API key (when keys are on)",
    404: "No such model, profile or stored response",
    413: "The request body exceeds max_request_bytes",
    429: "Over the client's rate or concurrency limit (Retry-After says when to retry)",
    500: "The engine failed while generating",
    503: "Busy, loading, draining or a failed engine (Retry-After when it will pass)",
}
# Every route: the guard's key check and size cap; generating ones add limits and the engine.
GUARDED = (401, 413)
WITH_BODY = (400, 401, 404, 413)
GENERATING = (400, 401, 404, 413, 429, 500, 503)


def _declared(body: type[WireModel], statuses: tuple[int, ...]) -> Responses:
    return {status: {"model": body, "description": _MEANING[status]} for status in statuses}


def openai_errors(statuses: tuple[int, ...]) -> Responses:
    """The refusals a /v1 or operations route may answer, with OpenAI's error body."""
    return _declared(ErrorResponse, statuses)


def ollama_errors(statuses: tuple[int, ...]) -> Responses:
    """The refusals an /api route may answer, with Ollama's `{"error": "..."}`."""
    return _declared(ErrorReply, statuses)


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status == 401:
        return "authentication_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _encodable(text: str) -> str:
    """Messages quote what the client sent; a lone surrogate from a JSON `\\udXXX` escape
    cannot be encoded as UTF-8 and would turn the refusal into a 500."""
    return text.encode("utf-8", "replace").decode("utf-8")


def error_for_path(
    path: str,
    error: EngineError,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Ollama's `{"error": "..."}` under /api/, OpenAI's error object everywhere else."""
    status = HTTP_STATUS[error.code]
    headers = dict(headers or {})
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    message, param = _encodable(error.message), error.param and _encodable(error.param)
    if path.startswith("/api/"):
        body = ErrorReply(error=message).wire()
    else:
        detail = ErrorDetail(message=message, type=_error_type(status), param=param,
                             code=error.code)  # fmt: skip
        body = ErrorResponse(error=detail).wire()
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(request: Request, error: EngineError) -> JSONResponse:
    return error_for_path(request.url.path, error)


def install(app: FastAPI) -> None:
    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"] if p != "body"]
        param = ".".join(loc) or None
        if first["type"] == "json_invalid":
            message = f"Request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
            invalid = EngineError(ErrorCode.INVALID_JSON, message.rstrip(": "))
            return error_response(request, invalid)
        message = f"{param or 'body'}: {first['msg']}"
        return error_response(request, EngineError(ErrorCode.INVALID_REQUEST, message, param=param))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = _BY_STATUS.get(exc.status_code, ErrorCode.INVALID_REQUEST)
        message = str(exc.detail)
        if code in _ROUTING:  # only the router raises these: say which route the client tried
            message = f"{request.method} {request.url.path}: {_ROUTING[code]}"
        return error_response(request, EngineError(code, message))
