"""Error replies: OpenAI-style bodies on /v1 and ops routes, Ollama-style on /api."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from agent.engine.types import EngineError


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status == 401:
        return "authentication_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_response(
    request: Request,
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    retry_after_s: int | None = None,
) -> JSONResponse:
    return error_for_path(request.url.path, status, message, code, param, retry_after_s)


def error_for_path(
    path: str,
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    retry_after_s: int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Ollama's `{"error": "..."}` under /api/, OpenAI's error object everywhere else."""
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    if path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    body = {
        "error": {
            "message": message,
            "type": _error_type(status),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def engine_error_response(request: Request, exc: EngineError) -> JSONResponse:
    return error_response(request, exc.status, exc.message, exc.code, exc.param, exc.retry_after_s)


def install(app: FastAPI) -> None:
    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return engine_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"] if p != "body"]
        param = ".".join(loc) or None
        if first["type"] == "json_invalid":
            message = f"Request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
            return error_response(request, 400, message.rstrip(": "), "invalid_json")
        message = f"{param or 'body'}: {first['msg']}"
        return error_response(request, 400, message, "invalid_request", param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, str(exc.detail), code)
